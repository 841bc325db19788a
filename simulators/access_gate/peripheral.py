"""The gate as a COGP GATT peripheral, independent of how centrals reach it.

`SimulatedGatePeripheral` owns the GATT behaviour (status reads, event notifications, history
requests, commands) and the transport-level faults; a `Central` is whatever carries its
notifications to a client: the in-memory bleak backend (`backend.py`) or a bumble GATT server on
a virtual radio (`bumble_link.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from drivers.ble_access_gate import codec
from simulators.access_gate.model import GateModel

#: (uuid, properties) of the profile's characteristics, in handle order.
CHARACTERISTICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (codec.EVENT_UUID, ("notify",)),
    (codec.STATUS_UUID, ("read", "notify")),
    (codec.HISTORY_UUID, ("read", "write", "notify")),
    (codec.COMMAND_UUID, ("write",)),
)


class Central(Protocol):
    """A connected client as the peripheral sees it."""

    def deliver(self, uuid: str, data: bytes) -> None:
        """Send one notification (dropped if the central did not subscribe)."""

    def link_lost(self) -> None:
        """The peripheral dropped the link (out of range, reset, dead battery)."""


@dataclass
class Faults:
    """Transport faults armed on the peripheral; each counter is consumed by the next records."""

    garble: int = 0  # flip bytes in the next N event notifications
    duplicate: int = 0  # send the next N event notifications twice
    reorder: int = 0  # swap the next N pairs of event notifications (out-of-order seq)
    drop: int = 0  # lose the next N event notifications over the air (gap -> backfill)
    refuse_connections: bool = False  # dead battery / out of range
    silent: bool = False  # hung radio firmware: the link stays up but nothing is sent or answered


class SimulatedGatePeripheral:
    """One simulated gate controller advertising the COGP service."""

    def __init__(self, address: str, model: GateModel, *, name: str | None = None, mtu: int = 185) -> None:
        self.address = address
        self.name = name or f"COGP-{address[-5:].replace(':', '')}"
        self.model = model
        self.mtu = mtu
        self.faults = Faults()
        self.centrals: set[Central] = set()
        self.sent = 0
        self.connections = 0
        self._held: bytes | None = None
        self.answering = asyncio.Event()  # cleared while silent: ATT requests wait on it
        self.answering.set()
        self._task: asyncio.Task[None] | None = None
        self.on_frame: Callable[[str, bytes], None] | None = None  # observer (CLI prints frames)

    # --- GATT ---------------------------------------------------------------------------------

    def attach(self, central: Central) -> None:
        """A central connected; raises ConnectionRefusedError when the gate is dark."""
        if self.faults.refuse_connections:
            raise ConnectionRefusedError(f"{self.address} does not answer")
        self.centrals.add(central)
        self.connections += 1

    def detach(self, central: Central) -> None:
        """A central disconnected."""
        self.centrals.discard(central)

    def read(self, uuid: str) -> bytes:
        """Value of a readable characteristic."""
        if uuid == codec.STATUS_UUID:
            return codec.encode_status(self.model.status())
        if uuid == codec.HISTORY_UUID:
            m = self.model
            first = m.history[0].seq if m.history else m.seq + 1
            return codec.encode_history_end(codec.HistoryEnd(first, m.seq + 1, more=False))
        raise PermissionError(f"{uuid} is not readable")

    def write(self, central: Central, uuid: str, data: bytes) -> None:
        """A write request; history replies are queued as notifications to that central only."""
        if uuid == codec.HISTORY_UUID:
            from_seq, max_count = codec.decode_history_request(data)
            for frame in self.history_frames(from_seq, max_count):
                self._send(central, codec.HISTORY_UUID, frame)
        elif uuid == codec.COMMAND_UUID:
            self.model.command(codec.decode_command(data))
            self.publish()
        else:
            raise PermissionError(f"{uuid} is not writable")

    def history_frames(self, from_seq: int, max_count: int) -> list[bytes]:
        """Frames answering a history request: records with seq >= from_seq, then the end frame."""
        m = self.model
        limit = max_count or 64
        recs = [r for r in m.history if r.seq >= from_seq]
        more = len(recs) > limit
        frames = [codec.encode_record(dataclasses.replace(r, history=True)) for r in recs[:limit]]
        first = m.history[0].seq if m.history else m.seq + 1
        frames.append(codec.encode_history_end(codec.HistoryEnd(first, m.seq + 1, more=more)))
        return frames

    # --- life ---------------------------------------------------------------------------------

    def step(self, seconds: float) -> int:
        """Advance the gate model and notify what it produced; returns how many records."""
        records = self.model.advance(seconds)
        self.publish(records)
        return len(records)

    def publish(self, records: list[codec.Record] | None = None) -> None:
        """Notify records (default: whatever the model produced since the last call), faults applied."""
        if records is None:
            records = self.model.advance(0)
        for rec in records:
            self._notify_event(codec.encode_record(rec))
        if records:
            status = codec.encode_status(self.model.status())
            for c in list(self.centrals):
                self._send(c, codec.STATUS_UUID, status)

    def _notify_event(self, frame: bytes) -> None:
        f = self.faults
        if f.drop:
            f.drop -= 1
            return
        if f.garble:
            f.garble -= 1
            frame = _garble(frame)
        if f.reorder and self._held is None:
            self._held = frame
            return
        frames = [frame]
        if self._held is not None:
            frames.append(self._held)
            self._held = None
            f.reorder -= 1
        if f.duplicate:
            f.duplicate -= 1
            frames.append(frame)
        for fr in frames:
            for c in list(self.centrals):
                self._send(c, codec.EVENT_UUID, fr)

    def _send(self, central: Central, uuid: str, frame: bytes) -> None:
        if self.faults.silent:
            return
        self.sent += 1
        if self.on_frame is not None:
            self.on_frame(uuid, frame)
        central.deliver(uuid, frame)

    # --- transport faults ---------------------------------------------------------------------

    def disconnect_all(self) -> None:
        """Drop every link, as a BLE supervision timeout would."""
        for c in list(self.centrals):
            self.centrals.discard(c)
            c.link_lost()

    def set_silent(self, on: bool) -> None:
        """Hang (True) or recover the radio firmware: a silent gate neither notifies nor answers."""
        self.faults.silent = on
        if on:
            self.answering.clear()
        else:
            self.answering.set()

    def die(self) -> None:
        """Dead battery: report it, then go dark (links dropped, connections refused)."""
        self.model.kill_battery()
        self.publish()
        self.faults.refuse_connections = True
        self.disconnect_all()

    def revive(self) -> None:
        """Power restored: accept connections again."""
        self.faults.refuse_connections = False
        self.model.restore_power()

    # --- real-time driving (CLI, `backend: simulated`) ----------------------------------------

    def start(self, *, speed: float = 1.0, tick: float = 0.1) -> None:
        """Run the model against the wall clock in a background task (`aclose()` stops it)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(speed, tick))

    async def _run(self, speed: float, tick: float) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            self.step((now - last) * speed)
            last = now

    async def aclose(self) -> None:
        """Stop the background model task and drop links."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.disconnect_all()


def _garble(frame: bytes) -> bytes:
    """Corrupt a frame the way a buggy firmware or a bad buffer would (CRC no longer matches)."""
    b = bytearray(frame)
    mid = len(b) // 2
    b[mid] ^= 0x5A
    b[-1] ^= 0xFF
    return bytes(b)
