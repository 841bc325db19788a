"""One HTTP port serving every simulated camera, each under `/<camera id>/`.

    /<id>/ISAPI/Event/notification/alertStream      Hikvision arming (multipart/mixed, held open)
    /<id>/ISAPI/Streaming/channels/<n>01/picture    Hikvision snapshot
    /<id>/cgi-bin/eventManager.cgi?action=attach    Dahua events (multipart/x-mixed-replace)
    /<id>/cgi-bin/snapshot.cgi?channel=<n>          Dahua snapshot
    /<id>/onvif/...                                 ONVIF SOAP (simulators/camera/onvif.py plugs in)

The bare vendor paths (`/ISAPI/...`, `/cgi-bin/...`, `/onvif/...`) reach the first camera of
that brand, as a real camera would answer them. HTTP endpoints need Digest auth (RFC 7616,
MD5, qop=auth), the way the cameras ship; ONVIF checks WS-UsernameToken itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from aiohttp import web

from simulators.camera.model import SimCamera, SimDetection, SimSite, jpeg

log = logging.getLogger("courtyard.sim.camera")

#: Extra protocol handlers by first path segment (`onvif`): (request, camera, rest of path) -> response.
Handler = Callable[[web.Request, SimCamera, str], Awaitable[web.StreamResponse]]

HIK_CODES = {
    "fire": "fireDetection", "smoke": "smokeDetection", "ebike": "eBikeDetection", "video_loss": "videoloss",
    "tamper": "shelteralarm", "motion": "VMD",
}
HIK_RULES = {"field": "fielddetection", "line": "linedetection", "entrance": "regionEntrance", None: "fielddetection"}
DAHUA_CODES = {
    "fire": "FireWarning", "smoke": "SmokeDetection", "ebike": "ElectricBicycleDetection", "video_loss": "VideoLoss",
    "tamper": "VideoBlind", "motion": "VideoMotion",
}
DAHUA_RULES = {"line": "CrossLineDetection", None: "CrossRegionDetection", "field": "CrossRegionDetection",
               "entrance": "CrossRegionDetection"}
BOUNDARY = "boundary"
DAHUA_BOUNDARY = "myboundary"


# --- Digest (server side) -------------------------------------------------------------------

_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_digest(header: str) -> dict[str, str] | None:
    """The parameters of an `Authorization: Digest ...` header (None if it is not Digest)."""
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "digest":
        return None
    return {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3) for m in _PARAM.finditer(rest)}


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # RFC 7616 MD5: what cameras speak


class DigestGuard:
    """Stateless nonces (time + HMAC), so any number of streams can authenticate without a table."""

    def __init__(self, realm: str, max_age_s: float = 300.0) -> None:
        self.realm = realm
        self.max_age_s = max_age_s
        self._key = secrets.token_bytes(16)
        self.failures = 0

    def _nonce(self, stamp: int) -> str:
        mac = hmac.new(self._key, str(stamp).encode(), hashlib.sha256).hexdigest()[:24]
        return f"{stamp:x}{mac}"

    def challenge(self, *, stale: bool = False) -> str:
        """A `WWW-Authenticate` value."""
        nonce = self._nonce(int(time.time()))
        return (f'Digest realm="{self.realm}", qop="auth", algorithm=MD5, nonce="{nonce}", '
                f'opaque="{_md5(self.realm)}"' + (", stale=true" if stale else ""))

    def check(self, request: web.Request, camera: SimCamera) -> bool | None:
        """True: authorized; False: wrong credentials; None: stale or missing (challenge again)."""
        params = parse_digest(request.headers.get("Authorization", ""))
        if params is None:
            return None
        nonce = params.get("nonce", "")
        try:
            stamp = int(nonce[:-24], 16)
        except ValueError:
            return None
        if not hmac.compare_digest(nonce, self._nonce(stamp)):
            return None
        if time.time() - stamp > self.max_age_s:
            return None
        if "auth_failure" in camera.faults or params.get("username") != camera.username:
            self.failures += 1
            return False
        ha1 = _md5(f"{camera.username}:{self.realm}:{camera.password}")
        ha2 = _md5(f"{request.method}:{params.get('uri', '')}")
        if params.get("qop"):
            expect = _md5(f"{ha1}:{nonce}:{params.get('nc', '')}:{params.get('cnonce', '')}:{params['qop']}:{ha2}")
        else:
            expect = _md5(f"{ha1}:{nonce}:{ha2}")
        ok = hmac.compare_digest(expect, params.get("response", ""))
        if not ok:
            self.failures += 1
        return ok


# --- rendering -----------------------------------------------------------------------------


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds")


def hik_code(det: SimDetection) -> str:
    """The ISAPI `eventType` of a detection."""
    if det.code:
        return det.code
    if det.detection == "intrusion":
        return HIK_RULES.get(det.rule, "fielddetection")
    return HIK_CODES[det.detection]


def hik_alert(cam: SimCamera, det: SimDetection | None, *, as_json: bool = False, port: int = 80) -> bytes:
    """An EventNotificationAlert (XML or JSON); `det=None` is the videoloss/inactive heartbeat."""
    code = hik_code(det) if det else "videoloss"
    state = "inactive" if det is None or det.state == "stop" else "active"
    when = det.time if det else cam.camera_time()
    channel = det.channel if det else 1
    pictures = 1 if det is not None and det.picture else 0
    if as_json:
        doc: dict[str, object] = {
            "ipAddress": "127.0.0.1", "portNo": port, "protocol": "HTTP", "channelID": channel,
            "dateTime": _iso(when), "activePostCount": 1, "eventType": code, "eventState": state,
            "eventDescription": f"{code} alarm",
        }
        if det is not None:
            if det.region:
                doc["DetectionRegionList"] = [{"regionID": str(det.region_id or 1), "regionName": det.region}]
            if det.confidence is not None:
                doc["confidence"] = det.confidence
            doc["detectionPicturesNumber"] = pictures
        return json.dumps(doc).encode()
    region = ""
    if det is not None and det.region:
        region = (f"<DetectionRegionList><DetectionRegionEntry><regionID>{det.region_id or 1}</regionID>"
                  f"<regionName>{det.region}</regionName></DetectionRegionEntry></DetectionRegionList>")
    conf = f"<confidence>{det.confidence}</confidence>" if det is not None and det.confidence is not None else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<EventNotificationAlert version="2.0" xmlns="http://www.hikvision.com/ver20/XMLSchema">'
        f"<ipAddress>127.0.0.1</ipAddress><portNo>{port}</portNo><protocol>HTTP</protocol>"
        f"<channelID>{channel}</channelID><dateTime>{_iso(when)}</dateTime><activePostCount>1</activePostCount>"
        f"<eventType>{code}</eventType><eventState>{state}</eventState>"
        f"<eventDescription>{code} alarm</eventDescription>{region}{conf}"
        f"<detectionPictureTransType>binary</detectionPictureTransType>"
        f"<detectionPicturesNumber>{pictures}</detectionPicturesNumber>"
        "</EventNotificationAlert>"
    ).encode()


def dahua_code(det: SimDetection) -> str:
    """The Dahua `Code=` of a detection."""
    if det.code:
        return det.code
    if det.detection == "intrusion":
        return DAHUA_RULES.get(det.rule, "CrossRegionDetection")
    return DAHUA_CODES[det.detection]


def dahua_line(cam: SimCamera, det: SimDetection) -> bytes:
    """One eventManager part body: `Code=...;action=...;index=N;data={...}`."""
    action = {"start": "Start", "stop": "Stop", "pulse": "Pulse"}[det.state]
    data: dict[str, object] = {"UTC": det.time.timestamp(), "LocaleTime": det.time.strftime("%Y-%m-%d %H:%M:%S"),
                               "UTCMS": int(det.time.timestamp() * 1000) % 1000}
    if det.region:
        data["Name"] = det.region
        data["RuleId"] = det.region_id or 1
    if det.confidence is not None:
        data["Confidence"] = det.confidence
    if det.detection == "ebike":
        data["Object"] = {"ObjectType": "ElectricBicycle"}
    return f"Code={dahua_code(det)};action={action};index={det.channel - 1};data={json.dumps(data)}".encode()


def part(ctype: str, body: bytes, boundary: str, extra: str = "") -> bytes:
    """One multipart part with its leading delimiter."""
    return (f"--{boundary}\r\nContent-Type: {ctype}\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode()
            + body + b"\r\n")


ISAPI_NS = "http://www.hikvision.com/ver20/XMLSchema"


def isapi_status(http: int, code: int, text: str, sub: str) -> web.Response:
    """An ISAPI ResponseStatus answer."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?><ResponseStatus version="2.0" xmlns="{ISAPI_NS}">'
            f"<requestURL></requestURL><statusCode>{code}</statusCode><statusString>{text}</statusString>"
            f"<subStatusCode>{sub}</subStatusCode></ResponseStatus>")
    return web.Response(status=http, text=body, content_type="application/xml")


