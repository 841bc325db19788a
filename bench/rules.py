"""Benchmark: linkage rules.

1. Trigger committed -> first command sent. The gateway (in this process, no broker needed)
   runs one rule: `elevator.alarm_button` on lift-1 -> `hold_door` on lift-2 (the elevator
   simulator, Modbus TCP on loopback). Each trigger is committed to the outbox as a decoder
   would commit it; measured from the commit (the outbox's observer call) to the command
   being journaled `accepted`, and to `sent` (the next step writes the controller).
2. Camera detection at the simulator -> PA emergency confirmed by the simulator, in the shape
   of `scenarios/ebike_fire_garage.yaml`: the camera simulator (Dahua) raises fire and then
   smoke on the charging-bay channel; the garage-fire rule (cooldown off) confirms and sends
   `emergency_start`; measured until the PA simulator's emergency is active. Between runs the
   detections clear, the rule's `on_clear` stops the broadcast, and the (shortened, 2 s)
   confirmation window empties.

    .venv/bin/python bench/rules.py [--count 200] [--fire-runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from gateway import registry
from gateway.config import parse_config
from gateway.ids import uuid7
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.servers import free_port


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def poll(check: Any, timeout: float, every: float) -> bool:
    """Until `check()` (the simulator's own state, read in this process); False on timeout."""
    for _ in range(int(timeout / every)):
        if check():
            return True
        await asyncio.sleep(every)
    return bool(check())


def line(label: str, values: list[float]) -> str:
    return (f"  {label}: p50 {statistics.median(values):7.2f} ms   p99 {pct(values, 99):7.2f} ms"
            f"   (n={len(values)})")


async def trigger_to_command(count: int) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=0),
                                                  2: ElevatorModel(call_rate_per_s=0)})
    lift = {"driver": "modbus_elevator", "port": port, "poll_interval_s": 1.0, "timeout_s": 0.5, "highest_floor": 18}
    rule = {"id": "bench", "when": {"type": "elevator.alarm_button", "devices": "lift-1"},
            "do": [{"command": "hold_door", "to": {"devices": "lift-2"}, "args": {"seconds": 30}}],
            "mode": "queued", "max_queued": 100}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config({
            "site": "bench-rules", "outbox": {"path": f"{tmp}/outbox.db"}, "mqtt": {"enabled": False},
            "alarms": {"lifecycle": {"enabled": False}},
            "commands": {"allow": [{"requesters": ["rule:*"], "devices": ["*"], "commands": ["*"]}]},
            "devices": [{**lift, "id": "lift-1", "unit_id": 1}, {**lift, "id": "lift-2", "unit_id": 2}],
            "rules": [rule]})
        async with sim, Gateway(cfg) as gw:
            accepted: dict[str, float] = {}
            sent: dict[str, float] = {}

            async def listen(cmd: Any) -> None:
                if cmd.state == "sent":
                    sent.setdefault(cmd.id, time.perf_counter())
            gw.commands.listeners.append(listen)
            gw.rules.sender.on_submitted = lambda cid: accepted.setdefault(cid, time.perf_counter())
            model = registry.event_model()
            ref = {"id": "lift-1", "kind": "elevator", "driver": "modbus_elevator"}
            committed: dict[str, float] = {}
            for _ in range(count):
                now = datetime.now(UTC)
                ev = model.model_validate({
                    "id": uuid7(), "time": now, "received": now, "site": "bench-rules", "gateway": "gw-1",
                    "device": ref, "class": "alarm", "type": "elevator.alarm_button", "severity": "critical",
                    "state": "raised", "alarm_id": uuid7(), "payload": {"kind": "elevator"}})
                await gw.outbox.append([ev])
                committed[ev.id] = gw.rules.engine.observed[ev.id]
                await gw.rules.wait_idle()  # one at a time: the figure is latency, not a queue
            firings = list(gw.rules.engine.sent_log)
    from gateway.rules import command_id, firing_id

    to_accepted, to_sent = [], []
    for ev_id, t0 in committed.items():
        cid = command_id(firing_id("bench", ev_id), "do", 0, "lift-2")
        if cid in accepted:
            to_accepted.append((accepted[cid] - t0) * 1000)
        if cid in sent:
            to_sent.append((sent[cid] - t0) * 1000)
    print(f"trigger committed -> first command (rule -> hold_door on the elevator simulator), {count} triggers,"
          f" {len(firings)} commands:")
    print(line("committed -> command accepted (journaled)", to_accepted))
    print(line("committed -> command sent (journaled, device next)", to_sent))


