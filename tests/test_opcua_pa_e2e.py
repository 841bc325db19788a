"""Broadcast simulator -> gateway (opcua_pa) -> real mosquitto and InfluxDB 1.x -> read back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from gateway.config import parse_config
from gateway.runtime import Gateway
from simulators.pa import PaSimulator
from tests.helpers import MqttCollector, base_config, eventually
from tests.servers import free_port


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[PaSimulator]:
    async with PaSimulator(port=free_port(), tick_s=0) as s:
        yield s


def pa_device(dev_id: str, url: str) -> dict[str, Any]:
    return {"id": dev_id, "driver": "opcua_pa", "url": url, "vendor": "courtyard", "model": "sim-pa-4z",
            "location": {"building": "1"}, "watchdog_s": 0.3, "request_timeout_s": 2.0, "simulated": True,
            "backoff": {"initial_s": 0.1, "max_s": 0.5}}


def faults(col: MqttCollector, device: str) -> list[tuple[str, str, str | None, str | None]]:
    """(type, state, line-or-fault, alarm_id) of raise/clear events, in MQTT arrival order."""
    return [(e["type"], e["state"], e["payload"].get("line") or e["payload"].get("fault"), e["alarm_id"])
            for e in col.events()
            if e["device"]["id"] == device and e["state"] != "momentary" and e["type"].startswith("pa.")]


async def test_faults_reach_mqtt_and_influx(sim: PaSimulator, mosquitto: Any, influx_v1: Any,
                                            tmp_path: Path) -> None:
    influx = {"url": influx_v1.url, "api": "v1", "database": influx_v1.database}
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, influx=influx,
                                   devices=[pa_device("pa-e2e", sim.url)]), source="test")
    async with MqttCollector(mosquitto.host, mosquitto.port, "courtyard/test-site/pa/pa-e2e/#") as col, \
            Gateway(cfg) as gw:
        await col.wait_for(lambda c: any(e["type"] == "pa.zone_state" for e in c.events()))
        await sim.start_emergency(["z2"], "evac-7", source="fire_linkage")
        await sim.set_line_fault("l1", "short")
        await col.wait_for(lambda c: len(faults(c, "pa-e2e")) >= 2)
        await sim.set_line_fault("l1", None)
        await sim.stop_emergency()
        await col.wait_for(lambda c: len(faults(c, "pa-e2e")) >= 4)
        got = faults(col, "pa-e2e")
        assert [(t, s) for t, s, _, _ in got].count(("pa.emergency_broadcast", "raised")) == 1
        eb = next(e for e in col.events() if e["type"] == "pa.emergency_broadcast" and e["state"] == "raised")
        assert eb["severity"] == "critical" and eb["class"] == "alarm" and eb["simulated"] is True
        assert eb["payload"]["emergency_source"] == "fire_linkage" and eb["device"]["kind"] == "pa"
        line = [g for g in got if g[0] == "pa.line_fault"]
        assert [s for _, s, _, _ in line] == ["raised", "cleared"] and line[0][3] == line[1][3]
        assert any(t.endswith("/state") for t, _ in col.messages)  # retained zone status
        assert await gw.drain(10)

        async def rows() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = await influx_v1.query(
                "SELECT * FROM pa WHERE \"device\" = 'pa-e2e' AND \"type\" = 'pa.line_fault'")
            return found

        found = await eventually(rows, timeout=10)
        assert {r["state"] for r in found} == {"raised", "cleared"}
        assert {r["severity"] for r in found} == {"major"}


async def test_server_restart_mid_stream_loses_nothing(sim: PaSimulator, mosquitto: Any,
                                                       tmp_path: Path) -> None:
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, devices=[pa_device("pa-restart", sim.url)]),
                       source="test")
    async with MqttCollector(mosquitto.host, mosquitto.port, "courtyard/test-site/pa/pa-restart/#") as col, \
            Gateway(cfg):
        await col.wait_for(lambda c: any(e["type"] == "pa.zone_state" for e in c.events()))
        await sim.set_line_fault("l1", "short")
        await sim.mains_loss()
        await col.wait_for(lambda c: len(faults(c, "pa-restart")) >= 2)

        async def while_down() -> None:
            await sim.set_line_fault("l1", None)      # cleared while away
            await sim.set_line_fault("l3", "earth")   # raised while away
            await sim.mains_loss(False)               # cleared while away
            await sim.overheat("a2")                  # raised while away

        await sim.restart(down_s=1.0, while_down=while_down)
        await col.wait_for(lambda c: len(faults(c, "pa-restart")) >= 6, timeout=15)
        # and the stream goes on after the reconnect
        await sim.set_line_fault("l3", None)
        await col.wait_for(lambda c: len(faults(c, "pa-restart")) >= 7, timeout=10)
        got = faults(col, "pa-restart")
        keyed = [(t, s, f) for t, s, f, _ in got]
        assert keyed[:2] == [("pa.line_fault", "raised", "l1"), ("pa.mains_fault", "raised", "mains_loss")]
        assert set(keyed[2:6]) == {("pa.line_fault", "cleared", "l1"), ("pa.line_fault", "raised", "l3"),
                                   ("pa.mains_fault", "cleared", "mains_loss"),
                                   ("pa.amp_fault", "raised", "overheat")}
        assert keyed[6] == ("pa.line_fault", "cleared", "l3")
        assert len(got) == 7  # nothing missing, nothing repeated
        links = [e["type"] for e in col.events() if e["class"] == "connectivity"]
        assert links[-1] == "device.online" and "device.offline" in links  # 3 misses while the server was down
        by_alarm: dict[str | None, list[str]] = {}
        for _, state, _, alarm in got:
            by_alarm.setdefault(alarm, []).append(state)
        assert all(states in (["raised", "cleared"], ["raised"]) for states in by_alarm.values())
