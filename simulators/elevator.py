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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus_elevator.regmap import RegisterMap, load_map

log = logging.getLogger(__name__)

DOOR_MOVE_S = 2.0
DOOR_OPEN_S = 3.0
DOOR_ZONE_M = 0.15
PASSENGER_LOAD_PCT = 8
#: Every value the model can put in an enum field; each shipped map must encode all of them.
DOOR_STATES = ("closed", "opening", "open", "closing")
DIRECTIONS = ("none", "up", "down")
SERVICE_MODES = ("normal", "fire_return")


@dataclass
class Call:
    """A passenger waiting at `origin` who wants `destination`."""

    origin: int
    destination: int
    boarded: bool = False


@dataclass
class ElevatorModel:
    """A single car. Time advances only through `step(dt)`, so runs are reproducible."""

    lowest: int = -2
    highest: int = 18
    has_floor_zero: bool = False
    rated_mps: float = 1.75
    floor_height_m: float = 3.0
    call_rate_per_s: float = 0.05
    seed: int = 1
    faults: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.floors = [f for f in range(self.lowest, self.highest + 1) if f != 0 or self.has_floor_zero]
        self.pos_m = self.floors.index(1 if 1 in self.floors else self.floors[0]) * self.floor_height_m
        self.phase = "idle"  # idle | moving | opening | open | closing | stuck
        self.timer = 0.0
        self.target: int | None = None
        self.calls: list[Call] = []
        self.speed = 0.0
        self.direction = "none"
        self.service_mode = "normal"
        self.time = 0.0
        self.hold_until: float | None = None  # hold_door: doors stay open until then
        self.recall: int | None = None  # return_to_floor: parked there until release_return

    # --- geometry ------------------------------------------------------------------------

    def _index_pos(self, floor: int) -> float:
        return self.floors.index(floor) * self.floor_height_m

    @property
    def floor(self) -> int:
        """Nearest floor to the car."""
        i = min(len(self.floors) - 1, max(0, round(self.pos_m / self.floor_height_m)))
        return self.floors[i]

    @property
    def door_zone(self) -> bool:
        """Car within the unlocking zone of a floor."""
        return abs(self.pos_m - self._index_pos(self.floor)) <= DOOR_ZONE_M

    @property
    def passengers(self) -> int:
        """Passengers in the car."""
        return sum(1 for c in self.calls if c.boarded) + (1 if self.faults.get("trapped") is not None else 0)

    # --- behaviour -----------------------------------------------------------------------

    def call(self, origin: int, destination: int) -> None:
        """A landing call from `origin` for `destination`."""
        if origin in self.floors and destination in self.floors and origin != destination:
            self.calls.append(Call(origin, destination))

    def _next_target(self) -> int | None:
        if self.service_mode == "fire_return":
            return 1 if 1 in self.floors else self.floors[0]
        if self.recall is not None:
            return self.recall
        for c in self.calls:
            return c.destination if c.boarded else c.origin
        return None

    def step(self, dt: float) -> None:
        """Advance the model by `dt` seconds."""
        self.time += dt
        if self.service_mode == "normal" and self.recall is None and self.rng.random() < self.call_rate_per_s * dt:
            a, b = self.rng.sample(self.floors, 2)
            self.call(a, b)
        stuck = "trapped" in self.faults or "outside_door_zone" in self.faults
        if stuck and self.phase == "moving" and not self.door_zone:
            self.phase, self.speed, self.direction = "stuck", 0.0, "none"
        if not stuck and self.phase == "stuck":
            self.phase = "moving"
        if self.phase == "stuck":
            return
        if self.phase == "idle":
            self.target = self._next_target()
            if self.target is None:
                return
            here = self._index_pos(self.target)
            if abs(here - self.pos_m) < 1e-6:
                self.phase, self.timer = "opening", 0.0
            else:
                self.phase = "moving"
                self.direction = "up" if here > self.pos_m else "down"
        if self.phase == "moving":
            assert self.target is not None
            goal = self._index_pos(self.target)
            self.speed = self.rated_mps * (1.4 if "overspeed" in self.faults else 1.0)
            step = self.speed * dt
            if stuck and not self.door_zone:
                return
            if abs(goal - self.pos_m) <= step:
                self.pos_m, self.speed, self.direction = goal, 0.0, "none"
                self.phase, self.timer = "opening", 0.0
            else:
                self.pos_m += step if goal > self.pos_m else -step
                # A stuck fault stops the car at the first point outside a door zone.
                if stuck and not self.door_zone:
                    self.phase, self.speed, self.direction = "stuck", 0.0, "none"
            return
        self.timer += dt
        if self.phase == "opening" and self.timer >= DOOR_MOVE_S:
            self.phase, self.timer = "open", 0.0
            self._exchange_passengers()
        elif self.phase == "open" and self.timer >= DOOR_OPEN_S and self.service_mode != "fire_return" \
                and not self._doors_kept_open():
            self.phase, self.timer = "closing", 0.0
        elif self.phase == "closing" and self.timer >= DOOR_MOVE_S:
            self.phase, self.timer = "idle", 0.0

    def _doors_kept_open(self) -> bool:
        """hold_door (until its time runs out: auto-release) or parked by return_to_floor."""
        if self.hold_until is not None and self.time >= self.hold_until:
            self.hold_until = None
        return self.hold_until is not None or (self.recall is not None and self.floor == self.recall)

    # --- commands (what a controller accepts; it refuses the rest) ----------------------------

    def command(self, name: str, arg: int) -> int:
        """Act on a command; 0 when done, else the refusal code of the maps' `refusals`."""
        if self.service_mode == "inspection":
            return REFUSE["inspection"]
        if self.service_mode in ("fire_return", "firefighter"):
            return REFUSE["fire_service"]
        if self.service_mode != "normal" or "fault_code" in self.faults:
            return REFUSE["out_of_service"]
        if name in ("call", "return_to_floor") and arg not in self.floors:
            return REFUSE["floor_not_served"]
        if name == "call":
            if self.recall is not None:
                return REFUSE["busy"]
            self.calls.append(Call(origin=arg, destination=arg, boarded=True))  # a car call
        elif name == "hold_door":
            if self.phase in ("moving", "stuck"):
                return REFUSE["car_moving"]
            self.hold_until = self.time + max(1, arg)
            if self.phase in ("idle", "closing"):
                self.phase, self.timer = "opening", 0.0
        elif name == "release_door":
            if self.hold_until is None:
                return REFUSE["not_held"]
            self.hold_until = None
        elif name == "return_to_floor":
            self.recall = arg
            self.calls.clear()
            if self.phase == "open" and self.floor != arg:
                self.phase, self.timer = "closing", 0.0
        elif name == "release_return":
            if self.recall is None:
                return REFUSE["no_return_active"]
            self.recall = None
        else:
            return REFUSE["busy"]
        return 0

    def _exchange_passengers(self) -> None:
        here = self.floor
        self.calls = [c for c in self.calls if not (c.boarded and c.destination == here)]
        for c in self.calls:
            if not c.boarded and c.origin == here:
                c.boarded = True

    # --- what the registers say ------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """Decoded register values (by field name) for the current state."""
        door = {"opening": "opening", "open": "open", "closing": "closing"}.get(self.phase, "closed")
        running = self.phase == "moving"
        if "door_open_running" in self.faults and running:
            door = "open"
        fault = self.faults.get("fault_code")
        return {
            "floor": self.floor,
            "direction": self.direction if running else "none",
            "car_running": running,
            "door_zone": self.door_zone,
            "door_state": door,
            "occupied": self.passengers > 0,
            "service_mode": self.service_mode,
            "speed_mps": round(self.speed, 2) if running else 0.0,
            "load_pct": min(100, self.passengers * PASSENGER_LOAD_PCT),
            "fault_code": int(fault) if fault is not None else 0,
            "event_code": 90 if "alarm_button" in self.faults else 0,
        }

    def bits(self) -> set[str]:
        """Event types whose alarm bit a vendor box would set now."""
        out = set()
        if "trapped" in self.faults and self.phase == "stuck":
            out.add("elevator.passenger_trapped")
        if "overspeed" in self.faults and self.phase == "moving":
            out.add("elevator.overspeed")
        if "alarm_button" in self.faults:
            out.add("elevator.alarm_button")
        return out


