"""Benchmark: outbox group commits and appends over the disk budget.

    .venv/bin/python bench/outbox.py [--events 20000] [--producers 1 10 100]
                                     [--stored 10000 200000 1000000] [--appends 300]

Throughput: each producer appends one event at a time and waits for its commit, as a driver
does; the outbox gathers concurrent appends into one transaction. Compares fsync policies.

Over budget: the table already holds `stored` lane-1 events (plate reads), `max_events`
equals that, and one producer appends status events one at a time, so every commit runs
budget enforcement. Two cases: all of it undelivered (a broker outage: the oldest are
dropped) and all of it delivered history (history is freed). Prints append latency p50/p99;
it should not grow with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sqlite3
import statistics
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


def cpu() -> float:
    """CPU seconds of this process so far (the loop and the outbox thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(n: int, producers: int, synchronous: str) -> tuple[float, float]:
    """(events/s, CPU s per 1k events)."""
    events = [event(i) for i in range(n)]
    with tempfile.TemporaryDirectory() as d:
        async with Outbox(Path(d) / "o.db", sinks=["mqtt"], synchronous=synchronous) as ob:  # type: ignore[arg-type]
            per = n // producers

            async def produce(k: int) -> None:
                for e in events[k * per:(k + 1) * per]:
                    await ob.append([e])

            t0, c0 = time.perf_counter(), cpu()
            await asyncio.gather(*(produce(k) for k in range(producers)))
            return per * producers / (time.perf_counter() - t0), (cpu() - c0) / (per * producers) * 1000


def fill(path: Path, stored: int, *, delivered: bool) -> None:
    """`stored` plate-read rows, written in one transaction (the body is filler)."""
    db = sqlite3.connect(path, isolation_level=None)
    body = '{"payload":{"plate":"' + "x" * 200 + '"}}'
    now = time.time_ns()
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO events (id, lane, time_ns, received_ns, device, kind, type, class, body)"
        " VALUES (?,1,?,?,'cam-1','lpr','lpr.plate_read','event',?)",
        ((f"id-{i}", now, now, body) for i in range(stored)),
    )
    if delivered:
        db.execute("INSERT INTO cursors (sink, lane, seq) VALUES ('mqtt', 1, ?)", (stored,))
    db.execute("COMMIT")
    db.close()


async def over_budget(stored: int, appends: int, *, delivered: bool) -> tuple[float, float, float]:
    """Append latency (ms p50, p99) and CPU s per 1k appends with `stored` events at the budget."""
    events = [event(i) for i in range(appends)]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "o.db"
        async with Outbox(path, sinks=["mqtt"]):
            pass  # create the schema
        fill(path, stored, delivered=delivered)
        async with Outbox(path, sinks=["mqtt"], max_events=stored) as ob:
            lat = []
            c0 = cpu()
            for e in events:
                t0 = time.perf_counter()
                await ob.append([e])
                lat.append((time.perf_counter() - t0) * 1e3)
            per_k = (cpu() - c0) / len(events) * 1000
    q = statistics.quantiles(lat, n=100)
    return q[49], q[98], per_k


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--producers", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--stored", type=int, nargs="*", default=[10_000, 200_000, 1_000_000])
    ap.add_argument("--appends", type=int, default=300)
    args = ap.parse_args()
    print(f"{'producers':>9} {'synchronous':>11} {'events/s':>10} {'CPU s/1k ev':>11}")
    for producers in args.producers:
        for sync in ("full", "normal"):
            rate, per_k = await run(args.events, producers, sync)
            print(f"{producers:>9} {sync:>11} {rate:>10.0f} {per_k:>11.3f}", flush=True)
    if args.stored:
        print(f"\n{'stored (at budget)':>18} {'stored are':>11} {'append p50 ms':>13} {'p99 ms':>8} "
              f"{'CPU s/1k ev':>11}")
    for stored in args.stored:
        for delivered in (False, True):
            p50, p99, per_k = await over_budget(stored, args.appends, delivered=delivered)
            state = "delivered" if delivered else "undelivered"
            print(f"{stored:>18} {state:>11} {p50:>13.2f} {p99:>8.2f} {per_k:>11.3f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
