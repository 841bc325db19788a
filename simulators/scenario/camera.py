"""Scenario adapter for cameras: one camera simulator on a loopback port, the gateway arms each camera.

Device settings: `brand` (hikvision | dahua; default from `protocol`), `protocol` (isapi |
isapi_push | dahua; default isapi for Hikvision, dahua for Dahua), `channels` (default 1),
`rate` (random detections per minute, default 0), `channels_config` (the driver's per-channel
names and places), `where`, `pulse_hold_s` (scenario seconds, default 30), `motion`.

Actions:
- do `fire`, `smoke`, `ebike`, `intrusion`, `video_loss`, `tamper`, `motion` (params: channel,
  region, confidence, state start|stop|pulse, rule field|line|entrance): one detection now;
- inject/clear `fire`, `smoke`, `video_loss`, `tamper`: a condition that starts, then stops;
- inject/clear the simulator's faults (`cut_mid_part`, `malformed_xml`, `wrong_boundary`,
  `slow_drip`, `auth_failure`, `clock_skew`, `silent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from pathlib import Path
from typing import Any

from simulators.camera.model import FAULTS, SimCamera, SimSite
from simulators.camera.push import Pusher
from simulators.camera.server import CameraServer
from simulators.net import free_port
from simulators.scenario.adapter import KindAdapter
from simulators.scenario.model import ScenarioDevice

DETECTIONS = ("fire", "smoke", "ebike", "intrusion", "video_loss", "tamper", "motion")
CONDITIONS = ("fire", "smoke", "video_loss", "tamper")
SIM_FAULTS = tuple(f for f in FAULTS if f != "pullpoint_expiry")


class CameraAdapter(KindAdapter):
    """Every camera of a scenario, on one simulator port."""

    kind = "camera"

    def __init__(self, devices: list[ScenarioDevice], *, seed: int, speed: float, scenario: str) -> None:
        super().__init__(devices, seed=seed, speed=speed, scenario=scenario)
        self.password = secrets.token_urlsafe(12)
        self.site: SimSite | None = None
        self.server: CameraServer | None = None
        self.push_port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._media = Path(tempfile.gettempdir()) / "courtyard-scenario" / scenario / "camera-media"

    def actions(self) -> dict[str, set[str]]:
        return {"do": set(DETECTIONS), "inject": {*CONDITIONS, *SIM_FAULTS}, "clear": {*CONDITIONS, *SIM_FAULTS}}

    def _protocol(self, dev: ScenarioDevice) -> str:
        s = dev.settings
        brand = str(s.get("brand", "dahua" if s.get("protocol") == "dahua" else "hikvision"))
        protocol = str(s.get("protocol", "dahua" if brand == "dahua" else "isapi"))
        if (brand, protocol) not in {("hikvision", "isapi"), ("hikvision", "isapi_push"), ("dahua", "dahua")}:
            raise ValueError(f"{dev.id}: brand {brand} does not speak protocol {protocol}")
        return protocol

    async def start(self) -> None:
        cams = []
        for dev in self.devices:
            brand = "dahua" if self._protocol(dev) == "dahua" else "hikvision"
            cams.append(SimCamera(dev.id, brand, channels=int(dev.settings.get("channels", 1)),  # type: ignore[arg-type]
                                  password=self.password))
        rate = sum(float(d.settings.get("rate", 0)) for d in self.devices) * self.speed
        self.site = SimSite(cams, rate_per_min=rate, seed=self.rng.randrange(1 << 30),
                            stateful_hold_s=3.0 / self.speed)
        self.server = CameraServer(self.site, heartbeat_s=max(2.0 / self.speed, 0.2))
        await self.server.start()
        self._tasks.append(asyncio.create_task(self.site.run()))
        pushed = [d.id for d in self.devices if self._protocol(d) == "isapi_push"]
        if pushed:
            self.push_port = free_port()
            pusher = Pusher(self.site, f"http://127.0.0.1:{self.push_port}", user="camera", password=self.password,
                            heartbeat_s=max(2.0 / self.speed, 0.2), digest=True, cameras=pushed)
            self._tasks.append(asyncio.create_task(pusher.run()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.aclose()
            self.server = None

    def device_configs(self) -> list[dict[str, Any]]:
        assert self.server is not None
        out = []
        for dev in self.devices:
            s = dev.settings
            protocol = self._protocol(dev)
            cfg: dict[str, Any] = {
                "id": dev.id, "driver": "camera", "name": dev.name, "simulated": True, "protocol": protocol,
                "vendor": "dahua" if protocol == "dahua" else "hikvision",
                "location": dev.location.model_dump(exclude_none=True),
                "heartbeat_timeout_s": float(s.get("heartbeat_timeout_s", 10.0)) / self.speed,
                "offline_after": int(s.get("offline_after", 3)),
                "pulse_hold_s": float(s.get("pulse_hold_s", 30.0)) / self.speed,
                "motion": bool(s.get("motion", False)),
                "media": {"path": str(s.get("media_path", self._media)), "max_bytes": 64 * 1024 * 1024},
            }
            if s.get("where"):
                cfg["where"] = s["where"]
            if s.get("channels_config"):
                cfg["channels"] = s["channels_config"]
            if protocol == "isapi_push":
                cfg |= {"listen_host": "127.0.0.1", "listen_port": self.push_port,
                        "push_auth": {"mode": "digest", "username": "camera", "password": self.password}}
            else:
                cfg |= {"url": f"http://127.0.0.1:{self.server.port}/{dev.id}", "password": self.password}
            out.append(cfg)
        return out

    async def apply(self, device: ScenarioDevice, verb: str, action: str, params: dict[str, Any]) -> None:
        self.check(verb, action)
        assert self.site is not None
        cam = self.site.cameras[device.id]
        if action in SIM_FAULTS:
            if verb == "inject":
                cam.faults.add(action)
            else:
                cam.faults.discard(action)
            return
        # do: one detection (a pulse unless told); inject/clear: a condition's start and stop
        state = {"inject": "start", "clear": "stop"}.get(verb) or str(params.get("state", "pulse"))
        self.site.detect(
            device.id, action, state=state, channel=int(params.get("channel", 1)),  # type: ignore[arg-type]
            region=params.get("region"), confidence=params.get("confidence", 90), rule=params.get("rule"),
            picture=state != "stop",
        )
