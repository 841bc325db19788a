"""Elevator over Modbus TCP: the transport, a thin pymodbus adapter (decoding is in decoder.py)."""

from __future__ import annotations

from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus_elevator.config import ModbusElevatorConfig
from drivers.modbus_elevator.decoder import ElevatorDecoder, words_from_raw
from drivers.modbus_elevator.link import SharedLink, acquire, release
from drivers.modbus_elevator.regmap import load_map
from gateway.driver import DeviceContext, PollingDriver
from gateway.errors import DeviceProtocolError, DeviceUnavailable

__all__ = ["ModbusElevatorDriver", "words_from_raw"]  # words_from_raw: re-exported for old imports


class ModbusElevatorDriver(PollingDriver):
    """Polls the map's register blocks: its own TCP link, or the one shared by every elevator
    behind the same gateway (`link: shared`, drivers/modbus_elevator/link.py)."""

    def __init__(self, config: ModbusElevatorConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.cfg = config
        self.map = load_map(config.map)
        self.decoder = ElevatorDecoder(config, ctx, self.map)
        self.client: AsyncModbusTcpClient | None = None
        self.shared: SharedLink | None = None

    @property
    def interval(self) -> float:
        """Seconds between polls."""
        return self.cfg.poll_interval_s

    async def connect(self) -> None:
        """Open the TCP link (no library auto-reconnect: the supervisor owns back-off)."""
        if self.cfg.link == "shared":
            if self.shared is None:
                self.shared = acquire(self.cfg.host, self.cfg.port, self.cfg.timeout_s)
            self.client = await self.shared.ensure()
            return
        self.client = AsyncModbusTcpClient(
            self.cfg.host, port=self.cfg.port, timeout=self.cfg.timeout_s, retries=0, reconnect_delay=0,
        )
        if not await self.client.connect():
            raise DeviceUnavailable(f"cannot connect to {self.cfg.host}:{self.cfg.port}")

    async def read(self) -> dict[str, Any]:
        """Read every block of the map."""
        client = self.client
        if self.shared is not None:  # another elevator's request may have lost the link: reopen it
            client = self.client = await self.shared.ensure()
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

    async def close(self) -> None:
        """Close the link (a shared one: let go of it; its last user closes it)."""
        if self.shared is not None:
            release(self.shared)
            self.shared = None
        elif self.client is not None:
            self.client.close()
        self.client = None
