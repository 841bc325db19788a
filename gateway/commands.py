"""Commands to devices: one code path, a durable journal, and a result for every request.

Every request (MQTT, the CLI through MQTT, rules and the duty console later) goes through
`CommandService.submit`. It is checked (request shape, device, command, arguments,
allowlist) and either rejected at once or written to the journal as `accepted` before
anything is sent. Then, for each command: `sent` is committed *before* the device is
written, and the outcome (`succeeded`, `failed`, `expired`) comes from what the device
reads back, never from the write itself.

The journal is a table in the outbox's SQLite file, written on the outbox's writer thread
(`Outbox.on_writer`). A restart resumes it: an `accepted` command not yet sent is sent if its
TTL allows, else `expired` (never executed late); a `sent` one without outcome is resolved by
the executor's read-back (`resolve`), never sent twice.

Each state change is a `command.<name>` event (class `command`, priority lane, through the
outbox like every event) and is handed to the result listeners (the MQTT command bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from gateway.driver import EventDraft
from gateway.metrics import Counters
from schemas.command import (
    FINAL_STATES,
    MAX_REQUEST_BYTES,
    NAME_PATTERN,
    CommandPayload,
    CommandRequest,
    CommandResult,
)

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    requester TEXT,
    requested_by TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    accepted_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL,
    device_seq INTEGER,
    response_topic TEXT,
    correlation BLOB
);
CREATE INDEX IF NOT EXISTS commands_accepted ON commands (accepted_ns);
CREATE INDEX IF NOT EXISTS commands_open ON commands (state) WHERE state IN ('accepted', 'sent');
CREATE TABLE IF NOT EXISTS commands_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO commands_meta (key, value) VALUES ('seq_base', abs(random()) % 65535);
"""
_COLUMNS = ("id", "device", "kind", "name", "args", "requester", "requested_by", "state", "reason", "accepted_ns",
            "updated_ns", "expires_ns", "device_seq", "response_topic", "correlation")
#: At start, how long resumed commands wait for the MQTT bus before resolving without it.
RESUME_WAIT_FOR_BUS_S = 5.0
#: Finished commands older than the outbox's `history_days` are purged every this many commands.
PURGE_EVERY = 1000
_NAME_RE = __import__("re").compile(NAME_PATTERN)


class CommandRejected(Exception):
    """A request refused before anything was sent; `reason` is machine-readable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the device said about a command: succeeded or failed, and why."""

    state: str
    reason: str | None


