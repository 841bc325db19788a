"""Plate-reader scenario adapter: simulated cameras push over HTTP -> http_plate_reader -> gateway outbox."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from drivers.http_plate_reader.config import HttpPlateReaderConfig
from gateway import history
from gateway.config import parse_config
from gateway.metrics import Counters
from gateway.recorder import JsonlRecorder
from gateway.replay import recording_header, replay_events
from gateway.runtime import Gateway
from simulators.scenario.adapter import UnknownAction
from simulators.scenario.model import ScenarioDevice
from simulators.scenario.plate_reader import PlateReaderAdapter
from tests.helpers import base_config, decoded, eventually

SPEED = 10.0
RESIDENT = "京A12345"
BARRED = "粤B99999"


def devices(tmp_path: Path, **settings: Any) -> list[ScenarioDevice]:
    """An entry lane (Zhenshi) and an exit lane (Hikvision); quiet: scripted cars only."""
    common = {"rate": 0, "heartbeat_s": 4, "barrier_timeout_s": 10, "media_path": str(tmp_path / "media"),
              "blocklist": [BARRED]} | settings
    return [
        ScenarioDevice(id="lpr-in", kind="plate_reader", name="Garage B1 in", location={"garage": "B1"},
                       settings=common | {"direction": "entry"}),
        ScenarioDevice(id="lpr-out", kind="plate_reader", name="Garage B1 out", location={"garage": "B1"},
                       settings=common | {"direction": "exit", "protocol": "hikvision"}),
    ]


def events(tmp_path: Path, device: str | None = None) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in history.query(tmp_path / "outbox.db", device=device)]


def of_type(tmp_path: Path, device: str, typ: str) -> list[dict[str, Any]]:
    return [e for e in events(tmp_path, device) if e["type"] == typ]


async def wait_type(tmp_path: Path, device: str, typ: str, count: int = 1, timeout: float = 10.0) -> list[
        dict[str, Any]]:
    got: list[dict[str, Any]] = await eventually(
        lambda: (found if len(found := of_type(tmp_path, device, typ)) >= count else None), timeout=timeout)
    return got


@pytest_asyncio.fixture
async def adapter(tmp_path: Path) -> AsyncIterator[PlateReaderAdapter]:
    ad = PlateReaderAdapter(devices(tmp_path), seed=3, speed=SPEED, scenario="lpr-test")
    await ad.start()
    try:
        yield ad
    finally:
        await ad.stop()


def test_actions_cover_the_issue() -> None:
    ad = PlateReaderAdapter([], seed=1, speed=1.0, scenario="x")
    assert ad.actions()["do"] == {"car", "burst"}
    assert {"malformed_json", "gbk_plate", "base64_plate", "invalid_plate", "oversized_image", "wrong_credentials",
            "silent", "blocklisted", "clock_skew", "barrier_stuck"} <= ad.actions()["inject"] == ad.actions()["clear"]


async def test_device_configs_validate_and_scale_with_speed(adapter: PlateReaderAdapter, tmp_path: Path) -> None:
    cfgs = adapter.device_configs()
    assert [c["id"] for c in cfgs] == ["lpr-in", "lpr-out"]
    assert cfgs[0]["listen_port"] == cfgs[1]["listen_port"] == adapter.port  # one listener for the garage
    assert cfgs[0]["heartbeat_interval_s"] == pytest.approx(0.4) and cfgs[0]["dedupe_s"] == pytest.approx(1.0)
    assert cfgs[0]["direction"] == "entry" and "direction" not in cfgs[1]  # Hikvision: from the wire
    assert cfgs[0]["access"]["blocklist"] == [BARRED] and RESIDENT in cfgs[0]["access"]["allowlist"]
    assert cfgs[0]["simulated"] is True and cfgs[0]["location"] == {"garage": "B1"} and cfgs[0]["name"]
    assert cfgs[0]["auth"]["token"] != cfgs[1]["auth"]["token"]
    parsed = parse_config(base_config(tmp_path, devices=cfgs), source="test")
    assert all(isinstance(d, HttpPlateReaderConfig) for d in parsed.devices)


async def test_unknown_action_is_refused(adapter: PlateReaderAdapter) -> None:
    dev, hik = adapter.devices
    for verb, action in (("do", "dance"), ("inject", "car"), ("clear", "fire"), ("shout", "car")):
        with pytest.raises(UnknownAction):
            await adapter.apply(dev, verb, action, {})
    with pytest.raises(ValueError, match="direction"):
        await adapter.apply(dev, "do", "car", {"direction": "sideways"})
    with pytest.raises(ValueError, match="gate_input"):
        await adapter.apply(hik, "inject", "barrier_stuck", {})
    with pytest.raises(ValueError, match="colour"):
        await adapter.apply(dev, "do", "car", {"colour": "pink"})
    assert list(adapter.results) == []  # nothing was sent


async def test_background_traffic_runs_by_itself(tmp_path: Path) -> None:
    busy = PlateReaderAdapter(devices(tmp_path, rate=120, image_bytes=0)[:1], seed=2, speed=SPEED, scenario="busy")
    await busy.start()
    try:
        cfg = parse_config(base_config(tmp_path, devices=busy.device_configs()), source="test")
        async with Gateway(cfg):
            decisions = await wait_type(tmp_path, "lpr-in", "lpr.gate_decision", 5)  # ~20 cars/s real
    finally:
        await busy.stop()
    assert {d["payload"]["direction"] for d in decisions} == {"entry"}
    assert len({d["payload"]["plate"] for d in decisions}) >= 3


async def test_cars_and_read_faults_become_the_right_events(adapter: PlateReaderAdapter, tmp_path: Path) -> None:
    entry, out = adapter.devices
    recording = tmp_path / "rec.jsonl"
    cfg = parse_config(base_config(tmp_path, devices=adapter.device_configs()), source="test")
    recorder = JsonlRecorder(recording, recording_header(cfg, "lpr-test"))
    async with Gateway(cfg, recorder=recorder, scenario="lpr-test") as gw:
        await wait_type(tmp_path, "lpr-in", "device.online")
        await wait_type(tmp_path, "lpr-out", "device.online")
        await adapter.apply(entry, "do", "car", {"plate": RESIDENT})
        await adapter.apply(out, "do", "car", {"direction": "exit"})  # the only car inside: the resident
        await adapter.apply(entry, "do", "car", {"colour": "green"})  # a stranger: denied at the entry
        await adapter.apply(entry, "do", "burst", {"n": 3})
        await adapter.apply(entry, "do", "burst", {"n": 4, "duplicate": True, "plate": "浙B77777"})
        for fault in ("blocklisted", "malformed_json", "gbk_plate", "base64_plate", "invalid_plate",
                      "oversized_image", "wrong_credentials"):
            await adapter.apply(entry, "inject", fault, {})
            await adapter.apply(entry, "clear", fault, {})
        for seconds, plate in ((-600, "苏E10001"), (2 * 86400, "苏E10002")):  # behind: kept; days ahead: ignored
            await adapter.apply(entry, "inject", "clock_skew", {"seconds": seconds, "plate": plate})
            await adapter.apply(entry, "clear", "clock_skew", {})
        await wait_type(tmp_path, "lpr-in", "lpr.gate_decision", 12)
        await wait_type(tmp_path, "lpr-in", "lpr.gate_state", 2)  # the barrier went up (and down) over GPIO
        assert await gw.drain(5)
        counters = gw.counters.snapshot()
    recorder.close()

    reads = of_type(tmp_path, "lpr-in", "lpr.plate_read")
    decisions = of_type(tmp_path, "lpr-in", "lpr.gate_decision")
    first = decisions[0]["payload"]
    assert (first["plate"], first["decision"], first["reason"], first["direction"]) == (
        RESIDENT, "open", "allowlist", "entry")
    assert reads[0]["quality"]["status"] == "valid" and reads[0]["simulated"] is True
    assert reads[0]["scenario"] == "lpr-test" and reads[0]["device"]["location"]["garage"] == "B1"
    left = of_type(tmp_path, "lpr-out", "lpr.gate_decision")
    assert [(d["payload"]["plate"], d["payload"]["direction"], d["payload"]["decision"]) for d in left] == [
        (RESIDENT, "exit", "open")]
    stranger = decisions[1]["payload"]
    assert stranger["decision"] == "deny" and stranger["reason"] == "unknown"
    assert reads[1]["payload"]["plate_class"].startswith("nev") or reads[1]["payload"]["plate_color"] == "green"
    duplicates = [d for d in decisions if d["payload"]["plate"] == "浙B77777"]
    assert len(duplicates) == 1  # four copies of one read, de-duplicated by the driver
    assert counters["device.lpr-in.lpr.duplicates_suppressed"] == 3

    blocked = next(d for d in decisions if d["payload"]["reason"] == "blocklist")
    assert blocked["payload"]["plate"] == BARRED and blocked["severity"] == "major"
    rejected = of_type(tmp_path, "lpr-in", "lpr.push_rejected")
    assert len(rejected) == 1 and rejected[0]["quality"]["status"] == "rejected"
    assert counters["device.lpr-in.lpr.body_gbk"] + counters.get("device.lpr-in.lpr.decoded_gbk", 0) >= 1
    assert counters["device.lpr-in.lpr.decoded_base64"] == 1
    invalid = [r for r in reads if r["quality"]["status"] == "rejected" and r["payload"]["plate"] is None]
    assert len(invalid) == 1 and invalid[0]["payload"]["plate_raw"]  # never an invalid plate in `plate`
    oversized = [r for r in reads if "image_too_large" in r["quality"]["reasons"]]
    assert len(oversized) == 1 and oversized[0]["quality"]["status"] == "rejected"
    assert any(d["payload"]["reason"] == "invalid_plate" for d in decisions)
    assert counters["device.lpr-in.lpr.refused.unauthorized"] == 1  # wrong token: refused, no event
    lag = [(datetime.fromisoformat(r["received"]) - datetime.fromisoformat(r["time"])).total_seconds() for r in reads]
    assert [round(x, -2) for x in lag[-2:]] == [600, 0] and all(abs(x) < 5 for x in lag[:-2])
    assert counters["device.lpr-in.lpr.clock_skew"] == 1
    statuses = {s for dev, _, s in adapter.results if dev == "lpr-in"}
    assert {200, 400, 401, 413} <= statuses

    assert len(events(tmp_path)) > 20
    await assert_replays(tmp_path, recording)


async def assert_replays(tmp_path: Path, recording: Path) -> None:
    """The recorded inputs, fed at their recorded times, give the same events (but id and received)."""
    def strip(e: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in e.items() if k not in ("id", "received")}, sort_keys=True)

    live = sorted(strip(e) for e in decoded(events(tmp_path)))
    replayed = sorted([strip(e.model_dump(mode="json", by_alias=True)) async for e in replay_events(
        recording, counters=Counters())])
    assert replayed == live


@pytest.mark.slow
async def test_barrier_stuck_and_silence_raise_and_clear(adapter: PlateReaderAdapter, tmp_path: Path) -> None:
    entry, out = adapter.devices
    cfg = parse_config(base_config(tmp_path, devices=adapter.device_configs()), source="test")
    recording = tmp_path / "rec.jsonl"
    recorder = JsonlRecorder(recording, recording_header(cfg, None))
    async with Gateway(cfg, recorder=recorder) as gw:
        await wait_type(tmp_path, "lpr-in", "device.online")
        await adapter.apply(entry, "inject", "barrier_stuck", {})  # a resident drives up; the barrier stays down
        raised = await wait_type(tmp_path, "lpr-in", "lpr.barrier_stuck")
        await adapter.apply(entry, "clear", "barrier_stuck", {})
        stuck = await wait_type(tmp_path, "lpr-in", "lpr.barrier_stuck", 2)

        await adapter.apply(out, "inject", "silent", {})
        await adapter.apply(out, "do", "car", {"plate": RESIDENT})  # not reported: the camera is silent
        await wait_type(tmp_path, "lpr-out", "device.offline")
        await adapter.apply(out, "clear", "silent", {})
        await wait_type(tmp_path, "lpr-out", "device.online", 2)

        await adapter.apply(entry, "inject", "wrong_credentials", {"cars": 0})  # heartbeats refused too
        await wait_type(tmp_path, "lpr-in", "device.offline")
        await adapter.apply(entry, "clear", "wrong_credentials", {})
        await wait_type(tmp_path, "lpr-in", "device.online", 2)
        assert await gw.drain(5)

    assert raised[0]["state"] == "raised" and raised[0]["class"] == "fault" and raised[0]["alarm_id"]
    assert [(e["state"], e["alarm_id"]) for e in stuck] == [("raised", raised[0]["alarm_id"]),
                                                           ("cleared", raised[0]["alarm_id"])]
    assert of_type(tmp_path, "lpr-out", "lpr.plate_read") == []
    link = [e["type"] for e in events(tmp_path, "lpr-out") if e["class"] == "connectivity"]
    assert link == ["device.online", "device.offline", "device.online"]
    recorder.close()
    await assert_replays(tmp_path, recording)  # the timer-raised alarm too, with its alarm_id


async def scripted_run(tmp_path: Path, seed: int) -> list[tuple[str, str, str, str | None]]:
    """A short timeline whose plates the scenario rng chooses; the non-status events it produces."""
    ad = PlateReaderAdapter(devices(tmp_path), seed=seed, speed=SPEED, scenario="determinism")
    await ad.start()
    try:
        cfg = parse_config(base_config(tmp_path, devices=ad.device_configs()), source="test")
        entry, out = ad.devices
        async with Gateway(cfg) as gw:
            await wait_type(tmp_path, "lpr-in", "device.online")
            await wait_type(tmp_path, "lpr-out", "device.online")
            await ad.apply(entry, "do", "car", {})
            await ad.apply(entry, "do", "car", {"colour": "yellow"})
            await ad.apply(entry, "do", "burst", {"n": 2})
            await ad.apply(out, "do", "car", {"direction": "exit"})
            await ad.apply(entry, "inject", "invalid_plate", {})
            await ad.apply(entry, "clear", "invalid_plate", {})
            await ad.apply(entry, "inject", "blocklisted", {})
            await wait_type(tmp_path, "lpr-in", "lpr.gate_decision", 6)
            await wait_type(tmp_path, "lpr-out", "lpr.gate_decision", 1)
            assert await gw.drain(5)
    finally:
        await ad.stop()
    return [(e["device"]["id"], e["type"], e["state"], e["payload"].get("plate") or e["payload"].get("plate_raw"))
            for e in events(tmp_path) if e["class"] not in ("status", "connectivity")]


async def test_same_seed_same_sequence(tmp_path: Path) -> None:
    first = await scripted_run(tmp_path / "one", seed=11)
    second = await scripted_run(tmp_path / "two", seed=11)
    other = await scripted_run(tmp_path / "three", seed=12)
    assert first == second and len(first) == 14
    assert [p for *_, p in first] != [p for *_, p in other]  # the plates do come from the seed
