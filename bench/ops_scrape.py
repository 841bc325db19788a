"""Benchmark: how long a /metrics scrape takes, and how big it is, for a gateway with N elevators.

The gateway runs in this process against a real mosquitto, with N simulated elevators polled at
1 Hz; once they are all online, /metrics is scraped repeatedly over loopback HTTP.

    .venv/bin/python bench/ops_scrape.py [--sizes 10 100 500] [--scrapes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from gateway.config import parse_config
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.servers import Mosquitto, free_port

PER_SERVER = 200


async def one(n: int, scrapes: int, broker: Mosquitto) -> None:
    sims, devices = [], []
    for start in range(0, n, PER_SERVER):
        port = free_port()
        units = range(1, min(PER_SERVER, n - start) + 1)
        sims.append(ElevatorSimulator(port=port, elevators={u: ElevatorModel(call_rate_per_s=0.05, seed=u)
                                                             for u in units}))
        devices += [{"id": f"lift-{start + u}", "driver": "modbus_elevator", "port": port, "unit_id": u,
                     "poll_interval_s": 1.0, "timeout_s": 0.8} for u in units]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config({"site": "bench", "outbox": {"path": f"{tmp}/outbox.db", "synchronous": "normal"},
                            "mqtt": {"host": broker.host, "port": broker.port}, "ops": {"port": 0},
                            "devices": devices})
        for s in sims:
            await s.start()
        try:
            async with Gateway(cfg) as gw, aiohttp.ClientSession() as http:
                assert gw.ops_server is not None
                url = f"http://127.0.0.1:{gw.ops_server.port}/metrics"
                deadline = time.monotonic() + 60
                while sum(1 for d in gw.devices.values() if d.online) < n and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.5)
                times, size = [], 0
                for _ in range(scrapes):
                    t = time.perf_counter()
                    async with http.get(url) as r:
                        size = len(await r.read())
                    times.append((time.perf_counter() - t) * 1000)
                    await asyncio.sleep(0.1)
                print(f"{n:>5} elevators: scrape p50 {statistics.median(times):.1f} ms, max {max(times):.1f} ms,"
                      f" {size / 1024:.0f} KiB")
        finally:
            for s in sims:
                await s.stop()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500])
    ap.add_argument("--scrapes", type=int, default=20)
    args = ap.parse_args()
    broker = Mosquitto()
    broker.start()
    try:
        for n in args.sizes:
            await one(n, args.scrapes, broker)
    finally:
        broker.close()


if __name__ == "__main__":
    asyncio.run(main())