async def fire_to_broadcast(runs: int) -> None:
    from gateway.runtime import Gateway as _Gateway
    from simulators.scenario.model import Scenario
    from simulators.scenario.runner import ScenarioRunner

    pa_spec = registry.get("opcua_pa")
    if "commands" not in pa_spec.extras:
        print("camera detection -> PA emergency: skipped (no PA command executor on this branch)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "fire.yaml"
        fire = yaml.safe_load((Path(__file__).resolve().parents[1] / "scenarios/rules/garage_fire.yaml").read_text())
        fire["rules"][0]["cooldown_s"] = 0
        fire["rules"][0]["confirm"]["within_s"] = 2  # each run confirmed by its own two detections
        for key in ("do", "on_clear"):  # only the PA here: no lifts, gates or barriers to select
            fire["rules"][0][key] = [a for a in fire["rules"][0][key] if a["to"].get("kind") == "pa"]
        rules.write_text(yaml.safe_dump(fire))
        scenario = Scenario.model_validate({
            "scenario": "bench-fire", "site": {"id": "bench-fire", "garages": ["B1"]}, "duration": 1,
            "devices": [
                {"id": "cam-b1-bay", "kind": "camera", "location": {"garage": "B1", "floor": "B1"},
                 "settings": {"brand": "dahua", "channels": 2, "where": "garage"}},
                {"id": "pa-south", "kind": "pa", "location": {"zone": "south"}, "tags": ["fire-evacuation"],
                 "settings": {"paging_rate": 0}}],
            "rules": [str(rules)]})
        runner = ScenarioRunner(scenario, speed=1)
        async with runner:
            cfg = parse_config(runner.gateway_config(data_dir=Path(tmp)))
            cam = next(d for d in scenario.devices if d.kind == "camera")
            pa = runner.adapters["pa"].sims["pa-south"]  # type: ignore[attr-defined]
            camera = runner.adapters["camera"]
            times: list[float] = []
            async with _Gateway(cfg, scenario="bench-fire"):
                await asyncio.sleep(3)  # drivers connect
                for _ in range(runs):
                    t0 = time.perf_counter()
                    await camera.apply(cam, "inject", "fire", {"channel": 2, "confidence": 90})
                    await camera.apply(cam, "inject", "smoke", {"channel": 2, "confidence": 85})
                    if await poll(lambda: pa.model.emergency.active, 10, 0.002):
                        times.append((time.perf_counter() - t0) * 1000)
                    await camera.apply(cam, "clear", "fire", {"channel": 2})
                    await camera.apply(cam, "clear", "smoke", {"channel": 2})
                    await poll(lambda: not pa.model.emergency.active, 10, 0.01)
                    await asyncio.sleep(2.5)  # the previous run's detections leave the window
    print(f"camera detection at the simulator -> PA emergency active at the simulator (garage-fire rule), {runs} runs,"
          f" {len(times)} confirmed:")
    if times:
        print(line("detection -> broadcast confirmed", times))


async def main(count: int, fire_runs: int) -> None:
    await trigger_to_command(count)
    await fire_to_broadcast(fire_runs)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--fire-runs", type=int, default=20)
    args = ap.parse_args()
    asyncio.run(main(args.count, args.fire_runs))
