"""Puts pump simulators in scenarios (`kind: water_pump`): inject/clear `dry_run` and `overheat`."""

from __future__ import annotations

import contextlib
from typing import Any

from courtyard_pump.simulator import FAULTS, PumpSimulator
from simulators.net import free_port
from simulators.scenario.adapter import KindAdapter, UnknownAction
from simulators.scenario.model import ScenarioDevice


class PumpAdapter(KindAdapter):
    """Settings: `poll_interval_s` (1), `dry_run_s` (10), both in scenario seconds."""

    kind = "water_pump"

    def __init__(self, devices: list[ScenarioDevice], *, seed: int, speed: float, scenario: str) -> None:
        super().__init__(devices, seed=seed, speed=speed, scenario=scenario)
        self.sims: dict[str, PumpSimulator] = {}

    def actions(self) -> dict[str, set[str]]:
        return {"do": set(), "inject": set(FAULTS), "clear": set(FAULTS)}

    async def start(self) -> None:
        for dev in self.devices:
            sim = PumpSimulator(port=free_port())
            await sim.start()
            self.sims[dev.id] = sim

    async def stop(self) -> None:
        for sim in self.sims.values():
            with contextlib.suppress(Exception):
                await sim.stop()

    def device_configs(self) -> list[dict[str, Any]]:
        return [{
            "id": dev.id, "driver": "modbus_water_pump", "name": dev.name, "simulated": True,
            "location": dev.location.model_dump(exclude_none=True), "host": "127.0.0.1", "port": self.sims[dev.id].port,
            "poll_interval_s": max(0.1, float(dev.settings.get("poll_interval_s", 1.0)) / self.speed),
            "timeout_s": 0.8,
            "dry_run_s": float(dev.settings.get("dry_run_s", 10.0)) / self.speed,
        } for dev in self.devices]

    async def apply(self, device: ScenarioDevice, verb: str, action: str, params: dict[str, Any]) -> None:
        self.check(verb, action)
        sim = self.sims[device.id]
        if verb == "inject":
            await sim.inject(action)
        elif verb == "clear":
            await sim.clear(action)
        else:
            raise UnknownAction(verb)
