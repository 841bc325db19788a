"""Edge linkage rules: committed events in, commands out, every firing journaled.

The engine follows the outbox's committed stream (`Outbox.add_observer`), so a replay and a
restart see the same triggers the platform sees. For each event, in commit order:

* a rule's `when` matches: a trigger. Without `confirm`, the rule fires. With `confirm`, the
  trigger opens a window; its `tentative` actions run at once; once `count` distinct sources
  (further triggers or `confirm.by` events) agree within `within_s`, the other actions run.
  A window that closes unconfirmed runs `undo`.
* the trigger's alarm clears (every alarm of a firing's triggers): `on_clear` runs.
* `mode` decides what a trigger does while the rule's firing is still running (`single`:
  ignored, `restart`: the running one is cancelled, `queued`: waits), and `cooldown_s` keeps a
  rule quiet after it fired.

Every action is a command through `CommandService.submit` (requester `rule:<id>`, authorized
by `commands.allow`). A command id is derived from the firing id (itself derived from the rule
and the trigger event's id), the phase, the action and the device, so a firing resumed after a
crash submits the same ids again, and the command journal answers a repeat with the existing
command, never a second execution. Firings are journaled (table `rule_firings` in the outbox
database) and published as `rule.fired`, `rule.completed` and `rule.failed` (class `event`).

`courtyard rules test` runs the same engine on a fake clock with a sender that only prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import ConfigError, ConfigProblem
from gateway.ids import uuid7
from gateway.metrics import Counters
from schemas.command import FINAL_STATES
from schemas.event import Event
from schemas.rule import (
    LOCATION_FIELDS,
    Action,
    EventMatch,
    LocationMatch,
    Rule,
    RuleActionResult,
    RuleFile,
    RulePayload,
    Target,
)

if TYPE_CHECKING:
    from gateway.config import GatewayConfigBase
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)

_NS = uuid.UUID("5b0f7c1e-2d4e-4c8a-9f1e-6a7d3c2b1e40")  # names firing and command ids
SEVERITY_RANK = {"info": 0, "minor": 1, "major": 2, "critical": 3}
#: Finished firings are forgotten from memory after this long (the journal keeps them).
FORGET_AFTER_S = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_firings (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    scope TEXT NOT NULL,
    state TEXT NOT NULL,
    phase TEXT NOT NULL,
    triggers TEXT NOT NULL,
    alarm_ids TEXT NOT NULL,
    device TEXT NOT NULL,
    results TEXT NOT NULL,
    started_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    clear_done INTEGER NOT NULL DEFAULT 0,
    latency_ms REAL,
    acked_by TEXT,
    acked_ns INTEGER
);
CREATE INDEX IF NOT EXISTS rule_firings_open ON rule_firings (state) WHERE state IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS rule_firings_started ON rule_firings (started_ns);
CREATE TABLE IF NOT EXISTS rules_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
#: How often the receipt time of the last event the rules handled is saved (the catch-up's start).
CHECKPOINT_S = 1.0


def firing_id(rule: str, trigger_event_id: str) -> str:
    """The id of the firing a trigger starts: the same trigger always names the same firing."""
    return str(uuid.uuid5(_NS, f"{rule}/{trigger_event_id}"))


def command_id(firing: str, phase: str, index: int, device: str) -> str:
    """The id of one command of a firing: a resumed firing submits the same ids again."""
    return str(uuid.uuid5(_NS, f"{firing}/{phase}/{index}/{device}"))


# --- loading ---------------------------------------------------------------------------------


def load_rules(config: GatewayConfigBase, *, extra_files: Iterable[Path] = ()) -> list[Rule]:
    """The config's inline rules plus those of its rule files; `ConfigError` (file:line) on problems."""
    from gateway.yamlfile import load_model

    rules: list[Rule] = list(config.rules)
    problems: list[ConfigProblem] = []
    for path in [*config.rule_files, *extra_files]:
        try:
            rules += load_model(RuleFile, Path(path)).rules
        except ConfigError as exc:
            problems += exc.problems
        except OSError as exc:
            problems.append(ConfigProblem(str(path), None, "", f"cannot read: {exc.strerror or exc}"))
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            problems.append(ConfigProblem("<rules>", None, rule.id, "two rules have this id"))
        seen.add(rule.id)
    if problems:
        raise ConfigError(problems)
    return rules


# --- matching --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What targets are selected by: a configured device's kind, location and tags."""

    id: str
    kind: str
    location: dict[str, str]
    tags: frozenset[str] = frozenset()


def _any(patterns: Sequence[str] | None, value: str | None) -> bool:
    return patterns is None or (value is not None and any(fnmatchcase(value, p) for p in patterns))


def _location_ok(match: LocationMatch | None, location: dict[str, str]) -> bool:
    if match is None:
        return True
    return all(_any(getattr(match, f), location.get(f)) for f in LOCATION_FIELDS)


def _location_of(ev: Event) -> dict[str, str]:
    return {k: str(v) for k, v in ev.device.location.model_dump().items() if v is not None}


def matches(m: EventMatch, ev: Event, tags: frozenset[str] = frozenset()) -> bool:
    """Whether committed event `ev` (of a device carrying `tags`) matches `m`."""
    if not _any(m.type, ev.type) or ev.state not in m.state:
        return False
    if m.class_ is not None and ev.class_ not in m.class_:
        return False
    if m.severity is not None and SEVERITY_RANK[ev.severity] < SEVERITY_RANK[m.severity]:
        return False
    if not _any(m.devices, ev.device.id) or not _any(m.kinds, ev.device.kind):
        return False
    if not _location_ok(m.location, _location_of(ev)):
        return False
    if m.tags is not None and not set(m.tags) <= tags:
        return False
    if not m.in_hours(ev.time):
        return False
    if m.payload:
        for key, allowed in m.payload.items():
            value = getattr(ev.payload, key, None)
            if value is None or not any(value == a or str(value) == str(a) for a in allowed):
                return False
    return True


