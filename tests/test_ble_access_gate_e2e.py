"""Simulated gates -> gateway (BLE driver, outbox) -> real mosquitto and InfluxDB 1.x -> read back.

The gates run in the gateway process (`backend: simulated`); faults are injected on the
peripherals while the gateway runs: lost notifications (backfilled), a garbled record, a forced
door and a skewed clock.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from gateway.config import parse_config
from gateway.runtime import Gateway
from gateway.sinks.influx import point_time_ns
from schemas.export import event_json_schema
from simulators.access_gate import backend as sim
from simulators.access_gate import inject
from simulators.access_gate.peripheral import SimulatedGatePeripheral
from tests.helpers import MqttCollector, base_config, eventually
from tests.servers import InfluxV1, Mosquitto

KEY = "e2e-credential-key-0123456789"
SITE = "test-access"  # own site: our retained state topics stay out of other tests' subscriptions


def gate(dev_id: str, address: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": dev_id, "driver": "ble_access_gate", "address": address, "backend": "simulated",
        "credential_key": KEY, "simulated": True, "location": {"building": "3", "unit": "1"},
        "history_timeout_s": 2, **extra,
    }


@pytest.mark.slow
async def test_e2e_gates_to_mqtt_and_influx(tmp_path: Path, mosquitto: Mosquitto, influx_v1: InfluxV1) -> None:
    east, west = "C0:57:0A:0E:00:01", "C0:57:0A:0E:00:02"
    cfg = parse_config(base_config(
        tmp_path, mqtt=mosquitto, site=SITE,
        influx={"url": influx_v1.url, "api": "v1", "database": influx_v1.database, "batch": 50},
        devices=[
            gate("gate-e2e-east", east, simulation={"seed": 21, "arrivals_per_min": 600}),
            gate("gate-e2e-west", west, code_table="hik", doors=2, max_clock_skew_s=60,
                 simulation={"seed": 22, "arrivals_per_min": 300, "clock_skew_s": 3600}),
        ],
    ))
    async with MqttCollector(mosquitto.host, mosquitto.port, f"courtyard/{SITE}/#") as col:
        async with Gateway(cfg) as gw:
            await col.wait_for(lambda c: sum(e["type"] == "access.granted" for e in c.events()) >= 5, timeout=20)
            periph = sim.lookup(east)
            assert periph is not None
            inject(periph, "drop")  # two notifications lost on the air
            inject(periph, "garble")
            inject(periph, "forced")
            await col.wait_for(lambda c: any(e["type"] == "door.forced_open" and e["state"] == "cleared"
                                             for e in c.events()), timeout=20)
            await eventually(lambda: gw.counters.get("device.gate-e2e-east.backfilled") >= 2, timeout=10)
            assert await gw.drain(15)
        accepted = [json.loads(r.body) for r in _rows(tmp_path)]
        await col.wait_for(lambda c: {e["id"] for e in c.events()} >= {e["id"] for e in accepted}, timeout=10)

    schema = event_json_schema()  # the models' schema (the committed file is checked by test_schema)
    published = {}
    for topic, payload in col.messages:
        if not payload or "/gateway/" in topic:
            continue
        body = json.loads(payload)
        if "/event/" in topic:
            jsonschema.validate(body, schema)
            assert topic == f"courtyard/{SITE}/access_gate/{body['device']['id']}/event/{body['type']}"
            published[body["id"]] = body
    for ev in accepted:
        assert published[ev["id"]] == ev

    east_events = [e for e in accepted if e["device"]["id"] == "gate-e2e-east"]
    seqs = sorted(e["seq"] for e in east_events if e["seq"] is not None and e["state"] != "cleared")
    assert seqs == list(range(1, seqs[-1] + 1)), "every record exactly once, the lost ones backfilled"
    assert any(e["quality"]["status"] == "rejected" for e in east_events)  # the garbled notification
    forced = [e for e in east_events if e["type"] == "door.forced_open"]
    assert [f["state"] for f in forced][-2:] == ["raised", "cleared"]
    assert forced[-1]["alarm_id"] == forced[-2]["alarm_id"] and forced[-1]["severity"] == "major"
    west_events = [e for e in accepted if e["device"]["id"] == "gate-e2e-west" and e["seq"] is not None]
    assert west_events and all(e["quality"]["reasons"] == ["clock_skew"] for e in west_events)
    assert all(e["raw_code"].startswith("hik:") for e in west_events)

    rows = await influx_v1.query("SELECT * FROM access_gate")
    by_id = {r["event_id"]: r for r in rows}
    # Device clocks tick in whole seconds; the sink spreads same-second events of one series
    # over that second by a stable hash of the id (gateway.sinks.influx.point_time_ns), so
    # every accepted event is its own point (a true collision needs equal 30-bit hashes).
    def point(ev: dict[str, Any]) -> tuple[str, ...]:
        return (ev["device"]["id"], ev["type"], ev["class"], ev["severity"], ev["state"],
                ev["quality"]["status"], str(point_time_ns(ev["time"], ev["id"])))

    series: dict[tuple[str, ...], list[str]] = {}
    for ev in accepted:
        series.setdefault(point(ev), []).append(ev["id"])
    collisions = sum(len(ids) - 1 for ids in series.values())
    for ev in accepted:
        if ev["class"] == "connectivity":
            continue
        key = point(ev)
        present = [i for i in series[key] if i in by_id]
        assert len(present) == 1, (ev, present)
        row = by_id[present[0]]
        assert (row["device"], row["type"], row["severity"]) == (ev["device"]["id"], ev["type"], ev["severity"])
        if present[0] == ev["id"] and ev["payload"].get("credential_hash"):
            assert row["credential_hash"] == ev["payload"]["credential_hash"]
    assert collisions == 0
    assert len(by_id) >= len(accepted) - sum(e["class"] == "connectivity" for e in accepted)
    tag_keys = await influx_v1.query("SHOW TAG KEYS FROM access_gate")
    assert "credential_hash" not in json.dumps(tag_keys)
    await asyncio.sleep(0)


def _rows(tmp_path: Path) -> list[Any]:
    from gateway.history import query

    return list(query(tmp_path / "outbox.db"))


async def test_supervisor_reconnects_a_gate_that_went_dark(tmp_path: Path) -> None:
    """Dead battery -> link lost, connects refused -> device.offline; power back -> online + backfill."""
    address = "C0:57:0A:0E:00:03"
    cfg = parse_config(base_config(tmp_path, site=SITE, devices=[
        gate("gate-dark", address, offline_after=2, backoff={"initial_s": 0.05, "max_s": 0.2, "jitter": 0},
             simulation={"seed": 23, "arrivals_per_min": 600}),
    ]))
    async with Gateway(cfg) as gw:
        periph = await eventually(lambda: sim.lookup(address), timeout=10)
        assert isinstance(periph, SimulatedGatePeripheral)
        await eventually(lambda: periph.centrals, timeout=10)
        await eventually(lambda: periph.model.seq >= 5, timeout=10)
        periph.die()
        await eventually(lambda: any(json.loads(r.body)["type"] == "device.offline" for r in _rows(tmp_path)))
        periph.model.advance(30)  # the gate keeps recording on its last reserves while unreachable
        dark_seq = periph.model.seq
        periph.revive()
        await eventually(lambda: sum(json.loads(r.body)["type"] == "device.online" for r in _rows(tmp_path)) >= 2)
        await eventually(lambda: gw.counters.get("device.gate-dark.backfilled") > 0, timeout=10)
        await eventually(lambda: {e["seq"] for e in map(json.loads, (r.body for r in _rows(tmp_path)))}
                         >= set(range(1, dark_seq + 1)), timeout=10)
    events = [json.loads(r.body) for r in _rows(tmp_path)]
    types = [e["type"] for e in events]
    assert types.index("device.ac_lost") < types.index("device.offline")
    low = [e for e in events if e["type"] == "device.battery_low"]
    assert [e["state"] for e in low] == ["raised", "cleared"] and low[0]["alarm_id"] == low[1]["alarm_id"]
    seqs = [e["seq"] for e in events if e["seq"] is not None and e["state"] != "cleared"]
    assert len(seqs) == len(set(seqs))
