"""CLI glue for scenarios and recordings: `run --scenario`, `simulate --scenario`, `replay`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from gateway.config import GatewayConfigBase, parse_config
from gateway.errors import ConfigError
from gateway.history import query
from gateway.recorder import JsonlRecorder
from gateway.replay import recording_header, replay_events
from gateway.runtime import Gateway
from simulators.scenario.model import Scenario, load_scenario
from simulators.scenario.runner import ScenarioRunner, evaluate

# Devices whose simulator lives inside the gateway's process (the simulated BLE radio).
IN_PROCESS_ONLY = {"access_gate"}


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def _until(stop: asyncio.Event, task: asyncio.Task[Any]) -> None:
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _load(path: Path) -> Scenario | None:
    try:
        return load_scenario(path)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return None


def report(scenario: Scenario, events: list[dict[str, Any]]) -> int:
    """Print what the platform saw against the scenario's expectations; 0 when all met."""
    classes: dict[str, int] = {}
    for e in events:
        classes[e["class"]] = classes.get(e["class"], 0) + 1
    summary = " ".join(f"{k}={v}" for k, v in sorted(classes.items()))
    print(f"scenario {scenario.scenario}: {len(events)} events ({summary})")
    if scenario.platform_should_see:
        print(f"the platform should see: {' '.join(scenario.platform_should_see.split())}")
    outcomes = evaluate(scenario, events)
    for outcome in outcomes:
        print(f"  {outcome}")
    return 0 if all(o.ok for o in outcomes) else 3


async def run_scenario(
    path: Path, *, speed: float | None, seed: int | None, record: Path | None, data_dir: Path,
    mqtt: dict[str, Any] | None, influx: dict[str, Any] | None = None,
) -> int:
    """`courtyard run --scenario`: simulators and gateway in one process, timeline, expectations."""
    scenario = _load(path)
    if scenario is None:
        return 1
    runner = ScenarioRunner(scenario, speed=speed, seed=seed)
    started_ns = time.time_ns()
    out_dir = data_dir / scenario.scenario
    async with runner:
        try:
            cfg = parse_config(runner.gateway_config(data_dir=out_dir, mqtt=mqtt, influx=influx),
                               source=f"{path} (generated)")
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        recorder = JsonlRecorder(record, recording_header(cfg, scenario.scenario)) if record else None
        try:
            async with Gateway(cfg, recorder=recorder, scenario=scenario.scenario) as gw:
                await _until(_stop_event(), asyncio.create_task(runner.play()))
                await gw.drain(10)
        finally:
            if recorder is not None:
                recorder.close()
    events = [json.loads(r.body) for r in query(cfg.outbox.path) if r.received_ns >= started_ns]
    return report(scenario, events)


async def simulate_scenario(
    path: Path, *, speed: float | None, seed: int | None, print_config: bool, loop: bool, mqtt: dict[str, Any],
) -> int:
    """`courtyard simulate --scenario`: simulators only; the gateway runs elsewhere."""
    scenario = _load(path)
    if scenario is None:
        return 1
    runner = ScenarioRunner(scenario, speed=speed, seed=seed)
    async with runner:
        cfg = runner.gateway_config(data_dir=Path("./courtyard-data") / scenario.scenario, mqtt=mqtt)
        local = [d for d in cfg["devices"] if not _in_process_only(d, runner)]
        dropped = len(cfg["devices"]) - len(local)
        cfg["devices"] = local
        if print_config:
            print(f"# gateway config for scenario {scenario.scenario} (generated; simulators are running)")
            print(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), flush=True)
        if dropped:
            print(f"note: {dropped} simulated BLE gate(s) need the gateway in this process: "
                  f"use `courtyard run --scenario {path}`", file=sys.stderr)
        print(f"scenario {scenario.scenario}: {len(scenario.devices)} simulated devices running; "
              f"timeline {scenario.duration:.0f}s at speed {runner.speed}", file=sys.stderr, flush=True)
        await _until(_stop_event(), asyncio.create_task(runner.play(loop_forever=loop)))
    return 0


def _in_process_only(device_cfg: dict[str, Any], runner: ScenarioRunner) -> bool:
    return any(device_cfg["id"] == d.id and d.kind in IN_PROCESS_ONLY for d in runner.scenario.devices)


async def replay_to(path: Path, *, speed: float, config: GatewayConfigBase | None, quiet: bool) -> int:
    """`courtyard replay`: print the replayed events; with a config, also commit and deliver them."""
    gw = Gateway(config.model_copy(update={"devices": []}), reconcile=False) if config is not None else None
    n = 0
    out = sys.stdout
    if gw is not None:
        await gw.start()
    try:
        async for event in replay_events(path, speed=speed):
            n += 1
            if not quiet:
                out.write(event.to_json() + "\n")
            if gw is not None:
                await gw.outbox.append([event])
    finally:
        if gw is not None:
            await gw.drain(30)
            await gw.stop()
    print(f"replayed {n} events from {path}", file=sys.stderr)
    return 0
