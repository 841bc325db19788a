"""Access-gate commands end to end: requester on a real mosquitto -> gateway -> BLE command
characteristic (bleak, in-process backend) -> simulated gate -> the gate's answer record and
status read-back -> results."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from drivers.ble_access_gate import codec
from gateway.command_bus import CommandClient
from gateway.config import MqttConfig, parse_config
from gateway.runtime import Gateway
from simulators.access_gate import backend as sim
from simulators.access_gate.peripheral import SimulatedGatePeripheral
from tests.helpers import base_config, eventually
from tests.servers import Mosquitto

SITE = "cmd-gate"
ADDRESS = "C0:57:0A:C0:00:01"
KEY = "command-test-credential-key-0123"
COMMANDS = {"allow": [{"requesters": ["mqtt:*"], "devices": ["gate-1"], "commands": ["*"]}],
            "answer_timeout_s": 1.0}


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[tuple[SimulatedGatePeripheral, Gateway,
                                                                           CommandClient]]:
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site=SITE, commands=COMMANDS, devices=[
        {"id": "gate-1", "driver": "ble_access_gate", "address": ADDRESS, "backend": "simulated", "doors": 2,
         "credential_key": KEY, "simulated": True, "simulation": {"seed": 5, "arrivals_per_min": 0.001}}]))
    async with Gateway(cfg) as gw, CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port),
                                                 SITE) as client:
        await eventually(lambda: sim.lookup(ADDRESS) is not None and gw.devices["gate-1"].online, 10)
        await eventually(gw.commands.bus.connected.is_set, 10)
        periph = sim.lookup(ADDRESS)
        assert periph is not None
        yield periph, gw, client


async def ask(client: CommandClient, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    cid = await client.send("access_gate", "gate-1", name, args=args)
    return await client.wait(cid, timeout=10)


async def test_every_gate_command_acts_and_is_confirmed_by_the_gate(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (periph, _gw, client):
        gate = periph.model
        res = await ask(client, "open", {"door": 1})
        assert res["state"] == "succeeded", res
        assert [r["state"] for r in client.results[res["id"]]] == ["accepted", "sent", "succeeded"]
        (cmd, refusal), = gate.commands
        assert (cmd.op, cmd.door, refusal) == (codec.CMD_OPEN_ONCE, 1, None)
        assert not gate.locked_mask & 1  # unlocked now, relocks by itself
        assert (await ask(client, "hold_open", {"door": 0}))["state"] == "succeeded"
        assert (gate.mode, gate.locked_mask) == (1, 0)
        assert (await ask(client, "release"))["state"] == "succeeded"
        assert gate.mode == 0
        assert (await ask(client, "lock", {"door": 2}))["state"] == "succeeded"
        assert gate.mode == 2 and gate.locked_mask & 2
        assert (await ask(client, "hold_open", {"door": 1, "seconds": 1}))["state"] == "succeeded"
        assert gate.mode == 1
        await eventually(lambda: gate.mode == 0, 10)  # a timed hold ends by itself
        assert [c.op for c, _ in gate.commands] == [codec.CMD_OPEN_ONCE, codec.CMD_HOLD_OPEN, codec.CMD_NORMAL,
                                                     codec.CMD_LOCK, codec.CMD_HOLD_OPEN]


async def test_bad_input_refusal_offline_and_silence(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (periph, gw, client):
        gate = periph.model
        for name, args, reason in (
            ("fly", {}, "unknown_command"),
            ("open", {"door": 3}, "bad_arg:door:out_of_range"),
            ("open", {"door": "one"}, "bad_arg:door"),
            ("hold_open", {"seconds": -1}, "bad_arg:seconds:out_of_range"),
            ("lock", {"seconds": 5}, "unexpected_args:seconds"),
        ):
            res = await ask(client, name, args)
            assert res["state"] == "rejected" and res["reason"].startswith(reason), (name, args, res)
        assert gate.commands == []  # nothing reached the gate
        gate.fire_release(True)  # the fire linkage holds every door open: the gate refuses to lock
        res = await ask(client, "lock")
        assert (res["state"], res["reason"]) == ("failed", "refused:fire_release")
        gate.fire_release(False)
        periph.set_silent(True)  # the link stays up, the gate answers nothing
        res = await ask(client, "open")
        assert (res["state"], res["reason"]) == ("failed", "device_timeout")
        periph.set_silent(False)
        periph.die()  # dark: links dropped, connections refused
        res = await ask(client, "open")
        assert res["state"] == "failed" and res["reason"].startswith("device_unavailable"), res
        periph.revive()
        assert (await ask(client, "open"))["state"] == "succeeded"  # and the next one works again
        snap = gw.counters.snapshot()
        assert (snap["commands.rejected"], snap["commands.failed"], snap["commands.succeeded"]) == (5, 3, 1)


async def test_a_command_left_sent_by_a_killed_run_is_resolved_from_the_gates_history(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    import sqlite3
    import time

    from gateway.commands import list_journal

    async with rig(tmp_path, mosquitto):  # creates the journal, then stops
        pass
    now = time.time_ns()
    conn = sqlite3.connect(tmp_path / "outbox.db")
    for cid, seq in (("took-effect", 601), ("never-arrived", 602)):
        conn.execute("INSERT INTO commands (id, device, kind, name, args, requester, state, accepted_ns, updated_ns,"
                     " expires_ns, device_seq) VALUES (?, 'gate-1', 'access_gate', 'lock', '{\"door\": 1}', 'mqtt:',"
                     " 'sent', ?, ?, ?, ?)", (cid, now, now, now + 60 * 10**9, seq))
    conn.commit()
    conn.close()
    running = await sim.spawn(ADDRESS, seed=5, doors=2, arrivals_per_min=0.001)
    try:
        periph = running.peripheral
        periph.model.command(codec.Command(codec.CMD_LOCK, door=1, request_id=601))  # acted before the kill
        periph.publish()
        for _ in range(40):  # more records since: the answer is in the history, not the latest record
            periph.model.emit("door.exit_button", door=1)
        periph.publish()
        cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site=SITE, devices=[
            {"id": "gate-1", "driver": "ble_access_gate", "address": ADDRESS, "backend": "simulated", "doors": 2,
             "credential_key": KEY}], commands={**COMMANDS, "resume_timeout_s": 1.0}))
        async with Gateway(cfg) as gw:
            await gw.commands.wait_idle()
        assert len(periph.model.commands) == 1  # nothing sent again
    finally:
        await running.aclose()
    states = {r.id: (r.state, r.reason) for r in list_journal(tmp_path / "outbox.db")}
    assert states["took-effect"] == ("succeeded", None)
    assert states["never-arrived"] == ("failed", "unconfirmed_after_restart")
