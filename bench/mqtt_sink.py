"""Benchmark: the MQTT sink alone, from an outbox backlog to a real mosquitto.

1. Drain: `--backlog` status events are stored, undelivered; the sink is started and
   delivers them all. Prints events/s and CPU seconds per 1,000 events of this process (the
   sink, the outbox thread and the event loop: `resource.getrusage`), so the cost of
   publishing is seen apart from polling and decoding.
2. An alarm under a backlog: `--backlog` status events are stored, the sink is started, and
   while it drains them an alarm is appended every `--alarm-every` seconds. The time from
   append to receipt by an independent subscriber (`mosquitto_sub`, its own process) is the
   alarm's latency: lane 0 overtakes the backlog, so it should be about one batch, not the
   backlog. Prints p50/p99 and how many alarms were measured.

    .venv/bin/python bench/mqtt_sink.py [--backlog 100000] [--alarm-every 0.02] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import MqttConfig
from gateway.ids import uuid7
from gateway.metrics import Counters
from gateway.outbox import Outbox

try:
    from gateway.runtime import loop_factory
except ImportError:  # a gateway from before uvloop support (to compare)
    def loop_factory() -> None:  # type: ignore[misc]
        return None
from gateway.sinks.mqtt import MqttSink
from schemas.common import DeviceRef
from schemas.elevator import ElevatorPayload
from schemas.event import Event
from tests.servers import Mosquitto

SITE = "benchsink"


def status(i: int) -> Event:
    now = datetime.now(UTC)
    return Event.model_validate({
        "id": uuid7(), "time": now, "received": now, "site": SITE, "gateway": "gw",
        "device": DeviceRef(id=f"lift-{i % 1000}", kind="elevator", driver="modbus_elevator"),
        "class": "status", "type": "elevator.status",
        "payload": ElevatorPayload(floor=i % 18 + 1, direction="up", car_running=True, speed_mps=1.5,
                                   load_pct=i % 80),
    })


def alarm(i: int) -> Event:
    now = datetime.now(UTC)
    return Event.model_validate({
        "id": uuid7(), "time": now, "received": now, "site": SITE, "gateway": "gw",
        "device": DeviceRef(id=f"lift-{i % 1000}", kind="elevator", driver="modbus_elevator"),
        "class": "alarm", "type": "elevator.passenger_trapped", "severity": "critical", "state": "raised",
        "alarm_id": uuid7(), "payload": ElevatorPayload(floor=3, car_running=False, occupied=True),
    })


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def fill(ob: Outbox, n: int) -> None:
    for start in range(0, n, 1000):
        await ob.append([status(i) for i in range(start, min(n, start + 1000))])


def sink(mosquitto: Mosquitto) -> MqttSink:
    s = MqttSink(MqttConfig(host="127.0.0.1", port=mosquitto.port), site=SITE, gateway_id="gw",
                 counters=Counters(), status_interval_s=3600)
    s.bind({}, reconcile=False)
    return s


async def drain(mosquitto: Mosquitto, backlog: int) -> tuple[float, float]:
    """(events/s, CPU s per 1k events) delivering `backlog` stored status events."""
    with tempfile.TemporaryDirectory() as d:
        async with Outbox(Path(d) / "o.db", sinks=["mqtt"]) as ob:
            await fill(ob, backlog)
            s = sink(mosquitto)
            c0, t0 = cpu(), time.monotonic()
            task = asyncio.create_task(s.run(ob))
            while (await ob.backlog())["mqtt"]:  # noqa: ASYNC110 - polled: the outbox has no drained event
                await asyncio.sleep(0.05)
            c1, t1 = cpu(), time.monotonic()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return backlog / (t1 - t0), (c1 - c0) / backlog * 1000


async def alarm_latency(mosquitto: Mosquitto, backlog: int, every: float) -> list[float]:
    """Append-to-receipt seconds of alarms appended while `backlog` status events drain."""
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-q", "1", "-F", "%U %t",
         "-t", f"courtyard/{SITE}/elevator/+/alarm/+"], stdout=subprocess.PIPE, text=True)
    sent: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            async with Outbox(Path(d) / "o.db", sinks=["mqtt"]) as ob:
                await fill(ob, backlog)
                await asyncio.sleep(0.5)  # the subscriber is connected
                task = asyncio.create_task(sink(mosquitto).run(ob))
                i = 0
                while (await ob.backlog())["mqtt"] > 1000:  # alarms only while the backlog stands
                    ev = alarm(i)
                    i += 1
                    sent[ev.alarm_id or ""] = time.time()
                    await ob.append([ev])
                    await asyncio.sleep(every)
                await asyncio.sleep(1.0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        sub.terminate()
        out, _ = sub.communicate(timeout=10)
    latencies = []
    for line in out.splitlines():
        at, _, topic = line.partition(" ")
        aid = topic.rsplit("/", 1)[-1]
        if aid in sent:
            latencies.append(float(at) - sent.pop(aid))
    return sorted(latencies)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--alarm-every", type=float, default=0.02)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--only", choices=("drain", "alarm"), help="run one of the two")
    args = ap.parse_args()
    mosquitto = Mosquitto()
    mosquitto.start()
    print(f"machine: {os.cpu_count()} cores, shared with the broker; loop: "
          f"{'uvloop' if loop_factory() else 'asyncio'}", flush=True)
    try:
        for _ in range(args.repeat if args.only != "alarm" else 0):
            rate, per_k = await drain(mosquitto, args.backlog)
            print(f"drain {args.backlog} status events: {rate:,.0f} events/s, {per_k:.3f} CPU s per 1k events",
                  flush=True)
        for _ in range(args.repeat if args.only != "drain" else 0):
            lat = await alarm_latency(mosquitto, args.backlog, args.alarm_every)
            if lat:
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                print(f"alarm with {args.backlog} status events backlogged: {len(lat)} alarms, "
                      f"p50 {statistics.median(lat) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms", flush=True)
            else:
                print("alarm under backlog: no alarm measured", flush=True)
    finally:
        mosquitto.close()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main())
