"""The Modbus TCP side: one pymodbus server hosting cars, their registers, and transport faults."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus_elevator.regmap import RegisterMap, load_map
from simulators.elevator.model import (
    REFUSE,
    ElevatorModel,
)

log = logging.getLogger(__name__)


DEVICE_FAULTS = frozenset({"trapped", "outside_door_zone", "overspeed", "door_open_running", "alarm_button",
                           "fire_mode", "fault_code", "inspection"})
TRANSPORT_FAULTS = frozenset({"disconnect", "no_reply", "slow_reply", "exception", "bad_floor", "bad_enum",
                              "no_ack"})


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
                    if fault in ("fire_mode", "inspection"):
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
                if fault == "fire_mode":
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
