"""The elevator's decoder: one poll's register blocks in, elevator events out (no I/O)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drivers.modbus_elevator.config import ModbusElevatorConfig
from drivers.modbus_elevator.normalizer import ElevatorNormalizer
from drivers.modbus_elevator.regmap import RegisterMap, load_map
from gateway.driver import DeviceContext, EventDraft
from schemas.common import Quality
from schemas.elevator import ElevatorPayload


def words_from_raw(raw: Any) -> dict[int, int]:
    """Registers by address from a recorded poll `{"blocks": [[address, [words...]], ...]}`.

    Raises ValueError on any other shape (recordings and replays are untrusted input).
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("blocks"), list):
        raise ValueError("raw poll must be {'blocks': [[address, [words]], ...]}")
    words: dict[int, int] = {}
    for block in raw["blocks"]:
        if not (isinstance(block, list | tuple) and len(block) == 2 and isinstance(block[0], int)
                and isinstance(block[1], list)):
            raise ValueError(f"bad block {block!r}")
        for i, w in enumerate(block[1]):
            if not isinstance(w, int) or not 0 <= w <= 0xFFFF:
                raise ValueError(f"register {block[0] + i} holds {w!r}, not a 16-bit word")
            words[block[0] + i] = w
    return words


class ElevatorDecoder:
    """Channel `poll`: the raw result of `ModbusElevatorDriver.read()`."""

    def __init__(self, config: ModbusElevatorConfig, ctx: DeviceContext, regmap: RegisterMap | None = None) -> None:
        self.ctx = ctx
        self.normalizer = ElevatorNormalizer(config, regmap or load_map(config.map))

    def feed(self, channel: str, raw: Any, now: datetime) -> list[EventDraft]:
        """Registers -> events; malformed raw data becomes a `rejected` status event."""
        if channel != "poll":
            self.ctx.counters.inc("unknown_channel")
            return []
        try:
            words = words_from_raw(raw)
        except ValueError as exc:
            self.ctx.counters.inc("rejected")
            return [EventDraft(type="elevator.status", cls="status", payload=ElevatorPayload(),
                               quality=Quality(status="rejected", reasons=(f"malformed_raw:{exc}"[:200],)))]
        drafts = self.normalizer.process(words, now)
        for d in drafts:
            if d.quality.status == "rejected":
                self.ctx.counters.inc("rejected")
            elif d.quality.status == "suspect":
                self.ctx.counters.inc("suspect")
        return drafts

    def forget(self) -> None:
        """Report status afresh and re-confirm every open alarm from the next poll on."""
        self.normalizer.forget()
