"""PA commands end to end: requester on a real mosquitto -> gateway -> OPC UA method calls of the
node map -> the asyncua PA simulator -> method result and node read-back -> results."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.command_bus import CommandClient
from gateway.config import MqttConfig, parse_config
from gateway.runtime import Gateway
from simulators.pa import PaSimulator
from tests.helpers import base_config, eventually
from tests.servers import Mosquitto, free_port

SITE = "cmd-pa"
COMMANDS = {"allow": [{"requesters": ["mqtt:*"], "devices": ["pa-1"], "commands": ["*"]}],
            "answer_timeout_s": 1.5}


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[tuple[PaSimulator, Gateway, CommandClient]]:
    async with PaSimulator(port=free_port(), tick_s=0) as sim:
        cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site=SITE, commands=COMMANDS, devices=[
            {"id": "pa-1", "driver": "opcua_pa", "url": sim.url, "watchdog_s": 0.5, "request_timeout_s": 1.0,
             "simulated": True}]))
        async with Gateway(cfg) as gw, CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port),
                                                     SITE) as client:
            await eventually(lambda: gw.devices["pa-1"].online and gw.commands.bus.connected.is_set(), 15)
            yield sim, gw, client


async def ask(client: CommandClient, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    cid = await client.send("pa", "pa-1", name, args=args)
    return await client.wait(cid, timeout=15)


async def test_every_pa_command_is_a_method_call_confirmed_by_read_back(tmp_path: Path,
                                                                       mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (sim, _gw, client):
        model = sim.model
        res = await ask(client, "set_volume", {"zone": "z1", "db": -12})
        assert res["state"] == "succeeded", res
        assert [r["state"] for r in client.results[res["id"]]] == ["accepted", "sent", "succeeded"]
        assert model.zones["z1"].volume_db == -12.0
        assert (await ask(client, "play", {"zones": "z2,z3", "clip": "gate_closing"}))["state"] == "succeeded"
        assert model.zones["z2"].clip == "gate_closing" and model.zones["z2"].state == "paging"
        res = await ask(client, "emergency_start", {"zones": "z3,z4", "message": "evacuate-b1", "priority": 200})
        assert res["state"] == "succeeded", res
        assert (model.emergency.active, model.emergency.zones, model.emergency.priority) == \
            (True, ("z3", "z4"), 200)
        assert model.zones["z4"].state == "emergency"
        assert (await ask(client, "emergency_stop"))["state"] == "succeeded"
        assert model.emergency.active is False
        assert (await ask(client, "emergency_start", {"clip": "evacuation"}))["state"] == "succeeded"
        assert model.emergency.zones == ("z1", "z2", "z3", "z4")  # no zones: every zone
        assert [name for name, _ in model.commands] == ["set_volume", "play", "emergency_start", "emergency_stop",
                                                         "emergency_start"]


@pytest.mark.slow
async def test_bad_input_refusal_offline_and_silence(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (sim, gw, client):
        model = sim.model
        for name, args, reason in (
            ("reboot", {}, "unknown_command"),
            ("set_volume", {"zone": "z9", "db": -3}, "bad_arg:zone:unknown_zone"),
            ("set_volume", {"zone": "z1"}, "missing_arg:db"),
            ("set_volume", {"zone": "z1", "db": 6}, "bad_arg:db:out_of_range"),
            ("play", {"zones": "z1"}, "missing_arg:clip"),
            ("play", {"zones": "z1", "clip": "polka"}, "bad_arg:clip:unknown_clip"),
            ("emergency_start", {"zones": "z1", "message": "x", "priority": 999}, "bad_arg:priority"),
            ("emergency_stop", {"now": True}, "unexpected_args:now"),
        ):
            res = await ask(client, name, args)
            assert res["state"] == "rejected" and res["reason"].startswith(reason), (name, args, res)
        assert model.commands == []  # nothing reached the system
        # the system refuses: volume is not adjustable in a zone under emergency broadcast
        assert (await ask(client, "emergency_start", {"zones": "z1", "message": "fire"}))["state"] == "succeeded"
        res = await ask(client, "set_volume", {"zone": "z1", "db": -30})
        assert (res["state"], res["reason"]) == ("failed", "refused:emergency_active")
        res = await ask(client, "emergency_start", {"zones": "z2", "message": "drill", "priority": 10})
        assert (res["state"], res["reason"]) == ("failed", "refused:lower_priority")
        sim.set_response_delay(3.0)  # slower than the answer timeout: never answers in time
        res = await ask(client, "emergency_stop")
        assert (res["state"], res["reason"]) == ("failed", "device_timeout")
        sim.set_response_delay(0.0)
        await sim.go_offline()
        res = await ask(client, "emergency_stop")
        assert res["state"] == "failed" and res["reason"].startswith("device_unavailable"), res
        await sim.go_online()
        assert (await ask(client, "emergency_stop"))["state"] == "succeeded"
        snap = gw.counters.snapshot()
        assert (snap["commands.rejected"], snap["commands.failed"]) == (8, 4)


def _left_sent(db: Path, rows: list[tuple[str, str, str]]) -> None:
    """Journal rows a killed run left `sent` (id, command, args JSON), as tests/test_commands_restart.py does."""
    import sqlite3
    import time

    now = time.time_ns()
    conn = sqlite3.connect(db)
    for n, (cid, name, args) in enumerate(rows):
        conn.execute("INSERT INTO commands (id, device, kind, name, args, requester, state, accepted_ns, updated_ns,"
                     " expires_ns, device_seq) VALUES (?, 'pa-1', 'pa', ?, ?, 'mqtt:', 'sent', ?, ?, ?, ?)",
                     (cid, name, args, now, now, now + 60 * 10**9, 500 + n))
    conn.commit()
    conn.close()


async def test_a_call_left_sent_by_a_killed_run_is_resolved_by_reading_back(tmp_path: Path,
                                                                            mosquitto: Mosquitto) -> None:
    from gateway.commands import list_journal

    async with rig(tmp_path, mosquitto) as (sim, gw, _client):  # creates the journal, then stops
        pass
    _left_sent(tmp_path / "outbox.db", [("took-effect", "set_volume", '{"db": -33.0, "zone": "z2"}'),
                                        ("never-arrived", "set_volume", '{"db": -44.0, "zone": "z3"}')])
    async with PaSimulator(port=free_port(), tick_s=0) as sim:
        await sim.set_volume("z2", -33.0)  # the first call reached the system before the gateway died
        cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site=SITE, commands={**COMMANDS,
                                                                                      "resume_timeout_s": 2},
                                       devices=[{"id": "pa-1", "driver": "opcua_pa", "url": sim.url}]))
        async with Gateway(cfg) as gw:
            await gw.commands.wait_idle()
        assert sim.model.commands == []  # resolved by reading the nodes: nothing called again
    states = {r.id: (r.state, r.reason) for r in list_journal(tmp_path / "outbox.db")}
    assert states["took-effect"] == ("succeeded", None)
    assert states["never-arrived"] == ("failed", "unconfirmed_after_restart")