def _scope(rule: Rule, ev: Event) -> str:
    """What keeps one rule's firings apart (modes and cooldown apply per scope)."""
    if rule.per == "rule":
        return rule.id
    if rule.per == "device":
        return f"{rule.id}/{ev.device.id}"
    loc = _location_of(ev)
    return f"{rule.id}/" + "/".join(f"{f}={loc.get(f, '')}" for f in rule.per)


def select(target: Target, devices: Iterable[DeviceInfo], trigger: DeviceInfo) -> list[DeviceInfo]:
    """The devices `target` names, in configuration order."""
    out = []
    for dev in devices:
        if target.trigger and dev.id != trigger.id:
            continue
        if not _any(target.devices, dev.id) or (target.kind is not None and dev.kind != target.kind):
            continue
        if not _location_ok(target.location, dev.location):
            continue
        if any(trigger.location.get(f) is None or dev.location.get(f) != trigger.location.get(f)
               for f in target.same):
            continue
        if target.tags is not None and not set(target.tags) <= dev.tags:
            continue
        out.append(dev)
    return out


# --- sending ---------------------------------------------------------------------------------


class Sender(Protocol):
    """Sends one command and returns its final (state, reason)."""

    async def send(self, kind: str, device: str, name: str, cid: str, args: dict[str, Any], ttl_s: float,
                   requester: str) -> tuple[str, str | None]: ...


class CommandSender:
    """The live sender: `CommandService.submit`, then the command's outcome from its listeners."""

    def __init__(self, commands: Any) -> None:
        self.commands = commands
        self._waiting: dict[str, asyncio.Future[tuple[str, str | None]]] = {}
        commands.listeners.append(self._result)
        #: Called with the command id right after each submit (bench: trigger -> first command sent).
        self.on_submitted: Callable[[str], None] | None = None

    async def _result(self, cmd: Any) -> None:
        fut = self._waiting.get(cmd.id)
        if fut is not None and not fut.done() and cmd.state in FINAL_STATES:
            fut.set_result((cmd.state, cmd.reason))

    async def send(self, kind: str, device: str, name: str, cid: str, args: dict[str, Any], ttl_s: float,
                   requester: str) -> tuple[str, str | None]:
        fut: asyncio.Future[tuple[str, str | None]] = asyncio.get_running_loop().create_future()
        self._waiting[cid] = fut
        try:
            cmd = await self.commands.submit(kind, device, name, {"id": cid, "args": args, "ttl_s": ttl_s,
                                                                  "requested_by": requester}, requester=requester)
            if self.on_submitted is not None:
                self.on_submitted(cid)
            if cmd.state in FINAL_STATES:
                return str(cmd.state), cmd.reason
            # The TTL bounds when it is sent; the answer timeout bounds the device's answer after that.
            wait = ttl_s + float(self.commands.config.answer_timeout_s) + 1.0
            try:
                return await asyncio.wait_for(fut, wait)
            except TimeoutError:
                return "failed", "no_outcome_in_time"
        finally:
            self._waiting.pop(cid, None)


# --- time ------------------------------------------------------------------------------------


class Scheduler(Protocol):
    """Runs a callback at a time of the engine's clock."""

    def at(self, when: datetime, fn: Callable[[], None]) -> Callable[[], None]: ...


