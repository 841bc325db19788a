"""The disk budget: block never deadlocks, what the budget bounds, counting, and failures."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import OutboxError, OutboxFull
from gateway.outbox import Outbox
from tests.test_outbox import make_event

#: Hang guard only (the old code waited forever here); no test asserts how long anything took.
HANG = 10.0


def plate_like(i: int) -> object:
    """A lane-1 event that is not `status` (class `event`, like plate reads and access events)."""
    event = make_event(i, "event")
    return event.model_copy(update={"type": "elevator.mode_changed"})


async def test_block_at_exactly_the_budget_with_all_delivered_proceeds(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"], max_events=100, overflow="block") as ob:
        await ob.append([make_event(i) for i in range(100)])
        await ob.ack("mqtt", await ob.fetch("mqtt", 1000))
        assert ob.count == 100  # exactly the budget, all of it delivered history
        await asyncio.wait_for(asyncio.gather(*(ob.append([make_event(100 + i)]) for i in range(10))), HANG)
        assert ob.count <= 100
        assert len(await ob.fetch("mqtt", 1000)) == 10  # the new ones are all there, undelivered
        assert ob.counters.get("outbox.blocked") == 0


async def test_block_full_of_undelivered_lane1(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", sinks=["mqtt"], max_events=100, overflow="block")
    await ob.open()
    await ob.append([make_event(i) for i in range(100)])
    # lane 0 is never held back
    await asyncio.wait_for(ob.append([make_event(0, "alarm")]), HANG)
    await asyncio.wait_for(ob.append([make_event(0, "connectivity")]), HANG)
    # a bounded lane-1 producer gets OutboxFull with a retry hint
    with pytest.raises(OutboxFull) as refused:
        await asyncio.wait_for(ob.append([make_event(1)], wait_s=0.2), HANG)
    assert refused.value.retry_after_s > 0
    assert ob.counters.get("outbox.refused_full") == 1
    # an unbounded one waits, and close() does not wait for it: it gets OutboxError
    blocked = asyncio.create_task(ob.append([make_event(2)]))
    await asyncio.sleep(0.1)
    assert not blocked.done()
    await asyncio.wait_for(ob.close(), HANG)
    with pytest.raises(OutboxError, match="closing"):
        await asyncio.wait_for(blocked, HANG)
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 102
    assert db.execute("SELECT value FROM counters WHERE name='outbox.over_budget'").fetchone()[0] == 2


async def test_block_reclaims_delivered_alarms_too(tmp_path: Path) -> None:
    """Delivered history of both lanes is reclaimable; a bounded wait that finds room succeeds."""
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"], max_events=100, overflow="block") as ob:
        await ob.append([make_event(i) for i in range(99)])
        await ob.append([make_event(0, "alarm")])  # 100: at the budget
        await ob.ack("mqtt", await ob.fetch("mqtt", 1000))
        await asyncio.wait_for(ob.append([make_event(200)], wait_s=HANG), HANG)
        assert ob.count <= 100


async def test_drop_policy_bounds_every_lane1_class(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"], max_events=100) as ob:
        alarms = [make_event(i, "alarm") for i in range(5)]
        await ob.append(alarms)
        for k in range(10):
            await ob.append([plate_like(k * 50 + i) for i in range(50)])  # type: ignore[misc]
        assert ob.count <= 100
        assert ob.counters.get("outbox.dropped_lane1") == 405
        rows = await ob.fetch("mqtt", 1000)
        bodies = "".join(r.body for r in rows)
        assert all(a.id in bodies for a in alarms)
        floors = [json.loads(r.body)["payload"]["floor"] for r in rows if r.lane == 1]
        assert floors == list(range(405, 500))  # the newest are kept
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("SELECT value FROM counters WHERE name='outbox.dropped_lane1'").fetchone()[0] == 405


async def test_dropped_status_counter_is_carried_over(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"]):
        pass
    db = sqlite3.connect(tmp_path / "o.db")
    db.execute("INSERT INTO counters (name, value) VALUES ('outbox.dropped_status', 7)")
    db.commit()
    db.close()
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"]) as ob:
        assert ob.counters.get("outbox.dropped_lane1") == 7
        assert ob.counters.get("outbox.dropped_status") == 0


async def test_over_budget_counts_each_lane0_event_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gateway.outbox")
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"], max_events=100) as ob:
        await ob.append([make_event(i, "alarm") for i in range(100)])
        for i in range(10):
            await ob.append([make_event(100 + i, "alarm")])
        assert ob.counters.get("outbox.over_budget") == 10
        assert ob.count == 110  # undelivered lane 0 is never dropped
    warnings = [r for r in caplog.records if "over budget" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


async def test_full_database_one_warning_counted_then_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "gateway.outbox")
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"]) as ob:
        await ob.append([make_event(0)])
        db = ob._require_db()
        pages = await ob._run(lambda: db.execute("PRAGMA page_count").fetchone()[0])
        # A real SQLite condition: the database may not grow, so inserts fail with SQLITE_FULL.
        await ob._run(lambda: db.execute(f"PRAGMA max_page_count={pages}").fetchall())
        for k in range(20):
            with pytest.raises(OutboxError, match="full"):
                await ob.append([make_event(k * 50 + i) for i in range(50)])
        assert ob.counters.get("outbox.commit_failures") == 20
        failed = [r for r in caplog.records if "commit failed" in r.getMessage()]
        assert len(failed) == 1 and "full" in failed[0].getMessage()
        assert not any(r.exc_info for r in caplog.records)  # no tracebacks
        await ob._run(lambda: db.execute("PRAGMA max_page_count=1073741823").fetchall())
        await ob.append([make_event(i) for i in range(50)])
        assert ob.count == 51
    assert sum("succeed again" in r.getMessage() for r in caplog.records) == 1


async def test_commit_outcome_is_the_inserts_when_budget_enforcement_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "gateway.outbox")
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"], max_events=100) as ob:
        await ob.append([make_event(i) for i in range(100)])
        db = ob._require_db()
        # Deletes fail (a real SQLite error), so enforcing the budget raises after the INSERT committed.
        await ob._run(lambda: db.execute(
            "CREATE TRIGGER no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'deletes refused'); END"
        ).fetchall())
        extra = [make_event(100 + i) for i in range(10)]
        for e in extra:
            await ob.append([e])  # accepted: the old code raised OutboxError here, and producers retried
        assert ob.counters.get("outbox.maintenance_failures") == 10
        assert ob.count == 110
        bodies = "".join(r.body for r in await ob.fetch("mqtt", 1000))
        assert all(bodies.count(e.id) == 1 for e in extra)
    assert sum("budget/purge failed" in r.getMessage() for r in caplog.records) == 1
