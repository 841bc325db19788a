"""Benchmark: command request on MQTT -> elevator simulator acted -> result on MQTT.

A real mosquitto, the elevator simulator and the requester run in this process; the gateway
runs as `courtyard run` in a child process. Commands are sent one after another (the elevator
takes one at a time: one mailbox), alternating `hold_door` and `release_door`. Prints p50/p99
of request -> controller acted, and request -> final result received.

    .venv/bin/python bench/commands.py [--count 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from gateway.command_bus import CommandClient
from gateway.config import MqttConfig
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.servers import Mosquitto, free_port

SITE = "bench-cmd"


class TimedSimulator(ElevatorSimulator):
    """Notes when the controller acted on each request."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.acted: list[float] = []

    async def _answer(self, dev_id: int, written: dict[int, int]) -> None:
        self.acted.append(time.perf_counter())
        await super()._answer(dev_id, written)


class NodelayMosquitto(Mosquitto):
    """The test broker, with Nagle off on its side too (as docs/commands.md advises)."""

    def command(self) -> list[str]:
        cmd = super().command()
        conf = Path(cmd[-1])
        conf.write_text("set_tcp_nodelay true\n" + conf.read_text())
        return cmd


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(count: int) -> None:
    nodelay = "--nagle" not in sys.argv
    broker = NodelayMosquitto() if nodelay else Mosquitto()
    broker.start()
    port = free_port()
    sim = TimedSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=0)})
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"site": SITE, "gateway_id": "gw-bench", "outbox": {"path": f"{tmp}/outbox.db"},
               "mqtt": {"host": broker.host, "port": broker.port},
               "commands": {"allow": [{"requesters": ["mqtt:*"], "devices": ["*"], "commands": ["*"]}]},
               "devices": [{"id": "lift-1", "driver": "modbus_elevator", "port": port, "poll_interval_s": 1.0,
                            "timeout_s": 0.5, "highest_floor": 18}]}
        path = Path(tmp) / "gw.yaml"
        path.write_text(yaml.safe_dump(cfg))
        async with sim, CommandClient(MqttConfig(host=broker.host, port=broker.port), SITE) as client:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "--log-level", "warning", "run", "-c",
                                     str(path)], start_new_session=True)
            try:
                while True:  # until the gateway takes requests
                    cid = await client.send("elevator", "lift-1", "release_door")
                    try:
                        await client.wait(cid, timeout=1.0)
                        break
                    except TimeoutError:
                        continue
                sim.acted.clear()
                to_acted, to_result, states = [], [], {}
                for i in range(count):
                    name, args = ("hold_door", {"seconds": 30}) if i % 2 == 0 else ("release_door", {})
                    t0 = time.perf_counter()
                    cid = await client.send("elevator", "lift-1", name, args=args)
                    res = await client.wait(cid, timeout=10)
                    t1 = time.perf_counter()
                    states[res["state"]] = states.get(res["state"], 0) + 1
                    to_result.append((t1 - t0) * 1000)
                    if sim.acted:
                        to_acted.append((sim.acted[-1] - t0) * 1000)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
    broker.close()
    print(f"elevator commands over MQTT (Modbus TCP, loopback), {count} sequential, broker set_tcp_nodelay"
          f" {'true' if nodelay else 'false'}: outcomes {states}")
    for label, values in (("request -> controller acted", to_acted), ("request -> final result    ", to_result)):
        print(f"  {label}: p50 {statistics.median(values):6.1f} ms   p99 {pct(values, 99):6.1f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--nagle", action="store_true", help="broker without set_tcp_nodelay (mosquitto's default)")
    asyncio.run(main(ap.parse_args().count))
