"""A gate that behaves: residents arrive, badge, pass; doors open and close; things go wrong.

Deterministic for a seed: all randomness comes from one `random.Random`, and time only moves
when `advance()` is called, so tests can run hours of gate life in milliseconds. The model speaks
normalized intents (`access.denied` + reason) and encodes them with a code table, so the same
model can pose as a COGP-native gate or a Hikvision-numbered one.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.ble_access_gate import codec
from drivers.ble_access_gate.tables import CodeTable, load_enumerations, load_table

CREDENTIALS = (("card", 50), ("face", 25), ("qr", 10), ("ble", 10), ("pin", 5))
DENY_REASONS = (
    ("no_permission", 30),
    ("unknown_credential", 25),
    ("expired", 15),
    ("outside_schedule", 12),
    ("anti_passback", 8),
    ("blocklist", 4),
    ("liveness_failed", 3),
    ("interlock", 2),
    ("multi_factor_timeout", 1),
)


@dataclass(frozen=True)
class Behaviour:
    """Probabilities per arrival (the rest of the gate's life follows from them)."""

    granted: float = 0.85
    tailgating: float = 0.03
    reverse_entry: float = 0.01
    held_open: float = 0.02
    forced: float = 0.004
    tamper: float = 0.002
    exit_button: float = 0.05


@dataclass(order=True)
class _Pending:
    at: float
    order: int
    action: Callable[[], object] = field(compare=False)


class GateModel:
    """State and behaviour of one gate controller with `doors` doors."""

    def __init__(
        self,
        *,
        seed: int = 1,
        doors: int = 1,
        arrivals_per_min: float = 6.0,
        start_time: float = 1_767_225_600.0,  # 2026-01-01T00:00:00Z
        table: str | CodeTable = "cogp",
        behaviour: Behaviour = Behaviour(),
        history_size: int = 2000,
        residents: int = 200,
    ) -> None:
        self.rng = random.Random(seed)
        self.doors = doors
        self.rate_per_s = arrivals_per_min / 60.0
        self.now = start_time
        self.clock_skew = 0.0
        #: Where the device clock reads its time; None: model time. A model run faster than
        #: real time (scenarios) keeps its clock on the wall clock, as a real gate's RTC would.
        self.clock: Callable[[], float] | None = None
        self.held: set[int] = set()  # doors kept open by a fault (propped, forced) until released
        self.table = load_table(table) if isinstance(table, str) else table
        self.behaviour = behaviour
        self.seq = 0
        self.history: deque[codec.Record] = deque(maxlen=history_size)
        self.open_mask = 0
        self.locked_mask = (1 << doors) - 1
        self.mode = 0
        self.tamper = False
        self.mains = True
        self.on_battery = False
        self.battery_pct = 100
        self.battery_low = False
        self.firmware = (1, 4, 2)
        self.commands: list[tuple[codec.Command, int | None]] = []  # what the gate acted on (tests, bench)
        self.refuse_commands: str | None = None  # a refusal reason for every command (fault injection)
        self._hold_epoch = 0
        self._queue: list[_Pending] = []
        self._order = itertools.count()
        self._out: list[codec.Record] = []
        self._next_arrival = self.now + self._gap()
        self._residents = [self.rng.randbytes(4) for _ in range(residents)]
        enums = load_enumerations()
        self._cred_codes: dict[str, int] = {v: k for k, v in enums.credential_types.items()}
        self._reason_codes: dict[str, int] = {v: k for k, v in enums.reasons.items() if v is not None}

    # --- time ---------------------------------------------------------------------------------

    @property
    def device_time(self) -> int:
        """What the device's own clock says (seconds), skew included."""
        base = self.now if self.clock is None else self.clock()
        return max(0, int(base + self.clock_skew))

    def advance(self, seconds: float) -> list[codec.Record]:
        """Let `seconds` of gate life pass; returns the records the gate produced, in order."""
        end = self.now + seconds
        while True:
            nxt = min(self._next_arrival, self._queue[0].at if self._queue else math.inf)
            if nxt > end:
                break
            self.now = nxt
            if self._queue and self._queue[0].at <= nxt:
                heapq.heappop(self._queue).action()
            else:
                self._arrival()
                self._next_arrival = self.now + self._gap()
        self.now = end
        out, self._out = self._out, []
        return out

    def _gap(self) -> float:
        return self.rng.expovariate(self.rate_per_s) if self.rate_per_s > 0 else math.inf

    def _later(self, delay: float, action: Callable[[], object]) -> None:
        heapq.heappush(self._queue, _Pending(self.now + delay, next(self._order), action))

    # --- behaviour ----------------------------------------------------------------------------

    def _arrival(self) -> None:
        if self.mode == FIRE_RELEASE:
            return  # doors stand open: people walk through without badging
        b, rng = self.behaviour, self.rng
        door = rng.randint(1, self.doors)
        direction = "in" if rng.random() < 0.6 else "out"
        reader = 1 if direction == "in" else 2
        cred_type = _pick(rng, CREDENTIALS)
        cred = rng.choice(self._residents) if cred_type != "pin" else rng.randbytes(2)
        if rng.random() < b.forced:
            self.force_door(door)
            return
        if rng.random() < b.tamper and not self.tamper:
            self.tamper = True
            self.emit("device.tamper", state="raised")
            self._later(rng.uniform(20, 120), self._tamper_restored)
        if rng.random() < b.exit_button:
            self.emit("door.exit_button", door=door, reader=0, direction="out")
            self._pass(door, direction)
            return
        if rng.random() < b.granted:
            self.emit("access.granted", door=door, reader=reader, direction=direction, cred_type=cred_type,
                      credential=cred)
            self._pass(door, direction)
        else:
            reason = _pick(rng, DENY_REASONS)
            if reason == "unknown_credential":
                cred = rng.randbytes(4)
            self.emit("access.denied", door=door, reader=reader, direction=direction, cred_type=cred_type,
                      credential=cred, reason=reason)
            if rng.random() < b.reverse_entry * 5:
                self._later(1.0, lambda: self.emit("gate.reverse_entry", door=door, direction=direction))

    def _pass(self, door: int, direction: str, *, tailgate: bool = False) -> None:
        b, rng = self.behaviour, self.rng
        bit = 1 << (door - 1)
        self.locked_mask &= ~bit
        self._later(0.8, lambda: self._door(door, opened=True))
        if rng.random() < b.tailgating or tailgate:
            self._later(2.0, lambda: self.emit("gate.tailgating", door=door, direction=direction))
        if rng.random() < b.reverse_entry:
            other = "out" if direction == "in" else "in"
            self._later(1.5, lambda: self.emit("gate.reverse_entry", door=door, direction=other))
        if rng.random() < b.held_open:
            self._later(31.0, lambda: self.emit("door.held_open", door=door, state="raised"))
            self._later(rng.uniform(35, 90), lambda: self._door(door, opened=False))
        else:
            self._later(rng.uniform(3, 6), lambda: self._door(door, opened=False))

    def _door(self, door: int, *, opened: bool) -> None:
        bit = 1 << (door - 1)
        if opened and not self.open_mask & bit:
            self.open_mask |= bit
            self.emit("door.opened", door=door)
        elif not opened and self.open_mask & bit:
            if door in self.held or self.mode == FIRE_RELEASE:
                return  # propped, forced or released: it stays open until the fault ends
            self.open_mask &= ~bit
            self.locked_mask |= bit
            self.emit("door.closed", door=door)

    def _tamper_restored(self) -> None:
        self.tamper = False
        self.emit("device.tamper", state="cleared")

    # --- faults the simulator injects (device level) -------------------------------------------

    def force_door(self, door: int = 1, *, close_after: float | None = None, hold: bool = False) -> None:
        """Someone forces the door open (no valid credential); `hold`: it stays open until `release()`."""
        self._door(door, opened=True)
        self.emit("door.forced_open", door=door, state="raised")
        if hold:
            self.held.add(door)
        else:
            self._later(close_after or self.rng.uniform(5, 40), lambda: self._door(door, opened=False))

    def prop_open(self, door: int = 1) -> None:
        """A resident badges in and props the door: it stays open and the gate raises held-open."""
        if not self.open_mask & (1 << (door - 1)):
            self.passage(door=door, outcome="granted")
            self._door(door, opened=True)
        self.held.add(door)
        self.emit("door.held_open", door=door, state="raised")

    def release(self, door: int = 1) -> None:
        """A held door is let go and closes (its forced/held alarms clear with the close)."""
        self.held.discard(door)
        self._door(door, opened=False)

    def set_tamper(self, on: bool) -> None:
        """Open (True) or close the enclosure, with no automatic restore."""
        if on != self.tamper:
            self.tamper = on
            self.emit("device.tamper", state="raised" if on else "cleared")

    def fire_release(self, on: bool) -> None:
        """Fire alarm linkage: every door unlocked and held open (mode fire_release) until reset."""
        every = (1 << self.doors) - 1
        if on and self.mode != FIRE_RELEASE:
            self.mode = FIRE_RELEASE
            self.locked_mask = 0
            for door in range(1, self.doors + 1):
                self.emit("door.mode", door=door, state="raised")
                self._door(door, opened=True)
        elif not on and self.mode == FIRE_RELEASE:
            self.mode = 0
            for door in range(1, self.doors + 1):
                self.emit("door.mode", door=door, state="cleared")
                if door not in self.held:
                    self._door(door, opened=False)
            self.locked_mask = every & ~self.open_mask

    def passage(
        self,
        *,
        door: int = 1,
        outcome: str = "granted",
        direction: str = "in",
        cred_type: str | None = None,
        credential: bytes | None = None,
        reason: str | None = None,
        tailgate: bool = False,
    ) -> None:
        """One scripted arrival; unspecified details are drawn from the model's generator."""
        if not 1 <= door <= self.doors:
            raise ValueError(f"door {door} out of range 1..{self.doors}")
        if direction not in ("in", "out"):
            raise ValueError(f"direction must be in or out, not {direction!r}")
        rng = self.rng
        cred_type = cred_type or _pick(rng, CREDENTIALS)
        if cred_type not in self._cred_codes:
            raise ValueError(f"unknown credential type {cred_type!r}; known: {', '.join(sorted(self._cred_codes))}")
        if credential is None:
            credential = rng.choice(self._residents) if cred_type != "pin" else rng.randbytes(2)
        reader = 1 if direction == "in" else 2
        if outcome == "granted":
            self.emit("access.granted", door=door, reader=reader, direction=direction, cred_type=cred_type,
                      credential=credential)
            self._pass(door, direction, tailgate=tailgate)
        elif outcome == "denied":
            reason = reason or _pick(rng, DENY_REASONS)
            if reason not in self._reason_codes:
                raise ValueError(f"unknown deny reason {reason!r}; known: {', '.join(sorted(self._reason_codes))}")
            self.emit("access.denied", door=door, reader=reader, direction=direction, cred_type=cred_type,
                      credential=credential, reason=reason)
        else:
            raise ValueError(f"outcome must be granted or denied, not {outcome!r}")

    def arrivals(self, n: int, interval: float) -> None:
        """Schedule `n` random arrivals `interval` seconds apart (a rush), starting now."""
        for i in range(n):
            self._later(i * interval, self._arrival)

    def tamper_now(self, *, restore_after: float = 60.0) -> None:
        """The enclosure is opened; restored after `restore_after` seconds."""
        if not self.tamper:
            self.tamper = True
            self.emit("device.tamper", state="raised")
            self._later(restore_after, self._tamper_restored)

    def kill_battery(self) -> None:
        """Mains lost and the backup battery nearly flat: the gate is about to go dark."""
        self.mains, self.on_battery, self.battery_pct, self.battery_low = False, True, 3, True
        self.emit("device.ac_lost", state="raised")
        self.emit("device.battery_low", state="raised")

    def restore_power(self) -> None:
        """Mains back; battery recharging."""
        self.mains, self.on_battery, self.battery_pct, self.battery_low = True, False, 40, False
        self.emit("device.ac_lost", state="cleared")
        self.emit("device.battery_low", state="cleared")

    def command(self, cmd: codec.Command) -> None:
        """Apply a command characteristic write and report the result as a record.

        The record's credential is the request id (u16 big-endian); a refusal appends the
        profile's refusal code (`command_refusals`): a door it does not have, `lock` while the
        fire linkage holds the doors open, or anything while `refuse_commands` is set.
        """
        refusal = self._refusal(cmd)
        if refusal is None:
            doors = range(1, self.doors + 1) if cmd.door == 0 else [cmd.door]
            self._hold_epoch += 1
            for d in doors:
                bit = 1 << (d - 1)
                if cmd.op == codec.CMD_OPEN_ONCE:
                    self.locked_mask &= ~bit
                    self._later(cmd.duration_s or 5, functools.partial(self._relock, bit))
                elif cmd.op == codec.CMD_HOLD_OPEN:
                    self.locked_mask &= ~bit
                    self.mode = 1
                    if cmd.duration_s:  # a timed hold: back to normal by itself
                        self._later(cmd.duration_s, functools.partial(self._end_hold, self._hold_epoch))
                elif cmd.op == codec.CMD_LOCK:
                    self.locked_mask |= bit
                    self.mode = 2
                else:
                    self.locked_mask |= bit & ~self.open_mask
                    self.mode = 0
        self.commands.append((cmd, refusal))
        self.emit(
            "command.executed" if refusal is None else "command.refused",
            door=cmd.door if refusal is None else 0,
            cred_type="remote",
            credential=cmd.request_id.to_bytes(2, "big") + (b"" if refusal is None else bytes([refusal])),
        )

    def _refusal(self, cmd: codec.Command) -> int | None:
        codes = {v: k for k, v in load_enumerations().command_refusals.items()}
        if self.refuse_commands is not None:
            return codes[self.refuse_commands]
        if cmd.door > self.doors:
            return codes["bad_door"]
        if self.mode == FIRE_RELEASE and cmd.op in (codec.CMD_LOCK, codec.CMD_NORMAL, codec.CMD_HOLD_OPEN):
            return codes["fire_release"]  # the fire linkage keeps the doors released
        return None

    def _end_hold(self, epoch: int) -> None:
        if epoch == self._hold_epoch and self.mode == 1:
            self.mode = 0
            self.locked_mask = ((1 << self.doors) - 1) & ~self.open_mask

    def _relock(self, bit: int) -> None:
        if self.mode == 0:
            self.locked_mask |= bit

    # --- encoding -----------------------------------------------------------------------------

    def emit(
        self,
        type_: str,
        *,
        state: str = "momentary",
        door: int = 0,
        reader: int = 0,
        direction: str = "unknown",
        cred_type: str = "none",
        credential: bytes = b"",
        reason: str | None = None,
    ) -> codec.Record | None:
        """Record one intent with this gate's code table (None: the table has no code for it)."""
        found = self._code_for(type_, state, reason, cred_type)
        if found is None:
            return None
        code, cred_override = found
        self.seq += 1
        rec = codec.Record(
            history=False,
            seq=self.seq,
            device_time=self.device_time,
            code=code,
            credential_type=self._cred_codes[cred_override or cred_type],
            door=door,
            reader=reader,
            direction={"unknown": 0, "in": 1, "out": 2}[direction],
            reason=self._reason_codes.get(reason or "", 0),
            credential=credential,
        )
        self.history.append(rec)
        self._out.append(rec)
        return rec

    def _code_for(
        self, type_: str, state: str, reason: str | None, cred: str
    ) -> tuple[int, str | None] | None:
        """Best entry for an intent: same type and state, then matching reason, then credential."""
        best: tuple[int, int, str | None] | None = None
        for e in self.table.events:
            if e.type != type_ or e.state != state:
                continue
            score = (2 if e.reason == reason else 0 if e.reason is not None else 1) * 3 + (
                2 if e.credential_type == cred else 0 if e.credential_type is not None else 1
            )
            if best is None or score > best[0]:
                best = (score, e.wire_code, e.credential_type)
        return None if best is None else (best[1], best[2])

    def status(self) -> codec.Status:
        """The status characteristic's current value."""
        flags = (
            (codec.FLAG_TAMPER if self.tamper else 0)
            | (codec.FLAG_MAINS if self.mains else 0)
            | (codec.FLAG_ON_BATTERY if self.on_battery else 0)
            | (codec.FLAG_BATTERY_LOW if self.battery_low else 0)
        )
        return codec.Status(
            doors=self.doors,
            open_mask=self.open_mask,
            locked_mask=self.locked_mask,
            mode=self.mode,
            flags=flags,
            battery_pct=self.battery_pct,
            last_seq=self.seq,
            device_time=self.device_time,
            firmware=self.firmware,
        )


FIRE_RELEASE = 3  # status mode byte (profile.yaml `modes`)


def _pick(rng: random.Random, weighted: tuple[tuple[str, int], ...]) -> str:
    names = [n for n, _ in weighted]
    return rng.choices(names, weights=[w for _, w in weighted])[0]
