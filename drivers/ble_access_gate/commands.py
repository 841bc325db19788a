"""Commands to a COGP gate: the profile's command characteristic, confirmed by the gate itself.

One write with response carries the command (opcode, door, duration, request id = the
journal's sequence number). The gate answers with an ordinary event record, `command.executed`
or `command.refused` (credential = the request id, then the refusal code), and the status
characteristic is read back: a command succeeds only when the gate reported it executed *and*
the status shows its effect (door unlocked, mode held open, locked, normal). A gate whose code
table has no command records is confirmed by the status read-back alone.

The executor keeps its own BLE connection (the driver's serves notifications and backfill);
a gate that takes a single central needs the driver's link shared instead (docs/commands.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic

from drivers.ble_access_gate import codec
from drivers.ble_access_gate.config import BleAccessGateConfig
from drivers.ble_access_gate.driver import LINK_ERRORS, resolve_backend
from drivers.ble_access_gate.tables import load_enumerations, load_table
from gateway.commands import CommandRejected, Outcome

OPS = {"open": codec.CMD_OPEN_ONCE, "hold_open": codec.CMD_HOLD_OPEN, "lock": codec.CMD_LOCK,
       "release": codec.CMD_NORMAL}
#: Status mode byte each command leaves the gate in (profile.yaml `modes`); `open` keeps the mode.
MODE_AFTER = {"hold_open": 1, "lock": 2, "release": 0}
MAX_OPEN_S = 255
MAX_HOLD_S = 3600
#: Status reads while waiting for the effect of a gate without command records.
POLL_S = 0.02
#: Records a restart's read-back searches for the command's answer (history, newest first).
RESOLVE_WINDOW = 64


@dataclass(frozen=True, slots=True)
class _Answer:
    executed: bool
    refusal: str | None


class GateCommands:
    """The command executor of one gate (`DriverSpec.extras["commands"]`)."""

    def __init__(self, config: BleAccessGateConfig) -> None:
        self.cfg = config
        table = load_table(config.code_table)
        self._codes = {e.wire_code: e.type for e in table.events if e.type in ("command.executed", "command.refused")}
        self._refusals = load_enumerations().command_refusals
        self._backend, _ = resolve_backend(config.backend)
        self._client: BleakClient | None = None
        self._answers: dict[int, _Answer] = {}
        self._history: list[codec.Record] = []
        self._history_end = asyncio.Event()
        self._changed = asyncio.Event()

    def names(self) -> frozenset[str]:
        """The profile's four commands."""
        return frozenset(OPS)

    def check(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """`door` (0 = every door, default 1); `seconds` for `open` (0 = the gate's default) and
        `hold_open` (absent or 0 = until `release`)."""
        if name not in OPS:
            raise CommandRejected("unknown_command")
        allowed = {"door", "seconds"} if name in ("open", "hold_open") else {"door"}
        extra = sorted(set(args) - allowed)
        if extra:
            raise CommandRejected(f"unexpected_args:{','.join(extra)}")
        out = {"door": _int(args, "door", 1, 0, self.cfg.doors)}
        if name in ("open", "hold_open"):
            out["seconds"] = _int(args, "seconds", 0, 0, MAX_OPEN_S if name == "open" else MAX_HOLD_S)
        return out

    # --- transport ---------------------------------------------------------------------------

    async def _link(self) -> BleakClient:
        client = self._client
        if client is not None and client.is_connected:
            return client
        self._client = None
        client = BleakClient(self.cfg.target, backend=self._backend, timeout=self.cfg.connect_timeout_s)
        try:
            async with asyncio.timeout(self.cfg.connect_timeout_s):
                await client.connect()
                await client.start_notify(codec.EVENT_UUID, self._on_record)
                await client.start_notify(codec.HISTORY_UUID, self._on_history)
        except LINK_ERRORS as exc:
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise _Unavailable(f"{self.cfg.target}: {exc or type(exc).__name__}") from exc
        self._client = client
        return client

    def _on_record(self, _: BleakGATTCharacteristic, data: bytearray) -> None:
        try:
            frame = codec.decode_record_frame(bytes(data))
        except codec.FrameError:
            return  # a garbled record: the driver counts it; the answer may come by status
        if isinstance(frame, codec.Record):
            self._note(frame)

    def _on_history(self, _: BleakGATTCharacteristic, data: bytearray) -> None:
        try:
            frame = codec.decode_record_frame(bytes(data))
        except codec.FrameError:
            return
        if isinstance(frame, codec.Record):
            self._history.append(frame)
            self._note(frame)
        else:
            self._history_end.set()

    def _note(self, rec: codec.Record) -> None:
        kind = self._codes.get(rec.code)
        if kind is None or len(rec.credential) < 2:
            return
        request = int.from_bytes(rec.credential[:2], "big")
        refusal = None
        if kind == "command.refused":
            code = rec.credential[2] if len(rec.credential) > 2 else 0
            refusal = self._refusals.get(code, f"code_{code}")
        self._answers[request] = _Answer(kind == "command.executed", refusal)
        while len(self._answers) > 256:  # answers to other journals' requests are not kept
            del self._answers[next(iter(self._answers))]
        self._changed.set()

    async def _status(self) -> codec.Status:
        client = await self._link()
        return codec.decode_status(bytes(await client.read_gatt_char(codec.STATUS_UUID)))

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            task = asyncio.ensure_future(client.disconnect())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # --- executor interface ----------------------------------------------------------------

    async def execute(self, name: str, args: dict[str, Any], seq: int, deadline: float) -> Outcome:
        """Write the command, then wait for the gate's answer record and the status read-back."""
        request = seq & 0xFFFF
        loop = asyncio.get_running_loop()
        self._answers.pop(request, None)
        frame = codec.encode_command(codec.Command(OPS[name], args["door"], args.get("seconds", 0), request))
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                client = await self._link()
                await client.write_gatt_char(codec.COMMAND_UUID, frame, response=True)
        except TimeoutError:
            self._drop()
            return Outcome("failed", "device_timeout")
        except _Unavailable as exc:
            return Outcome("failed", f"device_unavailable:{exc}")
        except LINK_ERRORS as exc:
            self._drop()
            # A failed write with response may still have reached the gate: its answer decides.
            return await self._await(name, args, request, deadline, why=f"write_unanswered:{exc}")
        return await self._await(name, args, request, deadline, why="device_timeout")

    async def _await(self, name: str, args: dict[str, Any], request: int, deadline: float, *,
                     why: str) -> Outcome:
        loop = asyncio.get_running_loop()
        records = bool(self._codes)
        while True:
            answer = self._answers.get(request)
            if answer is not None and not answer.executed:
                return Outcome("failed", f"refused:{answer.refusal}")
            if answer is not None or not records:
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        status = await self._status()
                except _FAILURES:
                    self._drop()
                    return Outcome("failed", "not_confirmed" if answer is not None else why)
                if _shows(name, args["door"], status):
                    return Outcome("succeeded", None)
                if answer is not None:
                    return Outcome("failed", "not_confirmed")
            remaining = deadline - loop.time()
            if remaining <= 0:
                return Outcome("failed", why)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, POLL_S) if not records else remaining)

    async def resolve(self, name: str, args: dict[str, Any], seq: int, deadline: float) -> Outcome:
        """A command a previous run sent: search the gate's recent history for its answer record."""
        request = seq & 0xFFFF
        loop = asyncio.get_running_loop()
        if not self._codes:
            return Outcome("failed", "unconfirmed_after_restart")
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                status = await self._status()
                self._history.clear()
                self._history_end.clear()
                start = max(1, status.last_seq - RESOLVE_WINDOW + 1)
                client = await self._link()
                await client.write_gatt_char(codec.HISTORY_UUID, codec.encode_history_request(start, RESOLVE_WINDOW),
                                             response=True)
                await self._history_end.wait()
        except _FAILURES:
            self._drop()
        answer = self._answers.get(request)
        if answer is None:
            return Outcome("failed", "unconfirmed_after_restart")
        return Outcome("succeeded", None) if answer.executed else Outcome("failed", f"refused:{answer.refusal}")

    async def aclose(self) -> None:
        """Disconnect the command link."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await client.disconnect()


def _shows(name: str, door: int, st: codec.Status) -> bool:
    """The status shows the command's effect on `door` (0: every door)."""
    bits = ((1 << st.doors) - 1) if door == 0 else 1 << (door - 1)
    if name in MODE_AFTER and st.mode != MODE_AFTER[name]:
        return False
    if name in ("open", "hold_open"):
        return st.locked_mask & bits == 0
    if name == "lock":
        return st.locked_mask & bits == bits
    return True  # release: back to normal mode (the lock follows the door contact)


def _int(args: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    if key not in args:
        return default
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise CommandRejected(f"bad_arg:{key}")
    if not low <= int(value) <= high:
        raise CommandRejected(f"bad_arg:{key}:out_of_range[{low},{high}]")
    return int(value)


class _Unavailable(Exception):
    """The gate could not be reached."""


_FAILURES: tuple[type[BaseException], ...] = (TimeoutError, _Unavailable, *LINK_ERRORS)