class LoopScheduler:
    """Wall-clock timers on the event loop."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self.now = now

    def at(self, when: datetime, fn: Callable[[], None]) -> Callable[[], None]:
        handle = asyncio.get_running_loop().call_later(max(0.0, (when - self.now()).total_seconds()), fn)
        return handle.cancel


class FakeClock:
    """A clock that moves only when told (dry runs), with timers that run when it passes them."""

    def __init__(self, start: datetime) -> None:
        self.time = start
        self._timers: list[tuple[datetime, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self.time

    def at(self, when: datetime, fn: Callable[[], None]) -> Callable[[], None]:
        n = next(self._seq)
        heapq.heappush(self._timers, (when, n, fn))
        return lambda: self._cancelled.add(n)

    def advance(self, to: datetime | None) -> list[Callable[[], None]]:
        """Move to `to` (None: past every timer); the callbacks due, in time order."""
        due = []
        while self._timers and (to is None or self._timers[0][0] <= to):
            when, n, fn = heapq.heappop(self._timers)
            if n in self._cancelled:
                continue
            self.time = max(self.time, when)
            due.append(fn)
        if to is not None:
            self.time = max(self.time, to)
        return due


# --- the engine ------------------------------------------------------------------------------


@dataclass
class Firing:
    """One firing of one rule."""

    id: str
    rule: Rule
    scope: str
    triggers: list[str]
    device: dict[str, Any]  # the trigger device's DeviceRef as JSON (rule events are about it)
    trigger_info: DeviceInfo
    started: datetime
    state: str = "pending"  # pending (awaiting confirmation) | running | completed | failed
    phase: str = "tentative"  # tentative | confirmed | undo | clear | done (on_clear finished)
    alarm_ids: set[str] = field(default_factory=set)
    cleared: set[str] = field(default_factory=set)
    results: list[RuleActionResult] = field(default_factory=list)
    clear_done: bool = False
    confirmed: bool = False
    cancel_timer: Callable[[], None] | None = None
    task: asyncio.Task[None] | None = None
    trigger_perf: float = 0.0  # perf_counter when the trigger was observed (latency)
    first_trigger: Event | None = None
    tentative_ran: bool = False
    latency_ms: float | None = None  # trigger committed -> first command submitted

    def row(self) -> tuple[Any, ...]:
        return (self.id, self.rule.id, self.scope, self.state, self.phase, json.dumps(self.triggers),
                json.dumps(sorted(self.alarm_ids)), json.dumps(self.device),
                json.dumps([r.model_dump() for r in self.results]), int(self.started.timestamp() * 1e9),
                time.time_ns(), int(self.clear_done), self.latency_ms)


@dataclass
class _RuleState:
    window: deque[tuple[datetime, tuple[Any, ...], Event]] = field(default_factory=deque)
    pending: dict[str, Firing] = field(default_factory=dict)  # by scope: awaiting confirmation
    running: dict[str, Firing] = field(default_factory=dict)  # by scope: actions in progress
    queued: dict[str, deque[Event]] = field(default_factory=dict)
    last_start: dict[str, datetime] = field(default_factory=dict)
    by_alarm: dict[str, Firing] = field(default_factory=dict)  # fired, waiting for its alarms to clear
    cleared: deque[str] = field(default_factory=lambda: deque(maxlen=1024))  # recently cleared alarm ids


Emit = Callable[[Event], Awaitable[None]]
Journal = Callable[[Firing], Awaitable[None]]


class RuleEngine:
    """Rules over a stream of committed events (live or, with a `FakeClock`, a dry run)."""

    def __init__(self, rules: Sequence[Rule], devices: Sequence[DeviceInfo], sender: Sender, *,
                 emit: Emit, now: Callable[[], datetime], scheduler: Scheduler, site: str, gateway: str,
                 event_model: Any, journal: Journal | None = None, counters: Counters | None = None,
                 known_firings: set[str] | None = None) -> None:
        self.rules = [r for r in rules if r.enabled]
        self.devices = list(devices)
        self._by_id = {d.id: d for d in self.devices}
        self.sender = sender
        self.emit = emit
        self.now = now
        self.scheduler = scheduler
        self.site = site
        self.gateway = gateway
        self.model = event_model
        self.journal = journal
        self.counters = counters or Counters()
        self.known = known_firings if known_firings is not None else set()  # journaled: never started twice
        self._state = {r.id: _RuleState() for r in self.rules}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Observed-at perf_counter of each event id (for trigger -> command latency).
        self.observed: dict[str, float] = {}
        #: (firing id, command id, perf_counter at submit) of every command sent (bench figures).
        self.sent_log: deque[tuple[str, float, float]] = deque(maxlen=10000)

    # --- the stream ------------------------------------------------------------------------

    async def handle(self, ev: Event) -> None:
        """One committed event, in commit order."""
        if ev.type.startswith("rule."):
            return  # rules do not fire on rule events (no loops)
        tags = self._by_id[ev.device.id].tags if ev.device.id in self._by_id else frozenset()
        for rule in self.rules:
            try:
                await self._handle_rule(rule, ev, tags)
            except Exception:
                self.counters.inc("errors")
                log.exception("rule %s failed on event %s", rule.id, ev.id)

    async def _handle_rule(self, rule: Rule, ev: Event, tags: frozenset[str]) -> None:
        st = self._state[rule.id]
        if ev.state == "cleared" and ev.alarm_id is not None:
            self._cleared(rule, st, ev.alarm_id)
        trigger = any(matches(m, ev, tags) for m in rule.when)
        scope = _scope(rule, ev)
        if rule.confirm is None:
            if trigger:
                self.counters.inc("triggers")
                self._admit(rule, st, scope, ev, confirmed=True)
            return
        confirming = trigger or any(matches(m, ev, tags) for m in rule.confirm.by)
        if not confirming:
            return
        now = self.now()
        st.window.append((now, self._source_key(rule, ev), ev))
        horizon = now - timedelta(seconds=rule.confirm.within_s)
        while st.window and st.window[0][0] < horizon:
            st.window.popleft()
        if trigger:
            self.counters.inc("triggers")
            if scope not in st.pending:
                self._admit(rule, st, scope, ev, confirmed=False)
        for firing in list(st.pending.values()):
            if not firing.confirmed and self._confirmed(rule, st, firing):
                self._confirm(rule, st, firing)

    def _source_key(self, rule: Rule, ev: Event) -> tuple[Any, ...]:
        assert rule.confirm is not None
        parts = {"device": ev.device.id, "type": ev.type, "channel": getattr(ev.payload, "channel", None)}
        return tuple(parts[d] for d in rule.confirm.distinct)

    def _confirmed(self, rule: Rule, st: _RuleState, firing: Firing) -> bool:
        assert rule.confirm is not None
        start = firing.started - timedelta(seconds=rule.confirm.within_s)
        keys = set()
        for when, key, ev in st.window:
            if when < start:
                continue
            loc = _location_of(ev)
            if any(loc.get(f) != firing.trigger_info.location.get(f) for f in rule.confirm.same):
                continue
            keys.add(key)
        return len(keys) >= rule.confirm.count

    # --- starting, modes, cooldown ---------------------------------------------------------

    def _admit(self, rule: Rule, st: _RuleState, scope: str, ev: Event, *, confirmed: bool) -> None:
        fid = firing_id(rule.id, ev.id)
        if fid in self.known:
            return  # journaled already (a restart's catch-up sees its trigger again)
        now = self.now()
        last = st.last_start.get(scope)
        if rule.cooldown_s and last is not None and (now - last).total_seconds() < rule.cooldown_s:
            self.counters.inc("cooldown_skips")
            return
        busy = st.running.get(scope) or st.pending.get(scope)
        if busy is not None:
            if rule.mode == "single":
                self.counters.inc("single_skips")
                return
            if rule.mode == "queued":
                q = st.queued.setdefault(scope, deque())
                if len(q) >= rule.max_queued:
                    self.counters.inc("queue_full")
                    return
                q.append(ev)
                self.counters.inc("queued")
                return
            self._cancel(st, busy, "restarted")  # restart
        self._start(rule, st, scope, ev, fid, confirmed=confirmed)

    def _start(self, rule: Rule, st: _RuleState, scope: str, ev: Event, fid: str, *, confirmed: bool) -> None:
        info = self._by_id.get(ev.device.id) or DeviceInfo(ev.device.id, ev.device.kind, _location_of(ev))
        firing = Firing(id=fid, rule=rule, scope=scope, triggers=[ev.id], device=ev.device.model_dump(mode="json"),
                        trigger_info=info, started=self.now(), trigger_perf=self.observed.get(ev.id, 0.0),
                        first_trigger=ev)
        if ev.alarm_id is not None and ev.state == "raised":
            firing.alarm_ids.add(ev.alarm_id)
        self.known.add(fid)
        tentative = any(a.tentative for a in rule.do)
        if confirmed or tentative:  # it acts now: a firing (an unconfirmed trigger alone is not)
            st.last_start[scope] = firing.started
            self.counters.inc("firings")
        if confirmed:
            firing.confirmed = True
            firing.phase = "confirmed"
            st.running[scope] = firing
            self._spawn(self._run_confirmed(st, firing), firing)
            return
        st.pending[scope] = firing
        assert rule.confirm is not None
        due = firing.started + timedelta(seconds=rule.confirm.within_s)
        firing.cancel_timer = self.scheduler.at(due, self._timeout(st, firing))
        if any(a.tentative for a in rule.do):
            firing.state = "running"
            self._spawn(self._run_tentative(firing), firing)
        if self._confirmed(rule, st, firing):  # confirmations may have come before the trigger
            self._confirm(rule, st, firing)

    def _confirm(self, rule: Rule, st: _RuleState, firing: Firing) -> None:
        firing.confirmed = True
        if firing.cancel_timer is not None:
            firing.cancel_timer()
        st.pending.pop(firing.scope, None)
        st.running[firing.scope] = firing
        self.counters.inc("confirmed")
        if not any(a.tentative for a in rule.do):  # it acts only now
            st.last_start[firing.scope] = self.now()
            self.counters.inc("firings")
        # The sources that confirmed it are triggers of the firing too (their ids, their alarms).
        assert rule.confirm is not None
        since = firing.started - timedelta(seconds=rule.confirm.within_s)
        for when, _, ev in st.window:
            if when >= since and ev.id not in firing.triggers:
                firing.triggers.append(ev.id)
                # on_clear waits for the alarms still open; one that came and went counted, and is done
                if (ev.alarm_id is not None and ev.state == "raised" and ev.alarm_id not in st.cleared
                        and any(matches(m, ev) for m in rule.when)):
                    firing.alarm_ids.add(ev.alarm_id)
        previous = firing.task
        self._spawn(self._run_confirmed(st, firing, after=previous), firing)

    def _cancel(self, st: _RuleState, firing: Firing, reason: str) -> None:
        if firing.cancel_timer is not None:
            firing.cancel_timer()
        if firing.task is not None:
            firing.task.cancel()
        st.pending.pop(firing.scope, None)
        st.running.pop(firing.scope, None)
        firing.state = "failed"
        self.counters.inc("restarted")
        self._spawn(self._finish_event(firing, "rule.failed", reason), None)

    def _cleared(self, rule: Rule, st: _RuleState, alarm_id: str) -> None:
        st.cleared.append(alarm_id)
        firing = st.by_alarm.get(alarm_id)
        if firing is None:
            for f in st.pending.values():  # a tentative firing whose trigger is gone: undo now
                if alarm_id in f.alarm_ids and not f.confirmed:
                    f.cleared.add(alarm_id)
                    if f.cleared >= f.alarm_ids:
                        if f.cancel_timer is not None:
                            f.cancel_timer()
                        self._spawn(self._unconfirmed(st, f, reason="cleared_before_confirmation"), None)
                    return
            for f in st.running.values():  # still acting: remember, run on_clear once done
                if alarm_id in f.alarm_ids:
                    f.cleared.add(alarm_id)
            return
        firing.cleared.add(alarm_id)
        if firing.cleared >= firing.alarm_ids and not firing.clear_done:
            for aid in firing.alarm_ids:
                st.by_alarm.pop(aid, None)
            firing.clear_done = True
            self._spawn(self._run_clear(firing), None)

    # --- phases ----------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], firing: Firing | None) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        if firing is not None:
            firing.task = task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters.inc("errors")
            log.error("rule task failed: %r", task.exception(), exc_info=task.exception())

    async def idle(self) -> None:
        """Until every firing in progress has done what it can (tests, dry runs)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run_tentative(self, firing: Firing) -> None:
        await self._save(firing)
        await self._rule_event(firing, "rule.fired", "tentative")
        firing.tentative_ran = True
        actions = [(i, a) for i, a in enumerate(firing.rule.do) if a.tentative]
        await self._act(firing, "do", actions)
        await self._save(firing)

    async def _run_confirmed(self, st: _RuleState, firing: Firing, after: asyncio.Task[None] | None = None) -> None:
        if after is not None and not after.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(after)
        firing.state, firing.phase = "running", "confirmed"
        await self._save(firing)
        await self._rule_event(firing, "rule.fired", "confirmed")
        # Tentative actions ran at the trigger already (a resumed firing repeats them: same ids).
        actions = [(i, a) for i, a in enumerate(firing.rule.do) if not (a.tentative and firing.tentative_ran)]
        await self._act(firing, "do", actions)
        ok = all(r.state == "succeeded" for r in firing.results if r.phase == "do")
        firing.state = "completed" if ok else "failed"
        if firing.rule.on_clear and firing.alarm_ids:
            if firing.cleared >= firing.alarm_ids:  # cleared while acting
                firing.clear_done = True
                self._spawn(self._run_clear(firing), None)
            else:
                for aid in firing.alarm_ids:
                    st.by_alarm[aid] = firing
        await self._save(firing)
        await self._finish_event(firing, "rule.completed" if ok else "rule.failed", None if ok else "actions_failed")
        st.running.pop(firing.scope, None)
        self._next_queued(firing.rule, st, firing.scope)

    async def _unconfirmed(self, st: _RuleState, firing: Firing, reason: str = "not_confirmed") -> None:
        if firing.confirmed or st.pending.get(firing.scope) is not firing:
            return
        st.pending.pop(firing.scope, None)
        self.counters.inc("unconfirmed")
        tentative = any(a.tentative for a in firing.rule.do)
        if not tentative:  # nothing was done: an unconfirmed trigger is not a firing (not journaled)
            firing.state = "failed"
            self._next_queued(firing.rule, st, firing.scope)
            return
        if firing.task is not None and not firing.task.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(firing.task)
        firing.phase = "undo"
        await self._act(firing, "undo", list(enumerate(firing.rule.undo)))
        firing.state = "failed"
        await self._save(firing)
        await self._finish_event(firing, "rule.failed", reason, phase="undo")
        self._next_queued(firing.rule, st, firing.scope)

    async def _run_clear(self, firing: Firing) -> None:
        firing.phase = "clear"
        await self._save(firing)
        await self._act(firing, "clear", list(enumerate(firing.rule.on_clear)))
        ok = all(r.state == "succeeded" for r in firing.results if r.phase == "clear")
        firing.phase = "done"  # nothing is left to resume
        await self._save(firing)
        await self._finish_event(firing, "rule.completed" if ok else "rule.failed",
                                 None if ok else "clear_actions_failed", phase="clear")

    def _next_queued(self, rule: Rule, st: _RuleState, scope: str) -> None:
        q = st.queued.get(scope)
        while q:
            ev = q.popleft()
            fid = firing_id(rule.id, ev.id)
            if fid not in self.known:
                self._start(rule, st, scope, ev, fid, confirmed=rule.confirm is None)
                return

    async def _act(self, firing: Firing, phase: str, actions: Sequence[tuple[int, Action]]) -> None:
        """Every command of these actions, concurrently; their outcomes into `firing.results`."""
        sends = []
        for index, action in actions:
            targets = select(action.to, self.devices, firing.trigger_info)
            if not targets:
                self.counters.inc("no_targets")
                log.warning("rule %s: action %s selects no device", firing.rule.id, action.command)
            for dev in targets:
                sends.append(self._send(firing, phase, index, action, dev))
        if sends:
            await asyncio.gather(*sends)

    async def _send(self, firing: Firing, phase: str, index: int, action: Action, dev: DeviceInfo) -> None:
        cid = command_id(firing.id, phase, index, dev.id)
        now = time.perf_counter()
        self.sent_log.append((firing.id, firing.trigger_perf, now))
        if firing.latency_ms is None and firing.trigger_perf:
            firing.latency_ms = round((now - firing.trigger_perf) * 1000, 3)
        try:
            state, reason = await self.sender.send(dev.kind, dev.id, action.command, cid, dict(action.args),
                                                   action.timeout_s, f"rule:{firing.rule.id}")
        except Exception as exc:
            log.exception("rule %s: sending %s to %s failed", firing.rule.id, action.command, dev.id)
            state, reason = "failed", f"send_error:{type(exc).__name__}"
        self.counters.inc(f"actions.{state}")
        firing.results.append(RuleActionResult(phase=phase, device=dev.id, command=action.command,
                                               command_id=cid, state=state, reason=reason))

    # --- journal and events ----------------------------------------------------------------

    async def _save(self, firing: Firing) -> None:
        if self.journal is not None:
            try:
                await self.journal(firing)
            except Exception:
                self.counters.inc("journal_failures")
                log.exception("rule firing %s not journaled", firing.id)

    async def _finish_event(self, firing: Firing, type_: str, reason: str | None, *, phase: str | None = None) -> None:
        await self._rule_event(firing, type_, phase or ("confirmed" if firing.confirmed else "tentative"),
                               reason=reason)

    async def _rule_event(self, firing: Firing, type_: str, phase: str, *, reason: str | None = None) -> None:
        now = self.now()
        latency = (time.perf_counter() - firing.trigger_perf) * 1000 if firing.trigger_perf else None
        payload = RulePayload(rule=firing.rule.id, firing_id=firing.id, phase=phase,
                              triggers=list(firing.triggers), actions=list(firing.results),
                              latency_ms=round(latency, 3) if latency is not None else None, reason=reason)
        trigger = firing.first_trigger
        event = self.model.model_validate({
            "id": uuid7(), "time": now, "received": now, "site": self.site, "gateway": self.gateway,
            "device": firing.device, "class": "event", "type": type_,
            "severity": "minor" if type_ == "rule.failed" else "info", "state": "momentary",
            "simulated": trigger.simulated if trigger is not None else False,
            "scenario": trigger.scenario if trigger is not None else None, "payload": payload,
        })
        self.counters.inc(type_)
        try:
            await self.emit(event)
        except Exception:
            self.counters.inc("event_failures")
            log.exception("rule event %s not committed", type_)

    # --- restart ---------------------------------------------------------------------------

    def cooldowns(self, starts: Iterable[tuple[str, str, int]]) -> None:
        """When each scope last fired (a previous run's firings): cooldowns go on across a restart."""
        for rule_id, scope, started_ns in starts:
            st = self._state.get(rule_id)
            if st is not None:
                when = datetime.fromtimestamp(started_ns / 1e9, UTC)
                st.last_start[scope] = max(st.last_start.get(scope, when), when)

    def resume(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Take over the firings a previous run journaled and did not finish (and on_clear waits)."""
        rules = {r.id: r for r in self.rules}
        for row in rows:
            (fid, rule_id, scope, state, phase, triggers, alarm_ids, device, results, started_ns, _,
             clear_done) = row
            rule = rules.get(rule_id)
            self.known.add(fid)
            if rule is None:
                continue
            dev = json.loads(device)
            info = self._by_id.get(dev["id"]) or DeviceInfo(dev["id"], dev["kind"], {
                k: str(v) for k, v in (dev.get("location") or {}).items() if v is not None})
            firing = Firing(id=fid, rule=rule, scope=scope, triggers=json.loads(triggers), device=dev,
                            trigger_info=info, started=datetime.fromtimestamp(started_ns / 1e9, UTC), state=state,
                            phase=phase, alarm_ids=set(json.loads(alarm_ids)),
                            results=[RuleActionResult.model_validate(r) for r in json.loads(results)],
                            clear_done=bool(clear_done), confirmed=phase != "tentative")
            st = self._state[rule.id]
            st.last_start[scope] = max(st.last_start.get(scope, firing.started), firing.started)
            self.counters.inc("resumed")
            if state == "running" and phase == "confirmed":
                firing.results = [r for r in firing.results if r.state in FINAL_STATES and r.phase != "do"]
                st.running[scope] = firing
                self._spawn(self._run_confirmed(st, firing), firing)
            elif state in ("pending", "running") and phase == "tentative":
                st.pending[scope] = firing
                assert rule.confirm is not None
                due = firing.started + timedelta(seconds=rule.confirm.within_s)
                firing.cancel_timer = self.scheduler.at(due, self._timeout(st, firing))
                if any(a.tentative for a in rule.do):
                    self._spawn(self._run_tentative(firing), firing)
            elif state == "running" and phase == "undo":
                self._spawn(self._resume_undo(st, firing), firing)
            elif phase == "clear":  # on_clear was under way: again, with the same command ids
                firing.clear_done = True
                self._spawn(self._run_clear(firing), None)
            elif state in ("completed", "failed") and rule.on_clear and not firing.clear_done and firing.alarm_ids:
                for aid in firing.alarm_ids:
                    st.by_alarm[aid] = firing

    def _timeout(self, st: _RuleState, firing: Firing) -> Callable[[], None]:
        return lambda: self._spawn(self._unconfirmed(st, firing), None)

    async def _resume_undo(self, st: _RuleState, firing: Firing) -> None:
        st.pending[firing.scope] = firing
        firing.confirmed = False
        await self._unconfirmed(st, firing)


# --- in the gateway ------------------------------------------------------------------------------


def device_infos(config: GatewayConfigBase) -> list[DeviceInfo]:
    """Targets: every enabled device of the config, with its kind, location and tags."""
    from gateway import registry

    out = []
    for dev in config.devices:
        if not dev.enabled:
            continue
        try:
            kind = registry.get(dev.driver).kind
        except Exception:
            continue
        loc = {k: str(v) for k, v in dev.location.model_dump().items() if v is not None}
        out.append(DeviceInfo(dev.id, kind, loc, frozenset(dev.tags)))
    return out


class _JournalWriter:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def __call__(self, firing: Firing) -> None:
        row = firing.row()

        def write(db: sqlite3.Connection) -> None:
            from gateway.outbox import transaction

            with transaction(db):
                db.execute("INSERT INTO rule_firings (id, rule, scope, state, phase, triggers, alarm_ids, device,"
                           " results, started_ns, updated_ns, clear_done, latency_ms)"
                           " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                           " ON CONFLICT(id) DO UPDATE SET state=excluded.state, phase=excluded.phase,"
                           " triggers=excluded.triggers, alarm_ids=excluded.alarm_ids, results=excluded.results,"
                           " updated_ns=excluded.updated_ns, clear_done=excluded.clear_done,"
                           " latency_ms=coalesce(rule_firings.latency_ms, excluded.latency_ms)", row)
        await self.gw.outbox.on_writer(write)


@dataclass
class _Journaled:
    unfinished: list[tuple[Any, ...]]
    recent: set[str]
    starts: list[tuple[str, str, int]]  # (rule, scope, started_ns) of recent firings: cooldowns go on
    handled_ns: int  # receipt time of the last event the previous run handled


def _open_journal(db: sqlite3.Connection, since_ns: int) -> _Journaled:
    db.executescript(_SCHEMA)
    unfinished = db.execute(
        "SELECT id, rule, scope, state, phase, triggers, alarm_ids, device, results, started_ns, updated_ns,"
        " clear_done FROM rule_firings WHERE state IN ('pending', 'running') OR phase = 'clear'"
        " OR (clear_done = 0 AND alarm_ids != '[]' AND started_ns >= ?)", (since_ns,)).fetchall()
    rows = db.execute("SELECT id, rule, scope, started_ns FROM rule_firings WHERE started_ns >= ?",
                      (since_ns,)).fetchall()
    handled = db.execute("SELECT value FROM rules_meta WHERE key='handled_ns'").fetchone()
    return _Journaled(unfinished, {r[0] for r in rows}, [(r[1], r[2], r[3]) for r in rows],
                      handled[0] if handled else 0)


class RuleService:
    """The rules of one running gateway (`gw.rules`)."""

    #: Committed events this recent are fed through the rules again at start (a trigger
    #: committed just before a crash, whose firing was never journaled); journaled firings are
    #: recognized by their ids and not started again.
    CATCH_UP_S = 30.0
    #: Firings journaled this recently still matter at start (cooldowns, on_clear waits).
    RESUME_HORIZON_S = 24 * 3600.0

    def __init__(self, gw: Gateway, rules: Sequence[Rule]) -> None:
        from gateway import registry

        self.gw = gw
        self.counters = gw.counters.child("rules.")
        self.sender: Sender
        if gw.commands is not None:
            self.sender = CommandSender(gw.commands)
        else:
            self.sender = _NoCommands()
        self.engine = RuleEngine(
            rules, device_infos(gw.config), self.sender, emit=self._emit, now=_utcnow,
            scheduler=LoopScheduler(_utcnow), site=gw.config.site, gateway=gw.config.gateway_id,
            event_model=registry.event_model(), journal=_JournalWriter(gw), counters=self.counters)
        self._queue: asyncio.Queue[Sequence[Event]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._unobserve: Callable[[], None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._acks: set[asyncio.Task[None]] = set()
        self._acked: set[str] = set()
        self._saver: asyncio.Task[None] | None = None
        self._handled_ns = 0
        self._saved_ns = 0

    def _alarm_changed(self, view: Any) -> None:
        if view.acked_by is None or view.alarm_id in self._acked:
            return
        self._acked.add(view.alarm_id)
        task = asyncio.ensure_future(self._record_ack(view.alarm_id, view.acked_by))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _record_ack(self, alarm_id: str, user: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            from gateway.outbox import transaction

            with transaction(db):
                db.execute("UPDATE rule_firings SET acked_by=?, acked_ns=? WHERE acked_by IS NULL AND"
                           " EXISTS (SELECT 1 FROM json_each(rule_firings.alarm_ids) WHERE value=?)",
                           (user, time.time_ns(), alarm_id))
        try:
            await self.gw.outbox.on_writer(write)
        except Exception:
            self.counters.inc("journal_failures")
            log.exception("operator ack of %s not journaled", alarm_id)

    async def start(self) -> None:
        """Journal, resume unfinished firings, catch up on the last seconds, then follow the stream."""
        since = time.time_ns() - int(self.RESUME_HORIZON_S * 1e9)
        journaled: _Journaled = await self.gw.outbox.on_writer(lambda db: _open_journal(db, since))
        unfinished = journaled.unfinished
        self.engine.known |= journaled.recent
        self.engine.cooldowns(journaled.starts)
        self.engine.resume(unfinished)
        self._unobserve = self.gw.outbox.add_observer(self._observe)
        catch_up = await self._recent_events(journaled.handled_ns)
        self._task = asyncio.create_task(self._consume(catch_up), name="rules")
        self._saver = asyncio.create_task(self._checkpoints(), name="rules-checkpoint")
        self._warn_unauthorized()
        if self.gw.alarm_book is not None:  # the journal records who acknowledged a firing's alarm
            self._unsubscribe = self.gw.alarm_book.subscribe(self._alarm_changed)
        log.info("rules: %d active, %d firing(s) resumed", len(self.engine.rules), len(unfinished))

    def _warn_unauthorized(self) -> None:
        allow = self.gw.config.commands
        for rule in self.engine.rules:
            for action in [*rule.do, *rule.undo, *rule.on_clear]:
                for dev in self.engine.devices:
                    if not action.to.same and select(action.to, [dev], dev) and not allow.allows(
                            f"rule:{rule.id}", dev.id, action.command):
                        log.warning("rule %s: commands.allow does not let rule:%s send %s to %s (it will be"
                                    " rejected)", rule.id, rule.id, action.command, dev.id)

    async def _recent_events(self, handled_ns: int) -> list[Event]:
        """Events committed after the last one the previous run handled (at most `CATCH_UP_S` old)."""
        from gateway import registry

        model = registry.event_model()
        horizon = max(time.time_ns() - int(self.CATCH_UP_S * 1e9), handled_ns + 1)

        def read(db: sqlite3.Connection) -> list[str]:
            return [r[0] for r in db.execute("SELECT body FROM events WHERE received_ns >= ? ORDER BY seq",
                                             (horizon,))]
        out = []
        for body in await self.gw.outbox.on_writer(read):
            with contextlib.suppress(Exception):
                out.append(model.model_validate_json(body))
        return out

    async def stop(self) -> None:
        """Stop following; unfinished firings stay journaled and resume at the next start."""
        if self._unobserve is not None:
            self._unobserve()
        if self._unsubscribe is not None:
            self._unsubscribe()
        await asyncio.gather(*self._acks, return_exceptions=True)
        for task in (self._task, self._saver):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._save_checkpoint()
        for task in list(self.engine._tasks):
            task.cancel()
        await asyncio.gather(*self.engine._tasks, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Until every committed event seen so far is handled and every firing has acted (tests)."""
        await self._queue.join()
        await self.engine.idle()

    def _observe(self, events: Sequence[Event]) -> None:
        now = time.perf_counter()
        for ev in events:
            self.engine.observed[ev.id] = now
        if len(self.engine.observed) > 10000:
            self.engine.observed.clear()
        self._queue.put_nowait(events)

    async def _consume(self, catch_up: list[Event]) -> None:
        self.counters.inc("caught_up", len(catch_up))
        for ev in catch_up:
            await self._handle(ev)
        while True:
            events = await self._queue.get()
            try:
                for ev in events:
                    await self._handle(ev)
            finally:
                self._queue.task_done()

    async def _handle(self, ev: Event) -> None:
        await self.engine.handle(ev)
        self._handled_ns = max(self._handled_ns, int(ev.received.timestamp() * 1e9))

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_S)
            await self._save_checkpoint()

    async def _save_checkpoint(self) -> None:
        if self._handled_ns == self._saved_ns:
            return
        value = self._handled_ns

        def write(db: sqlite3.Connection) -> None:
            from gateway.outbox import transaction

            with transaction(db):
                db.execute("INSERT INTO rules_meta (key, value) VALUES ('handled_ns', ?)"
                           " ON CONFLICT(key) DO UPDATE SET value=excluded.value", (value,))
        try:
            await self.gw.outbox.on_writer(write)
            self._saved_ns = value
        except Exception:
            self.counters.inc("journal_failures")
            log.debug("rules checkpoint not saved", exc_info=True)

    async def _emit(self, event: Event) -> None:
        await self.gw.outbox.append([event])


