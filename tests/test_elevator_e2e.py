"""Simulator -> gateway -> real mosquitto and InfluxDB (1.x line protocol, v2 API) -> read back."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.config import parse_config
from gateway.runtime import Gateway
from gateway.sinks.influx import point_time_ns
from schemas.event import event_time_ns
from schemas.export import EVENT_SCHEMA_PATH
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import MqttCollector, base_config, eventually
from tests.servers import InfluxV1, Mosquitto, Victoria, free_port

NUMERIC = ("floor", "speed_mps", "load_pct")


def lift(dev_id: str, port: int, unit: int = 1, **extra: Any) -> dict[str, Any]:
    return {"id": dev_id, "driver": "modbus_elevator", "port": port, "unit_id": unit, "poll_interval_s": 0.2,
            "timeout_s": 0.5, "simulated": True, "location": {"building": "7", "unit": "2"},
            "thresholds": {"trapped_s": 1.0}, **extra}


async def run_scenario(tmp_path: Path, mosquitto: Mosquitto, influx: dict[str, Any]) -> tuple[
        list[dict[str, Any]], list[tuple[str, bytes]], Gateway]:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=1.0, seed=3),
                                                  2: ElevatorModel(call_rate_per_s=1.0, seed=4)})
    vendor_port = free_port()
    vendor = ElevatorSimulator(port=vendor_port, regmap="monarch_vendor",
                               elevators={1: ElevatorModel(call_rate_per_s=1.0, seed=5)})
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, influx=influx, site="e2e-lift", devices=[
        lift("lift-a", port, 1), lift("lift-b", port, 2), lift("lift-v", vendor_port, 1, map="monarch_vendor"),
    ]))
    async with sim, vendor, MqttCollector(mosquitto.host, mosquitto.port, "courtyard/e2e-lift/#") as col:
        async with Gateway(cfg) as gw:
            await asyncio.sleep(4)
            await sim.inject("trapped", device_id=1)
            await vendor.inject("trapped")
            await vendor.inject("fault_code", 41)
            await col.wait_for(lambda c: sum(1 for e in c.events() if e["type"] == "elevator.passenger_trapped") >= 2,
                               timeout=15)
            await sim.clear("trapped")
            await vendor.clear("trapped")
            await vendor.clear("fault_code")
            await col.wait_for(lambda c: sum(1 for e in c.events() if e["state"] == "cleared"
                                             and e["type"] == "elevator.passenger_trapped") >= 2, timeout=15)
            assert await gw.drain(15)
        accepted = [json.loads(r.body) for r in await _all_rows(tmp_path)]
        await col.wait_for(lambda c: {e["id"] for e in c.events()} >= {e["id"] for e in accepted}, timeout=10)
        return accepted, list(col.messages), gw


async def _all_rows(tmp_path: Path) -> list[Any]:
    from gateway.history import query

    return list(query(tmp_path / "outbox.db"))


def check_mqtt(accepted: list[dict[str, Any]], messages: list[tuple[str, bytes]]) -> None:
    schema = json.loads(EVENT_SCHEMA_PATH.read_text())
    published = {}
    for topic, payload in messages:
        if not payload:
            continue  # an emptied retained alarm (cleared)
        body = json.loads(payload)
        if "/gateway/" in topic or topic.endswith("/state"):
            continue  # a state document holds events (docs/mqtt.md), it is not one
        jsonschema.validate(body, schema)  # every message published validates
        if "/event/" in topic:
            assert topic == f"courtyard/e2e-lift/elevator/{body['device']['id']}/event/{body['type']}"
            published[body["id"]] = body
    for ev in accepted:
        assert published[ev["id"]] == ev, "MQTT body differs from the accepted event"
    types = {e["type"] for e in accepted}
    assert {"elevator.status", "elevator.passenger_trapped", "device.online", "elevator.safety_circuit_open"} <= types
    by_alarm: dict[str, list[str]] = {}
    for e in accepted:
        if e["alarm_id"] and e["payload"].get("kind") != "alarm_lifecycle":  # the alarm book's own events
            by_alarm.setdefault(e["alarm_id"], []).append(e["state"])
    assert by_alarm and all(states == ["raised", "cleared"] for states in by_alarm.values()), by_alarm
    state_topics = [t for t, _ in messages if t.endswith("/state")]
    assert {"courtyard/e2e-lift/elevator/lift-a/state", "courtyard/e2e-lift/elevator/lift-v/state"} <= set(
        state_topics)


@pytest.mark.slow
async def test_e2e_mqtt_and_influx_v1(tmp_path: Path, mosquitto: Mosquitto, influx_v1: InfluxV1) -> None:
    accepted, messages, gw = await run_scenario(
        tmp_path, mosquitto, {"url": influx_v1.url, "api": "v1", "database": influx_v1.database, "batch": 50})
    check_mqtt(accepted, messages)
    rows = await influx_v1.query("SELECT * FROM elevator", epoch="ns")
    by_id = {r["event_id"]: r for r in rows}
    for ev in accepted:
        if ev["device"]["kind"] != "elevator" or ev["class"] == "connectivity":
            continue
        row = by_id[ev["id"]]
        assert row["device"] == ev["device"]["id"]
        assert row["type"] == ev["type"]
        assert row["class"] == ev["class"]
        assert row["severity"] == ev["severity"]
        assert row["quality"] == ev["quality"]["status"]
        # The event time plus a stable offset below its own precision (an event stamped on a
        # whole millisecond gets a sub-millisecond offset), never a different instant.
        assert row["time"] == point_time_ns(ev["time"], ev["id"]), "point time is the event time"
        assert 0 <= row["time"] - event_time_ns(datetime.fromisoformat(ev["time"])) < 1_000_000_000
        for key, value in ev["payload"].items():
            if key in ("kind", "raw") or value is None:
                continue
            assert row[key] == value, (key, row[key], value)
    assert gw.counters.get("influx.written") == len(accepted)


@pytest.mark.slow
async def test_e2e_mqtt_and_influx_v2_api(tmp_path: Path, mosquitto: Mosquitto, victoria: Victoria) -> None:
    accepted, messages, _ = await run_scenario(tmp_path, mosquitto, {"url": victoria.url, "api": "v2",
                                                                     "database": "courtyard", "batch": 50})
    check_mqtt(accepted, messages)

    async def floors() -> dict[tuple[str, str, int], float]:
        out = {}
        for series in await victoria.export('{__name__="elevator_floor"}'):
            m = series["metric"]
            for ts, v in zip(series["timestamps"], series["values"], strict=True):
                out[(m["device"], m["type"], ts)] = v
        return out

    wanted = [e for e in accepted if e["payload"].get("floor") is not None]
    got = await eventually(lambda: _complete(floors, wanted), timeout=20)
    for ev in wanted:
        ms = point_time_ns(ev["time"], ev["id"]) // 1_000_000  # VictoriaMetrics keeps milliseconds
        assert got[(ev["device"]["id"], ev["type"], ms)] == pytest.approx(ev["payload"]["floor"])


async def _complete(fetch: Any, wanted: list[dict[str, Any]]) -> Any:
    got = await fetch()
    keys = {(e["device"]["id"], e["type"], point_time_ns(e["time"], e["id"]) // 1_000_000)
            for e in wanted}
    return got if keys <= set(got) else None
