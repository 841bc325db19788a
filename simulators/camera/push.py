"""Hikvision HTTP listening: the camera POSTs each alert (and a heartbeat) to the gateway.

Alerts go as `multipart/form-data`: the EventNotificationAlert in a part named after the event
type, the picture in a second part, the way Hikvision firmwares post them; heartbeats go as a
bare `application/xml` videoloss/inactive alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from simulators.camera.model import SimCamera, SimDetection, SimSite
from simulators.camera.server import hik_alert, hik_code, part

log = logging.getLogger("courtyard.sim.camera.push")


FORM_BOUNDARY = "MIME_boundary"


def push_form(cam: SimCamera, det: SimDetection) -> tuple[bytes, str]:
    """The multipart/form-data body (and its Content-Type) a camera posts for one detection."""
    code = hik_code(det)
    ctype = "application/json" if cam.json_alerts else "application/xml"
    body = part(ctype, hik_alert(cam, det, as_json=cam.json_alerts), FORM_BOUNDARY,
                f'Content-Disposition: form-data; name="{code}"\r\n')
    if det.picture:
        body += part("image/jpeg", det.picture, FORM_BOUNDARY,
                     f'Content-Disposition: form-data; name="{code}Image"; filename="{det.seq}.jpg"\r\n')
    return body + f"--{FORM_BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={FORM_BOUNDARY}"


class Pusher:
    """Posts every Hikvision camera's detections to `target/camera/<id>`."""

    def __init__(self, site: SimSite, target: str, *, user: str | None = None, password: str | None = None,
                 heartbeat_s: float = 5.0, path: str = "/camera/{id}", digest: bool = False,
                 cameras: list[str] | None = None) -> None:
        self.site = site
        self.target = target.rstrip("/")
        self.digest = aiohttp.DigestAuthMiddleware(user, password or "") if user and digest else None
        basic = user is not None and not digest
        self.headers = {"Authorization": aiohttp.encode_basic_auth(user or "", password or "")} if basic else {}
        self.heartbeat_s = heartbeat_s
        self.path = path
        self.only = set(cameras) if cameras is not None else None
        self.sent = 0
        self.failed = 0

    async def run(self) -> None:
        """Push until cancelled."""
        middlewares = (self.digest,) if self.digest is not None else ()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), headers=self.headers,
                                         middlewares=middlewares) as session:
            cams = [c for c in self.site.cameras.values()
                    if c.brand == "hikvision" and (self.only is None or c.id in self.only)]
            await asyncio.gather(*(self._camera(session, c) for c in cams))

    async def _post(self, session: aiohttp.ClientSession, url: str, **kw: object) -> None:
        try:
            async with session.post(url, **kw) as resp:  # type: ignore[arg-type]
                await resp.read()
                if resp.status >= 400:
                    self.failed += 1
                    log.warning("push to %s: HTTP %d", url, resp.status)
                else:
                    self.sent += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failed += 1
            log.warning("push to %s failed: %s", url, exc)

    async def _camera(self, session: aiohttp.ClientSession, cam: SimCamera) -> None:
        url = self.target + self.path.format(id=cam.id)
        queue = cam.subscribe()
        try:
            while True:
                try:
                    det = await asyncio.wait_for(queue.get(), self.heartbeat_s)
                except TimeoutError:
                    if "silent" not in cam.faults:
                        await self._post(session, url, data=hik_alert(cam, None),
                                         headers={"Content-Type": "application/xml"})
                    continue
                if det is None:
                    return
                body, ctype = push_form(cam, det)
                await self._post(session, url, data=body, headers={"Content-Type": ctype})
        finally:
            with contextlib.suppress(Exception):
                cam.unsubscribe(queue)