# --- the server ----------------------------------------------------------------------------


class CameraServer:
    """aiohttp application serving a `SimSite` on one port."""

    def __init__(self, site: SimSite, *, heartbeat_s: float = 5.0) -> None:
        self.site = site
        self.heartbeat_s = heartbeat_s
        self.guard = DigestGuard(site.realm)
        self.handlers: dict[str, Handler] = {}
        self.streams = 0
        self.cuts = 0  # streams closed mid-part (cut_mid_part)
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.port = 0
        self._runner: web.AppRunner | None = None
        with contextlib.suppress(ImportError):
            from simulators.camera import onvif  # the ONVIF PullPoint part, when present

            onvif.install(self)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; returns the bound port."""
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def aclose(self) -> None:
        """Stop listening and end every stream."""
        for cam in self.site.cameras.values():
            for queue in list(cam.subscribers):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    def _resolve(self, path: str) -> tuple[SimCamera | None, str]:
        first, _, rest = path.lstrip("/").partition("/")
        cam = self.site.camera(first)
        if cam is not None:
            return cam, "/" + rest
        brand = "dahua" if path.startswith("/cgi-bin/") else "onvif" if path.startswith("/onvif/") else "hikvision"
        return self.site.first(brand), path  # type: ignore[arg-type]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        cam, rest = self._resolve(request.path)
        if cam is None:
            raise web.HTTPNotFound(text="no such camera")
        segment = rest.lstrip("/").split("/", 1)[0]
        if segment in self.handlers:
            return await self.handlers[segment](request, cam, rest)
        verdict = self.guard.check(request, cam)
        if verdict is not True:
            return web.Response(status=401, text="Unauthorized",
                                headers={"WWW-Authenticate": self.guard.challenge()})
        if cam.brand == "hikvision" and rest == "/ISAPI/Event/notification/alertStream":
            return await self._alert_stream(request, cam)
        if cam.brand == "hikvision" and rest.startswith("/ISAPI/Streaming/channels/") and rest.endswith("/picture"):
            return web.Response(body=jpeg(int(time.time())), content_type="image/jpeg")
        if cam.brand == "dahua" and rest == "/cgi-bin/eventManager.cgi" and request.query.get("action") == "attach":
            return await self._attach(request, cam)
        if cam.brand == "hikvision" and rest.startswith("/ISAPI/System/IO/outputs/"):
            return await self._isapi_output(request, cam, rest)
        if cam.brand == "dahua" and rest in ("/cgi-bin/configManager.cgi", "/cgi-bin/alarm.cgi"):
            return self._dahua_output(request, cam, rest)
        if cam.brand == "dahua" and rest == "/cgi-bin/snapshot.cgi":
            return web.Response(body=jpeg(int(time.time())), content_type="image/jpeg")
        raise web.HTTPNotFound(text=f"{cam.brand} camera has no {rest}")

    async def _isapi_output(self, request: web.Request, cam: SimCamera, rest: str) -> web.Response:
        """`PUT .../outputs/<id>/trigger` (IOPortData outputState high|low), `GET .../outputs/<id>/status`."""
        parts = rest.split("/")  # '', ISAPI, System, IO, outputs, <id>, trigger|status
        port = int(parts[5]) if len(parts) == 7 and parts[5].isdigit() else None
        if port is None or port not in cam.outputs:
            return isapi_status(404, 4, "Invalid Operation", "invalidID")
        if parts[6] == "status" and request.method == "GET":
            state = "active" if cam.outputs[port] else "inactive"
            body = (f'<?xml version="1.0" encoding="UTF-8"?><IOPortStatus version="2.0" xmlns="{ISAPI_NS}">'
                    f"<ioPortID>{port}</ioPortID><ioPortType>output</ioPortType><ioState>{state}</ioState>"
                    "</IOPortStatus>")
            return web.Response(text=body, content_type="application/xml")
        if parts[6] != "trigger" or request.method != "PUT":
            return isapi_status(405, 4, "Invalid Operation", "methodNotAllowed")
        text = (await request.content.read(4096)).decode(errors="replace")
        found = re.search(r"<outputState>\s*(high|low)\s*</outputState>", text)
        if found is None:
            return isapi_status(400, 6, "Invalid XML Content", "badXmlContent")
        if cam.refuse_relay:
            return isapi_status(403, 4, "Invalid Operation", "alarmOutputLinked")
        on = found.group(1) == "high"
        cam.relay_log.append((port, on))
        if not cam.ignore_relay:
            cam.outputs[port] = on
        return isapi_status(200, 1, "OK", "ok")

    def _dahua_output(self, request: web.Request, cam: SimCamera, rest: str) -> web.Response:
        """`configManager.cgi?action=setConfig&AlarmOut[n].Mode=1|2` (forced on / off, 0-based n) and
        `alarm.cgi?action=getOutState` (`result=<bitmask>`, bit n = output n+1 on)."""
        action = request.query.get("action")
        if rest == "/cgi-bin/alarm.cgi" and action == "getOutState":
            mask = sum(1 << (port - 1) for port, on in cam.outputs.items() if on)
            return web.Response(text=f"result={mask}\r\n")
        if rest != "/cgi-bin/configManager.cgi" or action != "setConfig":
            return web.Response(status=400, text="Error\r\nBad Request!\r\n")
        keys = [k for k in request.query if re.fullmatch(r"AlarmOut\[\d+\]\.Mode", k)]
        if len(keys) != 1:
            return web.Response(status=400, text="Error\r\nBad Request!\r\n")
        port = int(keys[0][9:keys[0].index("]")]) + 1
        mode = request.query[keys[0]]
        if port not in cam.outputs or mode not in ("0", "1", "2"):
            return web.Response(status=400, text="Error\r\nBad Request!\r\n")
        if cam.refuse_relay:
            return web.Response(status=403, text="Error\r\nNo Authority!\r\n")
        on = mode == "1"
        cam.relay_log.append((port, on))
        if not cam.ignore_relay:
            cam.outputs[port] = on
        return web.Response(text="OK\r\n")

    async def _write(self, resp: web.StreamResponse, cam: SimCamera, data: bytes) -> None:
        if "slow_drip" in cam.faults:
            for i in range(0, len(data), 64):
                await resp.write(data[i:i + 64])
                await asyncio.sleep(0.01)
        else:
            await resp.write(data)

    async def _stream(self, request: web.Request, cam: SimCamera, ctype: str, boundary: str,
                      render: Callable[[SimDetection | None, int], list[bytes]]) -> web.StreamResponse:
        """Hold one event stream open: detections as they come, a heartbeat when idle, faults applied."""
        sent_boundary = "not" + boundary if "wrong_boundary" in cam.faults else boundary
        resp = web.StreamResponse(headers={"Content-Type": f"{ctype}; boundary={boundary}",
                                           "Connection": "close"})
        await resp.prepare(request)
        queue = cam.subscribe()
        self.streams += 1
        n = 0
        try:
            while True:
                try:
                    det = await asyncio.wait_for(queue.get(), self.heartbeat_s)
                except TimeoutError:
                    det = None
                    if "silent" in cam.faults:
                        continue
                else:
                    if det is None:
                        break
                    n += 1  # detections on this stream (faults pick every 3rd)
                chunks = render(det, n)
                data = b"".join(chunks).replace(f"--{boundary}\r\n".encode(), f"--{sent_boundary}\r\n".encode())
                if "cut_mid_part" in cam.faults and det is not None and n % 3 == 0:
                    await resp.write(data[: max(len(data) // 2, 1)])
                    self.cuts += 1
                    break
                await self._write(resp, cam, data)
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            cam.unsubscribe(queue)
            self.streams -= 1
        with contextlib.suppress(Exception):
            if request.transport is not None:
                request.transport.close()
        return resp

    async def _alert_stream(self, request: web.Request, cam: SimCamera) -> web.StreamResponse:
        def render(det: SimDetection | None, n: int) -> list[bytes]:
            body = hik_alert(cam, det, as_json=cam.json_alerts, port=self.port)
            if "malformed_xml" in cam.faults and det is not None and n % 3 == 1:
                body = body[: len(body) // 2]
            ctype = "application/json" if cam.json_alerts else 'application/xml; charset="UTF-8"'
            chunks = [part(ctype, body, BOUNDARY)]
            if det is not None and det.picture:
                chunks.append(part("image/jpeg", det.picture, BOUNDARY, "Content-ID: image_1\r\n"))
            return chunks

        return await self._stream(request, cam, "multipart/mixed", BOUNDARY, render)

    async def _attach(self, request: web.Request, cam: SimCamera) -> web.StreamResponse:
        def render(det: SimDetection | None, n: int) -> list[bytes]:
            if det is None:
                return [part("text/plain", b"Heartbeat", DAHUA_BOUNDARY)]
            body = dahua_line(cam, det)
            if "malformed_xml" in cam.faults and n % 3 == 1:
                body = body[: len(body) // 2]  # data={... cut: broken JSON
            return [part("text/plain", body, DAHUA_BOUNDARY)]

        return await self._stream(request, cam, "multipart/x-mixed-replace", DAHUA_BOUNDARY, render)
