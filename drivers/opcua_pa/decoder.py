"""The PA decoder: snapshots and data-change batches in, PA events out (no I/O).

Channels, as the transport ingests them and a recording keeps them:

* `snapshot`: `{"values": {key: value}}`, every mapped node read after a connect. Fed to a
  normalizer that remembers what it saw, it reconciles: a fault that cleared while the link
  was down yields its `cleared`, a new one its `raised`.
* `changes`: `{"changes": [[key, value, source_time_iso | null], ...]}`, one subscription
  publish in device order; with `device_time`, the last source timestamp is the event time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from drivers.opcua_pa.config import OpcUaPaConfig
from drivers.opcua_pa.nodemap import NodeMap, load_map
from drivers.opcua_pa.normalizer import PaNormalizer
from gateway.driver import DeviceContext, EventDraft


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


class PaDecoder:
    """Feeds the PA normalizer; a bad recorded line is counted and decodes to nothing."""

    def __init__(self, config: OpcUaPaConfig, ctx: DeviceContext, nodemap: NodeMap | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.normalizer = PaNormalizer(
            nodemap or load_map(config.map), temperature_deadband_c=config.temperature_deadband_c,
            load_deadband_pct=config.load_deadband_pct, on_reject=self._rejected, scope=config.id)

    def _rejected(self, key: str) -> None:
        self.ctx.counters.inc("rejected")
        self.ctx.log.warning("%s: rejected value for %s", self.config.id, key)

    def feed(self, channel: str, raw: Any, now: datetime) -> list[EventDraft]:
        """One snapshot or one batch of changes, received at `now`."""
        if not isinstance(raw, dict) or channel not in ("snapshot", "changes"):
            self.ctx.counters.inc("bad_input")
            return []
        if channel == "snapshot":
            values = raw.get("values")
            if not isinstance(values, dict):
                self.ctx.counters.inc("bad_input")
                return []
            return self.normalizer.apply([(str(k), v) for k, v in values.items()], now=now)
        rows = raw.get("changes")
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) >= 2 for r in rows):
            self.ctx.counters.inc("bad_input")
            return []
        when = None
        if self.config.device_time and rows and len(rows[-1]) > 2 and rows[-1][2]:
            try:
                when = _aware(datetime.fromisoformat(str(rows[-1][2])))
            except ValueError:
                self.ctx.counters.inc("bad_input")
        return self.normalizer.apply([(str(r[0]), r[1]) for r in rows], time=when, now=now)

    def forget(self) -> None:
        """Re-derive everything from the next input (the reconnect's snapshot)."""
        self.normalizer.forget()
