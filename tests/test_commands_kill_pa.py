"""A PA command across a SIGKILL of the gateway between `sent` and the result.

The gateway runs as a subprocess against a real mosquitto and the OPC UA PA simulator; the
simulator holds the method call (before or after it acts) so the kill lands while the journal
row is `sent`. The restarted gateway resolves it by reading the nodes back, never by calling
the method again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.command_bus import CommandClient
from gateway.config import MqttConfig
from simulators.pa import PaSimulator
from tests.gateway_process import finals, kill, send_until_accepted, start, state_of, stop
from tests.helpers import eventually
from tests.servers import Mosquitto, free_port

SITE = "cmd-kill-pa"


def write_config(tmp_path: Path, mosquitto: Mosquitto, url: str) -> Path:
    cfg: dict[str, Any] = {
        "site": SITE, "gateway_id": "gw-kill-pa",
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "alarms": {"restart_grace_s": 0},
        # answers never time out on their own here: only the kill ends the first run's call
        "commands": {"allow": [{"requesters": ["mqtt:*"], "devices": ["pa-1"], "commands": ["*"]}],
                     "answer_timeout_s": 120, "resume_timeout_s": 10},
        "devices": [{"id": "pa-1", "driver": "opcua_pa", "url": url, "watchdog_s": 0.5,
                     "request_timeout_s": 2.0, "simulated": True}],
    }
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("acted", [True, False], ids=["acted", "never-acted"])
async def test_sigkill_between_sent_and_result(tmp_path: Path, mosquitto: Mosquitto, acted: bool) -> None:
    db = tmp_path / "outbox.db"
    async with PaSimulator(port=free_port(), tick_s=0) as sim, \
            CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port), SITE) as client:
        sim.hold_commands = "after" if acted else "before"
        path = write_config(tmp_path, mosquitto, sim.url)
        try:
            proc = start(path)
            try:
                cid = await eventually(lambda: send_until_accepted(
                    client, "pa", "pa-1", "set_volume", {"zone": "z2", "db": -33}), 40)
                await eventually(lambda: state_of(db, cid) == "sent", 15)
                await eventually(lambda: sim.commands_received == 1, 30)  # the call is at the system
                kill(proc)
            finally:
                stop(proc)
            assert state_of(db, cid) == "sent"  # the journal survived, without an outcome
            assert finals(client, cid) == []
            proc = start(path)
            try:
                res = await client.wait(cid, timeout=40)
                await asyncio.sleep(1.0)  # room for a second result, were one to come
            finally:
                stop(proc)
        finally:
            sim.command_gate.set()
        if acted:
            assert (res["state"], res["reason"]) == ("succeeded", None)
            assert sim.model.commands == [("set_volume", {"zone": "z2", "db": -33.0})]  # acted once
        else:
            assert (res["state"], res["reason"]) == ("failed", "unconfirmed_after_restart")
            assert sim.model.commands == []  # never acted, and not called again
        assert sim.commands_received == 1  # resolved by reading the nodes: never a second call
        assert len(finals(client, cid)) == 1  # one result on MQTT
        assert state_of(db, cid) == res["state"]


@pytest.mark.slow
async def test_a_command_whose_ttl_ran_out_while_the_gateway_was_dead_expires_unsent(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A second command waits `accepted` behind a held one; the gateway dies; its TTL runs out in
    the downtime: the next run says `expired` and never calls it."""
    db = tmp_path / "outbox.db"
    async with PaSimulator(port=free_port(), tick_s=0) as sim, \
            CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port), SITE) as client:
        sim.hold_commands = "before"
        path = write_config(tmp_path, mosquitto, sim.url)
        try:
            proc = start(path)
            try:
                first = await eventually(lambda: send_until_accepted(
                    client, "pa", "pa-1", "set_volume", {"zone": "z1", "db": -20}), 40)
                await eventually(lambda: sim.commands_received == 1, 30)
                second = await client.send("pa", "pa-1", "set_volume", args={"zone": "z3", "db": -40}, ttl_s=3)
                await eventually(lambda: state_of(db, second) == "accepted", 15)  # behind the first
                kill(proc)
            finally:
                stop(proc)
            assert (state_of(db, first), state_of(db, second)) == ("sent", "accepted")
            await asyncio.sleep(3.5)  # the downtime outlasts the second command's TTL
            sim.hold_commands = None  # a late call would now act: the test would see it
            proc = start(path)
            try:
                res = await client.wait(second, timeout=40)
                await client.wait(first, timeout=40)
                await asyncio.sleep(1.0)
            finally:
                stop(proc)
        finally:
            sim.command_gate.set()
    assert (res["state"], res["reason"]) == ("expired", "ttl_elapsed_before_send")
    assert sim.model.commands == []  # neither executed: the first never reached, the second never sent
    assert sim.commands_received == 1
    assert len(finals(client, second)) == 1
    assert state_of(db, second) == "expired"
