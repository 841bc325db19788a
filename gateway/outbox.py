"""The outbox: SQLite in WAL mode, the commit point of every event.

An event is *accepted* once its transaction has committed. Producers' events are gathered
into group commits (many events, one transaction, one fsync), so durability does not cost
throughput. Each sink keeps its own cursor per lane: lane 0 carries alarms, faults,
connectivity and commands, lane 1 status and ordinary events; a sink always drains lane 0
first, so an entrapment overtakes an hour of telemetry backlog. Order is kept per device
within a lane.

The same table is the local history (`courtyard events`): delivered events stay until they
are older than `history_days` or the disk budget needs their room. The budget (`max_events`)
bounds everything except undelivered lane-0 events. At the budget, delivered history goes
first (always reclaimable, also exactly at the budget); then, by policy, the oldest
undelivered lane-1 events of any class are dropped (`outbox.dropped_lane1`) or lane-1
producers wait, at most `wait_s` when they give one (then `OutboxFull`). Lane-0 events are
never dropped and never wait: accepted over budget, each is counted once
(`outbox.over_budget`) and the episode is logged once.

Budget work touches only the rows it frees (index on `(lane, seq)`), so a commit costs the
same at 10k and at 1M stored events. A commit's outcome is its INSERT's: budget or history
maintenance failing afterwards is logged and counted, never reported to the producer.

Beside the exact published JSON body, each row keeps what sinks route and tag by (`alarm_id`,
`state`, `quality`, `time_ns`), so delivery does not parse bodies to find them. An outbox from
an older gateway gains these columns on open, filled from its bodies.

The database folder is created 0700 and the database files are kept 0600 (plates are stored
in clear). A lock file next to the database, held while open, keeps a second gateway off it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

from gateway.errors import OutboxError, OutboxFull
from gateway.files import FILE_MODE, make_private_dirs, make_private_file
from gateway.metrics import Counters
from schemas.common import PRIORITY_CLASSES
from schemas.event import Event, event_time_ns

log = logging.getLogger(__name__)
T = TypeVar("T")

LANES = (0, 1)
#: Most delivered events one history purge deletes per lane; more waits for the next commit.
PURGE_CHUNK = 5000
#: Retry-After suggested to lane-1 producers refused under `block`.
RETRY_AFTER_S = 5.0
#: Longest a sink's advanced cursor stays unsaved when no commit carries it sooner. A cursor
#: that lags after a crash only means redelivery (at least once), never loss.
CURSOR_SAVE_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    lane INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    type TEXT NOT NULL,
    class TEXT NOT NULL,
    body TEXT NOT NULL,
    alarm_id TEXT,
    state TEXT,
    quality TEXT
);
CREATE INDEX IF NOT EXISTS events_lane ON events (lane, seq);
CREATE INDEX IF NOT EXISTS events_received ON events (received_ns);
CREATE TABLE IF NOT EXISTS cursors (
    sink TEXT NOT NULL, lane INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (sink, lane)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    at_ns INTEGER NOT NULL,
    status INTEGER,
    reason TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS open_alarms (alarm_id TEXT PRIMARY KEY, device TEXT NOT NULL, body TEXT NOT NULL);
"""


#: Columns an older outbox lacks: added by `_migrate`, filled from the stored bodies.
_ADDED_COLUMNS = {
    "alarm_id": "json_extract(body, '$.alarm_id')",
    "state": "json_extract(body, '$.state')",
    "quality": "json_extract(body, '$.quality.status')",
}


class Row(NamedTuple):
    """One event as it is inserted: the body plus the facts sinks and the outbox act on."""

    id: str
    lane: int
    time_ns: int
    received_ns: int
    device: str
    kind: str
    type: str
    cls: str
    body: str
    alarm_id: str | None
    state: str | None
    quality: str


@dataclass(frozen=True, slots=True)
class Stored:
    """One committed event as a sink sees it.

    The columns beside `body` let a sink route and tag an event without parsing its JSON
    (retained alarm topics, rejected samples, InfluxDB tags and timestamps).
    """

    seq: int
    lane: int
    device: str
    kind: str
    type: str
    cls: str
    body: str
    id: str
    time_ns: int
    alarm_id: str | None
    state: str | None
    quality: str