class _NoCommands:
    async def send(self, kind: str, device: str, name: str, cid: str, args: dict[str, Any], ttl_s: float,
                   requester: str) -> tuple[str, str | None]:
        return "rejected", "commands_disabled"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def list_firings(path: Path, *, limit: int = 100) -> list[dict[str, Any]]:
    """The rule journal, newest last (`courtyard rules log`)."""
    from gateway.outbox import connect

    if not path.exists():
        return []
    db = connect(path, readonly=True)
    try:
        try:
            rows = db.execute("SELECT id, rule, scope, state, phase, triggers, results, started_ns, updated_ns,"
                              " latency_ms, acked_by, acked_ns FROM rule_firings ORDER BY started_ns DESC LIMIT ?",
                              (limit,)).fetchall()
        except sqlite3.OperationalError:
            return []
    finally:
        db.close()
    return [{"id": r[0], "rule": r[1], "scope": r[2], "state": r[3], "phase": r[4], "triggers": json.loads(r[5]),
             "results": json.loads(r[6]), "started_ns": r[7], "updated_ns": r[8], "latency_ms": r[9],
             "acked_by": r[10], "acked_ns": r[11]} for r in reversed(rows)]


# --- dry runs (`courtyard rules test`) -----------------------------------------------------------


class DrySender:
    """Sends nothing: prints each command the rules would send and answers `succeeded`."""

    def __init__(self, clock: FakeClock, start: datetime, out: Callable[[str], None]) -> None:
        self.clock = clock
        self.start = start
        self.out = out
        self.sent: list[dict[str, Any]] = []
        self._seen: set[str] = set()

    async def send(self, kind: str, device: str, name: str, cid: str, args: dict[str, Any], ttl_s: float,
                   requester: str) -> tuple[str, str | None]:
        at = (self.clock.now() - self.start).total_seconds()
        repeat = cid in self._seen
        self._seen.add(cid)
        self.sent.append({"at_s": round(at, 3), "requester": requester, "device": device, "kind": kind,
                          "command": name, "args": args, "id": cid, "repeat": repeat})
        args_text = " ".join(f"{k}={v}" for k, v in args.items())
        self.out(f"{at:+9.3f}s  {requester:<28} {name} -> {device} ({kind}){'  ' + args_text if args_text else ''}"
                 f"{'  (repeat: same id)' if repeat else ''}")
        return "succeeded", None


