"""Elevator over Modbus TCP: a thin pymodbus adapter around the pure map + normalizer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus_elevator.config import ModbusElevatorConfig
from drivers.modbus_elevator.normalizer import ElevatorNormalizer
from drivers.modbus_elevator.regmap import load_map
from gateway.driver import DeviceContext, EventDraft, PollingDriver
from gateway.errors import DeviceProtocolError, DeviceUnavailable
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


class ModbusElevatorDriver(PollingDriver):
    """Polls the map's register blocks, one client (and so one TCP link) per elevator."""

    def __init__(self, config: ModbusElevatorConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.cfg = config
        self.map = load_map(config.map)
        self.normalizer = ElevatorNormalizer(config, self.map)
        self.client: AsyncModbusTcpClient | None = None

    @property
    def interval(self) -> float:
        """Seconds between polls."""
        return self.cfg.poll_interval_s

    async def connect(self) -> None:
        """Open the TCP link (no library auto-reconnect: the supervisor owns back-off)."""
        self.client = AsyncModbusTcpClient(
            self.cfg.host, port=self.cfg.port, timeout=self.cfg.timeout_s, retries=0, reconnect_delay=0,
        )
        if not await self.client.connect():
            raise DeviceUnavailable(f"cannot connect to {self.cfg.host}:{self.cfg.port}")

    async def read(self) -> dict[str, Any]:
        """Read every block of the map."""
        client = self.client
        if client is None or not client.connected:
            raise DeviceUnavailable("not connected")
        fn = client.read_holding_registers if self.map.table == "holding" else client.read_input_registers
        blocks: list[list[Any]] = []
        for block in self.map.blocks:
            try:
                rr = await fn(block.address, count=block.count, device_id=self.cfg.unit_id)
            except ModbusException as exc:
                raise DeviceUnavailable(str(exc)) from exc
            if rr.isError():
                raise DeviceProtocolError(f"Modbus exception code {getattr(rr, 'exception_code', '?')}")
            blocks.append([block.address, list(rr.registers)])
        return {"blocks": blocks}

    def decode(self, raw: Any, now: datetime) -> list[EventDraft]:
        """Registers -> events; malformed raw data becomes a `rejected` status event."""
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
        """Start validation and alarm derivation afresh (their last events were not accepted)."""
        self.normalizer = ElevatorNormalizer(self.cfg, self.map)

    async def close(self) -> None:
        """Close the link."""
        if self.client is not None:
            self.client.close()
            self.client = None
