"""ONVIF faults through the real gateway and broker: what each does to the events and the link.

* auth failure and a silent camera: misses, `device.offline` after `offline_after`, back online
  once the fault is lifted;
* a malformed PullMessages answer, or one over the size bound: one counted `camera.input_rejected`
  each, the subscription goes on;
* a topic no map knows: `camera.event.unknown` with the raw topic, counted;
* the camera's clock 7 h off: tokens carry the camera's time, so nothing is refused;
* subscriptions the camera ends early (`pullpoint_expiry`): lost, counted, subscribed again;
* a refused Renew: reconnect, unsubscribing the old subscription rather than leaking it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.config import parse_config
from gateway.runtime import Gateway
from simulators.camera.model import SimCamera, SimSite
from simulators.camera.onvif import Notification
from simulators.camera.server import CameraServer
from tests.helpers import MqttCollector, base_config, eventually
from tests.servers import Mosquitto

PASSWORD = "onvif-faults-1"


def device(port: int, tmp_path: Path, cam: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": cam, "driver": "camera", "protocol": "onvif", "simulated": True, "password": PASSWORD,
        "url": f"http://127.0.0.1:{port}/{cam}", "media": {"path": str(tmp_path / "media")},
        "onvif": {"pull_timeout_s": 1, "termination_s": 30}, "connect_timeout_s": 1,
        "backoff": {"initial_s": 0.1, "max_s": 0.3}, "offline_after": 2, **extra,
    }


def _types(col: MqttCollector, cam: str) -> list[str]:
    return [e["type"] for e in col.events() if e["device"]["id"] == cam]


async def test_onvif_faults_end_to_end(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cams = [SimCamera(name, "onvif", channels=1, password=PASSWORD)
            for name in ("cam-auth", "cam-silent", "cam-bad", "cam-skew", "cam-expiry", "cam-renew")]
    site = SimSite(cams, rate_per_min=0)
    site.cameras["cam-skew"].faults.add("clock_skew")
    site.cameras["cam-expiry"].faults.add("pullpoint_expiry")  # every subscription dies after 2 s
    site.cameras["cam-renew"].faults.add("renew_refused")  # Renew faults; the subscription itself lives on
    server = CameraServer(site)
    port = await server.start()
    special = {"cam-bad": {"onvif": {"pull_timeout_s": 1, "termination_s": 30, "message_limit": 1024}},
               "cam-renew": {"onvif": {"pull_timeout_s": 1, "termination_s": 3}}}
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, devices=[
        device(port, tmp_path, c.id, **special.get(c.id, {})) for c in cams]))
    services = server.onvif  # type: ignore[attr-defined]
    try:
        async with MqttCollector(mosquitto.host, mosquitto.port, "courtyard/test-site/camera/#") as col, \
                Gateway(cfg) as gw:
            await eventually(lambda: all(c.id in services and services[c.id].subscriptions for c in cams), 15)
            site.cameras["cam-auth"].faults.add("auth_failure")
            site.cameras["cam-silent"].faults.add("silent")
            services["cam-auth"].expire_all()  # its next pull fails; so does every re-subscribe
            await col.wait_for(lambda c: "device.offline" in _types(c, "cam-auth")
                               and "device.offline" in _types(c, "cam-silent"), 20)

            site.cameras["cam-bad"].faults.add("malformed_xml")
            await col.wait_for(lambda c: "camera.input_rejected" in _types(c, "cam-bad"), 15)
            site.cameras["cam-bad"].faults.discard("malformed_xml")
            alien = Notification("tns1:RuleEngine/Acme:Spaceship/Landed", services["cam-bad"].now(), "Changed",
                                 {"Source": "1"}, {"State": "true"})
            services["cam-bad"].deliver(alien)
            site.detect("cam-skew", "smoke", state="start")
            await col.wait_for(lambda c: "camera.event.unknown" in _types(c, "cam-bad")
                               and "camera.smoke_detected" in _types(c, "cam-skew"), 15)

            # An answer over the 1 MiB bound is refused while it is read, not buffered: one rejection.
            huge = Notification("tns1:VideoSource/SignalLoss", services["cam-bad"].now(), "Changed",
                                {"Source": "1"}, {"State": "x" * 5000})
            for _ in range(300):
                services["cam-bad"].deliver(huge)
            await col.wait_for(lambda c: _types(c, "cam-bad").count("camera.input_rejected") >= 2, 15)

            site.cameras["cam-auth"].faults.discard("auth_failure")
            site.cameras["cam-silent"].faults.discard("silent")
            await col.wait_for(lambda c: _types(c, "cam-auth").count("device.online") >= 2
                               and _types(c, "cam-silent").count("device.online") >= 2, 20)
            assert await gw.drain(10)
            counts = gw.counters.snapshot()

        events = [e for e in col.events() if e["device"]["id"] == "cam-bad"]
        rejected = [e for e in events if e["type"] == "camera.input_rejected"]
        assert rejected[0]["quality"]["status"] == "rejected" and "malformed_soap" in rejected[0]["payload"]["detail"]
        assert "over 1048576 bytes" in rejected[-1]["payload"]["detail"]
        unknown = next(e for e in events if e["type"] == "camera.event.unknown")
        assert unknown["payload"]["code"] == "onvif:tns1:RuleEngine/Acme:Spaceship/Landed"
        # The malformed answer did not cost the subscription: one subscription for the whole run.
        assert services["cam-bad"].stats.subscriptions == 1
        assert services["cam-auth"].stats.auth_failures >= 2 and services["cam-skew"].stats.auth_failures == 0
        assert services["cam-auth"].stats.subscriptions >= 2  # re-subscribed once the credentials worked again
        assert "device.offline" not in _types(col, "cam-skew") and "device.offline" not in _types(col, "cam-bad")
        # A refused Renew: reconnect, and the old subscription, still alive on the camera, is unsubscribed.
        renew = services["cam-renew"].stats
        assert counts["device.cam-renew.camera.onvif.renew_failed"] >= 1
        assert renew.subscriptions >= 2 and renew.unsubscribes >= renew.subscriptions - 1
        # Subscriptions that the camera drops are re-created, each loss counted.
        assert services["cam-expiry"].stats.subscriptions >= 3
        assert counts["device.cam-expiry.camera.onvif.subscription_lost"] >= 2
        assert counts["device.cam-bad.camera.onvif.malformed"] >= 1
        assert counts["device.cam-bad.camera.onvif.unknown_topics"] == 1
        assert counts["device.cam-auth.camera.auth_failed"] >= 1
        assert counts["device.cam-skew.camera.onvif.clock_skew_corrected"] >= 1
    finally:
        await server.aclose()
