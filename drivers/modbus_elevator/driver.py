"""Elevator over Modbus TCP: the transport, a lean read link (decoding is in decoder.py)."""

from __future__ import annotations

from typing import Any

from drivers.modbus_elevator.config import ModbusElevatorConfig
from drivers.modbus_elevator.decoder import ElevatorDecoder, words_from_raw
from drivers.modbus_elevator.link import ModbusReadLink
from drivers.modbus_elevator.regmap import load_map
from gateway.driver import DeviceContext, PollingDriver
from gateway.errors import DeviceUnavailable

__all__ = ["ModbusElevatorDriver", "words_from_raw"]  # words_from_raw: re-exported for old imports


class ModbusElevatorDriver(PollingDriver):
    """Polls the map's register blocks, one link (and so one TCP connection) per elevator.

    No library auto-reconnect or retries: the supervisor owns back-off.
    """

    def __init__(self, config: ModbusElevatorConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.cfg = config
        self.map = load_map(config.map)
        self.decoder = ElevatorDecoder(config, ctx, self.map)
        self.client: ModbusReadLink | None = None
        self._blocks = [(b.address, b.count) for b in self.map.blocks]

    @property
    def interval(self) -> float:
        """Seconds between polls."""
        return self.cfg.poll_interval_s

    async def connect(self) -> None:
        """Open the TCP link."""
        self.client = await ModbusReadLink.open(self.cfg.host, self.cfg.port, self.cfg.timeout_s)

    async def read(self) -> dict[str, Any]:
        """Read every block of the map."""
        client = self.client
        if client is None or not client.connected:
            raise DeviceUnavailable("not connected")
        cfg = self.cfg
        return {"blocks": [[address, await client.read(self.map.table, address, count, cfg.unit_id, cfg.timeout_s)]
                           for address, count in self._blocks]}

    async def close(self) -> None:
        """Close the link."""
        if self.client is not None:
            self.client.close()
            self.client = None
