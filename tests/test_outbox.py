"""The outbox: group commits, lanes, per-sink cursors, restarts and the disk budget."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.errors import OutboxError
from gateway.ids import uuid7
from gateway.outbox import Outbox, connect
from schemas.common import ConnectivityPayload, DeviceRef
from schemas.elevator import ElevatorPayload
from schemas.event import Event


def make_event(i: int, cls: str = "status", device: str = "lift-1") -> Event:
    now = datetime.now(UTC)
    alarm = cls in ("alarm", "fault")
    return Event.model_validate({
        "id": uuid7(), "time": now, "received": now, "site": "s", "gateway": "g",
        "device": DeviceRef(id=device, kind="elevator", driver="modbus_elevator"),
        "class": cls,
        "type": "elevator.passenger_trapped" if alarm else ("device.offline" if cls == "connectivity"
                                                            else "elevator.status"),
        "state": "raised" if alarm else "momentary",
        "payload": ConnectivityPayload(online=False) if cls == "connectivity" else ElevatorPayload(floor=i),
    })


async def test_concurrent_appends_share_transactions(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db", sinks=["a"]) as ob:
        await asyncio.gather(*(ob.append([make_event(i)]) for i in range(500)))
        assert ob.count == 500
        # 500 producers, far fewer commits: the WAL grew by batches, not 500 fsyncs.
        assert ob.counters.get("outbox.accepted") == 500
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 500


async def test_alarms_overtake_status_backlog(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"]) as ob:
        await ob.append([make_event(i) for i in range(1000)])
        alarm = make_event(0, "alarm")
        await ob.append([alarm])
        first = await ob.fetch("mqtt", 10)
        assert first[0].lane == 0
        assert alarm.id in first[0].body
        assert [r.lane for r in first[1:]] == [1] * 9


async def test_each_sink_has_its_own_cursor_and_it_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    events = [make_event(i) for i in range(50)]
    async with Outbox(path, sinks=["mqtt", "influx"]) as ob:
        await ob.append(events)
        got = await ob.fetch("mqtt", 30)
        await ob.ack("mqtt", got)
        assert len(await ob.fetch("influx", 100)) == 50
    async with Outbox(path, sinks=["mqtt", "influx"]) as ob:
        rest = await ob.fetch("mqtt", 100)
        assert [r.body for r in rest] == [e.to_json() for e in events[30:]]
        assert await ob.backlog() == {"mqtt": 20, "influx": 50}


async def test_budget_drops_oldest_status_never_alarms(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"], max_events=100) as ob:
        alarms = [make_event(i, "alarm") for i in range(20)]
        await ob.append(alarms[:10])
        await ob.append([make_event(i) for i in range(200)])
        await ob.append(alarms[10:])
        rows = await ob.fetch("mqtt", 1000)
        bodies = "".join(r.body for r in rows)
        assert all(a.id in bodies for a in alarms), "an alarm was dropped"
        assert ob.counters.get("outbox.dropped_lane1") > 0
        assert ob.count <= 101
        # the newest status events are the ones kept
        status_floors = [json.loads(r.body)["payload"]["floor"] for r in rows if r.lane == 1]
        assert status_floors == sorted(status_floors)
        assert status_floors[-1] == 199


async def test_budget_frees_delivered_history_first(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"], max_events=100) as ob:
        await ob.append([make_event(i) for i in range(90)])
        await ob.ack("mqtt", await ob.fetch("mqtt", 90))
        await ob.append([make_event(i) for i in range(90, 150)])
        assert ob.counters.get("outbox.dropped_lane1") == 0
        assert len(await ob.fetch("mqtt", 1000)) == 60


async def test_block_policy_waits_for_room_but_not_alarms(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"], max_events=100, overflow="block") as ob:
        await ob.append([make_event(i) for i in range(100)])
        blocked = asyncio.create_task(ob.append([make_event(100)]))
        await asyncio.sleep(0.2)
        assert not blocked.done()
        await asyncio.wait_for(ob.append([make_event(0, "alarm")]), 2)  # alarms are never held back
        await ob.ack("mqtt", await ob.fetch("mqtt", 50))
        await asyncio.wait_for(blocked, 2)
        assert ob.counters.get("outbox.blocked") >= 1


async def test_connectivity_travels_in_priority_lane(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"]) as ob:
        await ob.append([make_event(1), make_event(2, "connectivity")])
        rows = await ob.fetch("mqtt", 10)
        assert [r.cls for r in rows] == ["connectivity", "status"]


async def test_observers_see_committed_batches_in_commit_order_and_never_a_failed_one(tmp_path: Path) -> None:
    seen: list[str] = []

    def broken(events: object) -> None:
        raise RuntimeError("an observer bug")

    async with Outbox(tmp_path / "o.db", sinks=["a"]) as ob:
        ob.add_observer(broken)  # a failing observer disturbs neither the commit nor the others
        remove = ob.add_observer(lambda events: seen.extend(str(e.id) for e in events))
        batches = [[make_event(i), make_event(i, "alarm")] for i in range(20)]
        await asyncio.gather(*(ob.append(b) for b in batches))
        assert sorted(seen) == sorted(str(e.id) for b in batches for e in b)
        db = sqlite3.connect(tmp_path / "o.db")
        assert [r[0] for r in db.execute("SELECT id FROM events ORDER BY rowid")] == seen  # commit order
        assert ob.counters.get("outbox.observer_errors") == 20
        remove()
        await ob.append([make_event(99)])
        assert len(seen) == 40
        db.close()
    async with Outbox(tmp_path / "o.db", sinks=["a"]) as ob:
        seen.clear()
        ob.add_observer(lambda events: seen.extend(str(e.id) for e in events))
        trigger = "CREATE TRIGGER no_more BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        await ob.on_writer(lambda db: db.execute(trigger))
        with pytest.raises(OutboxError):
            await ob.append([make_event(100)])
        assert seen == []  # a failed commit is never observed


async def test_a_lingering_append_goes_with_the_next_urgent_one_and_a_cancelled_one_never(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"]) as ob:
        lingering = asyncio.create_task(ob.append([make_event(1)], linger=3600))
        given_up = asyncio.create_task(ob.append([make_event(2)], linger=3600))
        await asyncio.sleep(0.05)
        assert not lingering.done() and not given_up.done()
        given_up.cancel()
        await asyncio.wait_for(ob.append([make_event(3, "alarm")]), 5)  # commits at once, with the lingering one
        await asyncio.wait_for(lingering, 5)
        rows = await ob.fetch("mqtt", 10)
    assert sorted(json.loads(r.body)["payload"]["floor"] for r in rows) == [1, 3], "the cancelled append is dropped"


async def test_cursors_move_at_once_and_are_saved_with_commits_and_at_close(tmp_path: Path) -> None:
    path = tmp_path / "o.db"

    def saved() -> dict[int, int]:
        db = sqlite3.connect(path)
        try:
            return dict(db.execute("SELECT lane, seq FROM cursors WHERE sink='mqtt'").fetchall())
        finally:
            db.close()

    async with Outbox(path, sinks=["mqtt"]) as ob:
        await ob.append([make_event(i) for i in range(5)])
        await ob.ack("mqtt", await ob.fetch("mqtt", 5))  # the first ack is saved at once
        assert saved().get(1) == 5
        await ob.append([make_event(5)])
        await ob.ack("mqtt", await ob.fetch("mqtt", 5))
        assert await ob.fetch("mqtt", 5) == [] and (await ob.backlog())["mqtt"] == 0
        await ob.append([make_event(6)])  # this commit carries the moved cursor
        assert saved().get(1) == 6
        await ob.ack("mqtt", await ob.fetch("mqtt", 5))
    assert saved().get(1) == 7  # saved at close
    async with Outbox(path, sinks=["mqtt"]) as ob:
        assert await ob.fetch("mqtt", 5) == []


@pytest.mark.parametrize("count", [1, 47, 513, 2000])
async def test_a_commit_keeps_every_row_and_its_order_whatever_its_size(tmp_path: Path, count: int) -> None:
    """Rows go in as multi-row INSERTs of power-of-two sizes; none is lost, none reordered."""
    async with Outbox(tmp_path / "o.db", sinks=["a"], batch_max=5000) as ob:
        events = [make_event(i, "fault" if i % 7 == 0 else "status") for i in range(count)]
        await ob.append(events)
        assert ob.count == count
        got = []
        while rows := await ob.fetch("a", 10_000):
            got += rows
            await ob.ack("a", rows)
    # Lane 0 (faults) first, then lane 1, each in the order appended, each body exactly stored.
    want = [e for e in events if e.class_ == "fault"] + [e for e in events if e.class_ != "fault"]
    assert [r.id for r in got] == [e.id for e in want]
    assert [r.body for r in got] == [e.to_json() for e in want]


async def test_sinks_fetch_while_the_writer_thread_is_busy(tmp_path: Path) -> None:
    """A fetch never waits for the writer's thread (a long commit, an fsync on a slow disk)."""
    async with Outbox(tmp_path / "o.db", sinks=["a"]) as ob:
        await ob.append([make_event(i) for i in range(5)])
        release = asyncio.Event()
        loop = asyncio.get_running_loop()
        hold = lambda: asyncio.run_coroutine_threadsafe(release.wait(), loop).result()  # noqa: E731
        blocked = loop.run_in_executor(ob._pool, hold)
        rows = await asyncio.wait_for(ob.fetch("a", 10), timeout=2)
        assert len(rows) == 5
        release.set()
        await blocked


async def test_an_outbox_whose_path_holds_uri_characters_opens_reads_and_reopens(tmp_path: Path) -> None:
    """Sinks read through a read-only URI: a `?`, `#`, `%` or space in the path must not bend it."""
    path = tmp_path / "site #1 ?50% data" / "o.db"
    async with Outbox(path, sinks=["a"]) as ob:
        await ob.append([make_event(i) for i in range(3)])
        assert len(await ob.fetch("a", 10)) == 3
    async with Outbox(path, sinks=["a"]) as ob:
        assert len(await ob.fetch("a", 10)) == 3
        # `courtyard events` and the other read-only tools open it the same way
        with contextlib.closing(connect(path, readonly=True)) as db:
            assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 3