class Executor(Protocol):
    """What a driver offers for its commands (`DriverSpec.extras["commands"]`, built as `Class(config)`)."""

    def names(self) -> frozenset[str]:
        """The commands this device takes."""

    def check(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Normalized arguments, or `CommandRejected`."""

    async def execute(self, name: str, args: dict[str, Any], seq: int, deadline: float) -> Outcome:
        """Send and confirm by read-back, by `deadline` (event-loop time)."""

    async def resolve(self, name: str, args: dict[str, Any], seq: int, deadline: float) -> Outcome:
        """Outcome of a command a previous run sent: read back only, never re-send."""

    async def aclose(self) -> None:
        """Release the link."""


@dataclass(frozen=True, slots=True)
class Command:
    """One journal row."""

    id: str
    device: str
    kind: str
    name: str
    args: dict[str, Any]
    requester: str | None
    requested_by: str | None
    state: str
    reason: str | None
    accepted_ns: int
    updated_ns: int
    expires_ns: int
    device_seq: int | None = None
    response_topic: str | None = None
    correlation: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Command:
        values = dict(zip(_COLUMNS, row, strict=True))
        values["args"] = json.loads(values["args"])
        return cls(**values)

    def row(self) -> tuple[Any, ...]:
        return tuple(json.dumps(self.args, sort_keys=True) if c == "args" else getattr(self, c) for c in _COLUMNS)

    @property
    def latency_ms(self) -> float:
        """From acceptance to the current state."""
        return round((self.updated_ns - self.accepted_ns) / 1e6, 3)

    def result(self, site: str, gateway: str) -> CommandResult:
        """The result message of this state."""
        return CommandResult(
            id=self.id, site=site, gateway=gateway, device=self.device, kind=self.kind, name=self.name,
            state=self.state,
            reason=self.reason, latency_ms=self.latency_ms, requested_by=self.requested_by,
            requester=self.requester, accepted=_iso(self.accepted_ns), time=_iso(self.updated_ns),
            final=self.state in FINAL_STATES,
        )

    def same_request(self, other: Command) -> bool:
        """A repeat of this request (same target, command and arguments), not a reused id."""
        return (self.device, self.kind, self.name, self.args) == (other.device, other.kind, other.name, other.args)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the journal ------------------------------------------------------------------------------


class Journal:
    """The `commands` table, written on the outbox's writer thread."""

    def __init__(self, outbox: Any, *, keep_days: float = 7.0) -> None:
        self.outbox = outbox
        self.keep_ns = int(keep_days * 86400e9)

    async def open(self) -> None:
        await self.outbox.on_writer(lambda db: db.executescript(_SCHEMA))

    async def insert(self, cmd: Command) -> tuple[Command, bool]:
        """(row, created): the stored row for `cmd.id`, new or already there (idempotency)."""
        from gateway.outbox import transaction

        def run(db: sqlite3.Connection) -> tuple[Command, bool]:
            with transaction(db):
                row = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM commands WHERE id=?", (cmd.id,)).fetchone()
                if row is not None:
                    return Command.from_row(row), False
                stored = cmd
                if cmd.state not in FINAL_STATES:
                    # A sequence number the device has not seen lately: consecutive per journal,
                    # from a random base, so a new database does not start where a device's
                    # mailbox still shows another journal's last command.
                    (last,) = db.execute("SELECT MAX(rowid) FROM commands").fetchone()
                    (base,) = db.execute("SELECT value FROM commands_meta WHERE key='seq_base'").fetchone()
                    stored = replace(cmd, device_seq=((base + (last or 0)) % 65535) + 1)
                cur = db.execute(
                    f"INSERT INTO commands ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                    stored.row())
                if (cur.lastrowid or 0) % PURGE_EVERY == 0:
                    self._purge(db)
                return stored, True
        result: tuple[Command, bool] = await self.outbox.on_writer(run)
        return result

    def _purge(self, db: sqlite3.Connection) -> None:
        """Forget finished commands older than the outbox's history (their events stay as long)."""
        db.execute("DELETE FROM commands WHERE updated_ns < ? AND state IN"
                   " ('succeeded', 'failed', 'expired', 'rejected')", (time.time_ns() - self.keep_ns,))

    async def purge(self) -> None:
        """`_purge` in its own transaction (at start)."""
        from gateway.outbox import transaction

        def run(db: sqlite3.Connection) -> None:
            with transaction(db):
                self._purge(db)
        await self.outbox.on_writer(run)

    async def update(self, cmd: Command, state: str, reason: str | None) -> Command:
        """Commit a state change (never out of a final state)."""
        from gateway.outbox import transaction

        new = replace(cmd, state=state, reason=reason, updated_ns=time.time_ns())

        def run(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute("UPDATE commands SET state=?, reason=?, updated_ns=? WHERE id=? AND state NOT IN"
                           " ('succeeded', 'failed', 'expired', 'rejected')",
                           (new.state, new.reason, new.updated_ns, new.id))
        await self.outbox.on_writer(run)
        return new

    async def unfinished(self) -> list[Command]:
        """Commands without an outcome (`accepted`, `sent`), oldest first."""
        def run(db: sqlite3.Connection) -> list[Command]:
            return [Command.from_row(r) for r in db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM commands WHERE state IN ('accepted', 'sent') ORDER BY accepted_ns")]
        result: list[Command] = await self.outbox.on_writer(run)
        return result


def list_journal(path: Path, *, device: str | None = None, state: str | None = None,
                 since_ns: int | None = None, limit: int = 1000) -> list[Command]:
    """The journal, newest last, read-only (`courtyard commands`); empty when there is none yet."""
    from gateway.outbox import connect

    if not path.exists():
        return []
    db = connect(path, readonly=True)
    try:
        where: list[str] = ["1=1"]
        params: list[Any] = []
        if device:
            where.append("device=?")
            params.append(device)
        if state:
            where.append("state=?")
            params.append(state)
        if since_ns is not None:
            where.append("accepted_ns>=?")
            params.append(since_ns)
        try:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM commands WHERE {' AND '.join(where)}"
                              " ORDER BY accepted_ns DESC LIMIT ?", (*params, limit)).fetchall()
        except sqlite3.OperationalError:  # no commands table: this outbox never took a command
            return []
    finally:
        db.close()
    return [Command.from_row(r) for r in reversed(rows)]


# --- the service ------------------------------------------------------------------------------

Listener = Callable[[Command], Awaitable[None]]


class CommandService:
    """Accepts, journals, executes and reports commands for one gateway."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.config = gw.config.commands
        self.site, self.gateway = gw.config.site, gw.config.gateway_id
        self.counters: Counters = gw.counters.child("commands.")
        self.journal = Journal(gw.outbox, keep_days=gw.config.outbox.history_days)
        self.listeners: list[Listener] = []
        self.bus: Any = None  # gateway.command_bus.CommandBus, when MQTT is on
        self._kinds: dict[str, str] = {}
        self._executors: dict[str, Executor | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._events: set[asyncio.Future[None]] = set()  # event appends in flight
        self._factories: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the journal, then resume what a previous run left without an outcome."""
        from gateway import registry

        for dev in self.gw.config.devices:
            with contextlib.suppress(Exception):  # an unknown driver is reported where the device is built
                self._kinds[dev.id] = registry.get(dev.driver).kind
        await self.journal.open()
        await self.journal.purge()
        for cmd in await self.journal.unfinished():
            self._spawn(self._resume(cmd))

    async def stop(self) -> None:
        """Cancel work in progress: a `sent` command stays `sent`, resolved by the next start."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._events, return_exceptions=True)  # their events are committed
        for ex in self._executors.values():
            if ex is not None:
                with contextlib.suppress(Exception):
                    await ex.aclose()

    async def wait_idle(self) -> None:
        """Until every command in progress has an outcome (tests, benches)."""
        while self._tasks or self._events:
            await asyncio.gather(*list(self._tasks), *list(self._events), return_exceptions=True)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters.inc("errors")
            log.error("command task failed: %r", task.exception(), exc_info=task.exception())

    # --- one code path -----------------------------------------------------------------------

    async def submit(self, kind: str, device: str, name: str, body: bytes | Mapping[str, Any], *, requester: str,
                     response_topic: str | None = None, correlation: bytes | None = None) -> Command:
        """Check a request and journal it; returns its first state (`accepted`, or `rejected`),
        or the existing row when the id is known (a repeat gets the existing result). A request
        for a device of another gateway (`reject_unknown_devices: false`) is `ignored`: no result."""
        now = time.time_ns()
        if device not in self._kinds and not self.config.reject_unknown_devices:
            self.counters.inc("ignored_other_device")  # another gateway of this site may run it
            return Command(id=_id_of(body) or "", device=device, kind=kind, name=name, args={}, requester=requester,
                           requested_by=None, state="ignored", reason="other_gateway", accepted_ns=now,
                           updated_ns=now, expires_ns=now)
        self.counters.inc("requests")
        raw_id: str | None = None
        try:
            request = self._parse(body)
            raw_id = request.id
        except CommandRejected as exc:
            raw_id = _id_of(body)
            return await self._reject(raw_id, kind, device, name, {}, requester, None, exc.reason, now,
                                      response_topic, correlation)
        cmd = Command(
            id=request.id, device=device, kind=kind, name=name, args=dict(request.args), requester=requester,
            requested_by=request.requested_by, state="accepted", reason=None, accepted_ns=now, updated_ns=now,
            expires_ns=now + int(request.ttl_s * 1e9), response_topic=response_topic, correlation=correlation,
        )
        try:
            args = self._check(cmd)
        except CommandRejected as exc:
            return await self._reject(cmd.id, kind, device, name, cmd.args, requester, request.requested_by,
                                      exc.reason, now, response_topic, correlation)
        stored, created = await self.journal.insert(replace(cmd, args=args))
        if not created:
            return await self._repeat(stored, replace(cmd, args=args), response_topic, correlation)
        self.counters.inc("accepted")
        await self._report(stored)
        self._spawn(self._run(stored))
        return stored

    def _parse(self, body: bytes | Mapping[str, Any]) -> CommandRequest:
        if isinstance(body, bytes | bytearray):
            if len(body) > MAX_REQUEST_BYTES:
                raise CommandRejected(f"too_large:{len(body)}>{MAX_REQUEST_BYTES}")
            try:
                data = json.loads(body)
            except ValueError:
                raise CommandRejected("bad_json") from None
        else:
            data = dict(body)
        if not isinstance(data, dict):
            raise CommandRejected("bad_request:not_an_object")
        try:
            return CommandRequest.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "request"
            raise CommandRejected(f"bad_request:{where}:{first['type']}") from None

    def _check(self, cmd: Command) -> dict[str, Any]:
        """Device, command, authorization, arguments: the first problem, as a reason."""
        if self._kinds.get(cmd.device) != cmd.kind:
            raise CommandRejected("unknown_device")
        if not _NAME_RE.match(cmd.name):
            raise CommandRejected("unknown_command")
        executor = self._executor(cmd.device)
        if executor is None or cmd.name not in executor.names():
            raise CommandRejected("unknown_command")
        if not self.config.allows(cmd.requester or "", cmd.device, cmd.name):
            raise CommandRejected(f"not_allowed:{cmd.requester}")
        return executor.check(cmd.name, cmd.args)

    def offered(self, device: str) -> frozenset[str]:
        """The commands `device` takes (its executor's names; none without one), for the console."""
        try:
            executor = self._executor(device)
        except Exception:  # an executor that cannot be built offers nothing; submit reports why
            return frozenset()
        return executor.names() if executor is not None else frozenset()

    def _executor(self, device: str) -> Executor | None:
        if device not in self._executors:
            self._executors[device] = self._build_executor(device)
        return self._executors[device]

    def _build_executor(self, device: str) -> Executor | None:
        from gateway import registry

        dev = next((d for d in self.gw.config.devices if d.id == device), None)
        if dev is None or not dev.enabled:
            return None
        ref = registry.get(dev.driver).extras.get("commands")
        if not isinstance(ref, str):
            return None
        module, _, cls = ref.partition(":")
        executor: Executor = getattr(importlib.import_module(module), cls)(dev)
        return executor

    async def _reject(self, cid: str | None, kind: str, device: str, name: str, args: dict[str, Any],
                      requester: str, requested_by: str | None, reason: str, now: int,
                      response_topic: str | None, correlation: bytes | None) -> Command:
        self.counters.inc("rejected")
        self.counters.inc(f"rejected.{reason.split(':', 1)[0]}")
        cmd = Command(id=cid or "", device=device, kind=kind, name=name, args=args, requester=requester,
                      requested_by=requested_by, state="rejected", reason=reason, accepted_ns=now, updated_ns=now,
                      expires_ns=now, response_topic=response_topic, correlation=correlation)
        log.info("command %s %s to %s rejected: %s", name, cid, device, reason)
        if cid and self._kinds.get(device) == kind and _NAME_RE.match(name):
            stored, created = await self.journal.insert(cmd)  # so a repeat gets the same answer
            if not created:
                return await self._repeat(stored, cmd, response_topic, correlation)
            await self._report(stored, event=True)
        else:  # no id to keep it under, or no device to attribute an event to: a result only
            await self._report(cmd, event=False)
        return cmd

    async def _repeat(self, stored: Command, cmd: Command, response_topic: str | None,
                      correlation: bytes | None) -> Command:
        """A known id: the same request gets the existing result; another request is refused."""
        if not stored.same_request(cmd):
            self.counters.inc("rejected")
            self.counters.inc("rejected.duplicate_id")
            clash = replace(cmd, state="rejected", reason="duplicate_id", response_topic=response_topic,
                            correlation=correlation)
            await self._report(clash, event=False)
            return clash
        self.counters.inc("repeats")
        again = replace(stored, response_topic=response_topic, correlation=correlation)
        await self._report(again, event=False)
        return again

    # --- execution ---------------------------------------------------------------------------

    def _device_lock(self, device: str) -> asyncio.Lock:
        """One command at a time per device, in order; the TTL is checked once it is its turn."""
        return self._locks.setdefault(device, asyncio.Lock())

    async def _run(self, cmd: Command) -> None:
        async with self._device_lock(cmd.device):
            if time.time_ns() >= cmd.expires_ns:  # also when it waited behind another command
                await self._finish(cmd, "expired", "ttl_elapsed_before_send")
                return
            executor = self._executor(cmd.device)
            assert executor is not None
            cmd = await self.journal.update(cmd, "sent", None)  # committed before the device sees anything
            await self._report(cmd)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.answer_timeout_s
            try:
                outcome = await executor.execute(cmd.name, cmd.args, cmd.device_seq or 0, deadline)
            except Exception as exc:  # an executor bug: the command failed, and says why
                log.exception("executor of %s failed on %s", cmd.device, cmd.name)
                outcome = Outcome("failed", f"executor_error:{type(exc).__name__}")
            await self._finish(cmd, outcome.state, outcome.reason)

    async def _resume(self, cmd: Command) -> None:
        """A command the previous run left without an outcome."""
        self.counters.inc("resumed")
        if self.bus is not None:  # its results go out on MQTT too, when the broker is there
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.bus.connected.wait(), RESUME_WAIT_FOR_BUS_S)
        if cmd.state == "accepted":  # never sent: send it, unless its TTL ran out meanwhile
            if self._executor(cmd.device) is None:
                await self._finish(cmd, "failed", "device_not_configured_after_restart")
            else:
                await self._run(cmd)
            return
        executor = self._executor(cmd.device)
        if executor is None:
            await self._finish(cmd, "failed", "device_not_configured_after_restart")
            return
        async with self._device_lock(cmd.device):
            deadline = asyncio.get_running_loop().time() + self.config.resume_timeout_s
            try:
                outcome = await executor.resolve(cmd.name, cmd.args, cmd.device_seq or 0, deadline)
            except Exception as exc:
                log.exception("read-back of %s on %s failed", cmd.name, cmd.device)
                outcome = Outcome("failed", f"executor_error:{type(exc).__name__}")
            await self._finish(cmd, outcome.state, outcome.reason)

    async def _finish(self, cmd: Command, state: str, reason: str | None) -> None:
        done = await self.journal.update(cmd, state, reason)
        self.counters.inc(state)
        log.info("command %s %s to %s: %s%s", cmd.name, cmd.id, cmd.device, state, f" ({reason})" if reason else "")
        await self._report(done)

    # --- reporting ---------------------------------------------------------------------------

    async def _report(self, cmd: Command, *, event: bool = True) -> None:
        """An event through the outbox (priority lane), then the result listeners.

        The event's commit is not waited for: the journal, committed already, is the record of
        the command, and its next step should not wait for another fsync. The outbox keeps the
        order of appends, so a command's events keep theirs.
        """
        if event:
            task = asyncio.ensure_future(self._append(cmd))
            self._events.add(task)
            task.add_done_callback(self._events.discard)
        for listener in self.listeners:
            try:
                await listener(cmd)
            except Exception:
                self.counters.inc("result_failures")
                log.debug("result listener failed", exc_info=True)

    async def _append(self, cmd: Command) -> None:
        try:
            await self.gw.outbox.append([self._event(cmd)])
        except Exception:  # the journal holds the state; the result still goes out
            self.counters.inc("event_failures")
            log.exception("command event for %s not committed", cmd.id)

    def _event(self, cmd: Command) -> Any:
        from gateway.runtime import EventFactory, device_ref

        factory = self._factories.get(cmd.device)
        if factory is None:
            dev = next(d for d in self.gw.config.devices if d.id == cmd.device)
            factory = self._factories[cmd.device] = EventFactory(
                site=self.site, gateway=self.gateway, device=device_ref(dev, cmd.kind), simulated=dev.simulated,
                scenario=self.gw.scenario)
        bad = cmd.state in ("failed", "expired", "rejected")
        draft = EventDraft(
            type=f"command.{cmd.name}", cls="command", severity="minor" if bad else "info", state="momentary",
            payload=CommandPayload(command_id=cmd.id, name=cmd.name, command_state=cmd.state,
                                   reason=cmd.reason, latency_ms=cmd.latency_ms, requester=cmd.requester,
                                   args=cmd.args),
        )
        return factory.build(draft, datetime.fromtimestamp(cmd.updated_ns / 1e9, UTC))


def _id_of(body: bytes | Mapping[str, Any]) -> str | None:
    """The id of a request refused for its shape, when it has a usable one (to answer under it)."""
    data: Any = body
    if isinstance(body, bytes | bytearray):
        if len(body) > MAX_REQUEST_BYTES:
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
    cid = data.get("id") if isinstance(data, Mapping) else None
    if isinstance(cid, str) and 0 < len(cid) <= 64 and cid.replace("-", "").replace("_", "").replace(
            ".", "").replace(":", "").isalnum():
        return cid
    return None
