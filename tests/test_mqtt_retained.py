"""Retained topics a platform sees: offline on a clean stop, removed devices and stale alarms
cleared on start, and a `state` that holds every part of a device."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.history import query
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from simulators.pa import PaSimulator
from tests.helpers import MqttCollector, base_config, eventually
from tests.mqtt_support import retained, seed
from tests.servers import Mosquitto, free_port
from tests.test_opcua_pa_e2e import pa_device


def lift(dev_id: str, port: int, unit: int = 1) -> dict[str, Any]:
    return {"id": dev_id, "driver": "modbus_elevator", "port": port, "unit_id": unit, "poll_interval_s": 0.2,
            "timeout_s": 0.5, "thresholds": {"trapped_s": 0.3}}


async def connected(gw: Gateway) -> None:
    """Until the MQTT sink has connected and reconciled the retained topics."""
    await asyncio.wait_for(gw.sinks[0].connected.wait(), 10)  # type: ignore[attr-defined]


async def test_clean_stop_publishes_every_device_offline_before_the_gateway(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    site = "stop-site"
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site=site,
                                   devices=[lift("lift-1", port, 1), lift("lift-2", port, 2)]))
    prefix = f"courtyard/{site}"
    async with ElevatorSimulator(port=port, elevators={1: ElevatorModel(), 2: ElevatorModel()}), \
            MqttCollector(mosquitto.host, mosquitto.port, f"{prefix}/#") as col:
        async with Gateway(cfg) as gw:
            await eventually(lambda: all(gw.counters.get(f"device.lift-{i}.events") for i in (1, 2)))
            assert await gw.drain(10)
        got = await retained(mosquitto.host, mosquitto.port, f"{prefix}/#")
        for dev in ("lift-1", "lift-2"):
            body = got[f"{prefix}/elevator/{dev}/availability"]
            assert body["type"] == "device.offline" and body["payload"]["online"] is False
            assert body["payload"]["reason"] == "gateway_stopped"
            assert body["state"] == "momentary" and body["alarm_id"] is None, "a stop is not a device alarm"
        assert got[f"{prefix}/gateway/gw-test/status"]["status"] == "offline"
        assert not any("/alarm/" in t for t in got)
        await col.wait_for(lambda c: any(t.endswith("/status") and b"offline" in p for t, p in c.messages))
        order = [t for t, p in col.messages if b"gateway_stopped" in p or (t.endswith("/status") and b"offline" in p)]
        assert order[-1] == f"{prefix}/gateway/gw-test/status", "devices go offline before the gateway does"
        assert len(order) == 3
    # The history keeps what the devices last said: a stop is not a device event.
    assert not any(b'"gateway_stopped"' in r.body.encode() for r in query(tmp_path / "outbox.db"))


async def test_topics_of_a_removed_device_are_cleared_on_start(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    site = "removed-site"
    prefix = f"courtyard/{site}"
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(), 2: ElevatorModel()})
    both = base_config(tmp_path, mqtt=mosquitto, site=site, devices=[lift("lift-1", port, 1), lift("lift-2", port, 2)])
    async with sim:
        async with Gateway(parse_config(both)) as gw:
            await sim.inject("trapped", device_id=2)
            await eventually(lambda: ("elevator.passenger_trapped" in
                                      [json.loads(r.body)["type"] for r in query(tmp_path / "outbox.db")]))
            assert await gw.drain(10)
        before = await retained(mosquitto.host, mosquitto.port, f"{prefix}/elevator/lift-2/#")
        assert {t.rsplit("/", 1)[-1] for t in before} >= {"state", "availability"}
        assert any("/alarm/" in t for t in before)
        # Another gateway's device on the same site is none of this gateway's business.
        other = {"gateway": "gw-other", "site": site, "type": "device.online"}
        await seed(mosquitto.host, mosquitto.port, f"{prefix}/elevator/lift-9/availability", other)
        only_one = dict(both, devices=[lift("lift-1", port, 1)])
        async with Gateway(parse_config(only_one)) as gw:
            await connected(gw)
            got = await retained(mosquitto.host, mosquitto.port, f"{prefix}/#")
    assert not [t for t in got if "/lift-2/" in t], "a removed device keeps retained topics"
    assert got[f"{prefix}/elevator/lift-1/state"]["parts"]["device"]["type"] == "elevator.status"
    assert got[f"{prefix}/elevator/lift-9/availability"] == other


async def test_stale_retained_alarms_are_cleared_open_ones_stay(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    site = "stale-site"
    prefix = f"courtyard/{site}/elevator/lift-1/alarm"
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site=site, devices=[lift("lift-1", port)],
                                   alarms={"restart_grace_s": 30}))
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel()})
    async with sim:
        async with Gateway(cfg) as gw:
            await sim.inject("trapped")
            await eventually(lambda: any(t.startswith(prefix) for t in
                                         [f"{prefix}/{a}" for a in _open(tmp_path)]))
            assert await gw.drain(10)
        (open_id,) = _open(tmp_path)
        # An outbox loss, or a clear the broker never got: a retained alarm nobody holds open.
        stale = {"gateway": "gw-test", "site": site, "type": "elevator.fault", "state": "raised",
                 "alarm_id": "0190b0c0-0000-7000-8000-000000000001"}
        await seed(mosquitto.host, mosquitto.port, f"{prefix}/{stale['alarm_id']}", stale)
        other = dict(stale, gateway="gw-other", alarm_id="0190b0c0-0000-7000-8000-000000000002")
        await seed(mosquitto.host, mosquitto.port, f"courtyard/{site}/elevator/lift-7/alarm/{other['alarm_id']}", other)
        async with Gateway(cfg) as gw:
            await connected(gw)
            got = await retained(mosquitto.host, mosquitto.port, f"courtyard/{site}/+/+/alarm/#")
            assert gw.counters.get("mqtt.retained_cleared") == 1
    assert set(got) == {f"{prefix}/{open_id}", f"courtyard/{site}/elevator/lift-7/alarm/{other['alarm_id']}"}


async def test_open_alarm_lost_by_the_broker_is_retained_again(tmp_path: Path, own_broker: Mosquitto) -> None:
    port = free_port()
    cfg = parse_config(base_config(tmp_path, mqtt=own_broker, devices=[lift("lift-1", port)],
                                   alarms={"restart_grace_s": 30}))
    async with ElevatorSimulator(port=port, elevators={1: ElevatorModel()}) as sim:
        async with Gateway(cfg) as gw:
            await sim.inject("trapped")
            await eventually(lambda: _open(tmp_path))
            assert await gw.drain(10)
        own_broker.stop()  # no persistence: the retained alarm is gone
        own_broker.start()
        async with Gateway(cfg) as gw:
            await connected(gw)
            got = await retained(own_broker.host, own_broker.port, "courtyard/+/+/+/alarm/#")
    assert [t.rsplit("/", 1)[-1] for t in got] == _open(tmp_path)


def _open(tmp_path: Path) -> list[str]:
    """Alarm ids raised and not cleared in the outbox."""
    states: dict[str, str] = {}
    for r in query(tmp_path / "outbox.db"):
        ev = json.loads(r.body)
        if ev["alarm_id"] and ev["class"] != "connectivity":
            states[ev["alarm_id"]] = ev["state"]
    return [a for a, s in states.items() if s == "raised"]


async def test_pa_state_holds_every_zone(tmp_path: Path, mosquitto: Mosquitto) -> None:
    site = "pa-state-site"
    async with PaSimulator(port=free_port(), tick_s=0) as sim:
        cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site=site, devices=[pa_device("pa-1", sim.url)]))
        async with Gateway(cfg) as gw:
            await eventually(lambda: gw.counters.get("device.pa-1.events") >= 2)
            await sim.set_volume("z1", -12.0)
            await sim.start_emergency(["z2"], "evac-1", source="fire_linkage")

            async def parts() -> dict[str, Any] | None:
                assert await gw.drain(10)
                got = await retained(mosquitto.host, mosquitto.port, f"courtyard/{site}/pa/pa-1/state")
                doc = got.get(f"courtyard/{site}/pa/pa-1/state")
                if doc is None:
                    return None
                zones = doc["parts"]
                z1, z2 = zones.get("zone/z1"), zones.get("zone/z2")
                done = z1 and z2 and z1["payload"]["volume_db"] == -12.0 and z2["payload"]["zone_state"] == "emergency"
                return doc if done else None

            doc = await eventually(parts, timeout=15)
    assert doc["schema"] == "courtyard.state/1" and doc["device"]["id"] == "pa-1"
    assert {k.split("/")[0] for k in doc["parts"]} >= {"zone"}
    assert all(p["class"] == "status" and p["device"]["id"] == "pa-1" for p in doc["parts"].values())
    assert doc["time"] == max(p["time"] for p in doc["parts"].values())


def test_the_contract_page_documents_what_the_sink_publishes() -> None:
    from gateway.sinks import mqtt

    page = (Path(__file__).parent.parent / "docs" / "mqtt.md").read_text()
    for topic in ("/event/{type}", "/state", "/availability", "/alarm/{alarm_id}", "/status", "/metrics", "/sync/"):
        assert topic in page, topic
    assert mqtt.STATE_SCHEMA in page
    for _field, part in mqtt.STATE_PARTS:
        assert f"`{part}/" in page, part
    assert "gateway_stopped" in page and "restart_grace_s" in page


class AclBroker(Mosquitto):
    """A broker whose ACL lets the gateway publish but not subscribe (read) anything."""

    def command(self) -> list[str]:
        cmd = super().command()
        acl = self.dir / "acl"
        acl.write_text("topic write courtyard/#\ntopic write test-sync/#\n")
        conf = self.dir / "mosquitto.conf"
        conf.write_text(conf.read_text() + f"acl_file {acl}\n")
        return cmd


@pytest.mark.slow
async def test_a_broker_that_lets_us_write_but_not_read_turns_reconciliation_off(tmp_path: Path) -> None:
    broker = AclBroker()
    broker.start()
    try:
        port = free_port()
        cfg = parse_config(base_config(tmp_path, mqtt=broker, devices=[lift("lift-1", port)]))
        async with ElevatorSimulator(port=port, elevators={1: ElevatorModel()}), Gateway(cfg) as gw:
            await connected(gw)
            assert gw.counters.get("mqtt.reconcile_refused") == 1
            assert gw.sinks[0].reconcile is False  # type: ignore[attr-defined]  # not retried on reconnects
            await eventually(lambda: gw.counters.get("mqtt.published") > 0, timeout=5)
    finally:
        broker.close()


def _lift_status(site: str, floor: int) -> Any:
    from datetime import UTC, datetime

    from gateway.ids import uuid7
    from schemas.common import DeviceRef
    from schemas.elevator import ElevatorPayload
    from schemas.event import Event

    now = datetime.now(UTC)
    return Event.model_validate({
        "id": uuid7(), "time": now, "received": now, "site": site, "gateway": "gw-c",
        "device": DeviceRef(id="lift-c", kind="elevator", driver="modbus_elevator"),
        "class": "status", "type": "elevator.status", "payload": ElevatorPayload(floor=floor),
    })


async def _changing_lift(tmp_path: Path, mosquitto: Mosquitto, site: str, interval: float,
                         floors: int, gap: float) -> list[int]:
    """Floors of the retained-state messages while one lift reports `floors` changes `gap` apart."""
    from gateway.config import MqttConfig
    from gateway.metrics import Counters
    from gateway.outbox import Outbox
    from gateway.sinks.mqtt import MqttSink

    counters = Counters()
    sink = MqttSink(MqttConfig(host=mosquitto.host, port=mosquitto.port, state_interval_s=interval),
                    site=site, gateway_id="gw-c", counters=counters)
    sink.bind({"lift-c": "elevator"}, reconcile=False)
    topic = f"courtyard/{site}/elevator/lift-c"
    async with MqttCollector(mosquitto.host, mosquitto.port, f"{topic}/#") as col, \
            Outbox(tmp_path / f"{site}.db", sinks=["mqtt"], counters=counters) as ob:
        task = asyncio.create_task(sink.run(ob))
        try:
            await asyncio.wait_for(sink.connected.wait(), 10)
            for floor in range(floors):
                await ob.append([_lift_status(site, floor)])
                await asyncio.sleep(gap)
            # Every event goes at once; the state catches up with the last one within the interval.
            await col.wait_for(lambda c: len(c.events()) == floors)
            await col.wait_for(lambda c: [json.loads(p)["parts"]["device"]["payload"]["floor"]
                                          for t, p in c.messages if t == f"{topic}/state"][-1:] == [floors - 1],
                               timeout=interval + 5)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return [json.loads(p)["parts"]["device"]["payload"]["floor"] for t, p in col.messages if t == f"{topic}/state"]


async def test_state_of_a_device_changing_faster_than_the_interval_is_coalesced(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    states = await _changing_lift(tmp_path, mosquitto, "coalesce-site", interval=0.5, floors=30, gap=0.05)
    assert states[0] == 0, "the first change after a quiet spell goes at once"
    assert states[-1] == 29
    assert 3 <= len(states) <= 6, states  # about one per 0.5 s over 1.5 s, not one per event
    assert states == sorted(states), "a state never goes back"


async def test_state_interval_zero_publishes_the_state_after_every_batch(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    states = await _changing_lift(tmp_path, mosquitto, "every-site", interval=0.0, floors=20, gap=0.05)
    assert len(states) >= 15 and states[-1] == 19, states


async def test_a_clean_stop_publishes_a_state_still_waiting_for_its_interval(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    from gateway.config import MqttConfig
    from gateway.metrics import Counters
    from gateway.outbox import Outbox
    from gateway.sinks.mqtt import MqttSink

    site = "stop-state-site"
    counters = Counters()
    sink = MqttSink(MqttConfig(host=mosquitto.host, port=mosquitto.port, state_interval_s=60),
                    site=site, gateway_id="gw-c", counters=counters)
    sink.bind({"lift-c": "elevator"}, reconcile=False)
    async with Outbox(tmp_path / "o.db", sinks=["mqtt"], counters=counters) as ob:
        task = asyncio.create_task(sink.run(ob))
        await asyncio.wait_for(sink.connected.wait(), 10)
        for floor in range(5):
            await ob.append([_lift_status(site, floor)])
            await asyncio.sleep(0.05)
        await eventually(lambda: counters.get("mqtt.published") == 5)
        await sink.stop()  # as Gateway.stop(): flush, then the sink's task is cancelled
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    got = await retained(mosquitto.host, mosquitto.port, f"courtyard/{site}/elevator/lift-c/state")
    assert got[f"courtyard/{site}/elevator/lift-c/state"]["parts"]["device"]["payload"]["floor"] == 4


async def test_drain_publishes_states_still_waiting_for_their_interval(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    site = "drain-state-site"
    raw = base_config(tmp_path, mqtt=mosquitto, site=site, devices=[lift("lift-1", port, 1)])
    raw["mqtt"]["state_interval_s"] = 60
    cfg = parse_config(raw)

    def statuses() -> list[str]:
        return [json.loads(r.body)["time"] for r in query(tmp_path / "outbox.db") if r.type == "elevator.status"]

    async with ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=2.0)}), \
            Gateway(cfg) as gw:
        await eventually(lambda: len(statuses()) >= 4, timeout=20)
        last = statuses()[-1]
        assert await gw.drain(10)
        got = await retained(mosquitto.host, mosquitto.port, f"courtyard/{site}/elevator/lift-1/state")
        # The state went out at the first change; later ones wait 60 s, unless drained.
        assert got[f"courtyard/{site}/elevator/lift-1/state"]["time"] >= last


def test_state_merged_without_parsing_equals_the_state_merged_by_parsing() -> None:
    """`DeviceState.merge_body` (no JSON decode) builds the very document `merge` does, and
    leaves to `merge` every body it cannot place: part fields, another device block."""
    from datetime import UTC, datetime, timedelta, timezone

    from gateway.ids import uuid7
    from gateway.outbox import Outbox
    from gateway.sinks.mqtt import DeviceState
    from schemas.common import DeviceRef, Location
    from schemas.elevator import ElevatorPayload
    from schemas.event import Event
    from schemas.pa import PaPayload

    t0 = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)
    lift = DeviceRef(id="lift-9", kind="elevator", driver="modbus_elevator",
                     location=Location(zone='lobby ,"class": east', building="T3"))
    moved = lift.model_copy(update={"location": Location(zone="ramp")})

    def ev(i: int, payload: Any, device: DeviceRef = lift, offset: int = 0) -> Event:
        when = (t0 + timedelta(seconds=i)).astimezone(timezone(timedelta(hours=offset)))
        return Event.model_validate({"id": uuid7(), "time": when, "received": when, "site": "s", "gateway": "g",
                                     "device": device, "class": "status", "type": "elevator.status",
                                     "payload": payload})

    events = [ev(0, ElevatorPayload(floor=1)), ev(1, ElevatorPayload(floor=2)),
              ev(2, ElevatorPayload(floor=3), offset=8),  # a device's UTC offset: same instant order
              ev(3, PaPayload(zone="z1", volume_db=-6.0)), ev(4, ElevatorPayload(floor=4), moved),
              ev(5, ElevatorPayload(floor=5), moved)]
    fast, slow = DeviceState(), DeviceState()
    placed = []
    for e in events:
        row = Outbox.row(e)
        placed.append(fast.merge_body(row.body, row.time_ns))
        if not placed[-1]:
            fast.merge(json.loads(row.body), row.body, row.time_ns)
        slow.merge(json.loads(row.body), row.body)
        assert json.loads(fast.document()) == json.loads(slow.document())
    # The first body, a part field and a new device block are parsed; the rest are not.
    assert placed == [False, True, True, False, False, True]
    assert json.loads(fast.document())["parts"]["device"]["payload"]["floor"] == 5
