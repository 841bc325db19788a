"""The transport: one Modbus TCP read per poll, nothing else (decoding is in decoder.py)."""

from __future__ import annotations

from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from courtyard_pump.config import PumpConfig
from courtyard_pump.decoder import PumpDecoder
from courtyard_pump.registers import ADDRESS, COUNT
from gateway.driver import DeviceContext, PollingDriver
from gateway.errors import DeviceProtocolError, DeviceUnavailable


class PumpDriver(PollingDriver):
    """Polls the controller's four holding registers."""

    def __init__(self, config: PumpConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.cfg = config
        self.decoder = PumpDecoder(config, ctx)
        self.client: AsyncModbusTcpClient | None = None

    @property
    def interval(self) -> float:
        return self.cfg.poll_interval_s

    async def connect(self) -> None:
        # No library reconnects: the gateway's supervisor owns back-off.
        self.client = AsyncModbusTcpClient(self.cfg.host, port=self.cfg.port, timeout=self.cfg.timeout_s,
                                           retries=0, reconnect_delay=0)
        if not await self.client.connect():
            raise DeviceUnavailable(f"cannot connect to {self.cfg.host}:{self.cfg.port}")

    async def read(self) -> dict[str, Any]:
        client = self.client
        if client is None or not client.connected:
            raise DeviceUnavailable("not connected")
        try:
            rr = await client.read_holding_registers(ADDRESS, count=COUNT, device_id=self.cfg.unit_id)
        except ModbusException as exc:
            raise DeviceUnavailable(str(exc)) from exc
        if rr.isError():
            raise DeviceProtocolError(f"Modbus exception code {getattr(rr, 'exception_code', '?')}")
        return {"registers": list(rr.registers)}

    async def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
