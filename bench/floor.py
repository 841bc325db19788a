"""Benchmark: what the libraries alone cost per event, the floor under the gateway's CPU.

A changing lift polled once a second costs the gateway one Modbus request and answer
(pymodbus), one decode into a status event with its envelope and stored row (this project's
own code), a share of a group commit (SQLite), and about 1.5 QoS-1 MQTT messages with their
PUBACKs (paho, through the sink's publisher). Each is measured here alone, in this process,
as CPU microseconds per operation (`time.process_time`: every thread of this process, so the
outbox's writer thread counts; the simulator and the broker run in their own processes and
do not). The last lines add them up for 1,000 changing lifts, so the gap between that sum
and the gateway's own figure (`bench/elevators.py --changing`) is the event loop's
scheduling and everything else: the floor no change to the gateway's glue can go under.

    .venv/bin/python bench/floor.py [--ops 5000] [--burst 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt
from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus_elevator.config import ModbusElevatorConfig
from drivers.modbus_elevator.decoder import ElevatorDecoder
from drivers.modbus_elevator.regmap import load_map
from gateway.outbox import Outbox
from gateway.runtime import EventFactory
from gateway.sinks.mqtt import Publisher
from gateway.testing import FakeContext
from schemas.common import DeviceRef
from schemas.event import Event
from tests.servers import Mosquitto, free_port

HERE = Path(__file__).resolve().parent


async def modbus(ops: int, burst: int) -> float:
    """CPU us per request and answer: `burst` clients, one connection each, asking together."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        sim = subprocess.Popen([sys.executable, str(HERE / "elevators.py"), "--changing", "--serve-sim", "floor",
                                str(port), str(burst), f"{tmp}/sim.jsonl"], stdout=subprocess.PIPE, text=True)
        try:
            assert sim.stdout is not None and sim.stdout.readline().strip() == "ready"
            clients = [AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2) for _ in range(burst)]
            for c in clients:
                await c.connect()

            async def one(c: AsyncModbusTcpClient, unit: int) -> None:
                rr = await c.read_holding_registers(0, count=16, device_id=unit)
                assert not rr.isError()

            rounds = max(1, ops // burst)
            for _ in range(5):  # warm-up
                await asyncio.gather(*(one(c, i + 1) for i, c in enumerate(clients)))
            cpu = time.process_time()
            for _ in range(rounds):
                await asyncio.gather(*(one(c, i + 1) for i, c in enumerate(clients)))
            used = time.process_time() - cpu
            for c in clients:
                c.close()
            return used / (rounds * burst) * 1e6
        finally:
            sim.terminate()
            sim.wait(10)


def events(count: int) -> tuple[float, list[Event]]:
    """CPU us per poll of a changing lift: decode and envelope (validated)."""
    cfg = ModbusElevatorConfig.model_validate({"id": "lift-1", "driver": "modbus_elevator", "host": "127.0.0.1",
                                               "port": 502, "unit_id": 1, "highest_floor": 18})
    regmap = load_map(cfg.map)
    decoder = ElevatorDecoder(cfg, FakeContext(cfg), regmap)
    factory = EventFactory(site="bench", gateway="gw-bench", simulated=True, scenario=None,
                           device=DeviceRef(id="lift-1", kind="elevator", driver="modbus_elevator"))
    raws = []
    for i in range(count):
        words = regmap.encode({"service_mode": "normal", "floor": 1 + i % 18, "direction": ("up", "down")[i % 2],
                               "door_state": "closed", "door_zone": True, "car_running": True, "occupied": True,
                               "speed_mps": 1.0 + i % 5 / 10, "load_pct": 10 + i % 50})
        raws.append({"blocks": [[0, [words.get(a, 0) for a in range(16)]]]})
    t0 = datetime.now(UTC)
    out: list[Event] = []
    cpu = time.process_time()
    for i, raw in enumerate(raws):
        now = t0 + timedelta(seconds=i)
        for draft in decoder.feed("poll", raw, now):
            out.append(factory.build(draft, now))
    return (time.process_time() - cpu) / count * 1e6, out


async def outbox(evs: list[Event], burst: int) -> float:
    """CPU us per event appended (its row and JSON): `burst` producers together, a group commit each time."""
    with tempfile.TemporaryDirectory() as tmp:
        async with Outbox(Path(tmp) / "outbox.db", sinks=["mqtt"]) as ob:
            cpu = time.process_time()
            for start in range(0, len(evs), burst):
                await asyncio.gather(*(ob.append([e], linger=0.01) for e in evs[start:start + burst]))
            return (time.process_time() - cpu) / len(evs) * 1e6


async def mqtt(bodies: list[str], burst: int) -> float:
    """CPU us per QoS-1 message and its PUBACK, `burst` a batch, through the sink's publisher."""
    broker = Mosquitto()
    broker.start()
    try:
        client = aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-floor", max_inflight_messages=0)
        async with client:
            publisher = Publisher.of(client)
            cpu = time.process_time()
            for start in range(0, len(bodies), burst):
                batch = publisher.batch()
                for body in bodies[start:start + burst]:
                    batch.publish("courtyard/bench/elevator/lift-1/event/elevator/status", body)
                await batch.confirmed(10)
            return (time.process_time() - cpu) / len(bodies) * 1e6
    finally:
        broker.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=5000, help="operations measured per part")
    ap.add_argument("--burst", type=int, default=50, help="polls of one slot (1,000 lifts at 1 s: 50)")
    args = ap.parse_args()
    per_poll = await modbus(args.ops, args.burst)
    per_event, evs = events(args.ops)
    assert len(evs) == args.ops, "one status event a poll, nothing else"
    per_append = await outbox(evs, args.burst)
    per_message = await mqtt([e.to_json() for e in evs], args.burst * 3 // 2)
    print(f"machine: {os.cpu_count()} cores; CPU of this process only, "
          f"{args.ops} operations a part, {args.burst} at a time")
    print(f"{'part':<58} {'CPU us':>8} {'per 1k lifts (cores)':>21}")
    rows = [("Modbus request and answer (pymodbus client)", per_poll, 1.0),
            ("decode + envelope (this project)", per_event, 1.0),
            ("outbox append: row, JSON, group commit (SQLite, fsync)", per_append, 1.0),
            ("QoS-1 message + PUBACK (paho, 1.5 per event)", per_message, 1.5)]
    for name, us, per_event_n in rows:
        print(f"{name:<58} {us:>8.1f} {us * per_event_n * 1000 / 1e6:>21.3f}")
    total = sum(us * n for _, us, n in rows)
    print(f"{'sum: the floor at 1,000 changing lifts, 1 Hz':<58} {total:>8.1f} {total * 1000 / 1e6:>21.3f}")


if __name__ == "__main__":
    asyncio.run(main())
