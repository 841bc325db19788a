"""The simulator's fault list against the real gateway and mosquitto: each fault is survived.

A cut stream, a malformed alert or a wrong boundary costs a counted rejection (and, for the
stream-level ones, a reconnect), never the device; bad credentials and a silent camera end in
`device.offline`; a skewed clock gives receipt-time events marked suspect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.runtime import Gateway
from simulators.camera.model import Brand, SimCamera, SimSite
from simulators.camera.server import CameraServer
from tests.helpers import MqttCollector, base_config, eventually
from tests.servers import Mosquitto

PASSWORD = "cam-secret-1"


@asynccontextmanager
async def rig(tmp_path: Path, mosquitto: Mosquitto, brand: Brand, faults: set[str],
              **device: Any) -> AsyncIterator[tuple[SimSite, CameraServer, MqttCollector, Gateway]]:
    """One faulty camera on the simulator, its gateway device, and a collector on its topics."""
    site = SimSite([SimCamera("cam", brand, channels=2, password=PASSWORD, faults=set(faults))], rate_per_min=0)
    server = CameraServer(site, heartbeat_s=0.3)
    port = await server.start()
    dev = {"id": "cam", "driver": "camera", "protocol": "dahua" if brand == "dahua" else "isapi",
           "url": f"http://127.0.0.1:{port}/cam", "password": PASSWORD, "heartbeat_timeout_s": 1.5,
           "offline_after": 2, "backoff": {"initial_s": 0.05, "max_s": 0.2}, "pulse_hold_s": 30,
           "media": {"path": str(tmp_path / "media")}, **device}
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, devices=[dev]))
    try:
        async with MqttCollector(mosquitto.host, mosquitto.port, "courtyard/test-site/camera/#") as col, \
                Gateway(cfg) as gw:
            yield site, server, col, gw
    finally:
        await server.aclose()


def _types(col: MqttCollector) -> list[str]:
    return [e["type"] for e in col.events()]


def _events(col: MqttCollector, type_: str) -> list[dict[str, Any]]:
    return [e for e in col.events() if e["type"] == type_]


async def _streaming(site: SimSite) -> None:
    await eventually(lambda: bool(site.cameras["cam"].subscribers), 10)


@pytest.mark.parametrize("brand", ["hikvision", "dahua"])
async def test_stream_cut_mid_part_reconnects_and_keeps_going(tmp_path: Path, mosquitto: Mosquitto,
                                                              brand: Brand) -> None:
    async with rig(tmp_path, mosquitto, brand, {"cut_mid_part"}, pulse_hold_s=0.05) as (site, server, col, _):
        def raised() -> set[str]:
            return {e["payload"]["region"] for e in _events(col, "camera.intrusion") if e["state"] == "raised"}

        for i in range(7):  # every 3rd detection of a connection is cut in half, then the stream closes
            await _streaming(site)
            cuts = server.cuts
            site.detect("cam", "intrusion", channel=1, region=f"r{i}")
            await eventually(lambda i=i, cuts=cuts: f"r{i}" in raised() or server.cuts > cuts, 5)
        assert server.cuts == 2
        assert raised() == {"r0", "r1", "r3", "r4", "r6"}  # all but the cut ones, over three connections
        assert not _events(col, "device.offline")  # a cut is one reconnect, not an outage


@pytest.mark.parametrize("brand", ["hikvision", "dahua"])
async def test_malformed_alerts_are_counted_rejections_and_the_stream_stays(tmp_path: Path, mosquitto: Mosquitto,
                                                                           brand: Brand) -> None:
    async with rig(tmp_path, mosquitto, brand, {"malformed_xml"}) as (site, _, col, gw):
        await _streaming(site)
        subscriber = next(iter(site.cameras["cam"].subscribers))
        for i in range(4):  # detections 1, 4 and 7 of the stream are broken, the others good
            site.detect("cam", "fire", channel=1, region=f"r{i}", state="pulse")
            site.detect("cam", "fire", channel=1, region=f"r{i}", state="stop", picture=False)
        await col.wait_for(lambda c: len(_events(c, "camera.input_rejected")) >= 1
                           and len(_events(c, "camera.fire_detected")) >= 2, 10)
        bad = _events(col, "camera.input_rejected")[0]
        assert bad["quality"]["status"] == "rejected"
        assert bad["quality"]["reasons"][0] in {"malformed_xml", "malformed_data", "malformed_event"}
        assert subscriber in site.cameras["cam"].subscribers  # same connection: no reconnect for a bad alert
        assert gw.counters.get(f"device.cam.camera.rejected.{bad['quality']['reasons'][0]}") >= 1


async def test_wrong_boundary_is_rejected_and_the_device_goes_offline(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto, "hikvision", {"wrong_boundary"}) as (site, _, col, _):
        await col.wait_for(lambda c: "device.offline" in _types(c), 15)
        rejected = _events(col, "camera.input_rejected")
        assert rejected and all(r["quality"]["reasons"] == ["bad_boundary"] for r in rejected)
        assert "device.online" not in _types(col)  # garbage framing never counted as a working link
        site.cameras["cam"].faults.clear()
        await col.wait_for(lambda c: "device.online" in _types(c), 15)


async def test_slow_drip_still_delivers_alert_and_picture(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto, "hikvision", {"slow_drip"}) as (site, _, col, _):
        await _streaming(site)
        det = site.detect("cam", "smoke", channel=2)
        await col.wait_for(lambda c: len(_events(c, "camera.smoke_detected")) >= 1, 15)
        ev = _events(col, "camera.smoke_detected")[0]
        assert ev["payload"]["channel"] == 2 and ev["payload"]["snapshot_uri"].startswith("file://")
        from urllib.parse import unquote, urlparse

        assert Path(unquote(urlparse(ev["payload"]["snapshot_uri"]).path)).read_bytes() == det.picture


@pytest.mark.parametrize("brand", ["hikvision", "dahua"])
async def test_auth_failure_ends_offline_with_the_reason(tmp_path: Path, mosquitto: Mosquitto, brand: Brand) -> None:
    async with rig(tmp_path, mosquitto, brand, {"auth_failure"}) as (_, server, col, _):
        await col.wait_for(lambda c: "device.offline" in _types(c), 15)
        offline = _events(col, "device.offline")[0]
        assert "credentials" in offline["payload"]["reason"] and "HTTP 401" in offline["payload"]["reason"]
        assert server.guard.failures >= 2  # Digest was attempted, and refused, each time


async def test_clock_skew_gives_receipt_time_and_suspect(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto, "hikvision", {"clock_skew"}) as (site, _, col, _):
        await _streaming(site)
        det = site.detect("cam", "fire", channel=1)
        await col.wait_for(lambda c: len(_events(c, "camera.fire_detected")) >= 1, 10)
        ev = _events(col, "camera.fire_detected")[0]
        assert ev["quality"] == {"status": "suspect", "reasons": ["clock_skew"]}
        assert ev["time"] == ev["received"] and ev["time"][:13] != det.time.isoformat()[:13]


@pytest.mark.parametrize("brand", ["hikvision", "dahua"])
async def test_silent_camera_goes_offline_then_back(tmp_path: Path, mosquitto: Mosquitto, brand: Brand) -> None:
    async with rig(tmp_path, mosquitto, brand, set()) as (site, _, col, _):
        await col.wait_for(lambda c: "device.online" in _types(c), 10)
        seen = len(col.events())  # what came before (a retained availability of an earlier test) is not this
        site.cameras["cam"].faults.add("silent")
        await col.wait_for(lambda c: "device.offline" in _types(c)[seen:], 15)
        offline = [e for e in col.events()[seen:] if e["type"] == "device.offline"]
        assert "nothing from the camera" in offline[0]["payload"]["reason"]
        site.cameras["cam"].faults.clear()
        await col.wait_for(lambda c: _types(c).count("device.online") >= 2, 15)
