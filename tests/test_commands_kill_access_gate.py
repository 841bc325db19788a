"""An access-gate command across an abrupt death of the gateway between `sent` and the result.

Not a SIGKILL of a subprocess: the gate is reached through the in-process bleak backend
(`backend: simulated` looks the peripheral up in this process's registry), which a gateway in
another process cannot reach. The strongest in-process equivalent: every task the gateway
started is cancelled the moment the journal row is `sent`, without `stop()` (no flush, no
executor close, no results), the radio link is dropped and the outbox's lock and database handle
are let go as the kernel would; then a new Gateway starts on the same outbox and resolves the
command from the gate's history.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from drivers.ble_access_gate import codec
from gateway.command_bus import CommandClient
from gateway.commands import list_journal
from gateway.config import MqttConfig, parse_config
from gateway.runtime import Gateway
from simulators.access_gate import backend as sim
from tests.gateway_process import state_of
from tests.helpers import base_config, eventually
from tests.servers import Mosquitto

SITE = "cmd-kill-gate"
ADDRESS = "C0:57:0A:C0:00:09"
KEY = "command-kill-credential-key-0123"


def config(tmp_path: Path, mosquitto: Mosquitto) -> Any:
    return parse_config(base_config(tmp_path, mqtt=mosquitto, site=SITE, devices=[
        {"id": "gate-1", "driver": "ble_access_gate", "address": ADDRESS, "backend": "simulated", "doors": 2,
         "credential_key": KEY, "simulated": True}],
        commands={"allow": [{"requesters": ["mqtt:*"], "devices": ["gate-1"], "commands": ["*"]}],
                  "answer_timeout_s": 120, "resume_timeout_s": 5}))


async def die(gw: Gateway, spawned: set[asyncio.Task[Any]]) -> None:
    """The gateway dies on the spot: its tasks end mid-await, nothing is flushed or closed politely."""
    for task in spawned:
        task.cancel()
    await asyncio.gather(*spawned, return_exceptions=True)
    ob = gw.outbox
    if ob._lock_fd is not None:  # what the kernel closes for a dead process
        os.close(ob._lock_fd)
        ob._lock_fd = None
    ob._pool.shutdown(wait=True)
    if ob._db is not None:
        ob._db.close()
        ob._db = None


def reads_queue_of(client: CommandClient, task: asyncio.Task[Any]) -> bool:
    """A task the requester's MQTT client made to wait for its next message (not the gateway's)."""
    frame = getattr(task.get_coro(), "cr_frame", None)
    inner = client._client._queue if client._client is not None else None
    return frame is not None and frame.f_locals.get("self") is inner


def device_seq(db: Path, cid: str) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT device_seq FROM commands WHERE id=?", (cid,)).fetchone()[0])
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("acted", [True, False], ids=["acted", "never-acted"])
async def test_abrupt_death_between_sent_and_result(tmp_path: Path, mosquitto: Mosquitto, acted: bool) -> None:
    db = tmp_path / "outbox.db"
    running = await sim.spawn(ADDRESS, seed=9, doors=2, arrivals_per_min=0.001)  # outlives both gateways
    periph, gate = running.peripheral, running.peripheral.model
    try:
        async with CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port), SITE) as client:
            before = asyncio.all_tasks()
            gw = Gateway(config(tmp_path, mosquitto))
            await gw.start()
            await eventually(lambda: gw.devices["gate-1"].online and gw.commands.bus.connected.is_set(), 15)
            periph.set_silent(True)  # the command write hangs in the radio: the death lands while `sent`
            cid = await client.send("access_gate", "gate-1", "lock", args={"door": 1}, ttl_s=120)
            await eventually(lambda: state_of(db, cid) == "sent", 15)
            await die(gw, {t for t in asyncio.all_tasks() - before - {asyncio.current_task()}
                           if not reads_queue_of(client, t)})
            periph.disconnect_all()  # the central is gone: supervision timeout
            assert state_of(db, cid) == "sent"
            assert gate.commands == []  # the write never got through
            if acted:  # it did get through before the death, only its answer was lost
                gate.command(codec.Command(codec.CMD_LOCK, door=1, request_id=device_seq(db, cid) & 0xFFFF))
            periph.set_silent(False)
            periph.publish()
            assert [r["final"] for r in client.results.get(cid, [])] in ([], [False], [False, False])
            async with Gateway(config(tmp_path, mosquitto)) as gw2:
                res = await client.wait(cid, timeout=30)
                await gw2.commands.wait_idle()
                await asyncio.sleep(1.0)  # room for a second result, were one to come
                assert len([r for r in client.results[cid] if r["final"]]) == 1  # one result on MQTT
    finally:
        await running.aclose()
    if acted:
        assert (res["state"], res["reason"]) == ("succeeded", None)
        assert len(gate.commands) == 1  # acted once, never written again
    else:
        assert (res["state"], res["reason"]) == ("failed", "unconfirmed_after_restart")
        assert gate.commands == []
    assert [(r.id, r.state) for r in list_journal(db)] == [(cid, res["state"])]
