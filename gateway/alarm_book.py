"""The alarm book: every alarm's lifecycle, and what people do to it (ISA-18.2, OPC UA Part 9).

Decoders raise and clear alarms (gateway/alarms.py); the book follows the *committed* stream
(`Outbox.add_observer`) and keeps, per `alarm_id`, where the alarm is in its lifecycle:

    active_unacked --ack--> active_acked --clear--> closed
          |                                ^
        clear                              |
          v                                |
    cleared_unacked ---------ack-----------+

plus *shelved* (by a person, until a time, with a reason: no escalation meanwhile) and
*latched* (fire and tamper by default: the alarm stays active after its condition cleared, until
a person resets it). Operations (`ack`, `shelve`, `unshelve`, `reset`) come from MQTT
(`{p}/{site}/alarm/{alarm_id}/cmd/{op}`), the CLI and the duty console, all through
`AlarmBook.operate`: authorized like commands (`alarms.lifecycle.allow`), journaled (table
`alarm_ops`), and each transition is an `alarm.<transition>` event (class `alarm`, priority
lane) whose body the MQTT sink keeps as the retained `alarm/{alarm_id}` topic until the alarm
is closed. An alarm not acknowledged within its severity's time raises `alarm.escalated`.

Which alarms the book manages is configuration (`alarms.lifecycle`): by default classes `alarm`
and `fault` of severity major and critical. The others close when their condition clears, as
before (their retained topic is emptied by the clear).

The state is kept in the outbox database (table `alarm_book`, written on the outbox's writer
thread like the command journal), so a restart keeps acknowledgements, shelving and latches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from gateway.ids import uuid7
from gateway.metrics import Counters
from schemas.alarm import ALARM_OPS, MAX_OP_BYTES, AlarmLifecyclePayload, AlarmOpRequest, LifecycleState
from schemas.event import Event

if TYPE_CHECKING:
    from gateway.config import AlarmLifecycleConfig
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)

SEVERITY_ORDER = {"critical": 0, "major": 1, "minor": 2, "info": 3}
#: How often shelving ends and escalation times are checked.
TICK_S = 0.5
LIFECYCLE_KIND = "alarm_lifecycle"
#: Closed alarms are remembered in memory (for `get`) until there are this many records.
MAX_REMEMBERED = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarm_book (
    alarm_id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alarm_book_open ON alarm_book (state) WHERE state != 'closed';
CREATE TABLE IF NOT EXISTS alarm_ops (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ns INTEGER NOT NULL,
    alarm_id TEXT NOT NULL,
    op TEXT NOT NULL,
    user TEXT,
    requester TEXT,
    comment TEXT,
    until_ns INTEGER,
    outcome TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS alarm_ops_alarm ON alarm_ops (alarm_id);
"""


class AlarmOpRejected(Exception):
    """An operation refused; `reason` is machine-readable (`unknown_alarm`, `not_allowed:<who>`, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AlarmView:
    """One alarm as the duty room sees it."""

    alarm_id: str
    device: str
    kind: str
    type: str
    severity: str | None
    state: Literal["active_unacked", "active_acked", "cleared_unacked", "closed"]
    shelved_until: datetime | None
    latched: bool
    raised_at: datetime
    cleared_at: datetime | None
    acked_by: str | None
    comment: str | None
    location: dict[str, str]
    last_event_id: str
    #: Added to the agreed interface: the reason given when shelved, and whether it escalated.
    shelve_reason: str | None = None
    escalated: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping (CLI, console)."""
        out: dict[str, Any] = dict(self.__dict__)
        for key in ("shelved_until", "raised_at", "cleared_at"):
            value = out[key]
            out[key] = value.isoformat() if value is not None else None
        return out


