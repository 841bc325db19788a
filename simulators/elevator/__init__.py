"""Elevator simulator: a car that behaves, served by a real pymodbus Modbus TCP server.

The model answers calls, moves floor to floor at its rated speed, cycles its doors and
carries passengers; a seed makes it deterministic. Its state is written into registers by
the same register map the driver reads (`RegisterMap.encode`), so it speaks any map.

Faults, injected by name (`inject(name)` / `clear(name)`):

* device: `trapped` (stuck between floors with a passenger), `outside_door_zone` (stuck
  empty), `overspeed`, `door_open_running`, `alarm_button`, `fire_mode`,
  `fault_code=<n>` (e.g. `fault_code=1`; with a x100 map the register holds n*100)
* transport: `disconnect` (drop every link and refuse new ones until cleared),
  `no_reply` (requests are swallowed), `slow_reply=<seconds>`, `exception=<code>`
  (Modbus exception code, e.g. 6 device busy), `bad_floor` (floor register outside range),
  `bad_enum` (direction register = 7), `no_ack` (command requests are taken but never answered)
* device modes: `inspection` (service mode inspection: the controller refuses commands)

Commands (the map's `commands:` mailbox): `call`, `hold_door` (auto-released after its
seconds), `release_door`, `return_to_floor` (parks there, doors open, until `release_return`),
`release_return`. The controller refuses them as a real one would: in inspection, fire
service or out of service, for a floor it does not serve, `hold_door` while moving; it
answers in the mailbox's `ack`/`result` registers.

Modules: `model` (the car), `server` (Modbus TCP); this package re-exports both, as the
single module it replaced did.
"""

from __future__ import annotations

import argparse
import asyncio

from simulators.elevator.model import (
    DIRECTIONS,
    DOOR_MOVE_S,
    DOOR_OPEN_S,
    DOOR_STATES,
    DOOR_ZONE_M,
    PASSENGER_LOAD_PCT,
    SERVICE_MODES,
    Call,
    ElevatorModel,
)
from simulators.elevator.server import (
    DEVICE_FAULTS,
    TRANSPORT_FAULTS,
    ElevatorSimulator,
    parse_fault,
)

__all__ = [
    "DEVICE_FAULTS",
    "DIRECTIONS",
    "DOOR_MOVE_S",
    "DOOR_OPEN_S",
    "DOOR_STATES",
    "DOOR_ZONE_M",
    "PASSENGER_LOAD_PCT",
    "SERVICE_MODES",
    "TRANSPORT_FAULTS",
    "Call",
    "ElevatorModel",
    "ElevatorSimulator",
    "add_arguments",
    "parse_fault",
    "serve",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of `courtyard simulate elevator`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--device-id", type=int, default=1, help="Modbus device id of the first elevator")
    parser.add_argument("--count", type=int, default=1, help="elevators on this server (consecutive ids)")
    parser.add_argument("--map", default="gbt24476", help="register map name or file")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lowest", type=int, default=-2)
    parser.add_argument("--highest", type=int, default=18)
    parser.add_argument("--call-rate", type=float, default=0.05, help="new calls per second per car")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME[=VALUE]",
                        help="inject a fault at start (repeatable); see the module docstring")


async def serve(args: argparse.Namespace) -> None:
    """Run the simulator until cancelled."""
    faults = [parse_fault(f) for f in args.fault]
    models = {
        args.device_id + i: ElevatorModel(lowest=args.lowest, highest=args.highest, seed=args.seed + i,
                                          call_rate_per_s=args.call_rate)
        for i in range(args.count)
    }
    sim = ElevatorSimulator(host=args.host, port=args.port, regmap=args.map, elevators=models)
    async with sim:
        for name, value in faults:
            await sim.inject(name, value)
        print(f"elevator simulator: {len(models)} car(s) on {args.host}:{args.port}, map {sim.map.name}, "
              f"device ids {min(models)}..{max(models)}", flush=True)
        await asyncio.Event().wait()
