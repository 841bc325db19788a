"""What each device kind provides to scenarios: start simulators, say how to reach them, act.

A `KindAdapter` owns every simulated device of one kind in a scenario. The runner creates
it, calls `start()` (simulators listen on free loopback ports, over their real protocol),
asks `device_configs()` for the gateway device entries that reach them, then calls `apply()`
for each timeline step, and `stop()` at the end.

Actions are named by the kind (`actions()` lists them) and come in three verbs:
`do` (behaviour: a call, a passage, a plate read, a page), `inject` (device or transport
fault) and `clear` (end a fault). `params` carry the details.
"""

from __future__ import annotations

import abc
import random
from typing import Any

from simulators.scenario.model import ScenarioDevice


class UnknownAction(ValueError):
    """A step names an action the kind does not know."""


class KindAdapter(abc.ABC):
    """Simulators of one kind within a scenario."""

    kind: str

    def __init__(self, devices: list[ScenarioDevice], *, seed: int, speed: float, scenario: str) -> None:
        self.devices = devices
        self.seed = seed
        self.speed = speed
        self.scenario = scenario
        self.rng = random.Random(f"{scenario}:{self.kind}:{seed}")

    @abc.abstractmethod
    def actions(self) -> dict[str, set[str]]:
        """Known action names per verb: {"do": {...}, "inject": {...}, "clear": {...}}."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start every simulator (loopback, free ports)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop every simulator; must not raise."""

    @abc.abstractmethod
    def device_configs(self) -> list[dict[str, Any]]:
        """Gateway `devices:` entries (dicts, as in YAML) that connect to the running simulators.

        Each entry carries the scenario device's id, location and name, `simulated: true`,
        and driver settings scaled by `speed` where they are durations of device behaviour.
        """

    @abc.abstractmethod
    async def apply(self, device: ScenarioDevice, verb: str, action: str, params: dict[str, Any]) -> None:
        """Perform one timeline action on one device; raise `UnknownAction` for unknown names."""

    def check(self, verb: str, action: str) -> None:
        """Raise `UnknownAction` unless `action` is known for `verb`."""
        known = self.actions().get(verb, set())
        if action not in known:
            raise UnknownAction(f"{self.kind}: unknown {verb} action {action!r}; known: {', '.join(sorted(known))}")