@dataclass
class _Record:
    """The book's own, mutable record of one alarm."""

    alarm_id: str
    device: dict[str, Any]  # the raise's DeviceRef, as JSON (events about it reuse it)
    type: str
    severity: str | None
    raised_at: datetime
    raise_event_id: str
    active: bool = True
    acked: bool = False
    latched: bool = False  # held after its condition cleared until reset (policy, then reset clears it)
    cleared_at: datetime | None = None
    acked_by: str | None = None
    comment: str | None = None
    shelved_until: datetime | None = None
    shelve_reason: str | None = None
    escalated: bool = False
    last_event_id: str = ""
    body: str = ""  # the body the retained topic should hold (the raise, or the last transition)
    simulated: bool = False
    scenario: str | None = None
    cls: str = "alarm"  # the raise's class (alarm, fault, connectivity): its transitions keep it

    @property
    def state(self) -> LifecycleState:
        if self.active or (self.latched and self.cleared_at is not None):
            return "active_acked" if self.acked else "active_unacked"
        return "closed" if self.acked else "cleared_unacked"

    def view(self) -> AlarmView:
        loc = self.device.get("location") or {}
        return AlarmView(
            alarm_id=self.alarm_id, device=str(self.device["id"]), kind=str(self.device["kind"]), type=self.type,
            severity=self.severity, state=self.state, shelved_until=self.shelved_until, latched=self.latched,
            raised_at=self.raised_at, cleared_at=self.cleared_at, acked_by=self.acked_by, comment=self.comment,
            location={k: str(v) for k, v in loc.items() if v is not None}, last_event_id=self.last_event_id,
            shelve_reason=self.shelve_reason, escalated=self.escalated)

    def to_json(self) -> str:
        data = dict(self.__dict__)
        for key in ("raised_at", "cleared_at", "shelved_until"):
            data[key] = data[key].isoformat() if data[key] is not None else None
        data.pop("body")
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str, body: str) -> _Record:
        data = json.loads(text)
        for key in ("raised_at", "cleared_at", "shelved_until"):
            data[key] = datetime.fromisoformat(data[key]) if data[key] is not None else None
        return cls(**data, body=body)


