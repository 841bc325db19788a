"""Commands to a plate camera's barrier: `open_barrier`, `close_barrier`.

Two ways, by what the camera offers:

* **Reply channel** (`protocol: zhenshi`): the gateway cannot call the camera; the camera calls
  the gateway. A command waits in the camera's mailbox and rides the reply to its next
  heartbeat or GPIO push (`Response_Heartbeat: {info: opendoor|closedoor, cmdid}`); plate-read
  replies carry their own barrier decision and take no queued command. A command not delivered
  by its deadline is dropped from the mailbox and `failed` (`not_delivered`): it is never
  delivered late. Confirmation comes from the camera: with `gate_input`, the barrier contact
  reporting up (open) or down (close); without it, the camera's next heartbeat or push after
  the delivery (it took the reply and is alive; whether the barrier moved is then not visible).
* **ISAPI** (`barrier:` configured, Hikvision): `PUT .../barrierGate` (`ctrlMode` open/close);
  the camera's ResponseStatus is its answer, then `GET .../barrierGate/barrierGateStatus` or
  the `gate_input` contact confirms. A camera with neither answers `succeeded` with reason
  `acknowledged_only` (the camera said OK; nothing reads the barrier back).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from drivers.http_plate_reader.barrier import BarrierMode, IsapiBarrier, barrier_path
from drivers.http_plate_reader.config import HttpPlateReaderConfig
from gateway.commands import CommandRejected, Outcome

NAMES = frozenset({"open_barrier", "close_barrier"})
#: Reply-channel instruction per command (the heartbeat reply's `info`).
INFO = {"open_barrier": "opendoor", "close_barrier": "closedoor"}
GATE_AFTER = {"open_barrier": "up", "close_barrier": "down"}
POLL_S = 0.02


@dataclass
class Queued:
    """One command waiting in a camera's mailbox, then delivered and waiting for confirmation."""

    seq: int
    name: str
    expires: float  # loop time: never delivered after this
    delivered_at: float | None = None
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)


class ReplyMailbox:
    """Commands for one reply-channel camera; the driver delivers them, the executor waits on them."""

    def __init__(self) -> None:
        self.queue: deque[Queued] = deque()
        self.awaiting: list[Queued] = []
        self.gate_state: Callable[[], str | None] = lambda: None
        self.delivered = 0
        self.dropped_expired = 0
        self.changed = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def put(self, item: Queued) -> None:
        """Queue a command for the next reply."""
        self.queue.append(item)

    def withdraw(self, item: Queued) -> bool:
        """Take back an undelivered command (its deadline passed); False when it went out already."""
        with contextlib.suppress(ValueError):
            self.queue.remove(item)
            return True
        return False

    def seen(self) -> None:
        """The camera spoke again: every delivered command is confirmed as taken."""
        for item in self.awaiting:
            item.confirmed.set()
        self.awaiting.clear()
        self.changed.set()

    def take(self, now: float) -> Queued | None:
        """The command to deliver in this reply: the oldest one still in time (expired ones are dropped)."""
        while self.queue:
            item = self.queue.popleft()
            if now >= item.expires:
                self.dropped_expired += 1
                continue
            item.delivered_at = now
            self.awaiting.append(item)
            self.delivered += 1
            self.changed.set()
            return item
        return None


#: Mailboxes by device id, shared by the camera's driver (delivers) and its command executor.
MAILBOXES: dict[str, ReplyMailbox] = {}


def mailbox(device: str) -> ReplyMailbox:
    """The mailbox of a reply-channel camera (one per event loop: a gateway's run)."""
    box = MAILBOXES.get(device)
    if box is None or box.loop is not asyncio.get_running_loop():
        box = MAILBOXES[device] = ReplyMailbox()
    return box


def reply_instruction(item: Queued) -> dict[str, Any]:
    """What a heartbeat reply carries for a delivered command."""
    return {"Response_Heartbeat": {"info": INFO[item.name], "cmdid": item.seq}}