class _Pending(NamedTuple):
    """An append waiting for its commit."""

    rows: list[Row]
    fut: asyncio.Future[None]
    events: Sequence[Event]
    due: float  # loop time by which it must be committing (now + linger)


_ROW_COLUMNS = "id, lane, time_ns, received_ns, device, kind, type, class, body, alarm_id, state, quality"
_STORED_COLUMNS = "seq, lane, device, kind, type, class, body, id, time_ns, alarm_id, state, quality"


def lane_of(event_class: str) -> int:
    """Lane 0 for alarms, faults, connectivity and commands; lane 1 for the rest."""
    return 0 if event_class in PRIORITY_CLASSES else 1


def _db_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the outbox database (creating it, private, unless read-only)."""
    if readonly:
        conn = sqlite3.connect(_readonly_uri(path), uri=True, check_same_thread=False)
    else:
        make_private_dirs(path.parent)
        # SQLite gives -wal and -shm the main file's mode, so 0600 here keeps all three private.
        make_private_file(path)
        for extra in _db_files(path)[1:]:
            if extra.exists():
                os.chmod(extra, FILE_MODE)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _readonly_uri(path: Path) -> str:
    """A read-only SQLite URI for `path` (percent-encoded: a `?`, `#` or `%` in a name is kept)."""
    return f"{path.resolve().as_uri()}?mode=ro"


def lock_path(path: Path) -> Path:
    """The lock file that keeps a second gateway off the outbox at `path`."""
    return path.with_name(path.name + ".lock")


def _lock(path: Path) -> int:
    """Hold an exclusive lock next to the database; OutboxError (one line) when another holds it."""
    make_private_dirs(path.parent)
    lock = lock_path(path)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutboxError(f"outbox {path} is in use by another gateway (lock held on {lock})") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class Outbox:
    """Durable, bounded, prioritized event store with one cursor per sink."""

    def __init__(
        self,
        path: Path,
        *,
        sinks: Iterable[str] = (),
        max_events: int = 1_000_000,
        overflow: Literal["drop_oldest_status", "block"] = "drop_oldest_status",
        history_days: float = 7.0,
        synchronous: Literal["full", "normal"] = "full",
        batch_max: int = 2000,
        counters: Counters | None = None,
    ) -> None:
        self.path = path
        self.sinks = tuple(sinks)
        self.max_events = max_events
        self.overflow = overflow
        self.history_ns = int(history_days * 86400e9)
        self.synchronous = synchronous
        self.batch_max = batch_max
        self.counters = counters or Counters()
        self._db: sqlite3.Connection | None = None  # the writer's (its thread's) connection
        self._reader: sqlite3.Connection | None = None  # sinks' fetches, on the event loop
        self._insert_max = 1  # rows per INSERT statement, set from SQLite's variable limit
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._pending: list[_Pending] = []
        self._observers: list[Callable[[Sequence[Event]], None]] = []
        self._wake = asyncio.Event()
        self._new = {sink: asyncio.Event() for sink in self.sinks}
        self._space_waiters: set[asyncio.Future[None]] = set()
        self._reclaiming: asyncio.Future[int] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._count = 0
        self._admitted = 0  # lane-1 rows let through under `block`, not yet committed
        self._freed = 0  # rows deleted so far (budget, purge): lets the writer see room was made
        self._cursors: dict[tuple[str, int], int] = {}  # delivered up to, per sink and lane
        self._saved_cursors: dict[tuple[str, int], int] = {}  # as in the database (writer thread only)
        self._cursors_saved_at = 0.0  # loop time of the last save that the loop asked for
        self._last_history_purge = 0.0
        self._purge_more = False
        self._closing = False
        # One log line per condition, not per commit: the condition now in force, if any.
        self._dropping = False
        self._lane0_over = False
        self._commit_problem: str | None = None
        self._commit_failures = 0
        self._maintenance_problem: str | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the database and start the group-commit writer."""
        await self._run(self._open_sync)
        # Sinks read on the loop's own thread: a query in another thread gives the GIL back at
        # every row, and waited up to 5 ms for it each time while the loop was busy (a 200-row
        # fetch took 400 ms on a busy gateway, 1 ms here). Recent rows are in the page cache;
        # WAL lets this reader run beside the writer's commits without waiting for them. Should
        # it ever find the database locked, it gives up within 250 ms (the loop must not stall)
        # and the sink retries, as after any failed fetch.
        self._reader = connect(self.path, readonly=True)
        self._reader.execute("PRAGMA busy_timeout=250")
        self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")
        for ev in self._new.values():
            ev.set()  # sinks start by draining whatever backlog survived a restart

    def _open_sync(self) -> None:
        self._lock_fd = _lock(self.path)
        db: sqlite3.Connection | None = None
        try:
            db = connect(self.path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            db.executescript(_SCHEMA)
            _migrate(db)
            for extra in _db_files(self.path)[1:]:  # an older gateway may have left them 0644
                if extra.exists():
                    os.chmod(extra, FILE_MODE)
            # Renamed: the budget now drops lane-1 events of any class, not only status.
            with _transaction(db):
                old = db.execute("SELECT value FROM counters WHERE name='outbox.dropped_status'").fetchone()
                if old is not None:
                    db.execute("DELETE FROM counters WHERE name='outbox.dropped_status'")
                    db.execute(
                        "INSERT INTO counters (name, value) VALUES ('outbox.dropped_lane1', ?)"
                        " ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
                        (old[0],),
                    )
        except BaseException:
            if db is not None:
                db.close()
            self._unlock()
            raise
        self._db = db
        most = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(Row._fields)
        self._insert_max = min(512, 1 << (most.bit_length() - 1))
        self._count = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        for sink in self.sinks:
            for lane in LANES:
                row = db.execute("SELECT seq FROM cursors WHERE sink=? AND lane=?", (sink, lane)).fetchone()
                self._cursors[(sink, lane)] = self._saved_cursors[(sink, lane)] = row[0] if row else 0
        for name, value in db.execute("SELECT name, value FROM counters"):
            self.counters.inc(name, value)

    async def close(self) -> None:
        """Commit what is pending, then close; producers still waiting for room get OutboxError."""
        self._closing = True
        self._notify_space()
        self._wake.set()
        if self._writer is not None:
            await self._writer
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await self._run(self._close_sync)
        self._pool.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._db is not None:
            try:
                with _transaction(self._db):
                    self._saved_cursors.update(self._save_cursors(self._db))
            except sqlite3.Error as exc:  # the cursors lag: what they cover is delivered again
                log.warning("outbox: sink cursors not saved at close: %s", exc)
            self._db.close()
            self._db = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- producers -------------------------------------------------------------------------

    @staticmethod
    def row(event: Event) -> Row:
        """The row stored for `event` (body is the exact published JSON)."""
        return Row(
            id=event.id,
            lane=lane_of(event.class_),
            time_ns=event_time_ns(event.time),
            received_ns=event_time_ns(event.received),
            device=event.device.id,
            kind=event.device.kind,
            type=event.type,
            cls=event.class_,
            body=event.to_json(),
            alarm_id=event.alarm_id,
            state=event.state,
            quality=event.quality.status,
        )

    async def append(self, events: Sequence[Event], *, wait_s: float | None = None, linger: float = 0.0) -> None:
        """Commit `events`; returns once they are durable (accepted).

        Under `overflow: block`, a batch of lane-1 events only waits for room: at most `wait_s`
        seconds when given, then `OutboxFull` (push transports answer 503 with Retry-After).
        A batch holding any lane-0 event never waits.

        `linger`: the commit may wait up to this long for other appends to share its
        transaction (many producers each appending a little: a thousand polls a second spread
        over the second). A transaction costs about 0.25 ms of CPU however few its events. Any
        append without linger commits at once, and takes every pending one with it.
        """
        if not events:
            return
        if self._closing:
            raise OutboxError("outbox is closing")
        rows = [self.row(e) for e in events]
        admitted = 0
        if self.overflow == "block" and all(r.lane == 1 for r in rows):
            await self._admit(wait_s)
            admitted = len(rows)
            self._admitted += admitted
        try:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pending.append(_Pending(rows, fut, events, asyncio.get_running_loop().time() + linger))
            self._wake.set()
            await fut
        finally:
            self._admitted -= admitted

    def _full(self) -> bool:
        return self._count + self._admitted >= self.max_events

    async def _admit(self, wait_s: float | None) -> None:
        """Wait until the budget has room for lane-1 events (block policy)."""
        if not self._full():
            return
        loop = asyncio.get_running_loop()
        deadline = None if wait_s is None else loop.time() + wait_s
        blocked = False
        while True:
            if self._closing:
                raise OutboxError("outbox is closing")
            # Registered before reclaiming, so room made meanwhile is not missed.
            waiter: asyncio.Future[None] = loop.create_future()
            self._space_waiters.add(waiter)
            try:
                freed = await self._reclaim()  # delivered history first, even exactly at the budget
                if self._closing:
                    raise OutboxError("outbox is closing")
                if not self._full():
                    return
                if freed:  # room was made, but a concurrent producer took it: reclaim again
                    continue
                if not blocked:
                    blocked = True
                    self.counters.inc("outbox.blocked")
                timeout = None if deadline is None else deadline - loop.time()
                if timeout is not None and timeout <= 0:
                    raise self._refuse()
                try:
                    await asyncio.wait_for(waiter, timeout)
                except TimeoutError:
                    raise self._refuse() from None
            finally:
                self._space_waiters.discard(waiter)

    def _refuse(self) -> OutboxFull:
        self.counters.inc("outbox.refused_full")
        return OutboxFull(
            f"outbox over budget ({self._count} of {self.max_events} events, overflow: block)",
            retry_after_s=RETRY_AFTER_S,
        )

    def _notify_space(self) -> None:
        """Wake every producer waiting for room: it re-checks (and reclaims) itself."""
        for waiter in self._space_waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _reclaim(self) -> int:
        """Free delivered history on the writer thread; concurrent callers share one run."""
        if self._reclaiming is None or self._reclaiming.done():
            self._reclaiming = asyncio.ensure_future(self._run(self._reclaim_sync))
        freed: int = await asyncio.shield(self._reclaiming)
        return freed

    def _reclaim_sync(self) -> int:
        if self._db is None or not self._full():
            return 0
        target = self.max_events - max(1, self.max_events // 100) - self._admitted
        try:
            with _transaction(self._db):
                return self._free_delivered(self._db, self._count - target)
        except Exception as exc:
            self._maintenance_failed(exc)
            return 0

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                delay = min(p.due for p in self._pending) - loop.time()
                if delay > 0 and not self._closing:  # let lingering appends gather; a new one wakes us
                    timer = loop.call_later(delay, self._wake.set)
                    await self._wake.wait()
                    self._wake.clear()
                    timer.cancel()
                    continue
                batch: list[_Pending] = []
                size = 0
                while self._pending and (not batch or size + len(self._pending[0].rows) <= self.batch_max):
                    item = self._pending.pop(0)
                    if item.fut.cancelled():  # its producer gave up before the commit: never accepted
                        continue
                    batch.append(item)
                    size += len(item.rows)
                if not batch:
                    continue
                rows = [r for item in batch for r in item.rows]
                freed = self._freed
                try:
                    await self._run(self._commit_sync, rows)
                except Exception as exc:  # disk full, I/O error: producers see it, nothing half-accepted
                    self._commit_failed(exc)
                    for item in batch:
                        if not item.fut.done():
                            item.fut.set_exception(OutboxError(f"commit failed: {exc}"))
                    continue
                self._commit_succeeded()
                if self._freed != freed:
                    self._notify_space()
                self.counters.inc("outbox.accepted", len(rows))
                for lane in LANES:  # per lane, for /metrics
                    self.counters.inc(f"outbox.accepted.lane{lane}", sum(1 for r in rows if r[1] == lane))
                self._tell_observers(batch)
                for item in batch:
                    if not item.fut.done():
                        item.fut.set_result(None)
                for ev in self._new.values():
                    ev.set()
            if self._closing and not self._pending:
                return

    def add_observer(self, fn: Callable[[Sequence[Event]], None]) -> Callable[[], None]:
        """Call `fn(events)` with every committed batch, in commit order, on the event loop.

        For in-process consumers of the committed stream (rules, the console): they see exactly
        what was accepted, after it is durable. `fn` must not block (hand off to a queue); an
        exception is logged and counted, never turned into a failed commit. Returns a remover.
        """
        self._observers.append(fn)
        return lambda: self._observers.remove(fn) if fn in self._observers else None

    def _tell_observers(self, batch: Sequence[_Pending]) -> None:
        for fn in list(self._observers):
            for events in (item.events for item in batch):
                try:
                    fn(events)
                except Exception:
                    self.counters.inc("outbox.observer_errors")
                    log.exception("an outbox observer failed (the events stay committed)")

    def _commit_sync(self, rows: list[Row]) -> None:
        db = self._require_db()
        with _transaction(db):
            moved = self._save_cursors(db)  # sinks' acks ride along: no transaction (fsync) of their own
            for chunk in _insert_chunks(rows, self._insert_max):
                db.execute(_insert_sql(len(chunk)), [v for r in chunk for v in r])  # Row fields: column order
            # Raised alarms stay listed until cleared, so a restarted gateway can close them.
            for r in rows:
                if r.alarm_id is None:
                    continue
                if r.state == "raised":
                    db.execute("INSERT OR REPLACE INTO open_alarms (alarm_id, device, body) VALUES (?,?,?)",
                               (r.alarm_id, r.device, r.body))
                elif r.state == "cleared":
                    db.execute("DELETE FROM open_alarms WHERE alarm_id=?", (r.alarm_id,))
        self._saved_cursors.update(moved)
        self._count += len(rows)
        # Committed: from here on nothing may turn the outcome into a failure (the producer
        # would retry and duplicate). Maintenance problems are logged and counted instead.
        try:
            self._enforce_budget(lane0=sum(1 for r in rows if r.lane == 0))
            now = time.monotonic()
            if self._purge_more or now - self._last_history_purge > 60:
                self._last_history_purge = now
                self._purge_history()
        except Exception as exc:
            self._maintenance_failed(exc)

    def _commit_failed(self, exc: Exception) -> None:
        """Count every failed commit; log once per condition (a full disk fails every commit)."""
        self.counters.inc("outbox.commit_failures")
        self._commit_failures += 1
        problem = f"{type(exc).__name__}: {exc}"
        if problem != self._commit_problem:
            self._commit_problem = problem
            log.warning("outbox commit failed, events refused: %s (further failures counted as"
                        " outbox.commit_failures)", problem)

    def _commit_succeeded(self) -> None:
        if self._commit_problem is not None:
            log.warning("outbox commits succeed again after %d failures (%s)", self._commit_failures,
                        self._commit_problem)
            self._commit_problem = None
            self._commit_failures = 0

    def _maintenance_failed(self, exc: Exception) -> None:
        """Budget or purge failed after a commit: counted, logged once per condition."""
        self.counters.inc("outbox.maintenance_failures")
        with contextlib.suppress(sqlite3.Error):  # deletions counted in a rolled-back transaction
            self._count = self._require_db().execute("SELECT COUNT(*) FROM events").fetchone()[0]
        problem = f"{type(exc).__name__}: {exc}"
        if problem != self._maintenance_problem:
            self._maintenance_problem = problem
            log.warning("outbox budget/purge failed (committed events are kept): %s", problem)

    # --- budget ----------------------------------------------------------------------------

    def _delivered(self, lane: int) -> int:
        """Highest seq of `lane` that every sink has delivered."""
        if not self.sinks:
            return 1 << 62
        return min(self._cursors[(s, lane)] for s in self.sinks)

    def _enforce_budget(self, lane0: int = 0) -> None:
        """Bring the count back to the budget; `lane0`: lane-0 events the last commit added.

        Cost is proportional to the rows freed, not to the table: every query walks the
        `(lane, seq)` index from its start.
        """
        slack = max(1, self.max_events // 100)  # free 1% more so we do not purge on every commit
        if self._count <= self.max_events:
            if self._count <= self.max_events - slack:  # real room, not just the last drop's
                self._within_budget()
            return
        db = self._require_db()
        with _transaction(db):
            self._free_delivered(db, self._count - self.max_events + slack)
            excess = self._count - self.max_events
            if excess > 0 and self.overflow == "drop_oldest_status":
                seqs = [r[0] for r in db.execute(
                    "SELECT seq FROM events WHERE lane=1 ORDER BY seq LIMIT ?", (excess,))]
                if seqs:
                    self._delete_prefix(db, 1, seqs[-1])
                    self._bump_persisted(db, "outbox.dropped_lane1", len(seqs))
                    if not self._dropping:
                        self._dropping = True
                        log.warning("outbox over budget (%d events): dropping the oldest undelivered lane-1"
                                    " events, counted as outbox.dropped_lane1", self.max_events)
            excess = self._count - self.max_events
            if excess > 0 and lane0:
                self._bump_persisted(db, "outbox.over_budget", min(lane0, excess))
                if not self._lane0_over:
                    self._lane0_over = True
                    log.warning("outbox over budget (%d events) with undelivered alarms, faults, connectivity"
                                " and commands: kept all the same, counted as outbox.over_budget",
                                self.max_events)
        if self._count <= self.max_events - slack:
            self._within_budget()

    def _within_budget(self) -> None:
        if self._dropping or self._lane0_over:
            log.warning("outbox back within its budget (%d of %d events)", self._count, self.max_events)
        self._dropping = self._lane0_over = False

    def _free_delivered(self, db: sqlite3.Connection, n: int) -> int:
        """Delete the `n` oldest delivered events (both lanes); returns how many were deleted."""
        if n <= 0:
            return 0
        candidates = []
        for lane in LANES:
            candidates += [(seq, lane) for (seq,) in db.execute(
                "SELECT seq FROM events WHERE lane=? AND seq<=? ORDER BY seq LIMIT ?",
                (lane, self._delivered(lane), n))]
        chosen = sorted(candidates)[:n]
        freed = 0
        for lane in LANES:
            top = max((seq for seq, ln in chosen if ln == lane), default=None)
            if top is not None:
                freed += self._delete_prefix(db, lane, top)
        return freed

    def _delete_prefix(self, db: sqlite3.Connection, lane: int, top: int) -> int:
        """Delete every event of `lane` up to seq `top` (an index range)."""
        n = db.execute("DELETE FROM events WHERE lane=? AND seq<=?", (lane, top)).rowcount
        self._count -= n
        self._freed += n
        return int(n)

    def _bump_persisted(self, db: sqlite3.Connection, name: str, n: int) -> None:
        db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=value+?",
            (name, n, n),
        )
        self.counters.inc(name, n)

    def _purge_history(self) -> None:
        """Delete delivered events older than `history_days`, oldest first, a bounded chunk per lane."""
        db = self._require_db()
        horizon = time.time_ns() - self.history_ns
        more = False
        with _transaction(db):
            for lane in LANES:
                rows = db.execute(
                    "SELECT seq, received_ns FROM events WHERE lane=? AND seq<=? ORDER BY seq LIMIT ?",
                    (lane, self._delivered(lane), PURGE_CHUNK),
                ).fetchall()
                top = None
                for seq, received_ns in rows:
                    if received_ns >= horizon:
                        break
                    top = seq
                if top is not None:
                    self._delete_prefix(db, lane, top)
                    more = more or (len(rows) == PURGE_CHUNK and top == rows[-1][0])
        self._purge_more = more

    # --- sinks -----------------------------------------------------------------------------

    async def wait_new(self, sink: str, timeout: float | None = None) -> None:
        """Wait until events may be pending for `sink` (or `timeout` passes)."""
        ev = self._new[sink]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)
        ev.clear()

    async def fetch(self, sink: str, limit: int) -> list[Stored]:
        """The next undelivered events for `sink`: lane 0 first, then lane 1, each in seq order."""
        return self._fetch_now(sink, limit)

    def _fetch_now(self, sink: str, limit: int) -> list[Stored]:
        db = self._reader
        if db is None:
            raise OutboxError("outbox is not open")
        out: list[Stored] = []
        for lane in LANES:
            if len(out) >= limit:
                break
            rows = db.execute(
                f"SELECT {_STORED_COLUMNS} FROM events WHERE lane=? AND seq>? ORDER BY seq LIMIT ?",
                (lane, self._cursors[(sink, lane)], limit - len(out)),
            ).fetchall()
            out.extend(Stored(*r) for r in rows)
        return out

    async def ack(self, sink: str, delivered: Sequence[Stored]) -> None:
        """Advance `sink`'s cursors past `delivered` (a prefix of what `fetch` returned).

        The cursor moves at once (fetches, backlog and the budget see it); it is saved with the
        next commit, or here when none came for `CURSOR_SAVE_S`. After a crash a cursor may
        lag by that much, so those events are delivered again: at least once, never lost.
        """
        if not delivered:
            return
        for lane in LANES:
            top = max((s.seq for s in delivered if s.lane == lane), default=0)
            self._cursors[(sink, lane)] = max(self._cursors[(sink, lane)], top)
            # per sink and lane, for /metrics
            self.counters.inc(f"{sink}.delivered.lane{lane}", sum(1 for r in delivered if r.lane == lane))
        now = asyncio.get_running_loop().time()
        if self._count > self.max_events or now - self._cursors_saved_at >= CURSOR_SAVE_S:
            self._cursors_saved_at = now
            await self._run(self._ack_sync)
        self._notify_space()  # delivered history is reclaimable now

    def _ack_sync(self) -> None:
        db = self._require_db()
        with _transaction(db):
            moved = self._save_cursors(db)
        self._saved_cursors.update(moved)
        if self._count > self.max_events:
            try:
                self._enforce_budget()
            except Exception as exc:  # the cursor is saved; room is made on a later commit
                self._maintenance_failed(exc)

    def _save_cursors(self, db: sqlite3.Connection) -> dict[tuple[str, int], int]:
        """Write the cursors that moved since they were last saved, inside the caller's
        transaction; returns them, for `_saved_cursors` once that transaction has committed."""
        moved = {key: seq for key, seq in list(self._cursors.items()) if self._saved_cursors.get(key) != seq}
        for (sink, lane), seq in moved.items():
            db.execute(
                "INSERT INTO cursors (sink, lane, seq) VALUES (?,?,?)"
                " ON CONFLICT(sink, lane) DO UPDATE SET seq=excluded.seq",
                (sink, lane, seq),
            )
        return moved

    async def dead_letter(self, sink: str, status: int | None, reason: str, rows: Sequence[Stored], body: str) -> None:
        """Keep a batch the server rejected, with its reason, and count it."""
        await self._run(self._dead_letter_sync, sink, status, reason, rows, body)

    def _dead_letter_sync(
        self, sink: str, status: int | None, reason: str, rows: Sequence[Stored], body: str
    ) -> None:
        db = self._require_db()
        with _transaction(db):
            db.execute(
                "INSERT INTO dead_letters (sink, at_ns, status, reason, first_seq, last_seq, count, body)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (sink, time.time_ns(), status, reason[:4000], rows[0].seq, rows[-1].seq, len(rows), body),
            )
            self._bump_persisted(db, f"{sink}.dead_lettered", len(rows))

    async def open_alarms(self) -> list[str]:
        """Bodies of alarms raised and not yet cleared (as published)."""
        result: list[str] = await self._run(
            lambda: [r[0] for r in self._require_db().execute("SELECT body FROM open_alarms ORDER BY rowid")])
        return result

    async def book_alarms(self) -> list[str]:
        """Bodies the alarm book keeps retained for alarms not closed (gateway/alarm_book.py)."""
        def read() -> list[str]:
            try:
                return [r[0] for r in self._require_db().execute(
                    "SELECT body FROM alarm_book WHERE state != 'closed' ORDER BY rowid")]
            except sqlite3.OperationalError:  # no alarm book in this database
                return []
        result: list[str] = await self._run(read)
        return result

    # --- inspection ------------------------------------------------------------------------

    async def backlog(self) -> dict[str, int]:
        """Undelivered events per sink."""
        result: dict[str, int] = await self._run(self._backlog_sync)
        return result

    def _backlog_sync(self) -> dict[str, int]:
        db = self._require_db()
        out = {}
        for sink in self.sinks:
            n = 0
            for lane in LANES:
                n += db.execute(
                    "SELECT COUNT(*) FROM events WHERE lane=? AND seq>?", (lane, self._cursors[(sink, lane)])
                ).fetchone()[0]
            out[sink] = n
        return out

    @property
    def problem(self) -> str | None:
        """Why the outbox cannot accept events right now (closed, or the last commit failed), else None."""
        if self._db is None:
            return "outbox not open"
        return self._commit_problem

    @property
    def count(self) -> int:
        """Events stored (history plus backlog)."""
        return self._count

    def _require_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    # --- retained-topic reconciliation (MQTT) ----------------------------------------------

    async def known_devices(self) -> set[tuple[str, str]]:
        """(gateway, device) of every device the stored events name, from its latest event.

        One scan of the table (no index on device; 0.65 s at 1M events), meant for a sink's
        first connect: on its own read-only connection and thread (WAL), so commits go on.
        """
        self._require_db()

        def scan() -> set[tuple[str, str]]:
            db = connect(self.path, readonly=True)
            try:
                rows = db.execute(
                    "SELECT device, json_extract(body, '$.gateway') FROM events"
                    " WHERE seq IN (SELECT MAX(seq) FROM events GROUP BY device)").fetchall()
            finally:
                db.close()
            return {(str(gw), str(dev)) for dev, gw in rows}
        return await asyncio.to_thread(scan)

    # --- other modules' tables (e.g. the command journal) ------------------------------------

    async def on_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the writer thread, between commits: one connection, one writer.

        For modules that keep their own tables in this database (gateway/commands.py); `fn`
        runs its own transactions (`transaction(db)`).
        """
        db = self._require_db()
        result: T = await self._run(fn, db)
        return result


def _migrate(db: sqlite3.Connection) -> None:
    """Bring an older outbox's events table up to date: add and fill the columns it lacks.

    Runs once per database (the next open finds the columns); filling costs one pass over
    the table, in SQL.
    """
    have = {r[1] for r in db.execute("PRAGMA table_info(events)")}
    missing = [c for c in _ADDED_COLUMNS if c not in have]
    if not missing:
        return
    with _transaction(db):
        for column in missing:
            db.execute(f"ALTER TABLE events ADD COLUMN {column} TEXT")
        db.execute("UPDATE events SET " + ", ".join(f"{c} = {_ADDED_COLUMNS[c]}" for c in missing))
    log.info("outbox: added columns %s to the events table", ", ".join(missing))


def _insert_chunks(rows: Sequence[Row], most: int) -> Iterable[Sequence[Row]]:
    """`rows` in chunks of powers of two (at most `most`): few statements, few shapes to cache.

    Each statement's step releases the GIL, and a thread takes it back only when the event
    loop's thread lets go of it (every 5 ms while that thread is busy): `executemany` paid that
    wait once per row, so fifty rows took 30 to 300 ms on a busy gateway instead of 1 ms.
    """
    start, left = 0, len(rows)
    while left:
        size = min(most, 1 << (left.bit_length() - 1))
        yield rows[start:start + size]
        start += size
        left -= size


@functools.lru_cache(maxsize=32)
def _insert_sql(count: int) -> str:
    row = "(" + ",".join("?" * len(Row._fields)) + ")"
    return (f"INSERT INTO events ({_ROW_COLUMNS}) VALUES " + ",".join([row] * count))


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Any:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")  # may fail too (disk full): roll back, or the next BEGIN fails
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


#: For modules keeping their own tables here (see `Outbox.on_writer`).
transaction = _transaction
