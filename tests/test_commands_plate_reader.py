"""Plate-camera barrier commands end to end: requester on a real mosquitto -> gateway ->
the camera's reply channel (Zhenshi heartbeat reply) or ISAPI barrier control (Hikvision, digest)
-> the simulated camera acts -> confirmed from the camera -> results."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drivers.http_plate_reader.commands import mailbox
from gateway.command_bus import CommandClient
from gateway.config import MqttConfig, parse_config
from gateway.runtime import Gateway
from simulators.plate_reader import Camera, CameraAuth, IsapiBarrierServer
from simulators.plate_reader.camera import ZhenshiBarrierCamera
from tests.helpers import base_config, eventually
from tests.servers import Mosquitto, free_port

SITE = "cmd-lpr"
TOKEN = "cmd-test-token-0123"
COMMANDS = {"allow": [{"requesters": ["mqtt:*"], "devices": ["lpr-*"], "commands": ["*"]}],
            "answer_timeout_s": 1.5}


def devices(tmp_path: Path, port: int, isapi_port: int) -> list[dict[str, Any]]:
    common = {"driver": "http_plate_reader", "listen_host": "127.0.0.1", "listen_port": port, "simulated": True,
              "media": {"path": str(tmp_path / "media")}, "auth": {"mode": "token", "token": TOKEN}}
    return [
        {"id": "lpr-gio", "vendor": "zhenshi", "gate_input": 1, **common},  # barrier contact wired
        {"id": "lpr-plain", "vendor": "zhenshi", **common},  # no contact: the next heartbeat confirms
        {"id": "lpr-hik", "vendor": "hikvision", "protocol": "hikvision", **common,
         "barrier": {"url": f"http://127.0.0.1:{isapi_port}/lpr-hik", "username": "admin",
                     "password": "admin12345"}},
    ]


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[tuple[dict[str, ZhenshiBarrierCamera],
                                                                           IsapiBarrierServer, Gateway,
                                                                           CommandClient]]:
    port = free_port()
    isapi = IsapiBarrierServer("admin", "admin12345", lambda _camera: None)
    await isapi.start("127.0.0.1", 0)
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site=SITE, commands=COMMANDS,
                                   devices=devices(tmp_path, port, isapi.port)))
    auth = CameraAuth(token=TOKEN)
    async with aiohttp.ClientSession() as session, Gateway(cfg) as gw, \
            CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port), SITE) as client:
        cams = {"lpr-gio": ZhenshiBarrierCamera(Camera(session, f"http://127.0.0.1:{port}/lpr/lpr-gio", auth),
                                                gate_input=1),
                "lpr-plain": ZhenshiBarrierCamera(Camera(session, f"http://127.0.0.1:{port}/lpr/lpr-plain", auth))}
        await eventually(gw.commands.bus.connected.is_set, 10)
        await eventually(lambda: _beat_ok(cams["lpr-gio"]), 10)
        tasks = [asyncio.create_task(c.run()) for c in cams.values()]
        try:
            yield cams, isapi, gw, client
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await isapi.close()


async def _beat_ok(cam: ZhenshiBarrierCamera) -> bool:
    try:
        return (await cam.beat()).status == 200
    except aiohttp.ClientError:
        return False


async def ask(client: CommandClient, device: str, name: str, args: dict[str, Any] | None = None,
              **kw: Any) -> dict[str, Any]:
    cid = await client.send("plate_reader", device, name, args=args, **kw)
    return await client.wait(cid, timeout=10)


async def test_reply_channel_and_isapi_barrier_commands(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (cams, isapi, gw, client):
        gio, plain = cams["lpr-gio"], cams["lpr-plain"]
        res = await ask(client, "lpr-gio", "open_barrier")
        assert res["state"] == "succeeded", res
        assert [r["state"] for r in client.results[res["id"]]] == ["accepted", "sent", "succeeded"]
        assert [a[0] for a in gio.acted] == ["opendoor"] and gio.barrier == "up"
        assert mailbox("lpr-gio").gate_state() == "up"  # confirmed by the barrier contact (the driver's view)
        assert (await ask(client, "lpr-gio", "close_barrier"))["state"] == "succeeded"
        assert gio.barrier == "down"
        res = await ask(client, "lpr-plain", "open_barrier")
        assert (res["state"], res["reason"]) == ("succeeded", None)  # its next heartbeat confirmed
        assert [a[0] for a in plain.acted] == ["opendoor"]
        res = await ask(client, "lpr-hik", "open_barrier")
        assert (res["state"], res["reason"]) == ("succeeded", None)  # ResponseStatus OK, status reads open
        assert isapi.commands == [("lpr-hik", "open")] and isapi.barriers["lpr-hik"] == "open"
        assert (await ask(client, "lpr-hik", "close_barrier"))["state"] == "succeeded"
        assert isapi.barriers["lpr-hik"] == "close"
        assert gw.counters.snapshot()["commands.succeeded"] == 5


@pytest.mark.slow
async def test_bad_input_refusal_and_a_camera_that_never_polls(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (cams, isapi, gw, client):
        gio = cams["lpr-gio"]
        for device, name, args, reason in (
            ("lpr-gio", "raise_barrier", {}, "unknown_command"),
            ("lpr-gio", "open_barrier", {"seconds": 5}, "unexpected_args:seconds"),
            ("lpr-nope", "open_barrier", {}, "unknown_device"),
        ):
            res = await ask(client, device, name, args)
            assert res["state"] == "rejected" and res["reason"].startswith(reason), (device, name, res)
        gio.stuck = True  # the camera takes the command, the barrier never moves: the contact says so
        res = await ask(client, "lpr-gio", "open_barrier")
        assert (res["state"], res["reason"]) == ("failed", "delivered_not_confirmed:gate_input")
        gio.stuck = False
        isapi.refuse.add("lpr-hik")
        res = await ask(client, "lpr-hik", "open_barrier")
        assert (res["state"], res["reason"]) == ("failed", "refused:deviceBusy")
        await isapi.close()  # the camera's web server is gone
        res = await ask(client, "lpr-hik", "open_barrier")
        assert res["state"] == "failed" and res["reason"].startswith("device_unavailable"), res
        # a camera that stops polling: the command waits in its mailbox, then is withdrawn, never delivered late
        box = mailbox("lpr-plain")
        cams["lpr-plain"].heartbeat_s = 3600
        await asyncio.sleep(0.5)  # its last beat is in
        delivered = box.delivered
        res = await ask(client, "lpr-plain", "close_barrier")
        assert (res["state"], res["reason"]) == ("failed", "not_delivered:no_heartbeat_before_deadline")
        assert not box.queue
        assert (await cams["lpr-plain"].beat()).status == 200  # it polls again: nothing stale rides the reply
        assert box.delivered == delivered and [a[0] for a in cams["lpr-plain"].acted] == []
        snap = gw.counters.snapshot()
        assert (snap["commands.rejected"], snap["commands.failed"]) == (3, 4)
