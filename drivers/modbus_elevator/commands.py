"""Commands to an elevator controller: the register map's mailbox, confirmed by read-back.

One write submits a command (sequence number, code, arguments); the controller acts or
refuses and answers in its `ack`/`result` registers. A command succeeds only when `ack`
reads back its sequence number with result 0 and the map's `confirm` fields read back as
expected; a refusal is a failure with the controller's reason. These are requests: the
controller keeps every safety decision (no safety circuit is ever written).

The executor keeps its own Modbus link, separate from the polling one, so a slow poll never
delays a command and a command never disturbs the poll's timing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus_elevator.config import ModbusElevatorConfig
from drivers.modbus_elevator.link import SharedLink, acquire, release
from drivers.modbus_elevator.regmap import CommandMailbox, load_map
from gateway.commands import CommandRejected, Outcome
from gateway.errors import DeviceUnavailable

#: How often the mailbox is read back while a command is in progress.
POLL_S = 0.02


class ElevatorCommands:
    """The command executor of one elevator (`DriverSpec.extras["commands"]`)."""

    def __init__(self, config: ModbusElevatorConfig) -> None:
        self.cfg = config
        self.map = load_map(config.map)
        self.mailbox: CommandMailbox | None = self.map.commands
        self._client: AsyncModbusTcpClient | None = None
        self._shared: SharedLink | None = None
        self._lock = asyncio.Lock()  # one mailbox: one command at a time per elevator

    def names(self) -> frozenset[str]:
        """Commands this elevator's map offers."""
        return frozenset(self.mailbox.commands) if self.mailbox else frozenset()

    def check(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Normalized arguments, or `CommandRejected` (unknown command, missing/extra/bad args)."""
        if self.mailbox is None or name not in self.mailbox.commands:
            raise CommandRejected("unknown_command")
        spec = self.mailbox.commands[name]
        extra = sorted(set(args) - set(spec.args))
        if extra:
            raise CommandRejected(f"unexpected_args:{','.join(extra)}")
        out: dict[str, Any] = {}
        for arg, aspec in spec.args.items():
            if arg not in args:
                raise CommandRejected(f"missing_arg:{arg}")
            value = args[arg]
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise CommandRejected(f"bad_arg:{arg}")
            try:
                number = int(value) if not isinstance(value, float) else value
            except ValueError:
                raise CommandRejected(f"bad_arg:{arg}") from None
            if isinstance(number, float):
                if not number.is_integer():
                    raise CommandRejected(f"bad_arg:{arg}")
                number = int(number)
            low, high = aspec.min, aspec.max
            if arg == "floor":  # the floors this elevator serves, as configured
                low, high = max(low, self.cfg.lowest_floor), min(high, self.cfg.highest_floor)
                if number == 0 and not self.cfg.has_floor_zero:
                    raise CommandRejected(f"bad_arg:{arg}:floor_0_not_served")
            if not low <= number <= high:
                raise CommandRejected(f"bad_arg:{arg}:out_of_range[{low},{high}]")
            out[arg] = number
        return out

    # --- transport ---------------------------------------------------------------------------

    async def _link(self) -> AsyncModbusTcpClient:
        if self.cfg.link == "shared":  # the elevator's own polls use it too: no connection of our own
            if self._shared is None:
                self._shared = acquire(self.cfg.host, self.cfg.port, self.cfg.timeout_s)
            try:
                return await self._shared.ensure()
            except DeviceUnavailable as exc:
                raise _Unavailable(str(exc)) from exc
        client = self._client
        if client is not None and client.connected:
            return client
        if client is not None:
            client.close()
        client = AsyncModbusTcpClient(self.cfg.host, port=self.cfg.port, timeout=self.cfg.timeout_s, retries=0,
                                      reconnect_delay=0)
        if not await client.connect():
            client.close()
            raise _Unavailable(f"cannot connect to {self.cfg.host}:{self.cfg.port}")
        self._client = client
        return client

    async def _read(self, address: int, count: int) -> list[int]:
        client = await self._link()
        try:
            rr = await client.read_holding_registers(address, count=count, device_id=self.cfg.unit_id)
        except ModbusException as exc:
            self._drop()
            raise _Unavailable(str(exc)) from exc
        if rr.isError():
            raise _Unavailable(f"Modbus exception code {getattr(rr, 'exception_code', '?')}")
        return list(rr.registers)

    def _drop(self) -> None:
        if self._shared is not None:  # let go; the next `_link` takes it again (and reopens it if closed)
            release(self._shared)
            self._shared = None
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _ack(self, mailbox: CommandMailbox) -> tuple[int, int]:
        lo = min(mailbox.ack, mailbox.result)
        words = await self._read(lo, abs(mailbox.ack - mailbox.result) + 1)
        return words[mailbox.ack - lo], words[mailbox.result - lo]

    async def _confirmed(self, name: str) -> bool:
        """The map's `confirm` fields read back as expected (no confirm: true)."""
        assert self.mailbox is not None
        confirm = self.mailbox.commands[name].confirm
        if not confirm:
            return True
        words: dict[int, int] = {}
        for block in self.map.blocks:
            for i, w in enumerate(await self._read(block.address, block.count)):
                words[block.address + i] = w
        values, _, _ = self.map.decode(words)
        return all(values.get(f) in allowed for f, allowed in confirm.items())

    # --- executor interface ----------------------------------------------------------------

    async def execute(self, name: str, args: dict[str, Any], seq: int, deadline: float) -> Outcome:
        """Submit, then wait for the controller's answer and the read-back (until `deadline`, loop time)."""
        assert self.mailbox is not None
        async with self._lock:
            try:
                start, words = self.mailbox.frame(name, seq, args)
                ack, _ = await self._ack(self.mailbox)
                if ack == seq & 0xFFFF:  # the mailbox already shows this number: its answer would be stale
                    return Outcome("failed", "sequence_in_use")
                client = await self._link()
                try:
                    rr = await client.write_registers(start, words, device_id=self.cfg.unit_id)
                except ModbusException as exc:
                    self._drop()
                    # The frame may or may not have arrived: the answer decides, read it back.
                    return await self._await_answer(name, seq, deadline, why=f"write_unanswered:{exc}")
                if rr.isError():
                    return Outcome("failed", f"device_exception:{getattr(rr, 'exception_code', '?')}")
            except _Unavailable as exc:
                return Outcome("failed", f"device_unavailable:{exc}")
            return await self._await_answer(name, seq, deadline, why="device_timeout")

    async def _await_answer(self, name: str, seq: int, deadline: float, *, why: str) -> Outcome:
        assert self.mailbox is not None
        loop = asyncio.get_running_loop()
        acked = False
        last_error = ""
        while True:
            try:
                if not acked:
                    ack, result = await self._ack(self.mailbox)
                    if ack == seq & 0xFFFF:
                        if result != 0:
                            reason = self.mailbox.refusals.get(result, f"code_{result}")
                            return Outcome("failed", f"refused:{reason}")
                        acked = True
                if acked and await self._confirmed(name):
                    return Outcome("succeeded", None)
            except _Unavailable as exc:
                last_error = str(exc)
            if loop.time() >= deadline:
                if acked:
                    return Outcome("failed", "not_confirmed")
                return Outcome("failed", f"{why}:{last_error}" if last_error else why)
            await asyncio.sleep(POLL_S)

    async def resolve(self, name: str, args: dict[str, Any], seq: int, deadline: float) -> Outcome:
        """A command a previous run sent and never saw answered: read the mailbox back, never re-send.

        `ack == seq` gives the outcome; anything else by `deadline` means the controller never
        took it (or cannot be read): failed, `unconfirmed_after_restart`.
        """
        if self.mailbox is None or name not in self.mailbox.commands:
            return Outcome("failed", "unknown_command_after_restart")
        async with self._lock:
            return await self._await_answer(name, seq, deadline, why="unconfirmed_after_restart")

    async def aclose(self) -> None:
        """Close the command link."""
        self._drop()


class _Unavailable(Exception):
    """The controller could not be reached or read."""
