"""Benchmark: N simulated elevators -> gateway (its own process) -> real mosquitto.

Prints, per N: events/s delivered on MQTT, gateway CPU seconds per 1,000 events and per
second, p50/p99 latency from register change (simulator write) to MQTT receipt and from
the gateway's read (the event's time) to MQTT receipt, the share
of register changes a status event reported ("changes seen": a change that lands within
jitter of its car's poll can be overwritten before it is read; polling at the rate of change
cannot catch every one), the share of accepted status events (read from the outbox after the
run) that reached the subscriber ("delivered": nothing accepted may be lost), per-poll jitter (p99 of how far the gap
between two reads of one device, as the simulator saw them, strays from the poll interval)
and the gateway's peak RSS. The simulators run in child processes (200 elevators each), the
MQTT subscriber (paho, its own thread) in this one; the gateway runs as `courtyard run` in a
child process so that its CPU and memory are its own. CPU is the gateway's utime+stime from
/proc over the measured window only (after warm-up).

Modes:
  default      cars that behave (calls, doors, passengers): a status event only on change,
               about one event per two polls
  --changing   every car's status block changes at every poll interval (floor, direction,
               door zone, speed and load all move), so every poll is one status event; the
               simulator changes its registers once per interval, and every change must
               reach the subscriber

    .venv/bin/python bench/elevators.py [--changing] [--sizes 10 100 1000] [--seconds 20]
                                        [--poll 1.0] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as paho

from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.servers import Mosquitto, free_port

PER_SERVER = 200
KEYS = ("floor", "direction", "car_running", "door_state", "occupied")
#: --changing: what identifies one change (floor bounces 1..18, speed and load cycle).
CHANGING_KEYS = ("floor", "direction", "door_zone", "speed_mps", "load_pct")


@dataclass
class ChangingModel(ElevatorModel):
    """A car whose status changes once per poll interval, each car at its own phase.

    Phases are spread over the interval, so where a change falls relative to the gateway's
    poll of that car is uniform, as with real cars.
    """

    poll: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.clock = (self.seed * 0.6180339887 % 1.0) * self.poll  # golden-ratio spread of phases
        self.k = self.seed % 34

    def step(self, dt: float) -> None:
        self.clock += dt
        if self.clock >= self.poll:
            self.clock -= self.poll
            self.k += 1

    def values(self) -> dict[str, Any]:
        k = self.k
        p = k % 34  # floor 1..18 and back, one floor per step: never an implausible jump
        return {
            "floor": 1 + p if p < 17 else 35 - p, "direction": "up" if p < 17 else "down",
            "car_running": True, "door_zone": k % 2 == 0, "door_state": "closed", "occupied": True,
            "service_mode": "normal", "speed_mps": round(1.0 + (k * 7 % 5) / 10, 2),
            "load_pct": 8 + (k * 13 % 72), "fault_code": 0, "event_code": 0,
        }

    def bits(self) -> set[str]:
        return set()


class TimedSimulator(ElevatorSimulator):
    """Remembers when each elevator's observable state was written to its registers."""

    def __init__(self, name: str, log: list[str], reads: dict[int, list[float]], keys: tuple[str, ...],
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.name = name
        self.log = log
        self.reads = reads
        self.keys = keys

    async def refresh(self) -> None:
        if self._server is not None and all(isinstance(m, ChangingModel) for m in self.elevators.values()):
            await self._refresh_changing()
            return
        before = dict(self._written)
        await super().refresh()
        now = time.time()
        for dev_id, words in self._written.items():
            if before.get(dev_id) != words:
                v = self.elevators[dev_id].values()
                self.log.append(json.dumps([now, f"{self.name}-{dev_id}", [v[k] for k in self.keys]]))

    async def _refresh_changing(self) -> None:
        """Only the cars whose step moved (encoding every car every 10 ms would cost the machine)."""
        assert self._server is not None
        now = time.time()
        seen = getattr(self, "_seen", {})
        self._seen = seen
        for dev_id, model in self.elevators.items():
            k = model.k  # type: ignore[attr-defined]
            if seen.get(dev_id) == k:
                continue
            seen[dev_id] = k
            words = self.encode(model)
            for block in self.map.blocks:
                await self._server.async_setValues(
                    dev_id, 3, block.address, [words[a] for a in range(block.address, block.address + block.count)])
            v = model.values()
            self.log.append(json.dumps([now, f"{self.name}-{dev_id}", [v[k] for k in self.keys]]))

    async def _device_action(self, dev_id: int, fc: int, start: int, address: int, count: int, regs: list[int],
                             set_values: Any) -> Any:
        if set_values is None and address == 0:  # a status read: when the gateway polled
            self.reads[dev_id].append(time.time())
        return await super()._device_action(dev_id, fc, start, address, count, regs, set_values)


async def serve_sim(name: str, port: int, count: int, out: str, changing: bool, poll: float) -> None:
    """Child process: one Modbus server with `count` elevators; change and read times go to `out` on SIGTERM."""
    log: list[str] = []
    reads: dict[int, list[float]] = defaultdict(list)
    models: dict[int, ElevatorModel]
    if changing:
        models = {i: ChangingModel(seed=i, poll=poll) for i in range(1, count + 1)}
    else:
        models = {i: ElevatorModel(seed=hash(name) % 1000 + i, call_rate_per_s=0.1) for i in range(1, count + 1)}
    sim = TimedSimulator(name, log, reads, CHANGING_KEYS if changing else KEYS, port=port, elevators=models,
                         tick_s=0.05 if changing else 0.1)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with sim:
        print("ready", flush=True)
        await stop.wait()
    Path(out).write_text("\n".join(log) + "\n")
    Path(out + ".reads").write_text(json.dumps({f"{name}-{d}": t for d, t in reads.items()}))


def gateway_config(tmp: Path, mqtt_port: int, servers: list[tuple[str, int, int]], poll: float,
                   state_interval: float | None = None, link: str = "own") -> str:
    lines = [
        "site: bench", "gateway_id: gw-bench",
        f"outbox: {{path: {tmp}/outbox.db}}",
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, batch: 500"
        + (f", state_interval_s: {state_interval}" if state_interval is not None else "") + "}",
        "devices:",
    ]
    for name, port, count in servers:
        for dev_id in range(1, count + 1):
            lines.append(f"  - {{id: {name}-{dev_id}, driver: modbus_elevator, port: {port}, unit_id: {dev_id}, "
                         f"poll_interval_s: {poll}, timeout_s: {min(poll, 1.0)}, highest_floor: 18, "
                         f"status_interval_s: 600, link: {link}}}")
    path = tmp / "bench.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds used, peak RSS bytes) of a process."""
    cpu = proc_cpu(pid)[0]
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmHWM"))
    return cpu, hwm * 1024


def proc_cpu(pid: int, thread: int | None = None) -> tuple[float, float]:
    """(user + system, system) CPU seconds of a process, or of one of its threads."""
    stat = Path(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[12]) / ticks


class Subscriber:
    """An independent MQTT client (paho, on its own thread): every status event's receipt time."""

    def __init__(self, port: int) -> None:
        self.receipts: list[tuple[float, bytes]] = []
        self.measuring = False
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("courtyard/bench/elevator/+/event/elevator.status", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if self.measuring:
            self.receipts.append((time.time(), msg.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else float("nan")


async def run_size(n: int, seconds: float, poll: float, mosquitto: Mosquitto, changing: bool,
                   profile: str | None = None, state_interval: float | None = None,
                   link: str = "own") -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="courtyard-bench-"))
    root = Path(__file__).resolve().parents[1]
    keys = CHANGING_KEYS if changing else KEYS
    servers, sims = [], []
    for s in range((n + PER_SERVER - 1) // PER_SERVER):
        count = min(PER_SERVER, n - s * PER_SERVER)
        name, port = f"lift{s}", free_port()
        servers.append((name, port, count))
        sims.append(subprocess.Popen(
            [sys.executable, __file__, "--serve-sim", name, str(port), str(count), str(tmp / f"{name}.jsonl"),
             *(["--changing"] if changing else []), "--poll", str(poll)],
            cwd=root, stdout=subprocess.PIPE, text=True))
    for p in sims:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    sub = Subscriber(mosquitto.port)
    await asyncio.sleep(0.5)
    cfg = gateway_config(tmp, mosquitto.port, servers, poll, state_interval, link)
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "--log-level", "warning", "run", "-c", cfg], cwd=root)
    await asyncio.sleep(max(5.0, n / 100))  # warm-up: every link up, first status sent
    cpu0, _ = proc_stats(gw.pid)
    sys0 = proc_cpu(gw.pid)[1]
    loop0 = proc_cpu(gw.pid, gw.pid)[0]  # the main thread runs the event loop
    others0 = sum(proc_stats(p.pid)[0] for p in sims) + proc_stats(mosquitto.proc.pid)[0]  # type: ignore[union-attr]
    spy = None
    if profile:  # py-spy samples the gateway during the window (its own CPU is not the gateway's)
        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-r", "100", "--nonblocking",
                                "-f", "raw",
                                "-o", profile, "--pid", str(gw.pid), "--duration", str(int(seconds))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sub.measuring = True
    w0 = time.time()
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, rss = proc_stats(gw.pid)
    sys1 = proc_cpu(gw.pid)[1]
    loop1 = proc_cpu(gw.pid, gw.pid)[0]
    others1 = sum(proc_stats(p.pid)[0] for p in sims) + proc_stats(mosquitto.proc.pid)[0]  # type: ignore[union-attr]
    elapsed = time.monotonic() - t0
    w1 = time.time()
    await asyncio.sleep(2 * poll)  # what changed near the end of the window arrives after it
    sub.measuring = False
    if spy is not None:
        spy.wait(60)
    gw.terminate()
    gw.wait(60)
    sub.close()
    changes: dict[str, list[tuple[float, tuple[Any, ...]]]] = defaultdict(list)
    jitter: list[float] = []
    for p in sims:
        p.terminate()
        p.wait(30)
    for name, _, _ in servers:
        for line in (tmp / f"{name}.jsonl").read_text().splitlines():
            if line:
                t, dev, values = json.loads(line)
                changes[dev].append((t, tuple(values)))
        for times in json.loads((tmp / f"{name}.jsonl.reads").read_text()).values():
            window = [t for t in times if w0 <= t <= w1]
            jitter += [abs(b - a - poll) for a, b in itertools.pairwise(window)]
    latencies = []
    pipeline = []  # the event's time is the gateway's read: read -> MQTT, without the wait for a poll
    delivered: set[tuple[str, float]] = set()
    in_window = 0
    for now, payload in sub.receipts:
        ev = json.loads(payload)
        dev, key = ev["device"]["id"], tuple(ev["payload"].get(k) for k in keys)
        if now <= w1:
            in_window += 1
            pipeline.append(now - datetime.fromisoformat(ev["time"]).timestamp())
        for t, values in reversed(changes[dev]):
            if values == key and t <= now:
                if w0 <= t <= w1 - poll:
                    latencies.append(now - t)
                delivered.add((dev, t))
                break
    expected = [(dev, t) for dev, cs in changes.items() for t, _ in cs if w0 <= t <= w1 - poll]
    # Nothing accepted is lost: every status event the gateway committed in the window reached
    # the subscriber (by id), whether or not the poll caught every register change.
    got_ids = {json.loads(payload)["id"] for _, payload in sub.receipts}
    db = sqlite3.connect(tmp / "outbox.db")
    accepted = [i for (i,) in db.execute(
        "SELECT id FROM events WHERE type='elevator.status' AND received_ns BETWEEN ? AND ?",
        (int(w0 * 1e9), int((w1 - poll) * 1e9)))]
    db.close()
    cpu = cpu1 - cpu0
    latencies.sort()
    pipeline.sort()
    return {
        "elevators": n,
        "events_s": in_window / elapsed,
        "cpu_per_1000": cpu / max(in_window, 1) * 1000,
        "cpu_share": cpu / elapsed,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": p99(latencies) * 1000,
        "pipe_p50_ms": statistics.median(pipeline) * 1000 if pipeline else float("nan"),
        "pipe_p99_ms": p99(pipeline) * 1000,
        "polled_pct": 100 * sum(1 for c in expected if c in delivered) / max(len(expected), 1),
        "delivered_pct": 100 * sum(1 for i in accepted if i in got_ids) / max(len(accepted), 1),
        "jitter_p99_ms": p99(jitter) * 1000,
        "rss_mb": rss / 2**20,
        "polls_s": n / poll,
        "others_share": (others1 - others0) / elapsed,
        "sys_share": (sys1 - sys0) / max(cpu1 - cpu0, 1e-9),
        "loop_share": (loop1 - loop0) / max(cpu1 - cpu0, 1e-9),
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--changing", action="store_true", help="every status block changes at every poll")
    ap.add_argument("--repeat", type=int, default=1, help="runs per size")
    ap.add_argument("--link", choices=["own", "shared"], default="own",
                    help="own: a Modbus connection per elevator; shared: one per simulator (200 elevators)")
    ap.add_argument("--state-interval", type=float, help="mqtt.state_interval_s (default: the gateway's)")
    ap.add_argument("--profile", metavar="FILE", help="py-spy (collapsed stacks) of the gateway during the window")
    ap.add_argument("--serve-sim", nargs=4, metavar=("NAME", "PORT", "COUNT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_sim:
        name, port, count, out = args.serve_sim
        await serve_sim(name, int(port), int(count), out, args.changing, args.poll)
        return
    mosquitto = Mosquitto()
    mosquitto.start()
    print(f"machine: {os.cpu_count()} cores; simulators, broker, subscriber and gateway all share them; "
          f"mode: {'changing (every poll changes)' if args.changing else 'behaving cars'}", flush=True)
    try:
        print(f"{'elevators':>9} {'polls/s':>8} {'events/s':>9} {'CPU s/1k ev':>11} {'CPU (cores)':>11} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'read->MQTT p50/p99':>18} "
              f"{'changes seen':>12} {'delivered':>9} {'jitter p99':>10} "
              f"{'peak RSS MB':>11} {'kernel share':>12} {'loop thread':>11} {'others (cores)':>14}", flush=True)
        for n in args.sizes:
            for _ in range(args.repeat):
                r = await run_size(n, args.seconds, args.poll, mosquitto, args.changing, args.profile,
                                   args.state_interval, args.link)
                print(f"{r['elevators']:>9} {r['polls_s']:>8.0f} {r['events_s']:>9.1f} {r['cpu_per_1000']:>11.3f} "
                      f"{r['cpu_share']:>11.3f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
                      f"{r['pipe_p50_ms']:>8.1f}/{r['pipe_p99_ms']:<9.1f} "
                      f"{r['polled_pct']:>11.1f}% {r['delivered_pct']:>8.2f}% {r['jitter_p99_ms']:>8.1f}ms "
                      f"{r['rss_mb']:>11.1f} {r['sys_share'] * 100:>11.0f}% "
                      f"{r['loop_share'] * 100:>10.0f}% {r['others_share']:>14.3f}", flush=True)
    finally:
        mosquitto.close()


if __name__ == "__main__":
    asyncio.run(main())
