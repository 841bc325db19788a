"""Latency of a PA fault: simulator node change -> driver emit, and -> MQTT receipt (p50/p99).

Runs the broadcast simulator, the gateway (opcua_pa driver, outbox, MQTT sink) and a
subscriber in one process on loopback, against a throwaway mosquitto started here and
stopped by its pid. Each sample toggles a line fault (short <-> cleared) after a random
pause, so changes land at random phases of the subscription's publishing interval.

    .venv/bin/python bench/broadcast.py [--count 200] [--interval-ms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt

from drivers.opcua_pa.config import OpcUaPaConfig
from drivers.opcua_pa.driver import OpcUaPaDriver
from gateway.config import parse_config
from gateway.driver import EventDraft
from gateway.runtime import Gateway
from simulators.pa import PaSimulator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def mosquitto() -> Iterator[int]:
    """A private broker on a free port, stopped by pid."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    d = Path(tempfile.mkdtemp(prefix="bench-mosq-"))
    port = free_port()
    (d / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(d / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        yield port
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(name: str, ms: list[float]) -> None:
    print(f"{name:<34} n={len(ms):4d}  p50={statistics.median(ms):7.1f} ms  p99={pct(ms, 0.99):7.1f} ms  "
          f"max={max(ms):7.1f} ms")


class _Counters:
    def inc(self, name: str, n: int = 1) -> None:
        pass


class _EmitClock:
    """Minimal driver context that timestamps line-fault emits."""

    def __init__(self, config: OpcUaPaConfig) -> None:
        self.config = config
        self.log = logging.getLogger("bench")
        self.counters = _Counters()
        self.seen: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        t = time.perf_counter()
        for d in drafts:
            if d.type == "pa.line_fault":
                self.seen.put_nowait((d.state, t))

    async def set_online(self, online: bool, *, reason: str | None = None, misses: int = 0) -> None:
        pass

    def record(self, channel: str, data: Any) -> None:
        pass

    async def shared(self, key: str, factory: Any) -> Any:
        return await factory()


async def bench_emit(sim: PaSimulator, count: int, interval_ms: float) -> list[float]:
    cfg = OpcUaPaConfig(id="bench-emit", driver="opcua_pa", url=sim.url, publishing_interval_ms=interval_ms)
    ctx = _EmitClock(cfg)
    task = asyncio.create_task(OpcUaPaDriver(cfg, ctx).run())
    await asyncio.sleep(0.5)
    out = []
    for i in range(count):
        await asyncio.sleep(random.uniform(0.02, 0.15))
        t0 = time.perf_counter()
        await sim.set_line_fault("l1", "short" if i % 2 == 0 else None)
        _state, t1 = await asyncio.wait_for(ctx.seen.get(), 5)
        out.append((t1 - t0) * 1000)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    await sim.set_line_fault("l1", None)
    return out


async def bench_mqtt(sim: PaSimulator, port: int, count: int, interval_ms: float) -> list[float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-pa-"))
    cfg = parse_config({
        "site": "bench", "gateway_id": "gw-bench", "outbox": {"path": str(tmp / "outbox.db")},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "devices": [{"id": "pa-bench", "driver": "opcua_pa", "url": sim.url,
                     "publishing_interval_ms": interval_ms}],
    }, source="bench")
    arrivals: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    out = []
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-sub") as sub:
        await sub.subscribe("courtyard/bench/pa/pa-bench/event/pa.line_fault", qos=1)

        async def listen() -> None:
            async for msg in sub.messages:
                body = json.loads(msg.payload if isinstance(msg.payload, bytes) else str(msg.payload))
                arrivals.put_nowait((body["state"], time.perf_counter()))

        listener = asyncio.create_task(listen())
        async with Gateway(cfg):
            await asyncio.sleep(1.0)
            while not arrivals.empty():
                arrivals.get_nowait()
            for i in range(count):
                await asyncio.sleep(random.uniform(0.02, 0.15))
                t0 = time.perf_counter()
                await sim.set_line_fault("l1", "short" if i % 2 == 0 else None)
                _state, t1 = await asyncio.wait_for(arrivals.get(), 5)
                out.append((t1 - t0) * 1000)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    shutil.rmtree(tmp, ignore_errors=True)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--interval-ms", type=float, default=100.0, help="Publishing interval (driver default)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    random.seed(args.seed)
    logging.basicConfig(level=logging.ERROR)
    async with PaSimulator(port=free_port(), tick_s=0) as sim:
        print(f"publishing interval {args.interval_ms:g} ms, {args.count} line-fault toggles each")
        report("simulator -> driver emit", await bench_emit(sim, args.count, args.interval_ms))
        with mosquitto() as port:
            report("simulator -> MQTT receipt", await bench_mqtt(sim, port, args.count, args.interval_ms))


if __name__ == "__main__":
    asyncio.run(main())
