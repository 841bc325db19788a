"""A recorded camera run replays to the same events (alarm ids included): the decoder is pure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.replay import replay_events
from scenarios import files as shipped
from simulators.scenario.model import load_scenario
from tests.scenario_support import play
from tests.servers import Mosquitto


def _key(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["device"]["id"], e["type"], e["state"], e["alarm_id"], e["time"], e["payload"].get("snapshot_uri"))


async def test_record_then_replay_camera_scenario(tmp_path: Path, mosquitto: Mosquitto) -> None:
    scenario = load_scenario(shipped()["ebike_in_lobby"])
    rec = tmp_path / "recording.jsonl"
    played = await play(scenario, tmp_path, mosquitto, speed=4, record=rec)
    replayed = [e.model_dump(mode="json", by_alias=True) async for e in replay_events(rec)]
    live = [_key(e) for e in played.accepted if e["type"].startswith("camera.")]
    again = [_key(e) for e in replayed if e["type"].startswith("camera.")]
    assert live == again
    assert {k[1:3] for k in live} >= {("camera.ebike_detected", "raised"), ("camera.ebike_detected", "cleared")}
