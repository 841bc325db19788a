"""PA scenario adapter: PA simulators over OPC UA -> opcua_pa driver -> gateway outbox."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from drivers.opcua_pa.config import OpcUaPaConfig
from drivers.opcua_pa.decoder import PaDecoder
from gateway import history
from gateway.config import parse_config
from gateway.recorder import JsonlRecorder
from gateway.replay import recording_header, replay_events
from gateway.runtime import Gateway
from simulators.scenario.adapter import UnknownAction
from simulators.scenario.model import ScenarioDevice
from simulators.scenario.pa import PaAdapter
from tests.helpers import base_config, decoded, eventually

QUIET = {"rate": 0, "music": False}  # no random pages, zones idle: scripted runs only


def devices(*ids: str, **settings: Any) -> list[ScenarioDevice]:
    return [ScenarioDevice(id=i, kind="pa", name=f"PA {i}", location={"building": "1"},
                           settings=QUIET | settings) for i in ids]


def events(tmp_path: Path, device: str | None = None) -> list[dict[str, Any]]:
    rows = history.query(tmp_path / "outbox.db", device=device)
    return [json.loads(r.body) for r in rows]


def alarms(tmp_path: Path, device: str) -> list[dict[str, Any]]:
    """Raise/clear events of the PA (connectivity left out)."""
    return [e for e in events(tmp_path, device) if e["state"] != "momentary" and e["type"].startswith("pa.")]


async def wait_alarms(tmp_path: Path, device: str, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = await eventually(
        lambda: (a if len(a := alarms(tmp_path, device)) >= n else None), timeout=timeout)
    return got


async def wait_type(tmp_path: Path, device: str, typ: str, count: int = 1, timeout: float = 10.0) -> None:
    await eventually(lambda: sum(e["type"] == typ for e in events(tmp_path, device)) >= count, timeout=timeout)


def strip(event: dict[str, Any]) -> dict[str, Any]:
    """What a replay must reproduce: everything but the event id and the commit time."""
    return {k: v for k, v in event.items() if k not in ("id", "received")}


@pytest_asyncio.fixture
async def adapter() -> AsyncIterator[PaAdapter]:
    ad = PaAdapter(devices("pa-a", "pa-b"), seed=7, speed=5.0, scenario="pa-test")
    await ad.start()
    try:
        yield ad
    finally:
        await ad.stop()


def test_device_configs_reach_the_simulators_and_scale_with_speed() -> None:
    ad = PaAdapter(devices("pa-x", watchdog_s=2.0, load_deadband_pct=2.0), seed=1, speed=4.0, scenario="cfg")
    with pytest.raises(KeyError):  # not started: no simulator to reach
        ad.device_configs()
    assert ad.actions()["do"] == {"page", "emergency_broadcast", "stop_emergency", "set_volume"}
    assert {"line_short", "line_open", "earth_fault", "amp_overheat", "mains_loss", "backup_fault", "disconnect",
            "session_drop", "server_restart", "slow_replies"} <= ad.actions()["inject"] == ad.actions()["clear"]


async def test_device_config_validates(adapter: PaAdapter, tmp_path: Path) -> None:
    cfgs = adapter.device_configs()
    assert [c["id"] for c in cfgs] == ["pa-a", "pa-b"]
    assert cfgs[0]["url"] != cfgs[1]["url"] and cfgs[0]["simulated"] is True
    assert cfgs[0]["watchdog_s"] == pytest.approx(0.2) and cfgs[0]["location"] == {"building": "1"}
    parsed = parse_config(base_config(tmp_path, devices=cfgs), source="test")
    assert all(isinstance(d, OpcUaPaConfig) for d in parsed.devices)


async def test_unknown_action_is_refused(adapter: PaAdapter) -> None:
    dev = adapter.devices[0]
    for verb, action in (("do", "dance"), ("inject", "page"), ("clear", "fire"), ("shout", "page")):
        with pytest.raises(UnknownAction):
            await adapter.apply(dev, verb, action, {})
    with pytest.raises(ValueError, match="unknown zone"):
        await adapter.apply(dev, "do", "page", {"zone": "z9"})
    with pytest.raises(ValueError, match="unknown zones"):
        await adapter.apply(dev, "do", "emergency_broadcast", {"zones": "z1,z9"})
    with pytest.raises(ValueError, match="source"):
        await adapter.apply(dev, "do", "emergency_broadcast", {"source": "drill"})
    assert not adapter.sims[dev.id].model.emergency.active


async def test_behaviour_and_device_faults_pair_up_and_replay(adapter: PaAdapter, tmp_path: Path) -> None:
    cfg = parse_config(base_config(tmp_path, devices=adapter.device_configs()), source="test")
    rec_path = tmp_path / "recording.jsonl"
    rec = JsonlRecorder(rec_path, recording_header(cfg, "pa-test"))
    a, b = adapter.devices
    async with Gateway(cfg, recorder=rec, scenario="pa-test") as gw:
        await wait_type(tmp_path, "pa-a", "device.online")
        await wait_type(tmp_path, "pa-b", "device.online")
        await adapter.apply(a, "do", "emergency_broadcast", {"zones": ["z1", "z2"], "source": "fire_linkage"})
        await adapter.apply(a, "do", "set_volume", {"zone": "z1", "db": -5})  # refused: z1 is in emergency
        await adapter.apply(a, "do", "set_volume", {"zone": "z3", "db": -12})
        await adapter.apply(a, "do", "page", {"zone": "z4", "seconds": 60})
        await adapter.apply(a, "inject", "line_short", {"line": "l1"})
        await adapter.apply(a, "inject", "earth_fault", {"zone": "z3"})
        await adapter.apply(a, "inject", "amp_overheat", {"amp": "a2"})
        await adapter.apply(a, "inject", "mains_loss", {})
        await adapter.apply(a, "inject", "backup_fault", {})
        await adapter.apply(b, "inject", "line_open", {"line": "l2"})
        raised = await wait_alarms(tmp_path, "pa-a", 6)
        await adapter.apply(a, "clear", "line_short", {})
        await adapter.apply(a, "clear", "earth_fault", {"line": "l3"})
        await adapter.apply(a, "clear", "amp_overheat", {})
        await adapter.apply(a, "clear", "mains_loss", {})
        await adapter.apply(a, "clear", "backup_fault", {})
        await adapter.apply(a, "do", "stop_emergency", {})
        got = await wait_alarms(tmp_path, "pa-a", 12)
        assert await gw.drain(5)
    rec.close()

    assert sorted((e["type"], e["state"]) for e in raised) == sorted([
        ("pa.emergency_broadcast", "raised"), ("pa.line_fault", "raised"), ("pa.line_fault", "raised"),
        ("pa.amp_fault", "raised"), ("pa.mains_fault", "raised"), ("pa.backup_power_fault", "raised")])
    eb = next(e for e in got if e["type"] == "pa.emergency_broadcast")
    assert eb["payload"]["emergency_source"] == "fire_linkage" and eb["payload"]["zones"] == ["z1", "z2"]
    assert eb["severity"] == "critical" and eb["simulated"] is True
    lines = {(e["payload"]["line"], e["payload"]["fault"]) for e in got if e["type"] == "pa.line_fault"}
    assert lines == {("l1", "short"), ("l3", "earth")}
    assert next(e for e in got if e["type"] == "pa.amp_fault")["payload"]["amplifier"] == "a2"
    by_alarm: dict[str, list[str]] = {}
    for e in got:
        by_alarm.setdefault(e["alarm_id"], []).append(e["state"])
    assert len(by_alarm) == 6 and all(states == ["raised", "cleared"] for states in by_alarm.values())

    evs = events(tmp_path, "pa-a")
    assert any(e["type"] == "pa.spare_amp_switched" and e["payload"]["amplifier"] == "a2" for e in evs)
    volumes = [e["payload"] for e in evs if e["type"] == "pa.volume"]
    assert ("z3", -12.0) in [(v["zone"], v["volume_db"]) for v in volumes]
    assert ("z1", -5.0) not in [(v["zone"], v["volume_db"]) for v in volumes]  # refused in emergency
    assert any(e["type"] == "pa.zone_state" and e["payload"]["zone"] == "z4" and e["payload"]["zone_state"] ==
               "paging" for e in evs)
    assert [(e["type"], e["payload"]["line"]) for e in alarms(tmp_path, "pa-b")] == [("pa.line_fault", "l2")]

    # Replay: the recording, fed through fresh drivers at its recorded times, gives the same events.
    replayed = [e.model_dump(mode="json", by_alias=True) async for e in replay_events(rec_path)]
    for dev_id in ("pa-a", "pa-b"):
        live = [strip(e) for e in decoded(events(tmp_path, dev_id))]
        again = [strip(e) for e in replayed if e["device"]["id"] == dev_id]
        assert again == live
    assert any(e["type"] == "pa.emergency_broadcast" for e in replayed)


async def test_transport_faults_drop_and_recover(adapter: PaAdapter, tmp_path: Path) -> None:
    cfg = parse_config(base_config(tmp_path, devices=adapter.device_configs()[:1]), source="test")
    a = adapter.devices[0]
    async with Gateway(cfg) as gw:
        await wait_type(tmp_path, "pa-a", "device.online")
        await adapter.apply(a, "inject", "disconnect", {})
        await wait_type(tmp_path, "pa-a", "device.offline")
        await adapter.apply(a, "inject", "line_open", {"line": "l4"})  # happens while unreachable
        await adapter.apply(a, "clear", "disconnect", {})
        await wait_type(tmp_path, "pa-a", "device.online", 2)
        await wait_alarms(tmp_path, "pa-a", 1)  # reconciled from the snapshot after reconnect

        await adapter.apply(a, "inject", "session_drop", {})
        await adapter.apply(a, "inject", "mains_loss", {})
        await wait_alarms(tmp_path, "pa-a", 2)
        await adapter.apply(a, "inject", "server_restart", {"down": 1})
        await adapter.apply(a, "clear", "mains_loss", {})
        await wait_alarms(tmp_path, "pa-a", 3)
        await adapter.apply(a, "inject", "slow_replies", {"seconds": 1})  # 0.2 s real: under the timeout
        await adapter.apply(a, "clear", "line_open", {})
        await wait_alarms(tmp_path, "pa-a", 4)
        await adapter.apply(a, "clear", "slow_replies", {})
        assert await gw.drain(5)
    got = [(e["type"], e["state"]) for e in alarms(tmp_path, "pa-a")]
    assert got == [("pa.line_fault", "raised"), ("pa.mains_fault", "raised"), ("pa.mains_fault", "cleared"),
                   ("pa.line_fault", "cleared")]
    assert adapter.sims["pa-a"].response_delay_s == 0.0


async def scripted_run(tmp_path: Path, seed: int) -> list[tuple[str, str, str | None]]:
    """A short timeline with rng-chosen targets; the non-status events it produces."""
    ad = PaAdapter(devices("pa-s"), seed=seed, speed=5.0, scenario="determinism")
    await ad.start()
    try:
        cfg = parse_config(base_config(tmp_path, devices=ad.device_configs()), source="test")
        dev = ad.devices[0]
        async with Gateway(cfg) as gw:
            await wait_type(tmp_path, "pa-s", "device.online")
            await ad.apply(dev, "inject", "line_short", {})  # line chosen by the scenario rng
            await ad.apply(dev, "inject", "amp_overheat", {})  # amplifier chosen by the rng
            await ad.apply(dev, "do", "emergency_broadcast", {"source": "manual"})
            await wait_alarms(tmp_path, "pa-s", 3)
            await ad.apply(dev, "clear", "line_short", {})
            await ad.apply(dev, "clear", "amp_overheat", {})
            await ad.apply(dev, "do", "stop_emergency", {})
            await wait_alarms(tmp_path, "pa-s", 6)
            assert await gw.drain(5)
    finally:
        await ad.stop()
    return [(e["type"], e["state"], e["payload"].get("line") or e["payload"].get("amplifier"))
            for e in events(tmp_path, "pa-s") if e["class"] not in ("status", "connectivity")]


async def test_same_seed_same_sequence(tmp_path: Path) -> None:
    first = await scripted_run(tmp_path / "one", seed=11)
    second = await scripted_run(tmp_path / "two", seed=11)
    assert first == second
    assert ("pa.emergency_broadcast", "raised", None) in first and len(first) >= 7  # + spare switch-over


def test_replay_keeps_device_timestamps_with_device_time() -> None:
    base = {"id": "pa-t", "driver": "opcua_pa", "url": "opc.tcp://127.0.0.1:1/"}
    when = datetime.fromisoformat("2026-01-02T03:04:05+00:00")
    stamp = "2026-01-02T03:04:04.500000+00:00"
    batch = {"changes": [["line.l1.status", 1, stamp]]}
    for device_time, expected in ((True, datetime.fromisoformat(stamp)), (False, None)):
        cfg = OpcUaPaConfig.model_validate(base | {"device_time": device_time})
        (draft,) = PaDecoder(cfg, None).feed("changes", batch, when)  # type: ignore[arg-type]
        assert (draft.type, draft.state, draft.time) == ("pa.line_fault", "raised", expected)


async def test_background_paging_and_value_faults(tmp_path: Path) -> None:
    ad = PaAdapter(devices("pa-bg", rate=1.0), seed=3, speed=10.0, scenario="background")
    await ad.start()
    try:
        cfg = parse_config(base_config(tmp_path, devices=ad.device_configs()), source="test")
        dev = ad.devices[0]
        async with Gateway(cfg) as gw:
            # nobody pages: the simulator does, at `rate` pages per zone per scenario second
            await eventually(lambda: any(e["type"] == "pa.zone_state" and e["payload"]["zone_state"] == "paging"
                                         for e in events(tmp_path, "pa-bg")))
            await ad.apply(dev, "inject", "battery_low", {"pct": 12})
            await ad.apply(dev, "inject", "garbage", {"point": "line.l2.status", "value": 77})
            await wait_type(tmp_path, "pa-bg", "pa.battery_low")
            await eventually(lambda: any(e["quality"]["status"] == "rejected" for e in events(tmp_path, "pa-bg")))
            await ad.apply(dev, "clear", "battery_low", {})
            await ad.apply(dev, "clear", "garbage", {"point": "line.l2.status"})
            await wait_type(tmp_path, "pa-bg", "pa.battery_low", 2)
            assert await gw.drain(5)
    finally:
        await ad.stop()
    low = [(e["state"], e["payload"]["battery_pct"])
           for e in events(tmp_path, "pa-bg") if e["type"] == "pa.battery_low"]
    assert low[0] == ("raised", 12.0) and low[1][0] == "cleared"
    bad = next(e for e in events(tmp_path, "pa-bg") if e["quality"]["status"] == "rejected")
    assert bad["type"] == "pa.line_fault" and bad["payload"]["line"] == "l2"
    assert gw.counters.get("device.pa-bg.rejected") >= 1
