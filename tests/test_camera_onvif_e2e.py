"""ONVIF PullPoint end to end: simulator -> gateway -> real mosquitto and InfluxDB 1.x -> read back.

Covers the subscription's whole life: created with a short termination time and renewed before
it, expired by the camera (`pullpoint_expiry`) and re-created after a reconnect, the camera's
clock 7 h off (UsernameToken still accepted, event times corrected), and Unsubscribe when
the gateway stops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from gateway.config import parse_config
from gateway.history import query
from gateway.recorder import JsonlRecorder
from gateway.replay import recording_header, replay_events
from gateway.runtime import Gateway
from schemas.camera import CameraPayload
from schemas.event import Event
from simulators.camera.model import SimCamera, SimSite
from simulators.camera.server import CameraServer
from tests.helpers import MqttCollector, base_config, eventually
from tests.servers import InfluxV1, Mosquitto

PASSWORD = "onvif-secret-1"


def onvif_device(port: int, tmp_path: Path, cam: str, family: str, **extra: Any) -> dict[str, Any]:
    """A camera entry reaching one simulated camera's ONVIF services."""
    return {
        "id": cam, "driver": "camera", "protocol": "onvif", "simulated": True, "password": PASSWORD,
        "url": f"http://127.0.0.1:{port}/{cam}", "media": {"path": str(tmp_path / "media")},
        "onvif": {"family": family, "pull_timeout_s": 1, "termination_s": 4},
        "backoff": {"initial_s": 0.1, "max_s": 0.5}, "pulse_hold_s": 1.0, **extra,
    }


def _of(col: MqttCollector, device: str, type_: str) -> list[Event]:
    return [Event.model_validate(e) for e in col.events() if e["device"]["id"] == device and e["type"] == type_]


def _stored(uri: str | None) -> bytes:
    assert uri is not None and uri.startswith("file://")
    return Path(unquote(urlparse(uri).path)).read_bytes()


async def _rows(influx: InfluxV1, device: str, wanted: int) -> list[dict[str, Any]] | None:
    rows = await influx.query(f"SELECT * FROM camera WHERE \"device\" = '{device}'")
    rows = [r for r in rows if str(r.get("type", "")).startswith("camera.")]
    return rows if len(rows) >= wanted else None