class PlateReaderCommands:
    """The command executor of one plate camera (`DriverSpec.extras["commands"]`)."""

    def __init__(self, config: HttpPlateReaderConfig) -> None:
        self.cfg = config
        self.way = "reply" if config.protocol == "zhenshi" else "isapi" if config.barrier is not None else None
        self._isapi = IsapiBarrier(config.barrier) if config.barrier is not None and self.way == "isapi" else None

    def names(self) -> frozenset[str]:
        """Barrier commands, for cameras with a reply channel or ISAPI barrier control."""
        return NAMES if self.way else frozenset()

    def check(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Both commands take no arguments."""
        if name not in self.names():
            raise CommandRejected("unknown_command")
        if args:
            raise CommandRejected(f"unexpected_args:{','.join(sorted(args))}")
        return {}

    # --- reply channel -----------------------------------------------------------------------

    async def _by_reply(self, name: str, seq: int, deadline: float) -> Outcome:
        box = mailbox(self.cfg.id)
        item = Queued(seq, name, expires=deadline)
        box.put(item)
        loop = asyncio.get_running_loop()
        while item.delivered_at is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if box.withdraw(item):
                    return Outcome("failed", "not_delivered:no_heartbeat_before_deadline")
                break
            box.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(box.changed.wait(), remaining)
        return await self._confirm_reply(box, item, name, deadline)

    async def _confirm_reply(self, box: ReplyMailbox, item: Queued, name: str, deadline: float) -> Outcome:
        loop = asyncio.get_running_loop()
        if self.cfg.gate_input is not None:  # the barrier's own contact says where it is
            while box.gate_state() != GATE_AFTER[name]:
                if loop.time() >= deadline:
                    return Outcome("failed", "delivered_not_confirmed:gate_input")
                await asyncio.sleep(POLL_S)
            return Outcome("succeeded", None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(item.confirmed.wait(), max(0.0, deadline - loop.time()))
        if item.confirmed.is_set():
            return Outcome("succeeded", None)
        return Outcome("failed", "delivered_not_confirmed:no_heartbeat_after")

    # --- ISAPI -------------------------------------------------------------------------------

    async def _by_isapi(self, name: str, deadline: float) -> Outcome:
        assert self._isapi is not None
        loop = asyncio.get_running_loop()
        mode: BarrierMode = "open" if name == "open_barrier" else "close"
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                failure = await self._isapi.command(mode)
        except TimeoutError:
            return Outcome("failed", "device_timeout")
        if failure is not None:
            if failure.startswith("camera refused: "):
                return Outcome("failed", f"refused:{failure.removeprefix('camera refused: ')}")
            if "Timeout" in failure:
                return Outcome("failed", "device_timeout")
            return Outcome("failed", f"device_unavailable:{failure}")
        if self.cfg.gate_input is not None:
            box = mailbox(self.cfg.id)
            while box.gate_state() != GATE_AFTER[name]:
                if loop.time() >= deadline:
                    return Outcome("failed", "not_confirmed:gate_input")
                await asyncio.sleep(POLL_S)
            return Outcome("succeeded", None)
        state = await self._barrier_status(deadline)
        if state is None:
            return Outcome("succeeded", "acknowledged_only")
        return Outcome("succeeded", None) if state == mode else Outcome("failed", f"not_confirmed:{state}")

    async def _barrier_status(self, deadline: float) -> str | None:
        """`open`/`close` as the camera's barrier status reads, None when it offers none."""
        assert self._isapi is not None and self.cfg.barrier is not None
        session = self._isapi._session
        if session is None:
            return None
        url = self.cfg.barrier.url.rstrip("/") + barrier_path(self.cfg.barrier.channel) + "/barrierGateStatus"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())), session.get(url) as resp:
                data = await resp.content.read(65536)
                if resp.status != 200:
                    return None
        except (TimeoutError, aiohttp.ClientError):
            return None
        text = data.decode(errors="replace")
        for state in ("open", "close"):
            if f"<barrierGateStatus>{state}</barrierGateStatus>" in text:
                return state
        return None

    # --- executor interface ----------------------------------------------------------------

    async def execute(self, name: str, args: dict[str, Any], seq: int, deadline: float) -> Outcome:
        """Deliver by reply or ISAPI, and confirm from the camera (see the module docstring)."""
        if self.way == "reply":
            return await self._by_reply(name, seq, deadline)
        return await self._by_isapi(name, deadline)

    async def resolve(self, name: str, args: dict[str, Any], seq: int, deadline: float) -> Outcome:
        """After a restart: a queued command died with the process (never delivered late); an ISAPI
        one is read back where the camera offers a status, else unconfirmed."""
        if self.way == "isapi" and self._isapi is not None:
            self._isapi._session = self._isapi._session or self._isapi._open_session()
            state = await self._barrier_status(deadline)
            if state == ("open" if name == "open_barrier" else "close"):
                return Outcome("succeeded", None)
        return Outcome("failed", "unconfirmed_after_restart")

    async def aclose(self) -> None:
        """Close the ISAPI session."""
        if self._isapi is not None:
            await self._isapi.aclose()
