"""Benchmark: N simulated elevators -> gateway (its own process) -> real mosquitto.

Prints, per N: events/s delivered on MQTT, gateway CPU seconds per 1,000 events and per
second, p50/p99 latency from register change (simulator write) to MQTT receipt, and the
gateway's peak RSS. The simulators and the MQTT subscriber run in this process; the gateway
runs as `courtyard run` in a child process so that its CPU and memory are its own.

    .venv/bin/python bench/elevators.py [--sizes 10 100 1000] [--seconds 20] [--poll 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt

from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.servers import Mosquitto, free_port

PER_SERVER = 200
KEYS = ("floor", "direction", "car_running", "door_state", "occupied")


class TimedSimulator(ElevatorSimulator):
    """Remembers when each elevator's observable state was written to its registers."""

    def __init__(self, name: str, log: list[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.name = name
        self.log = log

    async def refresh(self) -> None:
        before = dict(self._written)
        await super().refresh()
        now = time.time()
        for dev_id, words in self._written.items():
            if before.get(dev_id) != words:
                v = self.elevators[dev_id].values()
                self.log.append(json.dumps([now, f"{self.name}-{dev_id}", [v[k] for k in KEYS]]))


async def serve_sim(name: str, port: int, count: int, out: str) -> None:
    """Child process: one Modbus server with `count` elevators; change times go to `out` on SIGTERM."""
    log: list[str] = []
    models = {i: ElevatorModel(seed=hash(name) % 1000 + i, call_rate_per_s=0.1) for i in range(1, count + 1)}
    sim = TimedSimulator(name, log, port=port, elevators=models, tick_s=0.1)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with sim:
        print("ready", flush=True)
        await stop.wait()
    Path(out).write_text("\n".join(log) + "\n")


def gateway_config(tmp: Path, mqtt_port: int, servers: list[tuple[str, int, int]], poll: float) -> str:
    lines = [
        "site: bench", "gateway_id: gw-bench",
        f"outbox: {{path: {tmp}/outbox.db}}",
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, batch: 500}}",
        "devices:",
    ]
    for name, port, count in servers:
        for dev_id in range(1, count + 1):
            lines.append(f"  - {{id: {name}-{dev_id}, driver: modbus_elevator, port: {port}, unit_id: {dev_id}, "
                         f"poll_interval_s: {poll}, timeout_s: {min(poll, 1.0)}, highest_floor: 18, "
                         f"status_interval_s: 600}}")
    path = tmp / "bench.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds used, peak RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmHWM"))
    return cpu, hwm * 1024


async def run_size(n: int, seconds: float, poll: float, mosquitto: Mosquitto) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="courtyard-bench-"))
    root = Path(__file__).resolve().parents[1]
    servers, sims = [], []
    for s in range((n + PER_SERVER - 1) // PER_SERVER):
        count = min(PER_SERVER, n - s * PER_SERVER)
        name, port = f"lift{s}", free_port()
        servers.append((name, port, count))
        sims.append(subprocess.Popen(
            [sys.executable, __file__, "--serve-sim", name, str(port), str(count), str(tmp / f"{name}.jsonl")],
            cwd=root, stdout=subprocess.PIPE, text=True))
    for p in sims:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    receipts: list[tuple[float, str, tuple[Any, ...]]] = []
    measuring = False

    async def subscribe() -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, max_queued_incoming_messages=0) as client:
            await client.subscribe("courtyard/bench/elevator/+/event/elevator.status", qos=1)
            async for msg in client.messages:
                if measuring:
                    ev = json.loads(msg.payload)  # type: ignore[arg-type]
                    receipts.append((time.time(), ev["device"]["id"], tuple(ev["payload"][k] for k in KEYS)))

    sub = asyncio.create_task(subscribe())
    await asyncio.sleep(0.5)
    cfg = gateway_config(tmp, mosquitto.port, servers, poll)
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "--log-level", "warning", "run", "-c", cfg], cwd=root)
    await asyncio.sleep(max(5.0, n / 100))  # warm-up: every link up, first status sent
    cpu0, _ = proc_stats(gw.pid)
    measuring = True
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = time.monotonic() - t0
    cpu1, rss = proc_stats(gw.pid)
    gw.terminate()
    gw.wait(60)
    sub.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sub
    changes: dict[str, list[tuple[float, tuple[Any, ...]]]] = defaultdict(list)
    for p in sims:
        p.terminate()
        p.wait(30)
    for name, _, _ in servers:
        for line in (tmp / f"{name}.jsonl").read_text().splitlines():
            if line:
                t, dev, values = json.loads(line)
                changes[dev].append((t, tuple(values)))
    latencies = []
    for now, dev, key in receipts:
        for t, values in reversed(changes[dev]):
            if values == key and t <= now:
                latencies.append(now - t)
                break
    cpu = cpu1 - cpu0
    latencies.sort()
    received = len(receipts)
    return {
        "elevators": n,
        "events_s": received / elapsed,
        "cpu_per_1000": cpu / max(received, 1) * 1000,
        "cpu_share": cpu / elapsed,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
        "rss_mb": rss / 2**20,
        "polls_s": n / poll,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--serve-sim", nargs=4, metavar=("NAME", "PORT", "COUNT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_sim:
        name, port, count, out = args.serve_sim
        await serve_sim(name, int(port), int(count), out)
        return
    mosquitto = Mosquitto()
    mosquitto.start()
    print(f"machine: {os.cpu_count()} cores; simulators, broker, subscriber and gateway all share them", flush=True)
    try:
        print(f"{'elevators':>9} {'polls/s':>8} {'events/s':>9} {'CPU s/1k ev':>11} {'CPU (cores)':>11} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'peak RSS MB':>11}", flush=True)
        for n in args.sizes:
            r = await run_size(n, args.seconds, args.poll, mosquitto)
            print(f"{r['elevators']:>9} {r['polls_s']:>8.0f} {r['events_s']:>9.1f} {r['cpu_per_1000']:>11.3f} "
                  f"{r['cpu_share']:>11.3f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['rss_mb']:>11.1f}", flush=True)
    finally:
        mosquitto.close()


if __name__ == "__main__":
    asyncio.run(main())