async def test_e2e_onvif_pullpoint_renew_expiry_unsubscribe(tmp_path: Path, mosquitto: Mosquitto,
                                                            influx_v1: InfluxV1) -> None:
    site = SimSite([SimCamera("onvif-lobby", "onvif", channels=2, password=PASSWORD),
                    SimCamera("hik-garage", "hikvision", channels=1, password=PASSWORD,
                              faults={"clock_skew"})], rate_per_min=0)
    server = CameraServer(site, heartbeat_s=0.5)
    port = await server.start()
    influx = {"url": influx_v1.url, "api": "v1", "database": influx_v1.database, "batch": 50}
    devices = [
        onvif_device(port, tmp_path, "onvif-lobby", "generic", location={"building": "2", "zone": "lobby"},
                     channels={2: {"name": "lift lobby", "location": {"zone": "lift lobby"}}}),
        onvif_device(port, tmp_path, "hik-garage", "hikvision", location={"garage": "B1"}),
    ]
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, influx=influx, devices=devices))
    services = server.onvif  # type: ignore[attr-defined]
    try:
        async with MqttCollector(mosquitto.host, mosquitto.port, "courtyard/test-site/camera/#") as col, \
                Gateway(cfg) as gw:
            await eventually(lambda: "onvif-lobby" in services and "hik-garage" in services
                             and services["onvif-lobby"].subscriptions and services["hik-garage"].subscriptions, 15)
            lobby, garage = services["onvif-lobby"], services["hik-garage"]

            site.detect("onvif-lobby", "intrusion", state="start", channel=2, region="Door")
            site.detect("hik-garage", "fire", state="start", channel=1, confidence=91)
            await col.wait_for(lambda c: len(_of(c, "onvif-lobby", "camera.intrusion")) >= 1
                               and len(_of(c, "hik-garage", "camera.fire_detected")) >= 1, 15)
            site.detect("hik-garage", "fire", state="stop", channel=1, picture=False)
            site.detect("onvif-lobby", "intrusion", state="stop", channel=2, region="Door", picture=False)
            await col.wait_for(lambda c: len(_of(c, "hik-garage", "camera.fire_detected")) >= 2
                               and len(_of(c, "onvif-lobby", "camera.intrusion")) >= 2, 15)

            # Renew before termination: a 4 s subscription lives on past 4 s with no reconnect.
            await eventually(lambda: lobby.stats.renewals >= 2, 15)
            assert lobby.stats.subscriptions == 1 and lobby.stats.expired_pulls == 0

            # The camera drops the subscription: the gateway subscribes again, events flow again.
            lobby.expire_all()
            await eventually(lambda: lobby.stats.subscriptions >= 2 and lobby.subscriptions, 15)
            site.detect("onvif-lobby", "tamper", state="start", channel=1)
            await col.wait_for(lambda c: len(_of(c, "onvif-lobby", "camera.tamper")) >= 1, 15)
            assert await gw.drain(15)
        # The gateway stopped: it unsubscribed from both cameras, leaving no subscription behind.
        assert lobby.stats.unsubscribes >= 1 and garage.stats.unsubscribes >= 1
        assert not lobby.subscriptions and not garage.subscriptions

        intrusion = _of(col, "onvif-lobby", "camera.intrusion")
        raised, cleared = intrusion[0], intrusion[1]
        assert (raised.state, cleared.state) == ("raised", "cleared") and raised.alarm_id == cleared.alarm_id
        p = raised.payload
        assert isinstance(p, CameraPayload)
        assert p.protocol == "onvif" and p.channel == 2 and p.region == "Door"
        assert p.rule == "intrusion" and p.channel_name == "lift lobby"
        assert p.location is not None and p.location.zone == "lift lobby" and p.location.building == "2"
        assert raised.raw_code == "onvif:tns1:RuleEngine/FieldDetector/ObjectsInside"
        assert _stored(p.snapshot_uri)[:2] == b"\xff\xd8"  # GetSnapshotUri, fetched with Digest

        fire = _of(col, "hik-garage", "camera.fire_detected")
        assert [e.state for e in fire] == ["raised", "cleared"] and fire[0].severity == "critical"
        fp = fire[0].payload
        assert isinstance(fp, CameraPayload)
        assert fp.confidence == 0.91 and fire[0].raw_code == "onvif:tns1:RuleEngine/tnshik:FireDetection/FireDetection"
        # 7 h of clock skew: the token was accepted (events came) and the event time is corrected.
        assert fire[0].time is not None and abs((fire[0].time - fire[0].received).total_seconds()) < 60
        assert fire[0].quality.status == "valid"

        rows = await eventually(lambda: _rows(influx_v1, "hik-garage", 2), 15)
        assert {r["alarm_id"] for r in rows if r["type"] == "camera.fire_detected"} == {fire[0].alarm_id}
    finally:
        await server.aclose()


async def test_onvif_recording_replays_to_the_same_events(tmp_path: Path) -> None:
    """`--record` keeps each PullMessages answer as parsed data; replay decodes it to the same events."""
    site = SimSite([SimCamera("onvif-rec", "dahua", channels=4, password=PASSWORD)], rate_per_min=0)
    server = CameraServer(site)
    port = await server.start()
    cfg = parse_config(base_config(tmp_path, devices=[onvif_device(port, tmp_path, "onvif-rec", "dahua")]))
    rec = tmp_path / "recording.jsonl"
    recorder = JsonlRecorder(rec, recording_header(cfg, None))
    services = server.onvif  # type: ignore[attr-defined]
    try:
        async with Gateway(cfg, recorder=recorder) as gw:
            await eventually(lambda: "onvif-rec" in services and services["onvif-rec"].subscriptions, 15)
            site.detect("onvif-rec", "smoke", state="start", channel=3)
            site.detect("onvif-rec", "intrusion", state="pulse", channel=2, region="Ramp", rule="line")
            site.detect("onvif-rec", "smoke", state="stop", channel=3, picture=False)
            await eventually(lambda: len([r for r in query(tmp_path / "outbox.db")
                                          if json.loads(r.body)["type"].startswith("camera.")]) >= 3, 15)
            assert await gw.drain(10)
        recorder.close()
    finally:
        await server.aclose()

    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        return (e["type"], e["state"], e["alarm_id"], e["time"], e["payload"].get("snapshot_uri"),
                e["payload"].get("channel"))

    live = [key(json.loads(r.body)) for r in query(tmp_path / "outbox.db")]
    live = [k for k in live if k[0].startswith("camera.")]
    again = [key(e.model_dump(mode="json", by_alias=True)) async for e in replay_events(rec)]
    again = [k for k in again if k[0].startswith("camera.")]
    assert live == again
    assert ("camera.smoke_detected", "raised") in {k[:2] for k in live}
    assert any(k[0] == "camera.intrusion" and k[5] == 2 for k in live)  # Dahua's 0-based source, as channel 2
