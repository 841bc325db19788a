"""`overflow: block` with the broker down and the budget full: polling and alarms go on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.config import parse_config
from gateway.history import query
from gateway.outbox import Outbox
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import base_config, eventually
from tests.servers import free_port
from tests.test_outbox import make_event


@pytest.mark.slow
async def test_lift_alarm_recorded_while_status_is_blocked(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    async with Outbox(db, sinks=["mqtt"]) as ob:  # a backlog at the budget, none of it delivered
        await ob.append([make_event(i, device="old") for i in range(100)])
    port = free_port()
    dead_broker = SimpleNamespace(host="127.0.0.1", port=free_port())  # nothing listens: broker down
    cfg = base_config(tmp_path, mqtt=dead_broker, site="block", devices=[{
        "id": "lift-a", "driver": "modbus_elevator", "port": port, "unit_id": 1, "poll_interval_s": 0.2,
        "timeout_s": 0.5, "simulated": True, "thresholds": {"trapped_s": 1.0},
    }])
    cfg["outbox"].update(max_events=100, overflow="block")
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=1.0, seed=3)})
    async with sim:
        gw = Gateway(parse_config(cfg))
        await gw.start()
        try:
            counters = gw.counters.child("device.lift-a.")
            await eventually(lambda: counters.get("polls") >= 3, timeout=15)  # the old code stopped at 1
            polls = counters.get("polls")
            await sim.inject("trapped", device_id=1)

            def trapped() -> bool:
                return any(json.loads(r.body)["type"] == "elevator.passenger_trapped" for r in query(db)
                           if r.device == "lift-a")

            assert await eventually(trapped, timeout=15)
            assert counters.get("polls") > polls  # polling never stopped
            assert counters.get("emit_refused_full") >= 1  # status waited one interval, then was refused
        finally:
            await asyncio.wait_for(gw.stop(flush_timeout=0.5), 30)  # hang guard, not a timing assertion
    rows = list(query(db))
    assert sum(1 for r in rows if r.device == "old") == 100  # nothing undelivered was dropped under block
