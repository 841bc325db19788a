"""The outbox: SQLite in WAL mode, the commit point of every event.

An event is *accepted* once its transaction has committed. Producers' events are gathered
into group commits (many events, one transaction, one fsync), so durability does not cost
throughput. Each sink keeps its own cursor per lane: lane 0 carries alarms, faults,
connectivity and commands, lane 1 status and ordinary events; a sink always drains lane 0
first, so an entrapment overtakes an hour of telemetry backlog. Order is kept per device
within a lane.

The same table is the local history (`courtyard events`): delivered events stay until they
are older than `history_days` or the disk budget needs their room. At the budget, delivered
history goes first; then, by policy, the oldest undelivered *status* events are dropped
(counted) or producers of lane-1 events block. Lane-0 events are always accepted, even over
budget (counted as `outbox.over_budget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.errors import OutboxError
from gateway.metrics import Counters
from schemas.common import PRIORITY_CLASSES
from schemas.event import Event, event_time_ns

log = logging.getLogger(__name__)

LANES = (0, 1)

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
    body TEXT NOT NULL
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


@dataclass(frozen=True, slots=True)
class Stored:
    """One committed event as a sink sees it."""

    seq: int
    lane: int
    device: str
    kind: str
    type: str
    cls: str
    body: str


def lane_of(event_class: str) -> int:
    """Lane 0 for alarms, faults, connectivity and commands; lane 1 for the rest."""
    return 0 if event_class in PRIORITY_CLASSES else 1


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the outbox database (creating it unless read-only)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


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
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._pending: list[tuple[list[tuple[Any, ...]], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._new = {sink: asyncio.Event() for sink in self.sinks}
        self._space = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._count = 0
        self._cursors: dict[tuple[str, int], int] = {}
        self._last_history_purge = 0.0
        self._closing = False

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the database and start the group-commit writer."""
        await self._run(self._open_sync)
        self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")
        for ev in self._new.values():
            ev.set()  # sinks start by draining whatever backlog survived a restart

    def _open_sync(self) -> None:
        db = connect(self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        db.executescript(_SCHEMA)
        self._db = db
        self._count = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        for sink in self.sinks:
            for lane in LANES:
                row = db.execute("SELECT seq FROM cursors WHERE sink=? AND lane=?", (sink, lane)).fetchone()
                self._cursors[(sink, lane)] = row[0] if row else 0
        for name, value in db.execute("SELECT name, value FROM counters"):
            self.counters.inc(name, value)

    async def close(self) -> None:
        """Commit what is pending, then close."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        await self._run(self._close_sync)
        self._pool.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- producers -------------------------------------------------------------------------

    @staticmethod
    def row(event: Event) -> tuple[Any, ...]:
        """The row stored for `event` (body is the exact published JSON)."""
        return (
            event.id,
            lane_of(event.class_),
            event_time_ns(event.time),
            event_time_ns(event.received),
            event.device.id,
            event.device.kind,
            event.type,
            event.class_,
            event.to_json(),
            event.alarm_id,
            event.state,
        )

    async def append(self, events: Sequence[Event]) -> None:
        """Commit `events`; returns once they are durable (accepted)."""
        if not events:
            return
        if self._closing:
            raise OutboxError("outbox is closing")
        rows = [self.row(e) for e in events]
        if self.overflow == "block" and all(r[1] == 1 for r in rows):
            while self._count >= self.max_events and not self._closing:
                self.counters.inc("outbox.blocked")
                self._space.clear()
                await self._space.wait()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, fut))
        self._wake.set()
        await fut

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch: list[tuple[list[tuple[Any, ...]], asyncio.Future[None]]] = []
                size = 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= self.batch_max):
                    item = self._pending.pop(0)
                    batch.append(item)
                    size += len(item[0])
                rows = [r for item, _ in batch for r in item]
                try:
                    await self._run(self._commit_sync, rows)
                except Exception as exc:  # disk full, I/O error: producers see it, nothing half-accepted
                    log.exception("outbox commit failed")
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(OutboxError(f"commit failed: {exc}"))
                    continue
                self.counters.inc("outbox.accepted", len(rows))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
                for ev in self._new.values():
                    ev.set()
            if self._closing and not self._pending:
                return

    def _commit_sync(self, rows: list[tuple[Any, ...]]) -> None:
        db = self._require_db()
        with _transaction(db):
            db.executemany(
                "INSERT INTO events (id, lane, time_ns, received_ns, device, kind, type, class, body)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                [r[:9] for r in rows],
            )
            # Raised alarms stay listed until cleared, so a restarted gateway can close them.
            for r in rows:
                alarm_id, state = r[9], r[10]
                if alarm_id is None:
                    continue
                if state == "raised":
                    db.execute("INSERT OR REPLACE INTO open_alarms (alarm_id, device, body) VALUES (?,?,?)",
                               (alarm_id, r[4], r[8]))
                elif state == "cleared":
                    db.execute("DELETE FROM open_alarms WHERE alarm_id=?", (alarm_id,))
        self._count += len(rows)
        if self._count > self.max_events:
            self._enforce_budget()
        now = time.monotonic()
        if now - self._last_history_purge > 60:
            self._last_history_purge = now
            self._purge_history()

    # --- budget ----------------------------------------------------------------------------

    def _delivered(self, lane: int) -> int:
        """Highest seq of `lane` that every sink has delivered."""
        if not self.sinks:
            return 1 << 62
        return min(self._cursors[(s, lane)] for s in self.sinks)

    def _enforce_budget(self) -> None:
        db = self._require_db()
        excess = self._count - self.max_events
        slack = max(1, self.max_events // 100)  # free 1% more so we do not purge on every commit
        with _transaction(db):
            cur = db.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE (lane=0 AND seq<=?)"
                " OR (lane=1 AND seq<=?) ORDER BY seq LIMIT ?)",
                (self._delivered(0), self._delivered(1), excess + slack),
            )
            self._count -= cur.rowcount
            excess = self._count - self.max_events
            if excess > 0 and self.overflow == "drop_oldest_status":
                cur = db.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE lane=1 AND class='status'"
                    " ORDER BY seq LIMIT ?)",
                    (excess,),
                )
                if cur.rowcount:
                    self._count -= cur.rowcount
                    self._bump_persisted(db, "outbox.dropped_status", cur.rowcount)
                    log.warning("outbox over budget: dropped %d undelivered status events", cur.rowcount)
            excess = self._count - self.max_events
            if excess > 0:
                self._bump_persisted(db, "outbox.over_budget", excess)

    def _bump_persisted(self, db: sqlite3.Connection, name: str, n: int) -> None:
        db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=value+?",
            (name, n, n),
        )
        self.counters.inc(name, n)

    def _purge_history(self) -> None:
        db = self._require_db()
        horizon = time.time_ns() - self.history_ns
        with _transaction(db):
            cur = db.execute(
                "DELETE FROM events WHERE received_ns < ? AND ((lane=0 AND seq<=?) OR (lane=1 AND seq<=?))",
                (horizon, self._delivered(0), self._delivered(1)),
            )
            self._count -= cur.rowcount

    # --- sinks -----------------------------------------------------------------------------

    async def wait_new(self, sink: str, timeout: float | None = None) -> None:
        """Wait until events may be pending for `sink` (or `timeout` passes)."""
        ev = self._new[sink]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)
        ev.clear()

    async def fetch(self, sink: str, limit: int) -> list[Stored]:
        """The next undelivered events for `sink`: lane 0 first, then lane 1, each in seq order."""
        result: list[Stored] = await self._run(self._fetch_sync, sink, limit)
        return result

    def _fetch_sync(self, sink: str, limit: int) -> list[Stored]:
        db = self._require_db()
        out: list[Stored] = []
        for lane in LANES:
            if len(out) >= limit:
                break
            rows = db.execute(
                "SELECT seq, lane, device, kind, type, class, body FROM events WHERE lane=? AND seq>?"
                " ORDER BY seq LIMIT ?",
                (lane, self._cursors[(sink, lane)], limit - len(out)),
            ).fetchall()
            out.extend(Stored(*r) for r in rows)
        return out

    async def ack(self, sink: str, delivered: Sequence[Stored]) -> None:
        """Advance `sink`'s cursors past `delivered` (a prefix of what `fetch` returned)."""
        if delivered:
            await self._run(self._ack_sync, sink, delivered)
            self._space.set()

    def _ack_sync(self, sink: str, delivered: Sequence[Stored]) -> None:
        db = self._require_db()
        with _transaction(db):
            for lane in LANES:
                seqs = [s.seq for s in delivered if s.lane == lane]
                if seqs:
                    top = max(seqs)
                    self._cursors[(sink, lane)] = top
                    db.execute(
                        "INSERT INTO cursors (sink, lane, seq) VALUES (?,?,?)"
                        " ON CONFLICT(sink, lane) DO UPDATE SET seq=excluded.seq",
                        (sink, lane, top),
                    )
        if self._count > self.max_events:
            self._enforce_budget()

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


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Any:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
