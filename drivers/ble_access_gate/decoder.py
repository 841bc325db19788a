"""The gate's decoder: COGP notifications (hex strings) in, access events out (no I/O).

Channels: `event` (live records), `history` (backfilled records and the end-of-batch
marker) and `status` (the status characteristic, read on connect and at each heartbeat).
Raw input is the notification's bytes as a hex string, which is also how a recording keeps it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeGuard, get_args

from drivers.ble_access_gate.config import BleAccessGateConfig
from drivers.ble_access_gate.normalize import Channel, Normalizer
from gateway.driver import DeviceContext, EventDraft

CHANNELS: tuple[Channel, ...] = get_args(Channel)


def _is_channel(channel: str) -> TypeGuard[Channel]:
    return channel in CHANNELS


class GateDecoder:
    """Feeds the COGP normalizer, which keeps sequence, alarm and clock state across reconnects."""

    def __init__(self, config: BleAccessGateConfig, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.normalizer = Normalizer(config, ctx.counters)

    def feed(self, channel: str, raw: Any, now: datetime) -> list[EventDraft]:
        """One notification or read, received at `now`; input that is not hex is counted and dropped."""
        if not _is_channel(channel) or not isinstance(raw, str):
            self.ctx.counters.inc("bad_input")
            return []
        try:
            data = bytes.fromhex(raw)
        except ValueError:
            self.ctx.counters.inc("bad_input")
            return []
        return self.normalizer.feed(channel, data, now)

    def forget(self) -> None:
        """Report status again, re-confirm open alarms from the next record on."""
        self.normalizer.forget()
