"""Benchmark: outbox group commits. Events/s accepted (committed) by concurrent producers.

    .venv/bin/python bench/outbox.py [--events 20000] [--producers 1 10 100]

Each producer appends one event at a time and waits for its commit, as a driver does; the
outbox gathers concurrent appends into one transaction. Compares fsync policies.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.ids import uuid7
from gateway.outbox import Outbox
from schemas.common import DeviceRef
from schemas.elevator import ElevatorPayload
from schemas.event import Event


def event(i: int) -> Event:
    now = datetime.now(UTC)
    return Event.model_validate({
        "id": uuid7(), "time": now, "received": now, "site": "bench", "gateway": "gw",
        "device": DeviceRef(id=f"lift-{i % 100}", kind="elevator", driver="modbus_elevator"),
        "class": "status", "type": "elevator.status",
        "payload": ElevatorPayload(floor=i % 30, direction="up", car_running=True, speed_mps=1.5),
    })


async def run(n: int, producers: int, synchronous: str) -> float:
    events = [event(i) for i in range(n)]
    with tempfile.TemporaryDirectory() as d:
        async with Outbox(Path(d) / "o.db", sinks=["mqtt"], synchronous=synchronous) as ob:  # type: ignore[arg-type]
            per = n // producers

            async def produce(k: int) -> None:
                for e in events[k * per:(k + 1) * per]:
                    await ob.append([e])

            t0 = time.perf_counter()
            await asyncio.gather(*(produce(k) for k in range(producers)))
            return per * producers / (time.perf_counter() - t0)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--producers", type=int, nargs="+", default=[1, 10, 100])
    args = ap.parse_args()
    print(f"{'producers':>9} {'synchronous':>11} {'events/s':>10}")
    for producers in args.producers:
        for sync in ("full", "normal"):
            rate = await run(args.events, producers, sync)
            print(f"{producers:>9} {sync:>11} {rate:>10.0f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
