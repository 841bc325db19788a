"""Camera relay commands end to end: requester on a real mosquitto -> gateway -> ISAPI IO output
trigger / Dahua AlarmOut config (Digest) -> the camera simulator -> output status read back -> results."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.command_bus import CommandClient
from gateway.config import MqttConfig, parse_config
from gateway.runtime import Gateway
from simulators.camera.model import SimCamera, SimSite
from simulators.camera.server import CameraServer
from tests.helpers import base_config, eventually
from tests.servers import Mosquitto

SITE = "cmd-camera"
PASSWORD = "relay-test-pass"
COMMANDS = {"allow": [{"requesters": ["mqtt:*"], "devices": ["hik-1", "dahua-1"], "commands": ["relay"]}],
            "answer_timeout_s": 1.0}


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[tuple[SimSite, CameraServer, Gateway,
                                                                           CommandClient]]:
    site = SimSite([SimCamera("hik-1", "hikvision", password=PASSWORD),
                    SimCamera("dahua-1", "dahua", password=PASSWORD)], rate_per_min=0)
    server = CameraServer(site, heartbeat_s=1.0)
    port = await server.start("127.0.0.1", 0)
    common = {"driver": "camera", "simulated": True, "password": PASSWORD, "media": {"path": str(tmp_path / "m")}}
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site=SITE, commands=COMMANDS, devices=[
        {"id": "hik-1", "protocol": "isapi", "url": f"http://127.0.0.1:{port}/hik-1", **common},
        {"id": "dahua-1", "protocol": "dahua", "url": f"http://127.0.0.1:{port}/dahua-1", **common}]))
    try:
        async with Gateway(cfg) as gw, CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port),
                                                     SITE) as client:
            await eventually(gw.commands.bus.connected.is_set, 10)
            yield site, server, gw, client
    finally:
        await server.aclose()


async def ask(client: CommandClient, device: str, args: dict[str, Any]) -> dict[str, Any]:
    cid = await client.send("camera", device, "relay", args=args)
    return await client.wait(cid, timeout=10)


@pytest.mark.parametrize("device", ["hik-1", "dahua-1"])
async def test_relay_switches_and_is_read_back(tmp_path: Path, mosquitto: Mosquitto, device: str) -> None:
    async with rig(tmp_path, mosquitto) as (site, _server, _gw, client):
        cam = site.cameras[device]
        res = await ask(client, device, {"output": 2, "state": "on"})
        assert res["state"] == "succeeded", res
        assert [r["state"] for r in client.results[res["id"]]] == ["accepted", "sent", "succeeded"]
        assert cam.outputs == {1: False, 2: True}
        assert (await ask(client, device, {"output": 2, "state": "off"}))["state"] == "succeeded"
        assert cam.outputs[2] is False
        assert (await ask(client, device, {"state": "on", "seconds": 0.3}))["state"] == "succeeded"
        assert cam.outputs[1] is True
        await eventually(lambda: cam.outputs[1] is False, 5)  # switched off again after `seconds`
        assert cam.relay_log == [(2, True), (2, False), (1, True), (1, False)]


async def test_bad_input_refusal_offline_and_silence(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (site, server, gw, client):
        hik = site.cameras["hik-1"]
        for args, reason in (
            ({"output": 1}, "missing_arg:state"),
            ({"output": 0, "state": "on"}, "bad_arg:output:out_of_range"),
            ({"state": "maybe"}, "bad_arg:state"),
            ({"state": "off", "seconds": 3}, "bad_arg:seconds:only_with_on"),
            ({"state": "on", "colour": "red"}, "unexpected_args:colour"),
        ):
            res = await ask(client, "hik-1", args)
            assert res["state"] == "rejected" and res["reason"].startswith(reason), (args, res)
        cid = await client.send("camera", "hik-1", "reboot")
        assert (await client.wait(cid))["reason"] == "unknown_command"
        assert hik.relay_log == []
        res = await ask(client, "hik-1", {"output": 7, "state": "on"})  # the camera has two outputs
        assert (res["state"], res["reason"]) == ("failed", "refused:invalidID")
        hik.refuse_relay = True
        res = await ask(client, "hik-1", {"state": "on"})
        assert (res["state"], res["reason"]) == ("failed", "refused:alarmOutputLinked")
        hik.refuse_relay, hik.ignore_relay = False, True  # says OK, the output never changes
        res = await ask(client, "hik-1", {"state": "on"})
        assert (res["state"], res["reason"]) == ("failed", "not_confirmed")
        hik.ignore_relay = False
        site.cameras["dahua-1"].refuse_relay = True
        res = await ask(client, "dahua-1", {"state": "on"})
        assert (res["state"], res["reason"]) == ("failed", "refused:no_authority")
        await server.aclose()  # the cameras go away
        res = await ask(client, "hik-1", {"state": "on"})
        assert res["state"] == "failed" and res["reason"].startswith("device_unavailable"), res
        snap = gw.counters.snapshot()
        assert (snap["commands.rejected"], snap["commands.failed"]) == (6, 5)
