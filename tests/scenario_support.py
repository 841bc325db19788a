"""Run a scenario in-process against real servers and collect what the platform receives."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import parse_config
from gateway.history import query
from gateway.recorder import JsonlRecorder
from gateway.replay import recording_header
from gateway.runtime import Gateway
from simulators.scenario.model import Scenario
from simulators.scenario.runner import Infra, ScenarioRunner
from tests.helpers import MqttCollector
from tests.servers import Mosquitto


@dataclass
class Played:
    """The outcome of one scenario run."""

    mqtt: list[dict[str, Any]]
    accepted: list[dict[str, Any]]


async def play(
    scenario: Scenario,
    tmp_path: Path,
    broker: Mosquitto,
    *,
    speed: float | None = None,
    seed: int | None = None,
    record: Path | None = None,
    infra: Infra | None = None,
    settle_s: float = 3.0,
) -> Played:
    """Simulators + gateway + timeline; returns MQTT events and accepted (outbox) events."""
    runner = ScenarioRunner(scenario, speed=speed, seed=seed)
    async with runner:
        cfg = parse_config(runner.gateway_config(
            data_dir=tmp_path, mqtt={"host": broker.host, "port": broker.port, "backoff_max_s": 1.0}))
        recorder = JsonlRecorder(record, recording_header(cfg, scenario.scenario)) if record else None
        topic = f"courtyard/{scenario.site.id}/#"
        async with MqttCollector(broker.host, broker.port, topic) as col:
            async with Gateway(cfg, recorder=recorder, scenario=scenario.scenario) as gw:
                await runner.play(infra)
                await asyncio.sleep(settle_s)
                assert await gw.drain(60), "the backlog did not drain"
            if recorder is not None:
                recorder.close()
            accepted = [json.loads(r.body) for r in query(tmp_path / "outbox.db")]
            ids = {e["id"] for e in accepted}
            await col.wait_for(lambda c: ids <= {e["id"] for e in c.events()}, timeout=30)
            return Played(col.events(), accepted)
