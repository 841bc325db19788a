"""Simulated cameras over real HTTP -> gateway -> real mosquitto and InfluxDB 1.x -> read back.

One test per protocol (ISAPI arming, ISAPI HTTP listening, Dahua attach): detections raised at
the simulator arrive as typed `camera.*` events with one alarm id per raise/clear pair, a
snapshot reference into the media store (never the bytes), and the channel's location.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from gateway.config import parse_config
from gateway.runtime import Gateway
from schemas.event import Event
from simulators.camera.model import SimCamera, SimSite
from simulators.camera.push import Pusher
from simulators.camera.server import CameraServer
from tests.helpers import MqttCollector, base_config, eventually
from tests.servers import InfluxV1, Mosquitto, free_port

PASSWORD = "cam-secret-1"


def camera_devices(tmp_path: Path, sim_port: int, **extra: Any) -> list[dict[str, Any]]:
    """A Hikvision camera armed over ISAPI and a Dahua camera attached, both on the simulator."""
    common = {"driver": "camera", "simulated": True, "password": PASSWORD, "heartbeat_timeout_s": 3,
              "pulse_hold_s": 1.0, "media": {"path": str(tmp_path / "media")}, **extra}
    return [
        {"id": "hik-lobby", "protocol": "isapi", "url": f"http://127.0.0.1:{sim_port}/hik-lobby",
         "vendor": "hikvision", "location": {"building": "3", "unit": "1", "floor": "1", "zone": "lobby"},
         "where": "lobby", "channels": {2: {"name": "lift car", "where": "elevator_car",
                                            "location": {"zone": "lift 2"}}}, **common},
        {"id": "dahua-garage", "protocol": "dahua", "url": f"http://127.0.0.1:{sim_port}/dahua-garage",
         "vendor": "dahua", "location": {"garage": "B1", "floor": "B1"},
         "channels": {3: {"name": "column 14", "location": {"zone": "column 14"}}}, **common},
    ]


def sim_site() -> SimSite:
    cams = [SimCamera("hik-lobby", "hikvision", channels=2, password=PASSWORD),
            SimCamera("dahua-garage", "dahua", channels=4, password=PASSWORD)]
    return SimSite(cams, rate_per_min=0)


async def _online(col: MqttCollector, *ids: str) -> None:
    await col.wait_for(lambda c: {e["device"]["id"] for e in c.events() if e["type"] == "device.online"} >= set(ids),
                       15)


def _of(col: MqttCollector, device: str, type_: str) -> list[Event]:
    return [Event.model_validate(e) for e in col.events() if e["device"]["id"] == device and e["type"] == type_]


def _stored(uri: str | None) -> bytes:
    assert uri is not None and uri.startswith("file://")
    return Path(unquote(urlparse(uri).path)).read_bytes()


async def _influx_rows(influx: InfluxV1, device: str, wanted: int) -> list[dict[str, Any]] | None:
    rows = await influx.query(f"SELECT * FROM camera WHERE \"device\" = '{device}'")
    rows = [r for r in rows if str(r.get("type", "")).startswith("camera.")]
    return rows if len(rows) >= wanted else None


async def test_e2e_isapi_arming_and_dahua_attach(tmp_path: Path, mosquitto: Mosquitto, influx_v1: InfluxV1) -> None:
    site = sim_site()
    server = CameraServer(site, heartbeat_s=0.5)
    sim_port = await server.start()
    influx = {"url": influx_v1.url, "api": "v1", "database": influx_v1.database, "batch": 50}
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, influx=influx,
                                   devices=camera_devices(tmp_path, sim_port)))
    try:
        async with MqttCollector(mosquitto.host, mosquitto.port, "courtyard/test-site/camera/#") as col, \
                Gateway(cfg) as gw:
            await _online(col, "hik-lobby", "dahua-garage")
            await eventually(lambda: all(c.subscribers for c in site.cameras.values()), 10)
            fire = site.detect("hik-lobby", "fire", state="pulse", channel=1, confidence=87)
            ebike = site.detect("hik-lobby", "ebike", channel=2, region="car floor")
            site.detect("dahua-garage", "fire", state="start", channel=3, region="ramp")
            await col.wait_for(lambda c: len(_of(c, "dahua-garage", "camera.fire_detected")) >= 1, 10)
            site.detect("dahua-garage", "fire", state="stop", channel=3, region="ramp", picture=False)
            site.detect("hik-lobby", "video_loss", state="stop", channel=1)  # heartbeat-shaped: liveness only
            await col.wait_for(lambda c: len(_of(c, "dahua-garage", "camera.fire_detected")) >= 2
                               and len(_of(c, "hik-lobby", "camera.fire_detected")) >= 2
                               and len(_of(c, "hik-lobby", "camera.ebike_detected")) >= 2, 15)
            assert await gw.drain(15)

        hik_fire = _of(col, "hik-lobby", "camera.fire_detected")
        raised, cleared = hik_fire[0], hik_fire[1]
        assert (raised.state, cleared.state) == ("raised", "cleared")
        assert raised.alarm_id == cleared.alarm_id and raised.severity == "critical" and raised.class_ == "alarm"
        p = raised.payload
        assert p.kind == "camera" and p.channel == 1 and p.confidence == 0.87 and p.protocol == "isapi"
        assert p.pulse is True and cleared.payload.duration_s is not None  # type: ignore[union-attr]
        assert _stored(p.snapshot_uri) == fire.picture  # the picture part, stored, referenced
        assert raised.raw_code == "isapi:fireDetection"
        assert p.location is not None and p.location.zone == "lobby" and p.location.floor == "1"

        bike = _of(col, "hik-lobby", "camera.ebike_detected")[0].payload
        assert bike.where == "elevator_car" and bike.channel_name == "lift car"  # type: ignore[union-attr]
        assert bike.location.zone == "lift 2" and bike.location.building == "3"  # type: ignore[union-attr]
        assert bike.region == "car floor" and _stored(bike.snapshot_uri) == ebike.picture  # type: ignore[union-attr]

        dahua = _of(col, "dahua-garage", "camera.fire_detected")
        assert [e.state for e in dahua] == ["raised", "cleared"] and dahua[0].alarm_id == dahua[1].alarm_id
        dp = dahua[0].payload
        assert dp.channel == 3 and dp.location.zone == "column 14" and dp.location.garage == "B1"  # type: ignore[union-attr]
        assert dp.pulse is False and dahua[0].raw_code == "dahua:FireWarning"  # type: ignore[union-attr]
        assert _stored(dp.snapshot_uri)[:2] == b"\xff\xd8"  # Dahua: snapshot fetched over Digest  # type: ignore[union-attr]
        assert not _of(col, "hik-lobby", "camera.video_loss")  # the videoloss/inactive heartbeat stays liveness

        rows = await eventually(lambda: _influx_rows(influx_v1, "dahua-garage", 2), 15)
        assert {r["alarm_id"] for r in rows if r["type"] == "camera.fire_detected"} == {dahua[0].alarm_id}
        assert {r["state"] for r in rows if r["type"] == "camera.fire_detected"} == {"raised", "cleared"}
    finally:
        await server.aclose()


async def test_e2e_isapi_push(tmp_path: Path, mosquitto: Mosquitto, influx_v1: InfluxV1) -> None:
    # JSON alerts this time (HTTP listening firmwares post either form)
    site = SimSite([SimCamera("hik-gate", "hikvision", channels=1, password=PASSWORD, json_alerts=True)],
                   rate_per_min=0)
    port = free_port()
    auth = {"mode": "digest", "username": "cam", "password": "push-pass-9"}
    device = {"id": "hik-gate", "driver": "camera", "protocol": "isapi_push", "listen_host": "127.0.0.1",
              "listen_port": port, "push_auth": auth, "pulse_hold_s": 1.0, "heartbeat_timeout_s": 2,
              "location": {"building": "2", "zone": "north gate"}, "media": {"path": str(tmp_path / "media")}}
    influx = {"url": influx_v1.url, "api": "v1", "database": influx_v1.database, "batch": 50}
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, influx=influx, devices=[device]))
    async with MqttCollector(mosquitto.host, mosquitto.port, "courtyard/test-site/camera/#") as col, Gateway(cfg) as gw:
        wrong = Pusher(site, f"http://127.0.0.1:{port}", user="cam", password="nope", heartbeat_s=0.3)
        pusher = Pusher(site, f"http://127.0.0.1:{port}", user="cam", password="push-pass-9", heartbeat_s=0.3,
                        digest=True)
        tasks = [asyncio.create_task(wrong.run()), asyncio.create_task(pusher.run())]
        try:
            await _online(col, "hik-gate")
            await eventually(lambda: len(site.cameras["hik-gate"].subscribers) == 2, 10)
            det = site.detect("hik-gate", "intrusion", rule="line", region="fence", confidence=75)
            await col.wait_for(lambda c: len(_of(c, "hik-gate", "camera.intrusion")) >= 2, 10)
            assert await gw.drain(15)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    raised, cleared = _of(col, "hik-gate", "camera.intrusion")[:2]
    assert raised.state == "raised" and cleared.state == "cleared" and raised.alarm_id == cleared.alarm_id
    assert raised.payload.rule == "line_crossing" and raised.payload.region == "fence"  # type: ignore[union-attr]
    assert _stored(raised.payload.snapshot_uri) == det.picture  # type: ignore[union-attr]
    assert wrong.failed > 0 and wrong.sent == 0  # the listener's Digest refused Basic with a wrong password
    assert len(_of(col, "hik-gate", "camera.intrusion")) == 2  # the refused copy never became an event
    rows = await eventually(lambda: _influx_rows(influx_v1, "hik-gate", 2), 15)
    assert {r["alarm_id"] for r in rows} == {raised.alarm_id}
