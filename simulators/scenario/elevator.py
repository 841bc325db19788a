"""Scenario adapter for elevators: one pymodbus server per car, the modbus_elevator driver."""

from __future__ import annotations

import contextlib
from typing import Any

from simulators.elevator import DEVICE_FAULTS, TRANSPORT_FAULTS, ElevatorModel, ElevatorSimulator
from simulators.net import free_port
from simulators.scenario.adapter import KindAdapter, UnknownAction
from simulators.scenario.model import ScenarioDevice


class ElevatorAdapter(KindAdapter):
    """Settings: `map` (gbt24476), `lowest`/`highest` floor, `call_rate` (calls/s), `rated_speed_mps`,
    `poll_interval_s`, and `thresholds` (driver alarm windows, in scenario seconds)."""

    kind = "elevator"

    def __init__(self, devices: list[ScenarioDevice], *, seed: int, speed: float, scenario: str) -> None:
        super().__init__(devices, seed=seed, speed=speed, scenario=scenario)
        self.sims: dict[str, ElevatorSimulator] = {}

    def actions(self) -> dict[str, set[str]]:
        faults = set(DEVICE_FAULTS | TRANSPORT_FAULTS)
        return {"do": {"call"}, "inject": faults, "clear": faults}

    async def start(self) -> None:
        for i, dev in enumerate(self.devices):
            s = dev.settings
            model = ElevatorModel(
                lowest=int(s.get("lowest", -2)), highest=int(s.get("highest", 18)),
                rated_mps=float(s.get("rated_speed_mps", 1.75)), call_rate_per_s=float(s.get("call_rate", 0.05)),
                seed=self.rng.randrange(1 << 30) + i,
            )
            sim = ElevatorSimulator(port=free_port(), regmap=str(s.get("map", "gbt24476")), elevators={1: model},
                                    speed=self.speed)
            await sim.start()
            self.sims[dev.id] = sim

    async def stop(self) -> None:
        for sim in self.sims.values():
            with contextlib.suppress(Exception):
                await sim.stop()

    def device_configs(self) -> list[dict[str, Any]]:
        out = []
        for dev in self.devices:
            s, sim = dev.settings, self.sims[dev.id]
            th = {"trapped_s": 20.0, "outside_door_zone_s": 45.0, "door_open_running_s": 1.0} | s.get("thresholds", {})
            out.append({
                "id": dev.id, "driver": "modbus_elevator", "name": dev.name, "simulated": True,
                "location": dev.location.model_dump(exclude_none=True),
                "host": "127.0.0.1", "port": sim.port, "unit_id": 1, "map": s.get("map", "gbt24476"),
                "lowest_floor": int(s.get("lowest", -2)), "highest_floor": int(s.get("highest", 18)),
                "rated_speed_mps": float(s.get("rated_speed_mps", 1.75)),
                "poll_interval_s": max(0.1, float(s.get("poll_interval_s", 1.0)) / self.speed),
                "timeout_s": max(0.1, min(0.8, float(s.get("poll_interval_s", 1.0)) / self.speed)),
                "thresholds": {k: (v / self.speed if k.endswith("_s") else v) for k, v in th.items()},
            })
        return out

    async def apply(self, device: ScenarioDevice, verb: str, action: str, params: dict[str, Any]) -> None:
        self.check(verb, action)
        sim = self.sims[device.id]
        if verb == "do":  # call
            sim.elevators[1].call(int(params["from"]), int(params["to"]))
        elif verb == "inject":
            value = params.get("value", params.get("code", params.get("seconds", True)))
            await sim.inject(action, value)
        elif verb == "clear":
            await sim.clear(action)
        else:
            raise UnknownAction(verb)
