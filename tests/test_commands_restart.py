"""The journal across a SIGKILL of the gateway between `sent` and the result, and across restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.command_bus import CommandClient
from gateway.config import MqttConfig
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.gateway_process import kill, send_until_accepted, start, state_of, stop
from tests.helpers import eventually
from tests.servers import Mosquitto, free_port

SITE = "cmd-kill"


def write_config(tmp_path: Path, mosquitto: Mosquitto, port: int) -> Path:
    cfg: dict[str, Any] = {
        "site": SITE, "gateway_id": "gw-kill",
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "alarms": {"restart_grace_s": 0},
        "commands": {"allow": [{"requesters": ["mqtt:*"], "devices": ["*"], "commands": ["*"]}],
                     "answer_timeout_s": 60, "resume_timeout_s": 2},
        "devices": [{"id": "lift-1", "driver": "modbus_elevator", "port": port, "poll_interval_s": 0.5,
                     "timeout_s": 0.5, "highest_floor": 18}],
    }
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("controller_acted", [True, False], ids=["acted", "never-acted"])
async def test_sigkill_between_sent_and_result(tmp_path: Path, mosquitto: Mosquitto, controller_acted: bool) -> None:
    port = free_port()
    db = tmp_path / "outbox.db"
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=0)})
    path = write_config(tmp_path, mosquitto, port)
    async with sim, CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port), SITE) as client:
        await sim.inject("no_ack")  # takes the request, answers only when told
        proc = start(path)
        try:
            await asyncio.sleep(2.0)  # the gateway subscribes
            cid = await eventually(lambda: send_until_accepted(client, "elevator", "lift-1", "call", {"floor": 6}), 20)
            await eventually(lambda: state_of(db, cid) == "sent", 15)
            await eventually(lambda: sim.command_requests == 1, 10)
            kill(proc)
        finally:
            stop(proc)
        assert state_of(db, cid) == "sent"  # the journal survived, without an outcome
        if controller_acted:
            await sim.answer_late()  # the controller did act, after the gateway died
        await sim.clear("no_ack")
        client.results.clear()
        proc = start(path)
        try:
            res = await client.wait(cid, timeout=20)
        finally:
            stop(proc)
    if controller_acted:
        assert (res["state"], res["reason"]) == ("succeeded", None)
    else:
        assert (res["state"], res["reason"]) == ("failed", "unconfirmed_after_restart")
    assert sim.command_requests == 1  # resolved by read-back: never sent twice
    assert state_of(db, cid) == res["state"]


async def test_replayed_id_after_restart_gets_the_stored_result(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=0)})
    path = write_config(tmp_path, mosquitto, port)
    async with sim, CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port), SITE) as client:
        proc = start(path)
        try:
            await asyncio.sleep(2.0)
            cid = await eventually(lambda: send_until_accepted(client, "elevator", "lift-1", "call", {"floor": 6}), 20)
            first = await client.wait(cid, timeout=10)
        finally:
            stop(proc)
        assert first["state"] == "succeeded"
        client.results.clear()
        proc = start(path)
        try:
            await asyncio.sleep(2.0)
            await client.send("elevator", "lift-1", "call", args={"floor": 6}, cid=cid)
            again = await client.wait(cid, timeout=10)
        finally:
            stop(proc)
    assert (again["state"], again["time"]) == ("succeeded", first["time"])
    assert sim.command_requests == 1


async def test_accepted_but_expired_across_a_restart_is_never_executed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A command journaled `accepted` whose TTL ran out while the gateway was down: `expired`."""
    import sqlite3
    import time

    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=0)})
    path = write_config(tmp_path, mosquitto, port)
    async with sim, CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port), SITE) as client:
        proc = start(path)
        try:  # create the journal, then stop
            await eventually(lambda: db_has_journal(tmp_path / "outbox.db"), 20)
        finally:
            stop(proc)
        now = time.time_ns()
        db = sqlite3.connect(tmp_path / "outbox.db")
        db.execute("INSERT INTO commands (id, device, kind, name, args, requester, state, accepted_ns, updated_ns,"
                   " expires_ns, device_seq) VALUES ('old-1', 'lift-1', 'elevator', 'call', '{\"floor\": 3}',"
                   " 'mqtt:', 'accepted', ?, ?, ?, 77)", (now - 10**10, now - 10**10, now - 10**9))
        db.commit()
        db.close()
        proc = start(path)
        try:
            res = await client.wait("old-1", timeout=20)
        finally:
            stop(proc)
    assert (res["state"], res["reason"]) == ("expired", "ttl_elapsed_before_send")
    assert sim.command_requests == 0


def db_has_journal(db: Path) -> bool:
    import sqlite3

    if not db.exists():
        return False
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name='commands'").fetchone() is not None
    finally:
        conn.close()
