"""A camera relay command across a SIGKILL of the gateway between `sent` and the result.

The gateway runs as a subprocess against a real mosquitto and the camera simulator (ISAPI and
Dahua over HTTP Digest); the simulator holds the output trigger (before or after it switches)
so the kill lands while the journal row is `sent`. The restarted gateway resolves it by reading
the output's state back, never by triggering it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.command_bus import CommandClient
from gateway.config import MqttConfig
from simulators.camera.model import SimCamera, SimSite
from simulators.camera.server import CameraServer
from tests.gateway_process import finals, kill, send_until_accepted, start, state_of, stop
from tests.helpers import eventually
from tests.servers import Mosquitto

SITE = "cmd-kill-camera"
PASSWORD = "relay-kill-pass"
DEVICES = ("hik-1", "dahua-1")


def write_config(tmp_path: Path, mosquitto: Mosquitto, port: int) -> Path:
    common = {"driver": "camera", "simulated": True, "password": PASSWORD, "media": {"path": str(tmp_path / "m")}}
    cfg: dict[str, Any] = {
        "site": SITE, "gateway_id": "gw-kill-camera",
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "alarms": {"restart_grace_s": 0},
        # answers never time out on their own here: only the kill ends the first run's trigger
        "commands": {"allow": [{"requesters": ["mqtt:*"], "devices": list(DEVICES), "commands": ["relay"]}],
                     "answer_timeout_s": 120, "resume_timeout_s": 10},
        "devices": [
            {"id": "hik-1", "protocol": "isapi", "url": f"http://127.0.0.1:{port}/hik-1", **common},
            {"id": "dahua-1", "protocol": "dahua", "url": f"http://127.0.0.1:{port}/dahua-1", **common}],
    }
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.asynccontextmanager
async def cameras() -> AsyncIterator[tuple[SimSite, int]]:
    site = SimSite([SimCamera("hik-1", "hikvision", password=PASSWORD),
                    SimCamera("dahua-1", "dahua", password=PASSWORD)], rate_per_min=0)
    server = CameraServer(site, heartbeat_s=1.0)
    port = await server.start("127.0.0.1", 0)
    try:
        yield site, port
    finally:
        for cam in site.cameras.values():
            cam.relay_gate.set()  # held triggers end before the server closes
        await server.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("acted", [True, False], ids=["acted", "never-acted"])
@pytest.mark.parametrize("device", DEVICES)
async def test_sigkill_between_sent_and_result(tmp_path: Path, mosquitto: Mosquitto, device: str,
                                               acted: bool) -> None:
    db = tmp_path / "outbox.db"
    async with cameras() as (site, port), \
            CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port), SITE) as client:
        cam = site.cameras[device]
        cam.hold_relay = "after" if acted else "before"
        path = write_config(tmp_path, mosquitto, port)
        proc = start(path)
        try:
            cid = await eventually(lambda: send_until_accepted(
                client, "camera", device, "relay", {"output": 2, "state": "on"}), 40)
            await eventually(lambda: state_of(db, cid) == "sent", 15)
            await eventually(lambda: cam.relay_requests == 1, 30)  # the trigger is at the camera
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
        if acted:
            assert (res["state"], res["reason"]) == ("succeeded", None)
            assert cam.relay_log == [(2, True)]  # switched once
        else:
            assert (res["state"], res["reason"]) == ("failed", "unconfirmed_after_restart")
            assert cam.relay_log == []
        assert cam.outputs[2] is acted
        assert cam.relay_requests == 1  # resolved by reading the output back: never a second trigger
        assert len(finals(client, cid)) == 1  # one result on MQTT
        assert state_of(db, cid) == res["state"]


@pytest.mark.slow
async def test_a_trigger_whose_ttl_ran_out_while_the_gateway_was_dead_expires_unsent(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A second trigger waits `accepted` behind a held one; the gateway dies; its TTL runs out in
    the downtime: the next run says `expired` and never sends it."""
    db = tmp_path / "outbox.db"
    async with cameras() as (site, port), \
            CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port), SITE) as client:
        cam = site.cameras["hik-1"]
        cam.hold_relay = "before"
        path = write_config(tmp_path, mosquitto, port)
        proc = start(path)
        try:
            first = await eventually(lambda: send_until_accepted(
                client, "camera", "hik-1", "relay", {"output": 1, "state": "on"}), 40)
            await eventually(lambda: cam.relay_requests == 1, 30)
            second = await client.send("camera", "hik-1", "relay", args={"output": 2, "state": "on"}, ttl_s=3)
            await eventually(lambda: state_of(db, second) == "accepted", 15)  # behind the first
            kill(proc)
        finally:
            stop(proc)
        assert (state_of(db, first), state_of(db, second)) == ("sent", "accepted")
        await asyncio.sleep(3.5)  # the downtime outlasts the second trigger's TTL
        cam.hold_relay = None  # a late trigger would now switch: the test would see it
        proc = start(path)
        try:
            res = await client.wait(second, timeout=40)
            await client.wait(first, timeout=40)
            await asyncio.sleep(1.0)
        finally:
            stop(proc)
    assert (res["state"], res["reason"]) == ("expired", "ttl_elapsed_before_send")
    assert cam.relay_log == [] and cam.outputs == {1: False, 2: False}
    assert cam.relay_requests == 1
    assert len(finals(client, second)) == 1
    assert state_of(db, second) == "expired"
