"""The camera transport: I/O only. Decoding is `CameraDecoder`'s (drivers/camera/decoder.py).

* `isapi`: hold `GET /ISAPI/Event/notification/alertStream` open (Digest), split the endless
  multipart into alerts and their picture parts;
* `dahua`: hold `GET /cgi-bin/eventManager.cgi?action=attach&codes=[All]&heartbeat=N` open;
* `isapi_push`: register a path on the listener shared with the plate readers;
* `onvif`: `drivers.camera.onvif.run_onvif(driver)` (PullPoint).

Every input goes through `ingest(channel, raw)`: recorded, decoded at its receipt time,
committed. Pictures are written to the bounded media store first; the raw input names them.
A stream that ends, stalls for `heartbeat_timeout_s` or loses its framing raises
`DeviceUnavailable`: the supervisor reconnects with back-off and reports `device.offline`
after `offline_after` misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from typing import Any

import aiohttp

from drivers.camera.config import CameraConfig
from drivers.camera.decoder import CameraDecoder
from drivers.camera.events import EVENT_KINDS, CameraInputError
from drivers.camera.multipart import MultipartSplitter, Part, Rejected, boundary_of
from drivers.http_plate_reader.listener import Policy, PushReply, PushRequest, error_body, open_listener
from gateway.driver import DeviceContext, EventDraft, PushDriver
from gateway.errors import DeviceUnavailable, OutboxFull
from gateway.media import MediaStore, image_name

ALERT_STREAM = "/ISAPI/Event/notification/alertStream"
DAHUA_ATTACH = "/cgi-bin/eventManager.cgi?action=attach&codes=[All]&heartbeat={heartbeat}"
SNAPSHOT_PATHS = {
    "isapi": "/ISAPI/Streaming/channels/{channel}01/picture",
    "dahua": "/cgi-bin/snapshot.cgi?channel={channel}",
    "onvif": None,
    "isapi_push": None,
}
#: Pictures kept per alert (cameras send one to three: scene, target close-up, plate).
MAX_PICTURES = 4
#: How long an alert that announced pictures waits for them before it is ingested without.
PICTURE_WAIT_S = 1.0
_PICTURES = re.compile(rb"detectionPicturesNumber\"?\s*[>:]\s*\"?(\d{1,2})")
_ALERT_TYPES = ("application/xml", "text/xml", "application/json", "text/plain")


class CameraDriver(PushDriver):
    """One camera, any protocol."""

    def __init__(self, config: CameraConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.cfg = config
        self.camera = CameraDecoder(config, ctx)
        self.decoder = self.camera  # binds it: ctx.ingest feeds it
        self.media: MediaStore | None = None
        self.session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._last_push: float | None = None

    # --- the one way in ------------------------------------------------------------------

    async def ingest(self, channel: str, raw: Any) -> list[EventDraft]:
        """Hand one raw input to the runtime (recorded, decoded at its receipt time, committed)."""
        try:
            return (await self.ctx.ingest(channel, raw)).drafts
        finally:
            self._wake.set()  # a pulse hold may have started or ended: the ticker re-plans

    async def reject(self, error: str, detail: str) -> None:
        """A transport-level refusal (framing, content type): counted and kept as an event."""
        await self.ingest("reject", {"error": error, "detail": detail[:300]})

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the camera until cancelled; raise `DeviceUnavailable` to be reconnected."""
        cfg = self.cfg
        try:
            self.media = await self.ctx.shared(f"media:{cfg.media.path.resolve()}", self._open_media)
        except OSError as exc:
            raise DeviceUnavailable(f"media folder {cfg.media.path} unusable: {exc}") from exc
        ticker = asyncio.create_task(self._tick())
        try:
            if cfg.protocol == "isapi_push":
                await self._listen()
            elif cfg.protocol == "onvif":
                from drivers.camera.onvif import run_onvif

                await run_onvif(self)
            else:
                async with self.client() as session:
                    self.session = session
                    await self._hold_stream(session)
        finally:
            self.session = None
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _open_media(self) -> MediaStore:
        store = MediaStore(self.cfg.media.path, self.cfg.media.max_bytes, uri_prefix=self.cfg.media.uri_prefix)
        await asyncio.to_thread(store.scan)
        return store

    def client(self) -> aiohttp.ClientSession:
        """An HTTP session to the camera with its auth (Digest by default)."""
        cfg = self.cfg
        password = cfg.password.get_secret_value() if cfg.password else ""
        if cfg.auth == "digest":
            digest = aiohttp.DigestAuthMiddleware(login=cfg.username, password=password)
            return aiohttp.ClientSession(middlewares=(digest,))
        return aiohttp.ClientSession(headers={"Authorization": aiohttp.encode_basic_auth(cfg.username, password)})

    def url(self, path: str) -> str:
        """A camera URL: the configured base (its path prefix kept) plus `path`."""
        return str(self.cfg.url).rstrip("/") + path

    async def _tick(self) -> None:
        """Clear pulse-held alarms when their hold runs out, even if the camera says nothing more."""
        while True:
            due = self.camera.next_expiry()
            self._wake.clear()
            if due is None:
                await self._wake.wait()
                continue
            delay = (due - self.ctx.now()).total_seconds()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay + 0.01)
                continue
            try:
                await self.ingest("tick", {})
            except Exception:
                self.ctx.counters.inc("camera.tick_failed")
                await asyncio.sleep(1.0)

    # --- pictures --------------------------------------------------------------------------

    async def store_picture(self, data: bytes) -> str | None:
        """Write one picture to the media store; its name (None when refused, counted)."""
        if self.media is None or not data:
            return None
        if len(data) > self.cfg.media.max_image_bytes:
            self.ctx.counters.inc("camera.picture_too_large")
            return None
        name = image_name(self.cfg.id, data)
        try:
            await self.media.store(name, data)
        except (OSError, ValueError):
            self.ctx.counters.inc("camera.picture_store_failed")
            return None
        return name

    async def fetch_snapshot(self, channel: int | None) -> str | None:
        """GET the camera's snapshot of `channel` (bounded by the part limit and a short timeout)."""
        path = self.cfg.snapshot_path or SNAPSHOT_PATHS.get(self.cfg.protocol)
        if self.session is None or path is None or not self.cfg.fetch_snapshots:
            return None
        url = self.url(path.format(channel=channel or 1))
        try:
            timeout = aiohttp.ClientTimeout(total=max(self.cfg.connect_timeout_s, 2.0))
            async with self.session.get(url, timeout=timeout) as resp:
                if resp.status != 200 or not resp.content_type.startswith("image/"):
                    self.ctx.counters.inc("camera.snapshot_failed")
                    return None
                data = await resp.content.read(self.cfg.media.max_image_bytes + 1)
        except (aiohttp.ClientError, TimeoutError):
            self.ctx.counters.inc("camera.snapshot_failed")
            return None
        return await self.store_picture(data)

    # --- arming: the held-open event stream ---------------------------------------------

    async def _hold_stream(self, session: aiohttp.ClientSession) -> None:
        cfg = self.cfg
        dahua = cfg.protocol == "dahua"
        path = DAHUA_ATTACH.format(heartbeat=max(int(cfg.heartbeat_timeout_s / 3), 1)) if dahua else ALERT_STREAM
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout_s,
                                        connect=cfg.connect_timeout_s * 2, sock_read=cfg.heartbeat_timeout_s)
        try:
            async with session.get(self.url(path), timeout=timeout) as resp:
                if resp.status in (401, 403):
                    self.ctx.counters.inc("camera.auth_failed")
                    raise DeviceUnavailable(f"camera refused the credentials (HTTP {resp.status})")
                if resp.status != 200:
                    raise DeviceUnavailable(f"event stream answered HTTP {resp.status}")
                ctype = resp.headers.get("Content-Type", "")
                if not ctype.lower().startswith("multipart/"):
                    await self.reject("wrong_content_type", f"event stream of type {ctype[:80]!r}")
                    raise DeviceUnavailable(f"event stream is not multipart: {ctype[:80]!r}")
                boundary = boundary_of(ctype)
                if boundary is None:
                    await self.reject("bad_boundary", f"no boundary in {ctype[:80]!r}")
                    raise DeviceUnavailable("event stream without a boundary")
                splitter = MultipartSplitter(boundary, max_part_bytes=cfg.max_part_bytes)
                await self._read_parts(resp, splitter, "dahua" if dahua else "isapi")
        except CameraInputError as exc:
            await self.reject(exc.error, exc.detail)
            raise DeviceUnavailable(f"event stream unreadable: {exc}") from None
        except TimeoutError:
            raise DeviceUnavailable(f"nothing from the camera for {cfg.heartbeat_timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise DeviceUnavailable(f"event stream: {type(exc).__name__}: {exc}") from None

    async def _read_parts(self, resp: aiohttp.ClientResponse, splitter: MultipartSplitter, channel: str) -> None:
        loop = asyncio.get_running_loop()
        online = False  # a link is up once a well-framed part came, not when headers did
        pending: dict[str, Any] | None = None  # an alert waiting for the pictures it announced
        wanted = 0
        deadline = 0.0
        while True:
            wait = self.cfg.heartbeat_timeout_s if pending is None else max(deadline - loop.time(), 0.0)
            try:
                chunk = await asyncio.wait_for(resp.content.readany(), wait)
            except TimeoutError:
                if pending is None:
                    raise
                await self._alert(channel, pending)
                pending = None
                continue
            if not chunk:
                if pending is not None:
                    await self._alert(channel, pending)
                raise DeviceUnavailable("event stream closed by the camera")
            for item in splitter.feed(chunk):
                if isinstance(item, Rejected):
                    await self.reject(item.error, item.detail)
                    continue
                if not online:
                    online = True
                    await self.ctx.set_online(True, reason="event stream open")
                if item.content_type.startswith("image/"):
                    if pending is None:
                        self.ctx.counters.inc("camera.orphan_picture")
                        continue
                    if len(pending["pictures"]) >= MAX_PICTURES:
                        self.ctx.counters.inc("camera.pictures_dropped")
                        name = None
                    else:
                        name = await self.store_picture(item.body)
                    if name is not None:
                        pending["pictures"].append(name)
                    wanted -= 1
                    if wanted <= 0:
                        await self._alert(channel, pending)
                        pending = None
                    continue
                if pending is not None:  # the pictures it announced never came
                    await self._alert(channel, pending)
                    pending = None
                raw = self._raw(item)
                if raw is None:
                    continue
                match = _PICTURES.search(item.body[:8192]) if channel == "isapi" else None
                wanted = int(match.group(1)) if match else 0
                if wanted > 0:
                    pending = raw
                    deadline = loop.time() + PICTURE_WAIT_S
                else:
                    await self._alert(channel, raw)
            if splitter.closed:
                raise DeviceUnavailable("camera ended the event stream")

    def _raw(self, part: Part) -> dict[str, Any] | None:
        ctype = part.content_type
        if ctype and not ctype.startswith(_ALERT_TYPES):
            self.ctx.counters.inc("camera.rejected.unexpected_part")
            return None
        return {"ctype": ctype or "text/plain", "body": part.body.decode("utf-8", "replace"), "pictures": []}

    async def _alert(self, channel: str, raw: dict[str, Any]) -> None:
        """Ingest one alert; fetch a snapshot first when it raises an alarm without a picture."""
        if not raw["pictures"] and self.cfg.fetch_snapshots:
            raises, channel_no = self._raising(channel, raw)
            if raises:
                name = await self.fetch_snapshot(channel_no)
                if name is not None:
                    raw["pictures"].append(name)
        await self.ingest(channel, raw)

    def _raising(self, channel: str, raw: dict[str, Any]) -> tuple[bool, int | None]:
        """Whether this input would newly raise an alarm, and on which video channel."""
        for sig in self.camera.signals(channel, raw):
            if sig.state != "stop" and EVENT_KINDS[sig.detection].alarm and not self.camera.is_open(sig):
                return True, sig.channel
        return False, None

    # --- HTTP listening (isapi_push) --------------------------------------------------------

    async def _listen(self) -> None:
        cfg = self.cfg
        key = f"http_plate_reader:{cfg.listen_host}:{cfg.listen_port}"  # the plate readers' listener
        try:
            listener = await self.ctx.shared(
                key, lambda: open_listener(cfg.listen_host, cfg.listen_port, cfg.listener))
        except OSError as exc:
            raise DeviceUnavailable(f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: {exc}") from exc
        self.policy = Policy(auth=cfg.push_auth, max_body_bytes=cfg.max_part_bytes * 2,
                             rate_per_s=cfg.push_rate_per_s, burst=cfg.push_burst,
                             allow_sources=tuple(cfg.allow_sources), total_rate_per_s=cfg.push_rate_total_per_s,
                             total_burst=cfg.push_total_burst, settings=cfg.listener)
        try:
            listener.register(cfg.push_path, self)
        except ValueError as exc:
            raise DeviceUnavailable(str(exc)) from exc
        self.ctx.log.info("camera %s listening on %s:%s%s", cfg.id, cfg.listen_host, listener.port, cfg.push_path)
        try:
            await self._watch_pushes()
        finally:
            listener.unregister(cfg.push_path, self)

    async def _watch_pushes(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        interval = self.cfg.heartbeat_timeout_s
        offline = False
        while True:
            await asyncio.sleep(min(interval / 4, 1.0))
            silent = loop.time() - (self._last_push if self._last_push is not None else started)
            misses = int(silent // interval)
            if misses >= self.cfg.offline_after and not offline:
                offline = True
                await self.ctx.set_online(False, reason=f"no alert or heartbeat for {silent:.1f} s", misses=misses)
            elif misses == 0 and self._last_push is not None:
                offline = False

    def refused(self, status: int, error: str, reason: str) -> None:
        """Count posts the listener refused (auth, size, rate, method)."""
        self.ctx.counters.inc(f"camera.refused.{error}")

    async def handle(self, request: PushRequest) -> PushReply:
        """One post from the camera: an alert (bare, or multipart with pictures) or a heartbeat."""
        self._last_push = asyncio.get_running_loop().time()
        await self.ctx.set_online(True, reason="post received")
        ctype = request.content_type.lower()
        alert: Part | None = None
        pictures: list[bytes] = []
        if ctype.startswith("multipart/"):
            boundary = boundary_of(request.headers.get("Content-Type", ""))
            if boundary is None:
                await self.reject("bad_boundary", "multipart post without a boundary")
                return PushReply(400, error_body("bad_boundary", "multipart without boundary"))
            splitter = MultipartSplitter(boundary, max_part_bytes=self.cfg.max_part_bytes)
            try:
                items = splitter.feed(request.body)
            except CameraInputError as exc:
                await self.reject(exc.error, exc.detail)
                return PushReply(400, error_body(exc.error, exc.detail))
            if not splitter.closed:
                await self.reject("truncated_multipart", "post ended inside a part")
                return PushReply(400, error_body("truncated_multipart", "no closing delimiter"))
            for item in items:
                if isinstance(item, Rejected):
                    await self.reject(item.error, item.detail)
                elif item.content_type.startswith("image/"):
                    pictures.append(item.body)
                elif alert is None and self._raw(item) is not None:
                    alert = item
        elif ctype.startswith(_ALERT_TYPES) or not ctype:
            alert = Part({"content-type": ctype}, request.body)
        else:
            await self.reject("wrong_content_type", f"post of type {ctype[:80]!r}")
            return PushReply(415, error_body("wrong_content_type", ctype[:80]))
        if alert is None:
            await self.reject("no_alert", "post without an EventNotificationAlert part")
            return PushReply(400, error_body("no_alert", "no alert part"))
        raw = self._raw(alert)
        assert raw is not None
        if len(pictures) > MAX_PICTURES:
            self.ctx.counters.inc("camera.pictures_dropped", len(pictures) - MAX_PICTURES)
        for data in pictures[:MAX_PICTURES]:
            name = await self.store_picture(data)
            if name is not None:
                raw["pictures"].append(name)
        try:
            drafts = await self.ingest("isapi_push", raw)
        except OutboxFull as exc:  # nothing committed: the camera posts it again later
            self.ctx.counters.inc("camera.outbox_full")
            return PushReply(503, error_body("outbox_full", str(exc)),
                             headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
        except Exception as exc:
            self.ctx.log.error("alert not committed: %s", exc)
            return PushReply(503, error_body("not_committed", f"{type(exc).__name__}: alert not committed"))
        if any(d.quality.status == "rejected" for d in drafts):
            return PushReply(400, error_body("rejected", "alert not understood"))
        return PushReply(200, b'{"statusCode": 1, "statusString": "OK"}')
