"""A pump controller served by a real pymodbus Modbus TCP server: `courtyard simulate water_pump`.

Faults, by name: `dry_run` (the pump runs, no water: flow 0, pressure falls) and
`overheat` (the controller's overheat bit, motor at 95 degC); `clear(name)` ends one.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from courtyard_pump.registers import ADDRESS, COUNT, OVERHEAT, RUNNING

FAULTS = frozenset({"dry_run", "overheat"})


class PumpSimulator:
    """One controller (Modbus device id 1) whose registers follow `faults`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5030) -> None:
        self.host, self.port = host, port
        self.faults: set[str] = set()
        self._server: ModbusTcpServer | None = None

    def registers(self) -> list[int]:
        """The four holding registers for the current state."""
        dry = "dry_run" in self.faults
        hot = "overheat" in self.faults
        bits = RUNNING | (OVERHEAT if hot else 0)
        return [bits, 80 if dry else 350, 0 if dry else 120, 950 if hot else 420]

    async def start(self) -> None:
        device = SimDevice(id=1, simdata=[SimData(ADDRESS, count=COUNT, values=0, datatype=DataType.REGISTERS)])
        self._server = ModbusTcpServer([device], address=(self.host, self.port))
        await self._server.serve_forever(background=True)
        await self.refresh()

    async def refresh(self) -> None:
        if self._server is not None:
            await self._server.async_setValues(1, 3, ADDRESS, self.registers())

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def inject(self, fault: str, value: Any = True) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r} (known: {', '.join(sorted(FAULTS))})")
        self.faults.add(fault)
        await self.refresh()

    async def clear(self, fault: str) -> None:
        self.faults.discard(fault)
        await self.refresh()

    async def __aenter__(self) -> PumpSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `courtyard simulate water_pump`."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5030)
    parser.add_argument("--fault", action="append", default=[], choices=sorted(FAULTS))


async def serve(args: argparse.Namespace) -> None:
    """Serve until cancelled."""
    async with PumpSimulator(args.host, args.port) as sim:
        for fault in args.fault:
            await sim.inject(fault)
        print(f"water pump simulator on {args.host}:{args.port}", flush=True)
        await asyncio.Event().wait()
