"""An outbox written by an older gateway (events without alarm_id/state/quality columns)
opens, gains the columns filled from its bodies, and delivers to real MQTT and InfluxDB."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.config import InfluxConfig, MqttConfig
from gateway.metrics import Counters
from gateway.outbox import Outbox
from gateway.sinks.influx import InfluxSink
from gateway.sinks.mqtt import MqttSink
from schemas.common import Quality
from schemas.event import Event
from tests.helpers import eventually
from tests.servers import InfluxV1, Mosquitto
from tests.test_outbox import make_event

#: The events table as gateways before the data-path columns created it.
OLD_EVENTS = """
CREATE TABLE events (
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
CREATE INDEX events_lane ON events (lane, seq);
CREATE INDEX events_received ON events (received_ns);
"""


def _old_outbox(path: Path, site: str) -> list[Event]:
    """An outbox in the old layout holding a raised alarm, a status and a rejected status."""
    alarm = make_event(0, "alarm").model_copy(update={"site": site, "alarm_id": "alm-old-1"})
    status = make_event(3).model_copy(update={"site": site})
    rejected = make_event(99).model_copy(update={"site": site, "quality": Quality(status="rejected",
                                                                                 reasons=("out_of_range",))})
    events = [alarm, status, rejected]
    db = sqlite3.connect(path)
    db.executescript(OLD_EVENTS)
    db.executemany("INSERT INTO events (id, lane, time_ns, received_ns, device, kind, type, class, body)"
                   " VALUES (?,?,?,?,?,?,?,?,?)", [tuple(Outbox.row(e))[:9] for e in events])
    db.commit()
    db.close()
    return events


async def test_old_outbox_gains_columns_from_its_bodies(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    alarm, status, rejected = _old_outbox(path, "mig")
    async with Outbox(path, sinks=["mqtt"]) as ob:
        got = {s.id: s for s in await ob.fetch("mqtt", 10)}
        assert (got[alarm.id].alarm_id, got[alarm.id].state, got[alarm.id].quality) == ("alm-old-1", "raised", "valid")
        assert (got[status.id].alarm_id, got[status.id].state) == (None, "momentary")
        assert got[rejected.id].quality == "rejected"
        assert got[status.id].time_ns == Outbox.row(status).time_ns
        # New events fill the columns themselves, next to the migrated ones.
        fresh = make_event(1, "fault")
        await ob.append([fresh])
        row = next(s for s in await ob.fetch("mqtt", 10) if s.id == fresh.id)
        assert (row.alarm_id, row.state, row.quality) == (fresh.alarm_id, "raised", "valid")
    columns = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(events)")}
    assert {"alarm_id", "state", "quality"} <= columns
    async with Outbox(path, sinks=["mqtt"]) as ob:  # a second open finds nothing to migrate
        assert len(await ob.fetch("mqtt", 10)) == 4


async def _run_until(sink: Any, ob: Outbox, done: Any) -> None:
    task = asyncio.create_task(sink.run(ob))
    try:
        await eventually(done, timeout=15)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sink.stop()


async def test_old_outbox_delivers_retained_topics_over_mqtt(tmp_path: Path, mosquitto: Mosquitto) -> None:
    path = tmp_path / "outbox.db"
    alarm, status, _ = _old_outbox(path, "mig-mqtt")
    counters = Counters()
    sink = MqttSink(MqttConfig(host=mosquitto.host, port=mosquitto.port), site="mig-mqtt", gateway_id="g",
                    counters=counters)
    async with Outbox(path, sinks=["mqtt"], counters=counters) as ob:
        await _run_until(sink, ob, lambda: counters.get("mqtt.published") >= 3)
    got: dict[str, Any] = {}
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.subscribe("courtyard/mig-mqtt/#", qos=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                async for msg in client.messages:
                    got[str(msg.topic)] = json.loads(msg.payload)  # type: ignore[arg-type]
    base = "courtyard/mig-mqtt/elevator/lift-1"
    assert got[f"{base}/alarm/alm-old-1"]["id"] == alarm.id
    # The rejected sample (floor 99) changed nothing: the state holds the good one.
    assert got[f"{base}/state"]["parts"]["device"]["id"] == status.id


async def test_old_outbox_delivers_to_influxdb(tmp_path: Path, influx_v1: InfluxV1) -> None:
    path = tmp_path / "outbox.db"
    alarm, status, rejected = _old_outbox(path, "mig-influx")
    db = "mig_test"
    influx_v1.query_sync(f"CREATE DATABASE {db}")
    counters = Counters()
    sink = InfluxSink(InfluxConfig(url=influx_v1.url, api="v1", database=db), counters=counters)
    async with Outbox(path, sinks=["influx"], counters=counters) as ob:
        await _run_until(sink, ob, lambda: counters.get("influx.written") >= 3)
    data = urllib_query(influx_v1, db, "SELECT * FROM elevator WHERE site='mig-influx'")
    by_id = {r["event_id"]: r for r in data}
    assert by_id[alarm.id]["alarm_id"] == "alm-old-1" and by_id[alarm.id]["state"] == "raised"
    assert by_id[rejected.id]["quality"] == "rejected" and by_id[rejected.id]["floor"] == 99
    assert by_id[status.id]["quality"] == "valid" and by_id[status.id]["class"] == "status"


def urllib_query(server: InfluxV1, db: str, q: str) -> list[dict[str, Any]]:
    """InfluxQL against database `db` (the fixture's helper queries its own database)."""
    saved = server.database
    server.database = db
    try:
        return server.query_sync(q)
    finally:
        server.database = saved
