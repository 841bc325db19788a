"""Play a scenario: start every simulator, give the gateway its config, run the timeline."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import importlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from simulators.scenario.adapter import KindAdapter, UnknownAction
from simulators.scenario.model import Expectation, Scenario, Step

log = logging.getLogger(__name__)


class Controllable(Protocol):
    """Infrastructure a scenario may take down: a broker or a database the runner owns."""

    def stop(self) -> None: ...

    def start(self) -> None: ...


@dataclass
class Infra:
    """What `infra:` steps act on; None means not ours to stop (the step is skipped, with a warning)."""

    broker: Controllable | None = None
    database: Controllable | None = None


def adapter_class(kind: str) -> type[KindAdapter]:
    """The adapter class for a device kind (from the driver registry)."""
    from gateway.registry import scenario_adapters

    adapters = scenario_adapters()
    if kind not in adapters:
        raise ValueError(f"no scenario adapter for device kind {kind!r}; known: {', '.join(sorted(adapters))}")
    module, _, name = adapters[kind].partition(":")
    cls: type[KindAdapter] = getattr(importlib.import_module(module), name)
    return cls


class ScenarioRunner:
    """Owns the simulators of one scenario run."""

    def __init__(self, scenario: Scenario, *, speed: float | None = None, seed: int | None = None) -> None:
        self.scenario = scenario
        self.speed = speed or scenario.speed
        self.seed = scenario.seed if seed is None else seed
        self.adapters: dict[str, KindAdapter] = {}
        for kind in dict.fromkeys(d.kind for d in scenario.devices):
            devices = [d for d in scenario.devices if d.kind == kind]
            self.adapters[kind] = adapter_class(kind)(devices, seed=self.seed, speed=self.speed,
                                                       scenario=scenario.scenario)
        self._validate_actions()
        self._pending: set[asyncio.Task[None]] = set()

    def _validate_actions(self) -> None:
        problems = []
        for i, step in enumerate(self.scenario.timeline):
            verb, name = step.action
            if verb == "infra":
                continue
            targets = self.scenario.targets(step)
            if not targets:
                problems.append(f"timeline[{i}]: no device matches")
            for dev in targets:
                try:
                    self.adapters[dev.kind].check(verb, name)
                except UnknownAction as exc:
                    problems.append(f"timeline[{i}] ({dev.id}): {exc}")
        if problems:
            raise ValueError("\n".join(dict.fromkeys(problems)))

    async def start(self) -> None:
        """Start every simulator."""
        for adapter in self.adapters.values():
            await adapter.start()

    async def stop(self) -> None:
        """Stop pending clears and every simulator."""
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        for adapter in self.adapters.values():
            with contextlib.suppress(Exception):
                await adapter.stop()

    async def __aenter__(self) -> ScenarioRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def gateway_config(
        self,
        *,
        data_dir: Path,
        mqtt: dict[str, Any] | None = None,
        influx: dict[str, Any] | None = None,
        gateway_id: str = "gw-1",
    ) -> dict[str, Any]:
        """A gateway config (as YAML-shaped data) that reaches every running simulator."""
        devices = [entry for adapter in self.adapters.values() for entry in adapter.device_configs()]
        tags = {d.id: d.tags for d in self.scenario.devices if d.tags}
        for entry in devices:
            if entry.get("id") in tags:
                entry["tags"] = list(tags[entry["id"]])
        cfg: dict[str, Any] = {
            "site": self.scenario.site.id,
            "gateway_id": gateway_id,
            "outbox": {"path": str(data_dir / "outbox.db")},
            "mqtt": mqtt if mqtt is not None else {"enabled": False},
            "devices": devices,
        }
        if influx:
            cfg["influx"] = influx
        if self.scenario.rules:  # the scenario's own site: its rules may command its devices
            cfg["rule_files"] = list(self.scenario.rules)
            cfg["commands"] = {"allow": [{"requesters": ["rule:*"], "devices": ["*"], "commands": ["*"],
                                          "note": "scenario rules"}]}
        return cfg

    async def play(self, infra: Infra | None = None, *, on_step: Callable[[Step], Awaitable[None]] | None = None,
                   loop_forever: bool = False) -> None:
        """Run the timeline in scenario time (scaled by speed); returns after `duration`."""
        infra = infra or Infra()
        loop = asyncio.get_running_loop()
        steps = sorted(self.scenario.timeline, key=lambda s: s.at)
        while True:
            start = loop.time()
            for step in steps:
                delay = start + step.at / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._run_step(step, infra)
                if on_step is not None:
                    await on_step(step)
            rest = start + self.scenario.duration / self.speed - loop.time()
            if rest > 0:
                await asyncio.sleep(rest)
            if not loop_forever:
                return

    async def _run_step(self, step: Step, infra: Infra) -> None:
        verb, name = step.action
        if verb == "infra":
            target = infra.broker if name == "broker_down" else infra.database
            if target is None:
                log.warning("scenario step %s skipped: the %s is not owned by this run", name,
                            "broker" if name == "broker_down" else "database")
                return
            log.info("scenario: %s for %.0fs", name, step.for_ or 0)
            await asyncio.to_thread(target.stop)
            self._later((step.for_ or 0) / self.speed, lambda: asyncio.to_thread(target.start))
            return
        for dev in self.scenario.targets(step):
            adapter = self.adapters[dev.kind]
            log.info("scenario: %s %s %s %s", dev.id, verb, name, step.params or "")
            try:
                await adapter.apply(dev, verb, name, step.params)
            except Exception:
                log.exception("scenario step failed: %s %s on %s", verb, name, dev.id)
                continue
            if verb == "inject" and step.for_ is not None:
                self._later(step.for_ / self.speed,
                            lambda a=adapter, d=dev: a.apply(d, "clear", name, step.params))  # type: ignore[misc]

    def _later(self, delay: float, action: Callable[[], Awaitable[Any]]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            try:
                await action()
            except Exception:
                log.exception("scheduled scenario action failed")

        task = asyncio.create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


def matches(exp: Expectation, event: dict[str, Any]) -> bool:
    """Does an event (as published) satisfy an expectation's filters?"""
    if not fnmatch.fnmatchcase(event["type"], exp.type):
        return False
    if exp.device is not None and event["device"]["id"] != exp.device:
        return False
    if exp.state is not None and event["state"] != exp.state:
        return False
    if exp.severity is not None and event["severity"] != exp.severity:
        return False
    return all(event["payload"].get(k) == v for k, v in exp.payload.items())


@dataclass(frozen=True)
class Outcome:
    """How one expectation fared."""

    expectation: Expectation
    seen: int

    @property
    def ok(self) -> bool:
        """Seen often enough, and not too often."""
        exp = self.expectation
        return self.seen >= exp.min_count and (exp.max_count is None or self.seen <= exp.max_count)

    def __str__(self) -> str:
        exp = self.expectation
        bound = f">= {exp.min_count}" + (f", <= {exp.max_count}" if exp.max_count is not None else "")
        filters = exp.model_dump(exclude_defaults=True, exclude={"min_count", "max_count"})
        return f"{'ok  ' if self.ok else 'FAIL'} {filters}: seen {self.seen} (want {bound})"


def evaluate(scenario: Scenario, events: Iterable[dict[str, Any]]) -> list[Outcome]:
    """Each expectation with the number of distinct matching events."""
    events = list(events)
    return [Outcome(exp, len({e["id"] for e in events if matches(exp, e)})) for exp in scenario.expect]


def check_expectations(scenario: Scenario, events: Iterable[dict[str, Any]]) -> list[str]:
    """Failures (empty when everything the platform should see was seen)."""
    return [str(o) for o in evaluate(scenario, events) if not o.ok]