@dataclass
class _Pending:
    """A change to persist and publish, in order."""

    record: _Record
    transition: str | None
    user: str | None = None
    requester: str | None = None
    comment: str | None = None
    op: tuple[str, str | None, str | None, str | None, int | None] | None = None  # journaled operation
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AlarmBook:
    """The lifecycle of every managed alarm of one gateway (`gw.alarm_book`)."""

    def __init__(self, gw: Gateway, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.gw = gw
        self.config: AlarmLifecycleConfig = gw.config.alarms.lifecycle
        self.clock = clock
        self.counters: Counters = gw.counters.child("alarms.")
        self._records: dict[str, _Record] = {}
        self._subscribers: list[Callable[[AlarmView], None]] = []
        self._queue: asyncio.Queue[Sequence[Event]] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._model: Any = None
        self._unobserve: Callable[[], None] | None = None

    # --- the agreed interface ----------------------------------------------------------------

    def active(self) -> list[AlarmView]:
        """Every alarm not closed: most severe first, then oldest first."""
        views = [r.view() for r in self._records.values() if r.state != "closed"]
        return sorted(views, key=lambda v: (SEVERITY_ORDER.get(v.severity or "info", 9), v.raised_at, v.alarm_id))

    def get(self, alarm_id: str) -> AlarmView | None:
        """One alarm, closed ones included while this run remembers them."""
        rec = self._records.get(alarm_id)
        return rec.view() if rec is not None else None

    async def operate(self, alarm_id: str, op: Literal["ack", "shelve", "unshelve", "reset"], *, user: str,
                      requester: str, comment: str | None = None, until: datetime | None = None) -> AlarmView:
        """Apply an operation: the alarm's new view, or `AlarmOpRejected` (journaled either way)."""
        async with self._lock:
            try:
                pending = self._apply(alarm_id, op, user=user, requester=requester, comment=comment, until=until)
            except AlarmOpRejected as exc:
                self.counters.inc("ops_rejected")
                self.counters.inc(f"ops_rejected.{exc.reason.split(':', 1)[0]}")
                if alarm_id in self._records and op in ALARM_OPS:  # a flood of made-up ids writes nothing
                    await self._journal_op(alarm_id, op, user, requester, comment, until, "rejected", exc.reason)
                log.info("alarm %s %s by %s rejected: %s", op, alarm_id, requester, exc.reason)
                raise
            self.counters.inc(f"ops.{op}")
            log.info("alarm %s: %s by %s (%s)", alarm_id, op, user, requester)
            await self._commit(pending)
            return pending.record.view()

    def subscribe(self, fn: Callable[[AlarmView], None]) -> Callable[[], None]:
        """Call `fn(view)` on every change of any alarm (on the event loop); returns unsubscribe."""
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(fn)
        return unsubscribe

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the book, reconcile it with the outbox's open alarms, follow the committed stream."""
        from gateway import registry

        self._model = registry.event_model()
        rows = await self.gw.outbox.on_writer(_load)
        for record_json, body in rows:
            rec = _Record.from_json(record_json, body)
            self._records[rec.alarm_id] = rec
        await self._reconcile()
        self._unobserve = self.gw.outbox.add_observer(self._observe)
        self._tasks.append(asyncio.create_task(self._consume(), name="alarm-book"))
        self._tasks.append(asyncio.create_task(self._tick(), name="alarm-book-timer"))

    async def stop(self) -> None:
        """Stop following; what was committed is kept."""
        if self._unobserve is not None:
            self._unobserve()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def wait_idle(self) -> None:
        """Until every committed event seen so far is in the book (tests)."""
        await self._queue.join()

    async def _reconcile(self) -> None:
        """Alarms the outbox holds open that the book misses (a crash between commit and book), and
        alarms the book holds active that are no longer open (cleared while the book was behind)."""
        model = self._model
        open_ids: set[str] = set()
        for body in await self.gw.outbox.open_alarms():
            try:
                ev = model.model_validate_json(body)
            except ValidationError:
                continue
            if ev.alarm_id is None:
                continue
            open_ids.add(ev.alarm_id)
            if ev.alarm_id not in self._records and self.config.manages(ev.class_, ev.severity):
                async with self._lock:
                    await self._commit(_Pending(self._new_record(ev), None))
        for rec in list(self._records.values()):
            if rec.active and rec.alarm_id not in open_ids:
                async with self._lock:
                    rec.active = False
                    rec.cleared_at = self.clock()
                    await self._commit(_Pending(rec, "closed" if rec.state == "closed" else "cleared"))

    # --- the committed stream ----------------------------------------------------------------

    def _observe(self, events: Sequence[Event]) -> None:
        if any(e.alarm_id is not None and e.state != "momentary" for e in events):
            self._queue.put_nowait(events)

    async def _consume(self) -> None:
        while True:
            events = await self._queue.get()
            try:
                async with self._lock:
                    for ev in events:
                        try:
                            await self._follow(ev)
                        except Exception:  # one odd event must not stop the book
                            self.counters.inc("errors")
                            log.exception("alarm book could not follow %s %s", ev.type, ev.alarm_id)
            finally:
                self._queue.task_done()

    async def _follow(self, ev: Event) -> None:
        if ev.alarm_id is None or getattr(ev.payload, "kind", None) == LIFECYCLE_KIND:
            return
        if not self.config.manages(ev.class_, ev.severity):
            return
        rec = self._records.get(ev.alarm_id)
        if ev.state == "raised":
            if rec is not None and rec.state != "closed":
                return  # a repeated raise (after a failed commit, a restart): one alarm
            await self._commit(_Pending(self._new_record(ev), None))
        elif ev.state == "cleared" and rec is not None and rec.active:
            rec.active = False
            rec.cleared_at = ev.time
            await self._commit(_Pending(rec, "closed" if rec.state == "closed" else "cleared", at=ev.time))

    def _new_record(self, ev: Event) -> _Record:
        return _Record(
            alarm_id=str(ev.alarm_id), device=ev.device.model_dump(mode="json"), type=ev.type, severity=ev.severity,
            raised_at=ev.time, raise_event_id=ev.id, latched=self.config.latches(ev.type), last_event_id=ev.id,
            body=ev.to_json(), simulated=ev.simulated, scenario=ev.scenario, cls=ev.class_)

    # --- operations --------------------------------------------------------------------------

    def _apply(self, alarm_id: str, op: str, *, user: str, requester: str, comment: str | None,
               until: datetime | None) -> _Pending:
        """Check an operation against the alarm's state and apply it in memory."""
        if op not in ALARM_OPS:
            raise AlarmOpRejected("unknown_op")
        rec = self._records.get(alarm_id)
        if rec is None:
            raise AlarmOpRejected("unknown_alarm")
        if not self.config.allows(requester, str(rec.device["id"]), op):
            raise AlarmOpRejected(f"not_allowed:{requester}")
        if comment is not None and len(comment) > 500:
            raise AlarmOpRejected("comment_too_long")
        state = rec.state
        if state == "closed":
            raise AlarmOpRejected("closed")
        now = self.clock()
        until_ns = int(until.timestamp() * 1e9) if until is not None else None
        journal = (op, user, requester, comment, until_ns)
        if op == "ack":
            if rec.acked:
                raise AlarmOpRejected("already_acked")
            rec.acked, rec.acked_by, rec.comment = True, user, comment
            transition = "closed" if rec.state == "closed" else "acked"
        elif op == "shelve":
            if until is None or until.tzinfo is None:
                raise AlarmOpRejected("until_required")
            if until <= now:
                raise AlarmOpRejected("until_in_past")
            if until - now > timedelta(seconds=self.config.max_shelve_s):
                raise AlarmOpRejected(f"until_too_far:max_{self.config.max_shelve_s:.0f}s")
            if not comment:
                raise AlarmOpRejected("reason_required")
            rec.shelved_until, rec.shelve_reason, rec.comment = until, comment, comment
            transition = "shelved"
        elif op == "unshelve":
            if rec.shelved_until is None:
                raise AlarmOpRejected("not_shelved")
            rec.shelved_until, rec.shelve_reason = None, None
            rec.comment = comment or rec.comment
            transition = "unshelved"
        else:  # reset
            if not rec.latched:
                raise AlarmOpRejected("not_latched")
            if rec.active:
                raise AlarmOpRejected("still_active")
            rec.latched = False
            rec.acked = True  # a reset is the last acknowledgement a latched alarm needs
            rec.acked_by = rec.acked_by or user
            rec.comment = comment or rec.comment
            transition = "reset"
        return _Pending(rec, transition, user=user, requester=requester, comment=comment, op=journal, at=now)

    # --- persistence and events --------------------------------------------------------------

    async def _commit(self, p: _Pending) -> None:
        """Persist the record (and the operation), then publish the transition, then tell subscribers."""
        rec = p.record
        self._records[rec.alarm_id] = rec
        event = self._event(p) if p.transition is not None else None
        if event is not None:
            rec.last_event_id = event.id
            rec.body = event.to_json()
        await self.gw.outbox.on_writer(lambda db: _save(db, rec, p.op))
        if event is not None:
            self.counters.inc(f"transitions.{p.transition}")
            try:
                await self.gw.outbox.append([event])
            except Exception:  # the book holds the state; the next transition publishes it
                self.counters.inc("event_failures")
                log.exception("alarm event %s for %s not committed", p.transition, rec.alarm_id)
        if rec.state == "closed" and len(self._records) > MAX_REMEMBERED:
            self._forget_closed()
        view = rec.view()
        for fn in list(self._subscribers):
            try:
                fn(view)
            except Exception:
                self.counters.inc("subscriber_errors")
                log.exception("alarm subscriber failed")

    def _forget_closed(self) -> None:
        """Keep memory bounded: closed alarms are only in the table (and the history) after a while."""
        for aid in [a for a, r in self._records.items() if r.state == "closed"]:
            del self._records[aid]

    def _event(self, p: _Pending) -> Event:
        rec = p.record
        payload = AlarmLifecyclePayload(
            transition=p.transition,
            alarm_type=rec.type, lifecycle_state=rec.state, latched=rec.latched, shelved_until=rec.shelved_until,
            raised_at=rec.raised_at, cleared_at=rec.cleared_at, user=p.user, requester=p.requester,
            comment=p.comment, acked_by=rec.acked_by, raise_event_id=rec.raise_event_id)
        now = self.clock()
        event: Event = self._model.model_validate({
            "id": uuid7(), "time": p.at if p.op is None else now, "received": now, "site": self.gw.config.site,
            "gateway": self.gw.config.gateway_id, "device": rec.device, "class": rec.cls,
            "type": f"alarm.{p.transition}", "severity": rec.severity or "info", "state": "momentary",
            "alarm_id": rec.alarm_id, "simulated": rec.simulated, "scenario": rec.scenario, "payload": payload,
        })
        return event

    async def _journal_op(self, alarm_id: str, op: str, user: str, requester: str, comment: str | None,
                          until: datetime | None, outcome: str, reason: str | None) -> None:
        until_ns = int(until.timestamp() * 1e9) if until is not None else None

        def write(db: sqlite3.Connection) -> None:
            from gateway.outbox import transaction

            with transaction(db):
                _insert_op(db, alarm_id, (op, user, requester, comment, until_ns), outcome, reason)
        with contextlib.suppress(Exception):
            await self.gw.outbox.on_writer(write)

    # --- time: shelving ends, escalation -----------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.check_times()
            except Exception:
                self.counters.inc("errors")
                log.exception("alarm book timer failed")

    async def check_times(self) -> None:
        """End shelving whose time has come; escalate alarms unacknowledged for too long."""
        now = self.clock()
        async with self._lock:
            for rec in list(self._records.values()):
                if rec.state == "closed":
                    continue
                if rec.shelved_until is not None and rec.shelved_until <= now:
                    rec.shelved_until, rec.shelve_reason = None, None
                    await self._commit(_Pending(rec, "unshelved", requester="system", comment="shelving ended",
                                                at=now))
                limit = self.config.escalate_after_s.get(rec.severity or "info")  # type: ignore[call-overload]
                if (limit is not None and not rec.acked and not rec.escalated and rec.shelved_until is None
                        and (now - rec.raised_at).total_seconds() >= limit):
                    rec.escalated = True
                    await self._commit(_Pending(rec, "escalated", requester="system",
                                                comment=f"not acknowledged within {limit:g} s", at=now))

    # --- MQTT operations ---------------------------------------------------------------------

    async def mqtt_operation(self, alarm_id: str, op: str, body: bytes) -> dict[str, Any]:
        """An operation published on `{p}/{site}/alarm/{alarm_id}/cmd/{op}`: the result to publish."""
        self.counters.inc("mqtt_ops")
        result: dict[str, Any] = {"id": None, "alarm_id": alarm_id, "op": op, "ok": False, "reason": None,
                                  "state": None, "time": self.clock().isoformat()}
        try:
            if len(body) > MAX_OP_BYTES:
                raise AlarmOpRejected(f"too_large:{len(body)}>{MAX_OP_BYTES}")
            try:
                data = json.loads(body)
            except ValueError:
                raise AlarmOpRejected("bad_json") from None
            if not isinstance(data, dict):
                raise AlarmOpRejected("bad_request:not_an_object")
            if isinstance(data.get("id"), str) and len(data["id"]) <= 64:
                result["id"] = data["id"]
            try:
                req = AlarmOpRequest.model_validate(data)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where = ".".join(str(x) for x in first["loc"]) or "request"
                raise AlarmOpRejected(f"bad_request:{where}:{first['type']}") from None
            if op not in ALARM_OPS:
                raise AlarmOpRejected("unknown_op")
            view = await self.operate(alarm_id, op, user=req.user, requester=f"mqtt:{req.user}",  # type: ignore[arg-type]
                                      comment=req.comment, until=req.until)
            result.update(ok=True, state=view.state)
        except AlarmOpRejected as exc:
            result["reason"] = exc.reason
            if exc.reason.split(":")[0] in ("too_large", "bad_json", "bad_request", "unknown_op"):
                self.counters.inc("ops_rejected")
                self.counters.inc(f"ops_rejected.{exc.reason.split(':', 1)[0]}")
        return result


def _load(db: sqlite3.Connection) -> list[tuple[str, str]]:
    db.executescript(_SCHEMA)
    return [(r[0], r[1]) for r in db.execute("SELECT record, body FROM alarm_book WHERE state != 'closed'")]


def _save(db: sqlite3.Connection, rec: _Record,
          op: tuple[str, str | None, str | None, str | None, int | None] | None) -> None:
    from gateway.outbox import transaction

    now = time.time_ns()
    with transaction(db):
        db.execute("INSERT INTO alarm_book (alarm_id, device, state, record, body, updated_ns) VALUES (?,?,?,?,?,?)"
                   " ON CONFLICT(alarm_id) DO UPDATE SET state=excluded.state, record=excluded.record,"
                   " body=excluded.body, updated_ns=excluded.updated_ns",
                   (rec.alarm_id, str(rec.device["id"]), rec.state, rec.to_json(), rec.body, now))
        if op is not None:
            _insert_op(db, rec.alarm_id, op, "ok", None)


def _insert_op(db: sqlite3.Connection, alarm_id: str,
               op: tuple[str, str | None, str | None, str | None, int | None], outcome: str,
               reason: str | None) -> None:
    name, user, requester, comment, until_ns = op
    db.execute("INSERT INTO alarm_ops (at_ns, alarm_id, op, user, requester, comment, until_ns, outcome, reason)"
               " VALUES (?,?,?,?,?,?,?,?,?)",
               (time.time_ns(), alarm_id, name, user, requester, comment, until_ns, outcome, reason))


def list_book(path: Any, *, include_closed: bool = False) -> list[AlarmView]:
    """The book, read-only (`courtyard alarms`): not closed alarms, most severe and oldest first."""
    from gateway.outbox import connect

    if not path.exists():
        return []
    db = connect(path, readonly=True)
    try:
        where = "" if include_closed else " WHERE state != 'closed'"
        try:
            rows = db.execute(f"SELECT record, body FROM alarm_book{where}").fetchall()
        except sqlite3.OperationalError:  # no table yet
            return []
    finally:
        db.close()
    views = [_Record.from_json(r, b).view() for r, b in rows]
    return sorted(views, key=lambda v: (SEVERITY_ORDER.get(v.severity or "info", 9), v.raised_at, v.alarm_id))


__all__ = ["AlarmBook", "AlarmOpRejected", "AlarmView", "list_book"]
