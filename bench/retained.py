"""What reconciling retained MQTT topics costs at start: the outbox scan for known devices.

Prints the time of `Outbox.known_devices()` (one scan of the events table, once per process)
at 10k, 200k and 1M stored events over 200 devices. Figures only; no assertion.

    .venv/bin/python bench/retained.py [--max 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.ids import uuid7
from gateway.outbox import Outbox
from schemas.common import DeviceRef
from schemas.elevator import ElevatorPayload
from schemas.event import Event


def event(i: int) -> Event:
    now = datetime.now(UTC)
    return Event.model_validate({
        "id": uuid7(), "time": now, "received": now, "site": "s", "gateway": "gw-1",
        "device": DeviceRef(id=f"lift-{i % 200}", kind="elevator", driver="modbus_elevator"),
        "class": "status", "type": "elevator.status", "payload": ElevatorPayload(floor=i % 30),
    })


async def main(largest: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        async with Outbox(Path(d) / "o.db", max_events=10 * largest, synchronous="normal", batch_max=5000) as ob:
            stored = 0
            template = [event(i) for i in range(5000)]
            for size in (n for n in (10_000, 200_000, 1_000_000) if n <= largest):
                while stored < size:
                    await ob.append(template)
                    stored += len(template)
                t0 = time.perf_counter()
                known = await ob.known_devices()
                ms = (time.perf_counter() - t0) * 1000
                print(f"known_devices at {stored:>9,} events: {ms:8.1f} ms ({len(known)} devices)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--max", type=int, default=1_000_000)
    asyncio.run(main(ap.parse_args().max))