async def dry_run(rules: Sequence[Rule], events: Sequence[Event], devices: Sequence[DeviceInfo], *,
                  out: Callable[[str], None] = print, site: str = "dry-run") -> DrySender:
    """Replay `events` (in order, at their receipt times) through `rules` on a fake clock."""
    from gateway import registry

    start = events[0].received if events else datetime.now(UTC)
    clock = FakeClock(start)
    sender = DrySender(clock, start, out)

    async def emit(event: Event) -> None:
        p: Any = event.payload
        at = (clock.now() - start).total_seconds()
        reason = f"  reason={p.reason}" if getattr(p, "reason", None) else ""
        out(f"{at:+9.3f}s  {event.type:<28} {getattr(p, 'rule', '')} ({getattr(p, 'phase', '')}){reason}")

    engine = RuleEngine(rules, devices, sender, emit=emit, now=clock.now, scheduler=clock, site=site,
                        gateway="dry-run", event_model=registry.event_model())

    async def run_due(to: datetime | None) -> None:
        while True:
            due = clock.advance(to)
            if not due:
                return
            for fn in due:
                fn()
            await engine.idle()

    for ev in events:
        await run_due(ev.received)
        await engine.handle(ev)
        await engine.idle()
    await run_due(None)
    return sender


def read_events(path: Path) -> tuple[list[Event], list[str]]:
    """Events from a JSON-lines file (`courtyard events --json`); problems as `file:line: message`."""
    from gateway import registry

    model = registry.event_model()
    events: list[Event] = []
    problems: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                events.append(model.model_validate_json(line))
            except ValueError as exc:
                problems.append(f"{path}:{n}: not an event: {str(exc).splitlines()[0]}")
    return events, problems


def infos_from_events(events: Iterable[Event]) -> list[DeviceInfo]:
    """Targets known from the events alone (a dry run without a config)."""
    seen: dict[str, DeviceInfo] = {}
    for ev in events:
        seen.setdefault(ev.device.id, DeviceInfo(ev.device.id, ev.device.kind, _location_of(ev)))
    return list(seen.values())
