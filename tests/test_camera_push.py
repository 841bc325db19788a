"""Hikvision HTTP listening through the shared listener: bad posts are refused, counted and kept."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from gateway.config import parse_config
from gateway.history import query
from gateway.runtime import Gateway
from simulators.camera.model import SimCamera, SimDetection
from simulators.camera.push import push_form
from simulators.camera.server import hik_alert
from tests.helpers import base_config, eventually
from tests.servers import free_port

CAM = SimCamera("hik-door", "hikvision")


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, ctype: str) -> int:
    async with session.post(url, data=body, headers={"Content-Type": ctype}) as resp:
        await resp.read()
        return resp.status


async def test_bad_posts_are_refused_and_good_ones_still_land(tmp_path: Path) -> None:
    port = free_port()
    device = {"id": "hik-door", "driver": "camera", "protocol": "isapi_push", "listen_host": "127.0.0.1",
              "listen_port": port, "max_part_bytes": 64 * 1024, "media": {"path": str(tmp_path / "media")}}
    cfg = parse_config(base_config(tmp_path, devices=[device]))
    url = f"http://127.0.0.1:{port}/camera/hik-door"
    det = SimDetection(seq=1, detection="tamper", state="pulse", channel=1, picture=b"\xff\xd8pic\xff\xd9")
    async with Gateway(cfg) as gw, aiohttp.ClientSession() as session:
        async def up() -> bool:
            try:
                return await _post(session, url, hik_alert(CAM, None), "application/xml") == 200
            except aiohttp.ClientError:
                return False

        await eventually(up, 10)
        statuses = {
            "garbage": await _post(session, url, b"<EventNotificationAlert><eventType>", "application/xml"),
            "dtd": await _post(session, url, b'<!DOCTYPE a [<!ENTITY x "y">]><EventNotificationAlert/>', "text/xml"),
            "type": await _post(session, url, b"\x00\x01", "application/octet-stream"),
            "unclosed": await _post(session, url, b"--b\r\nContent-Type: application/xml\r\n\r\n<a/>",
                                    "multipart/form-data; boundary=b"),
            "no_boundary": await _post(session, url, b"x", "multipart/form-data"),
        }
        body, ctype = push_form(CAM, det)
        statuses["good"] = await _post(session, url, body, ctype)
        assert statuses == {"garbage": 400, "dtd": 400, "type": 415, "unclosed": 400, "no_boundary": 400,
                            "good": 200}
        assert await gw.drain(10)
    events = [json.loads(r.body) for r in query(tmp_path / "outbox.db")]
    reasons = sorted(e["quality"]["reasons"][0] for e in events if e["type"] == "camera.input_rejected")
    assert reasons == ["bad_boundary", "malformed_xml", "malformed_xml", "truncated_multipart", "wrong_content_type"]
    [tamper] = [e for e in events if e["type"] == "camera.tamper"]
    assert tamper["state"] == "raised" and tamper["payload"]["snapshot_uri"].startswith("file://")
    assert gw.counters.get("device.hik-door.camera.rejected.malformed_xml") == 2