DEVICE_FAULTS = frozenset({"trapped", "outside_door_zone", "overspeed", "door_open_running", "alarm_button",
                           "fire_mode", "fault_code", "inspection"})
TRANSPORT_FAULTS = frozenset({"disconnect", "no_reply", "slow_reply", "exception", "bad_floor", "bad_enum",
                              "no_ack"})
#: Refusal codes the controller answers with (the shipped maps' `commands.refusals`).
REFUSE = {"inspection": 1, "fire_service": 2, "out_of_service": 3, "floor_not_served": 4, "car_moving": 5,
          "busy": 6, "not_held": 7, "no_return_active": 8}


def parse_fault(text: str) -> tuple[str, Any]:
    """`name` or `name=value` -> (name, value)."""
    name, _, value = text.partition("=")
    if name not in DEVICE_FAULTS | TRANSPORT_FAULTS:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(DEVICE_FAULTS | TRANSPORT_FAULTS))}")
    parsed: Any = True
    if value:
        parsed = float(value) if "." in value else int(value)
    return name, parsed


class ElevatorSimulator:
    """One Modbus TCP server hosting one or more elevators (one Modbus device id each)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 5020,
        regmap: RegisterMap | str = "gbt24476",
        elevators: dict[int, ElevatorModel] | None = None,
        tick_s: float = 0.1,
        speed: float = 1.0,
    ) -> None:
        self.host, self.port = host, port
        self.speed = speed  # simulated seconds per real second
        self.map = load_map(regmap) if isinstance(regmap, str) else regmap
        self.elevators = elevators or {1: ElevatorModel()}
        self.tick_s = tick_s
        self.transport_faults: dict[str, Any] = {}
        self.requests = 0
        self._server: ModbusTcpServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._written: dict[int, dict[int, int]] = {}
        self.command_requests = 0  # mailbox writes seen
        self.commands: list[tuple[int, str | None, int, int]] = []  # (device id, name, argument, result) acted on
        self._pending: set[asyncio.Future[None]] = set()
        self.unanswered: list[tuple[int, dict[int, int]]] = []  # requests taken under `no_ack`

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving and ticking."""
        await self._start_server()
        self._ticker = asyncio.create_task(self._tick_loop(), name="elevator-sim-tick")

    async def _start_server(self) -> None:
        devices = [
            SimDevice(
                id=dev_id,
                simdata=[SimData(b.address, count=b.count, values=0, datatype=DataType.REGISTERS)
                         for b in self._blocks()],
                action=functools.partial(self._device_action, dev_id),
            )
            for dev_id in self.elevators
        ]
        self._server = ModbusTcpServer(devices, address=(self.host, self.port))
        await self._server.serve_forever(background=True)
        self._written.clear()
        await self.refresh()

    async def stop(self) -> None:
        """Stop ticking and serving."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def __aenter__(self) -> ElevatorSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- faults ----------------------------------------------------------------------------

    async def inject(self, fault: str, value: Any = True, *, device_id: int | None = None) -> None:
        """Inject a device or transport fault (see module docstring)."""
        if fault in TRANSPORT_FAULTS:
            self.transport_faults[fault] = value
            if fault == "disconnect" and self._server is not None:
                await self._server.shutdown()  # type: ignore[no-untyped-call]
                self._server = None
        elif fault in DEVICE_FAULTS:
            for dev_id, model in self.elevators.items():
                if device_id is None or dev_id == device_id:
                    model.faults[fault] = value
                    if fault == "fire_mode":
                        model.service_mode = "fire_return"
                    if fault == "inspection":
                        model.service_mode = "inspection"
        else:
            raise ValueError(f"unknown fault {fault!r}")
        await self.refresh()

    async def clear(self, fault: str, *, device_id: int | None = None) -> None:
        """Clear a fault."""
        self.transport_faults.pop(fault, None)
        if fault == "disconnect" and self._server is None:
            await self._start_server()
        for dev_id, model in self.elevators.items():
            if device_id is None or dev_id == device_id:
                model.faults.pop(fault, None)
                if fault in ("fire_mode", "inspection"):
                    model.service_mode = "normal"
        await self.refresh()

    def _blocks(self) -> list[Any]:
        """Register blocks served: the map's, and its command mailbox."""
        mailbox = self.map.commands
        return [*self.map.blocks, *([mailbox.block] if mailbox is not None else [])]

    async def _device_action(
        self, dev_id: int, fc: int, start: int, address: int, count: int, regs: list[int], set_values: Any
    ) -> ExcCodes | None:
        """Client writes to the command mailbox are requests to the controller of `dev_id`."""
        mailbox = self.map.commands
        if set_values is not None and fc in (6, 16) and mailbox is not None:
            values = set_values if isinstance(set_values, list) else [set_values]
            written = {address + i: int(v) for i, v in enumerate(values)}
            if mailbox.seq in written and mailbox.code in written:
                failed = await self._action(fc, start, address, count, regs, None)  # transport faults apply
                if failed is not None:
                    return failed
                self.command_requests += 1
                if "no_ack" in self.transport_faults:
                    self.unanswered.append((dev_id, written))
                else:
                    # After this write lands: the controller answers in its own registers.
                    asyncio.get_running_loop().call_soon(self._spawn_answer, dev_id, written)
                return None
        return await self._action(fc, start, address, count, regs, set_values)

    async def answer_late(self) -> None:
        """The controller acts on the requests it took under `no_ack` and answers them now."""
        pending, self.unanswered = self.unanswered, []
        for dev_id, written in pending:
            await self._answer(dev_id, written)

    def _spawn_answer(self, dev_id: int, written: dict[int, int]) -> None:
        fut = asyncio.ensure_future(self._answer(dev_id, written))
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)

    async def _answer(self, dev_id: int, written: dict[int, int]) -> None:
        mailbox = self.map.commands
        if mailbox is None or self._server is None:
            return
        code = written[mailbox.code]
        name = next((n for n, c in mailbox.commands.items() if c.code == code), None)
        arg = 0
        if name is not None:
            for spec in mailbox.commands[name].args.values():
                raw = written.get(spec.address, 0)
                arg = raw - 0x10000 if spec.signed and raw & 0x8000 else raw
        model = self.elevators[dev_id]
        result = model.command(name, arg) if name is not None else REFUSE["busy"]
        self.commands.append((dev_id, name, arg, result))
        await self._server.async_setValues(dev_id, 3, mailbox.result, [result])
        await self._server.async_setValues(dev_id, 3, mailbox.ack, [written[mailbox.seq]])
        await self.refresh()

    async def _action(
        self, fc: int, start: int, address: int, count: int, regs: list[int], set_values: Any
    ) -> ExcCodes | None:
        if set_values is not None:  # our own register updates pass through here too
            return None
        self.requests += 1
        tf = self.transport_faults
        if "no_reply" in tf:
            await asyncio.sleep(3600)  # the client times out; the task dies with the connection
        if "slow_reply" in tf:
            await asyncio.sleep(float(tf["slow_reply"]))
        if "exception" in tf:
            return ExcCodes(int(tf["exception"]) if tf["exception"] is not True else 6)
        return None

    # --- registers -------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Write every elevator's current state into its registers (only changed blocks)."""
        if self._server is None:
            return
        for dev_id, model in self.elevators.items():
            words = self.encode(model)
            last = self._written.get(dev_id)
            if words == last:
                continue
            for block in self.map.blocks:
                values = [words[a] for a in range(block.address, block.address + block.count)]
                if last is None or values != [last[a] for a in range(block.address, block.address + block.count)]:
                    await self._server.async_setValues(dev_id, 3, block.address, values)
            self._written[dev_id] = words

    def encode(self, model: ElevatorModel) -> dict[int, int]:
        """Registers for one model, with register-level transport faults applied."""
        values = model.values()
        words = self.map.encode(values, model.bits())
        fields = self.map.fields
        if "bad_floor" in self.transport_faults and "floor" in fields:
            spec = fields["floor"]
            words[spec.address] = spec.insert(words[spec.address], 999)
        if "bad_enum" in self.transport_faults and "direction" in fields:
            spec = fields["direction"]
            words[spec.address] = spec.insert(words[spec.address], 7)
        return words

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            dt, last = now - last, now
            for model in self.elevators.values():
                model.step(dt * self.speed)
            await self.refresh()


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
