"""Chaos: the broker and the database go away for 30 s mid-stream; nothing accepted is lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.history import query
from gateway.outbox import lane_of
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import MqttCollector, base_config, eventually
from tests.servers import InfluxV1, Mosquitto, free_port

OUTAGE_S = 30.0


@pytest.fixture
def own_influx() -> Iterator[InfluxV1]:
    server = InfluxV1()
    server.start()
    yield server
    server.close()


def first_seen_order(events: list[dict[str, Any]]) -> dict[tuple[str, int], list[str]]:
    seen: set[str] = set()
    order: dict[tuple[str, int], list[str]] = {}
    for ev in events:
        if ev["id"] in seen:
            continue
        seen.add(ev["id"])
        order.setdefault((ev["device"]["id"], lane_of(ev["class"])), []).append(ev["id"])
    return order


@pytest.mark.slow
async def test_broker_and_database_outage_lose_nothing(
    tmp_path: Path, own_broker: Mosquitto, own_influx: InfluxV1
) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={i: ElevatorModel(seed=i, call_rate_per_s=1.0) for i in (1, 2, 3)})
    devices = [{"id": f"lift-{i}", "driver": "modbus_elevator", "port": port, "unit_id": i, "poll_interval_s": 0.2,
                "thresholds": {"trapped_s": 2}} for i in (1, 2, 3)]
    cfg = parse_config(base_config(
        tmp_path, mqtt=own_broker, devices=devices,
        influx={"url": own_influx.url, "api": "v1", "database": own_influx.database, "batch": 100,
                "backoff_max_s": 2},
    ))
    async with sim, MqttCollector(own_broker.host, own_broker.port) as col, Gateway(cfg) as gw:
        await col.wait_for(lambda c: len(c.events()) >= 10, timeout=10)
        own_broker.stop()
        own_influx.stop()
        await sim.inject("trapped", device_id=2)  # an alarm raised while nothing is reachable
        await asyncio.sleep(OUTAGE_S)
        accepted_during = gw.outbox.count
        own_broker.start()
        own_influx.start()
        await sim.clear("trapped", device_id=2)
        assert await gw.drain(60), await gw.outbox.backlog()
        accepted = [json.loads(r.body) for r in query(tmp_path / "outbox.db")]
        ids = {e["id"] for e in accepted}
        await col.wait_for(lambda c: ids <= {e["id"] for e in c.events()}, timeout=30)

    assert accepted_during > 20, "events kept being accepted during the outage"
    assert any(e["type"] == "elevator.passenger_trapped" for e in accepted)
    # Every accepted event arrived at least once, in per-device order within each lane.
    received = col.events()
    assert ids <= {e["id"] for e in received}
    want = first_seen_order(accepted)
    got = first_seen_order([e for e in received if e["id"] in ids])
    assert got == want
    # The same for the database.
    rows = await eventually(lambda: (found := _influx_ids(own_influx)) >= ids and found, timeout=20)
    assert ids <= rows


def _influx_ids(server: InfluxV1) -> set[str]:
    return {r["event_id"] for r in server.query_sync("SELECT event_id FROM elevator")}
