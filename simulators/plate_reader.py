"""Simulated garage plate cameras that push reads to a gateway over real HTTP.

A seeded garage: a population of vehicles (blue, yellow, green small-NEV and yellow-green
large-NEV plates from several provinces) drives in past an entry camera and out past an exit
camera. Each camera speaks the Zhenshi JSON push (`--protocol zhenshi`, the default), Hikvision
ANPR (`hikvision`: XML alert in a multipart; `--hik-json` for the JSON alert) or Dahua ITSAPI
(`dahua`: JSON to <target>/lpr/<id>/NotificationInfo/TollgateInfo, so the gateway config gives
each Dahua camera `path: /lpr/<id>`), sends keep-alives as the vendor documents them (Zhenshi:
a multipart form), honours the barrier reply, and can misbehave on purpose:

    malformed_json  truncated body           gbk            whole body GBK-encoded
    base64          plate as base64 of GBK   invalid_plate  plate breaking GA 36 rules
    oversize_image  picture above the limit  wrong_auth     wrong token / signature / password
    burst           same read 5x at once     silent         camera stops talking for a while

With `--offline-buffer N`, a Zhenshi camera behaves as shipped when the server is unreachable:
it keeps up to N reads and, once the server answers again, re-sends them one at a time
(`isoffline: 1`), the next only after a reply with `ContinuePushOffline` for the last one.

Run: `courtyard simulate plate_reader --target http://127.0.0.1:8088 --fault malformed_json`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web

from drivers.http_plate_reader.listener import sign

log = logging.getLogger("courtyard.sim.plate_reader")

PROVINCES = "京沪粤浙苏川鄂湘鲁豫"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I, no O
FAULTS = (
    "malformed_json",
    "gbk",
    "base64",
    "invalid_plate",
    "oversize_image",
    "wrong_auth",
    "burst",
    "silent",
)
#: Residents of examples/plate_reader.yaml (its allowlist), so the example garage has traffic in and out.
RESIDENTS = ("京A12345", "沪AF12345", "粤BD54321")
#: Zhenshi colorType / type codes of each simulated plate class (type codes of the documented table, v2).
ZHENSHI_CODES = {"blue": (1, 1), "yellow": (2, 3), "green": (5, 19), "yellow_green": (6, 20)}
#: Dahua ITSAPI PlateColor / PlateType of each simulated plate class.
DAHUA_CODES = {
    "blue": ("Blue", "Normal"),
    "yellow": ("Yellow", "Yellow"),
    "green": ("Green", "NewEnergy"),
    "yellow_green": ("YellowGreen", "LargeNewEnergy"),
}
#: Movements per minute by default: a read every 3 s on average, so a demo garage looks alive.
DEFAULT_RATE = 20.0
HIK_CODES = {
    "blue": ("blue", "92TypeCivil"),
    "yellow": ("yellow", "yellow1778"),
    "green": ("green", "newEnergy"),
    "yellow_green": ("yellowGreen", "yellow2050"),
}


# ------------------------------------------------------------------ plates and pictures


def make_plate(rng: random.Random, color: str) -> str:
    """A plate valid under GA 36 for the given colour class."""
    head = rng.choice(PROVINCES) + rng.choice(LETTERS[:12])
    digits = "0123456789"
    if color == "green":
        return head + rng.choice("DF") + rng.choice(LETTERS + digits) + "".join(rng.choices(digits, k=4))
    if color == "yellow_green":
        return head + "".join(rng.choices(digits, k=5)) + rng.choice("DF")
    serial = [rng.choice(digits) for _ in range(5)]
    for pos in rng.sample(range(5), rng.choice((0, 0, 1, 2))):
        serial[pos] = rng.choice(LETTERS)
    if color == "yellow" and rng.random() < 0.1:
        serial[-1] = "学"
    return head + "".join(serial)


def invalid_plate(rng: random.Random) -> str:
    """A plate that breaks one GA 36 rule (letter O in the serial, bad province, wrong length)."""
    return rng.choice(["京AO1234", "X" + "A12345", "粤B123", "沪A12345678", "浙I12345"])


def fake_jpeg(size: int, seed: int = 0) -> bytes:
    """Bytes that start and end like a JPEG; enough for storage and multipart tests."""
    body = random.Random(seed).randbytes(max(0, size - 4))
    return b"\xff\xd8" + body + b"\xff\xd9"


# ------------------------------------------------------------------ wire formats


def zhenshi_plate_body(
    plate: str,
    *,
    color: str = "blue",
    confidence: int = 95,
    plateid: int = 1,
    channel: int = 0,
    serial: str = "sim-0001",
    image: bytes | None = None,
    when: float | None = None,
    license_encoding: str = "utf8",
    offline: bool = False,
) -> bytes:
    """A Zhenshi-style `AlarmInfoPlate` push body."""
    color_code, type_code = ZHENSHI_CODES.get(color, (0, 0))
    license_field = plate
    if license_encoding == "base64":
        license_field = base64.b64encode(plate.encode("gbk")).decode()
    stamp = time.time() if when is None else when
    result: dict[str, Any] = {
        "license": license_field,
        "colorType": color_code,
        "type": type_code,
        "confidence": confidence,
        "direction": 4,
        "triggerType": 8,
        "plateid": plateid,
        "isoffline": int(offline),
        "is_fake_plate": 0,
        "timeStamp": {"Timeval": {"sec": int(stamp), "usec": int(stamp % 1 * 1e6)}},
        "location": {"RECT": {"left": 100, "top": 200, "right": 300, "bottom": 260}},
    }
    if image is not None:
        result["imageFile"] = base64.b64encode(image).decode()
        result["imageFileLen"] = len(image)
    doc = {
        "AlarmInfoPlate": {
            "channel": channel,
            "deviceName": "IVS",
            "ipaddr": "192.168.1.64",
            "serialno": serial,
            "result": {"PlateResult": result},
        }
    }
    text = json.dumps(doc, ensure_ascii=False)
    return text.encode("gbk") if license_encoding == "gbk" else text.encode()


def zhenshi_heartbeat_body(serial: str = "sim-0001") -> bytes:
    """A JSON keep-alive (some integrations' shape; cameras send `zhenshi_heartbeat_form`)."""
    return json.dumps({"heartbeat": {"countid": 1}, "serialno": serial}).encode()


def zhenshi_heartbeat_fields(serial: str = "sim-0001") -> list[tuple[str, str]]:
    """The fields of the documented Zhenshi heartbeat (device registration) form, in its order."""
    return [
        ("device_name", "IVS"),
        ("ipaddr", "192.168.1.100"),
        ("port", "80"),
        ("user_name", "admin"),
        ("pass_wd", "admin"),
        ("serialno", serial),
        ("channel_num", "1"),
    ]


def zhenshi_heartbeat_form(serial: str = "sim-0001", *, urlencoded: bool = False) -> tuple[bytes, str]:
    """The Zhenshi heartbeat as cameras send it: multipart/form-data (urlencoded on some firmware)."""
    fields = zhenshi_heartbeat_fields(serial)
    if urlencoded:
        return urlencode(fields).encode(), "application/x-www-form-urlencoded"
    out = bytearray()
    boundary = "------------------------caa771fe4a61f3d9"
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def zhenshi_gpio_body(source: int, value: int, serial: str = "sim-0001") -> bytes:
    """A Zhenshi-style `AlarmGioIn` (e.g. the barrier's up/down contact)."""
    return json.dumps(
        {"AlarmGioIn": {"serialno": serial, "result": {"TriggerResult": {"source": source, "value": value}}}}
    ).encode()


def hikvision_plate_body(
    plate: str,
    *,
    color: str = "blue",
    confidence: int = 95,
    seq: int = 1,
    lane: int = 1,
    images: Sequence[tuple[str, bytes]] = (),
    direction: str = "forward",
    when: float | None = None,
) -> tuple[bytes, str]:
    """A Hikvision-style ANPR multipart push: `anpr.xml` then JPEG parts. Returns (body, content type)."""
    color_token, type_token = HIK_CODES.get(color, ("unknown", "unknown"))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(when))
    plate = escape(plate)
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">'
        "<ipAddress>192.168.1.65</ipAddress><macAddress>44:19:b6:00:00:01</macAddress>"
        f"<channelID>1</channelID><dateTime>{stamp}</dateTime>"
        f"<activePostCount>{seq}</activePostCount><eventType>ANPR</eventType><eventState>active</eventState>"
        "<eventDescription>ANPR</eventDescription><ANPR><country>CHN</country>"
        f"<licensePlate>{plate}</licensePlate><line>{lane}</line><direction>{direction}</direction>"
        f"<confidenceLevel>{confidence}</confidenceLevel><plateType>{type_token}</plateType>"
        f"<plateColor>{color_token}</plateColor><vehicleType>vehicle</vehicleType></ANPR>"
        "</EventNotificationAlert>"
    ).encode()
    return multipart([("anpr.xml", "application/xml", xml), *((n, "image/jpeg", d) for n, d in images)])


def hikvision_plate_json(
    plate: str,
    *,
    color: str = "blue",
    confidence: int = 95,
    seq: int = 1,
    lane: int = 1,
    images: Sequence[tuple[str, bytes]] = (),
    direction: str = "forward",
    when: float | None = None,
    bare: bool = False,
) -> tuple[bytes, str]:
    """The JSON `EventNotificationAlert` variant: bare, or as the first part of a multipart with JPEGs."""
    color_token, type_token = HIK_CODES.get(color, ("unknown", "unknown"))
    doc = {
        "ipAddress": "192.168.1.65",
        "portNo": 80,
        "protocol": "HTTP",
        "macAddress": "44:19:b6:00:00:01",
        "channelID": 1,
        "dateTime": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(when)),
        "activePostCount": seq,
        "eventType": "ANPR",
        "eventState": "active",
        "eventDescription": "ANPR",
        "ANPR": {
            "country": "CHN",
            "licensePlate": plate,
            "line": lane,
            "direction": direction,
            "confidenceLevel": confidence,
            "plateType": type_token,
            "plateColor": color_token,
            "vehicleType": "vehicle",
        },
    }
    data = json.dumps(doc, ensure_ascii=False).encode()
    if bare:
        return data, "application/json"
    return multipart([("anpr.json", "application/json", data), *((n, "image/jpeg", d) for n, d in images)])


def hikvision_heartbeat_body() -> tuple[bytes, str]:
    """Hikvision's keep-alive: a `videoloss` alert in state `inactive`."""
    xml = (
        b'<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">'
        b"<macAddress>44:19:b6:00:00:01</macAddress><eventType>videoloss</eventType>"
        b"<eventState>inactive</eventState></EventNotificationAlert>"
    )
    return xml, "application/xml"


def dahua_plate_body(
    plate: str,
    *,
    color: str = "blue",
    confidence: int = 95,
    seq: int = 1,
    lane: int = 1,
    image: bytes | None = None,
    direction: str = "Obverse",
    device_id: str = "sim-dahua-0001",
    when: float | None = None,
) -> tuple[bytes, str]:
    """A Dahua ITSAPI TollgateInfo push (`Picture.Plate`, `Picture.SnapInfo`, base64 pictures)."""
    color_token, type_token = DAHUA_CODES.get(color, ("Unknown", "Unknown"))
    stamp = time.time() if when is None else when
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp))
    picture: dict[str, Any] = {
        "Plate": {
            "PlateNumber": plate,
            "PlateColor": color_token,
            "PlateType": type_token,
            "Confidence": confidence,
            "BoundingBox": [3520, 4540, 4250, 4790],
            "UploadNum": seq,
        },
        "SnapInfo": {
            "DeviceID": device_id,
            "AccurateTime": f"{local}.{int(stamp % 1 * 1000):03d}",
            "SnapTime": local,
            "Direction": direction,
            "LaneNo": lane,
            "DefenceCode": "0",
            "OpenStrobe": False,
        },
        "Vehicle": {"VehicleColor": "White", "VehicleType": "Motor"},
    }
    if image is not None:
        encoded = base64.b64encode(image).decode()
        picture["NormalPic"] = {"Content": encoded, "PicName": f"{local}_{seq}.jpg"}
    return json.dumps({"Picture": picture, "PicName": f"{seq}.jpg"}, ensure_ascii=False).encode(), "application/json"


def dahua_keepalive_body(device_id: str = "sim-dahua-0001") -> tuple[bytes, str]:
    """A Dahua ITSAPI KeepAlive."""
    return json.dumps({"DeviceID": device_id, "Active": "keepAlive"}).encode(), "application/json"


def multipart(parts: Sequence[tuple[str, str, bytes]], boundary: str = "courtyard-sim-boundary") -> tuple[bytes, str]:
    """Build a multipart/form-data body from (name, content type, data) triples."""
    out = bytearray()
    for name, ctype, data in parts:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
            f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


# ------------------------------------------------------------------ HTTP camera


@dataclass
class CameraAuth:
    """How a simulated camera authenticates: token, HMAC secret or basic credentials."""

    token: str | None = None
    token_header: str = "X-Auth-Token"
    hmac_secret: str | None = None
    basic: tuple[str, str] | None = None

    def headers(self, body: bytes, *, wrong: bool = False) -> dict[str, str]:
        """Headers for one request; `wrong` spoils the credentials (fault injection)."""
        spoil = "-wrong" if wrong else ""
        headers: dict[str, str] = {}
        if self.token:
            headers[self.token_header] = self.token + spoil
        if self.hmac_secret:
            stamp = f"{time.time():.3f}"  # a fresh signature even for the same body twice in a second
            headers["X-Timestamp"] = stamp
            headers["X-Signature"] = sign(self.hmac_secret + spoil, stamp, body)
        if self.basic:
            user, password = self.basic
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}{spoil}".encode()).decode()
        return headers


@dataclass
class PushResult:
    """What the gateway answered to one push."""

    status: int
    body: bytes
    latency_s: float

    def json(self) -> Any:
        """The reply body as JSON (raises if it is not)."""
        return json.loads(self.body)

    @property
    def opened(self) -> bool:
        """True when a Zhenshi reply told the barrier to open."""
        try:
            return bool(self.json()["Response_AlarmInfoPlate"]["info"] == "ok")
        except (ValueError, KeyError, TypeError):
            return False


class Camera:
    """One camera's HTTP side: posts bodies to its URL with its credentials."""

    def __init__(self, session: aiohttp.ClientSession, url: str, auth: CameraAuth | None = None) -> None:
        self.session = session
        self.url = url
        self.auth = auth or CameraAuth()

    async def post(
        self,
        body: bytes,
        content_type: str = "application/json",
        *,
        wrong_auth: bool = False,
        headers: dict[str, str] | None = None,
    ) -> PushResult:
        """POST one body and return status, reply and latency."""
        all_headers = {
            "Content-Type": content_type,
            **self.auth.headers(body, wrong=wrong_auth),
            **(headers or {}),
        }
        started = time.perf_counter()
        async with self.session.post(self.url, data=body, headers=all_headers) as resp:
            data = await resp.read()
        return PushResult(resp.status, data, time.perf_counter() - started)


def continues(result: PushResult, plateid: int) -> bool:
    """True when a reply tells a Zhenshi camera to go on with its offline buffer after `plateid`."""
    try:
        go_on = result.json()["Response_AlarmInfoPlate"]["ContinuePushOffline"]
        return int(go_on["plateid"]) == plateid and int(go_on["continue"]) == 1
    except (ValueError, KeyError, TypeError):
        return False


@dataclass
class _Buffered:
    plateid: int
    body: bytes


class BufferingCamera:
    """A Zhenshi camera's offline buffer, as the protocol describes it.

    A read the server did not answer with 200 is kept (up to `capacity`, oldest dropped) and
    re-sent with `isoffline: 1` once the server answers again, one record at a time: the next
    only after a reply carrying `ContinuePushOffline` for this record's `plateid`. With
    `resend_every` k, every k-th record is sent twice, as a camera does when a live read
    interrupts the drain before the reply arrived; the server must keep it once.
    """

    def __init__(self, camera: Camera, capacity: int, *, resend_every: int = 0) -> None:
        self.camera = camera
        self.capacity = capacity
        self.resend_every = resend_every
        self.buffer: deque[_Buffered] = deque()
        self.delivered: list[int] = []  # plateids the server told the camera to continue after
        self.dropped = 0
        self.resent = 0
        self._drained = 0
        self._lock = asyncio.Lock()

    def keep(self, plateid: int, offline_body: bytes) -> None:
        """Buffer one undelivered read (its `isoffline: 1` body)."""
        if len(self.buffer) >= self.capacity:
            self.buffer.popleft()
            self.dropped += 1
        self.buffer.append(_Buffered(plateid, offline_body))

    async def push(self, plateid: int, make_body: Callable[[bool], bytes]) -> PushResult | None:
        """Send a live read (`make_body(offline)` builds it); undelivered, it is buffered; delivered, drain."""
        try:
            result: PushResult | None = await self.camera.post(make_body(False))
        except aiohttp.ClientError:
            result = None
        if result is None or result.status != 200:
            self.keep(plateid, make_body(True))
            return result
        await self.drain()
        return result

    async def drain(self) -> int:
        """Re-send buffered reads while each reply says continue for that record; returns how many went."""
        sent = 0
        async with self._lock:
            while self.buffer:
                record = self.buffer[0]
                try:
                    self._drained += 1
                    if self.resend_every and self._drained % self.resend_every == 0:
                        await self.camera.post(record.body)  # reply "lost": the camera will send it again
                        self.resent += 1
                    result = await self.camera.post(record.body)
                except aiohttp.ClientError:
                    return sent
                if result.status != 200 or not continues(result, record.plateid):
                    return sent
                self.buffer.popleft()
                self.delivered.append(record.plateid)
                sent += 1
        return sent


# ------------------------------------------------------------------ ISAPI barrier (Hikvision-style downlink)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _digest_params(header: str) -> dict[str, str]:
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "digest":
        return {}
    return {k.lower(): v1 or v2 for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', rest)}


class IsapiBarrierServer:
    """The cameras' ISAPI barrier resource, `PUT /<camera>/ISAPI/Parking/channels/<n>/barrierGate`.

    Behind HTTP digest auth (RFC 7616, MD5, qop=auth), as the cameras ship; it answers an ISAPI
    ResponseStatus and tells the garage which camera's barrier went up.
    """

    realm = "IP Camera(SIM00001)"

    def __init__(self, username: str, password: str, on_open: Callable[[str], None]) -> None:
        self.username, self.password, self.on_open = username, password, on_open
        self.nonces: set[str] = set()
        self.commands: list[tuple[str, str]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        """Bind (port 0: any free port, read back from `self.port`)."""
        app = web.Application()
        app.router.add_put("/{camera}/ISAPI/Parking/channels/{channel}/barrierGate", self._barrier)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        p = _digest_params(request.headers.get("Authorization", ""))
        if not p or p.get("username") != self.username or p.get("nonce") not in self.nonces:
            return False
        ha1 = _md5(f"{self.username}:{self.realm}:{self.password}")
        ha2 = _md5(f"{request.method}:{p.get('uri', '')}")
        if p.get("qop"):
            expected = _md5(f"{ha1}:{p['nonce']}:{p.get('nc', '')}:{p.get('cnonce', '')}:{p['qop']}:{ha2}")
        else:
            expected = _md5(f"{ha1}:{p['nonce']}:{ha2}")
        return hmac.compare_digest(expected, p.get("response", ""))

    async def _barrier(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            nonce = secrets.token_hex(16)
            self.nonces.add(nonce)
            challenge = f'Digest realm="{self.realm}", qop="auth", nonce="{nonce}", algorithm=MD5'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        body = await request.read()
        mode = "open" if b"<ctrlMode>open</ctrlMode>" in body else "close" if b"close" in body else "?"
        camera = request.match_info["camera"]
        self.commands.append((camera, mode))
        if mode == "open":
            self.on_open(camera)
        status = "1" if mode != "?" else "4"
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?><ResponseStatus version="2.0" '
            'xmlns="http://www.isapi.org/ver20/XMLSchema"><requestURL>'
            f"{request.path}</requestURL><statusCode>{status}</statusCode><statusString>"
            f"{'OK' if status == '1' else 'Invalid Content'}</statusString><subStatusCode>"
            f"{'ok' if status == '1' else 'badXmlContent'}</subStatusCode></ResponseStatus>"
        )
        return web.Response(body=xml.encode(), content_type="application/xml")


# ------------------------------------------------------------------ the garage


@dataclass
class Vehicle:
    """A car of the simulated community."""

    plate: str
    color: str
    inside: bool = False


@dataclass
class Garage:
    """Vehicles coming and going; deterministic for a seed."""

    rng: random.Random
    vehicles: list[Vehicle] = field(default_factory=list)

    residents: list[Vehicle] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        seed: int,
        size: int = 60,
        extra_plates: Sequence[str] = (),
        residents: Sequence[str] = (),
    ) -> Garage:
        """Passing traffic with a realistic colour mix, plus residents (on the gateway's allowlist)."""
        rng = random.Random(seed)
        colors = rng.choices(["blue", "yellow", "green", "yellow_green"], weights=[70, 8, 20, 2], k=size)
        vehicles = [Vehicle(make_plate(rng, c), c) for c in colors]
        vehicles += [Vehicle(p, _color_of(p)) for p in extra_plates]
        return cls(rng, vehicles, [Vehicle(p, _color_of(p)) for p in residents])

    def next_move(self) -> Vehicle:
        """Pick a vehicle: half the time a resident (they come and go), else passing traffic."""
        if self.residents and self.rng.random() < 0.5:
            return self.rng.choice(self.residents)
        return self.rng.choice(self.vehicles)

    def confidence(self) -> int:
        """Zhenshi-style 0-100 confidence: mostly high, sometimes poor (rain, dirt)."""
        if self.rng.random() < 0.05:
            return self.rng.randint(35, 69)
        return min(100, max(70, round(self.rng.gauss(93, 4))))


def _color_of(plate: str) -> str:
    if len(plate) == 8:
        return "yellow_green" if plate[-1] in "DF" and plate[2:7].isdigit() else "green"
    return "blue"


@dataclass
class SimStats:
    """Tally of what the simulator sent and what it got back."""

    pushes: int = 0
    opened: int = 0
    denied: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)

    def count(self, result: PushResult, *, reply_decides: bool = True) -> None:
        """Record one reply; `reply_decides` is False where barriers open by command (Hikvision)."""
        self.pushes += 1
        self.by_status[result.status] = self.by_status.get(result.status, 0) + 1
        if result.status == 200 and reply_decides:
            if result.opened:
                self.opened += 1
            else:
                self.denied += 1


class GarageSim:
    """Entry and exit cameras of one garage, pushing to a gateway."""

    def __init__(self, args: argparse.Namespace, session: aiohttp.ClientSession) -> None:
        self.args = args
        self.garage = Garage.build(args.seed, args.vehicles, args.extra_plate or (), args.resident or RESIDENTS)
        self.rng = random.Random(args.seed + 1)
        base = args.target.rstrip("/")
        user, _, password = (args.basic or "").partition(":")
        auth = CameraAuth(
            token=args.token, hmac_secret=args.hmac_secret, basic=(user, password) if args.basic else None
        )
        self.entry = Camera(session, self._url(base, args.entry_id), auth)
        self.exit = Camera(session, self._url(base, args.exit_id), auth)
        self.buffers: dict[str, BufferingCamera] = {}
        if args.offline_buffer and args.protocol == "zhenshi":
            for camera in (self.entry, self.exit):
                self.buffers[camera.url] = BufferingCamera(camera, args.offline_buffer)
        self.stats = SimStats()
        self.silent_until = 0.0
        self.seq = 0
        self.waiting: dict[str, Vehicle] = {}
        self.isapi: IsapiBarrierServer | None = None

    def _url(self, base: str, camera_id: str) -> str:
        if self.args.protocol == "dahua":  # ITSAPI's fixed path, under the camera's own prefix
            return f"{base}/lpr/{camera_id}/NotificationInfo/TollgateInfo"
        return f"{base}/lpr/{camera_id}"

    def _body(
        self,
        vehicle: Vehicle,
        plate: str,
        *,
        encoding: str = "utf8",
        image: bytes | None = None,
        offline: bool = False,
    ) -> tuple[bytes, str]:
        confidence = self.garage.confidence()
        if self.args.protocol == "hikvision":
            images = [("licensePlatePicture.jpg", image)] if image is not None else []
            build = hikvision_plate_json if self.args.hik_json else hikvision_plate_body
            return build(
                plate,
                color=vehicle.color,
                confidence=confidence,
                seq=self.seq,
                images=images,
                direction="reverse" if vehicle.inside else "forward",
            )
        if self.args.protocol == "dahua":
            return dahua_plate_body(
                plate,
                color=vehicle.color,
                confidence=confidence,
                seq=self.seq,
                image=image,
                direction="Reverse" if vehicle.inside else "Obverse",
            )
        return zhenshi_plate_body(
            plate,
            color=vehicle.color,
            confidence=confidence,
            plateid=self.seq,
            license_encoding=encoding,
            image=image,
            offline=offline,
        ), "application/json"

    async def drive(self) -> None:
        """One vehicle movement, possibly with an injected fault."""
        vehicle = self.garage.next_move()
        camera = self.exit if vehicle.inside else self.entry
        fault = None
        if self.args.fault and self.rng.random() < self.args.fault_rate:
            fault = self.rng.choice(self.args.fault)
            self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1
        image = fake_jpeg(self.args.image_bytes, self.seq) if self.args.image_bytes else None
        plate = vehicle.plate
        if fault == "silent":
            self.silent_until = time.monotonic() + self.args.silent_s
            log.info("fault: cameras silent for %.0f s", self.args.silent_s)
            return
        if fault == "invalid_plate":
            plate = invalid_plate(self.rng)
        if fault == "oversize_image":
            image = fake_jpeg(self.args.oversize_bytes, self.seq)
        encoding = {"gbk": "gbk", "base64": "base64"}.get(fault or "", "utf8")
        self.seq += 1
        buffering = self.buffers.get(camera.url)
        if buffering is not None and fault is None:
            seq = self.seq

            def make(offline: bool) -> bytes:
                return self._body(vehicle, plate, image=image, offline=offline)[0]

            delivered = await buffering.push(seq, make)
            if delivered is not None:
                self.stats.count(delivered)
                if delivered.opened:
                    vehicle.inside = not vehicle.inside
            return
        body, ctype = self._body(vehicle, plate, encoding=encoding, image=image)
        if fault == "malformed_json":
            body = body[: max(1, len(body) // 2)]
        copies = 5 if fault == "burst" else 1
        results = await asyncio.gather(
            *(camera.post(body, ctype, wrong_auth=fault == "wrong_auth") for _ in range(copies)),
            return_exceptions=True,
        )
        passed = False
        for result in results:
            if isinstance(result, BaseException):
                log.warning("push failed: %s", result)
                continue
            self.stats.count(result, reply_decides=self.args.protocol == "zhenshi")
            log.info(
                "%s %s -> %s %s",
                camera.url.rsplit("/", 1)[-1],
                plate,
                result.status,
                result.body[:120].decode("utf-8", "replace"),
            )
            passed = passed or result.opened
        if self.isapi is not None:  # Hikvision: the barrier opens on an ISAPI command, not on the reply
            self.waiting[camera.url.rsplit("/", 1)[-1]] = vehicle
        elif passed or (self.args.protocol != "zhenshi" and results):
            vehicle.inside = not vehicle.inside

    def barrier_opened(self, camera_id: str) -> None:
        """The gateway opened a camera's barrier over ISAPI: the waiting vehicle drives through."""
        vehicle = self.waiting.pop(camera_id, None)
        if vehicle is not None:
            vehicle.inside = not vehicle.inside
            self.stats.opened += 1

    async def heartbeats(self) -> None:
        """Keep-alives from both cameras, unless they have gone silent."""
        while True:
            if time.monotonic() >= self.silent_until:
                for camera in (self.entry, self.exit):
                    url = camera.url
                    if self.args.protocol == "hikvision":
                        body, ctype = hikvision_heartbeat_body()
                    elif self.args.protocol == "dahua":
                        body, ctype = dahua_keepalive_body()
                        url = url.replace("/TollgateInfo", "/KeepAlive")
                    else:
                        body, ctype = zhenshi_heartbeat_form(f"sim-{url.rsplit('/', 1)[-1]}")
                    try:
                        beat = await Camera(camera.session, url, camera.auth).post(body, ctype)
                    except aiohttp.ClientError as exc:
                        log.warning("heartbeat failed: %s", exc)
                        continue
                    buffering = self.buffers.get(camera.url)
                    if buffering is not None and beat.status == 200 and buffering.buffer:
                        log.info("server back: %d buffered reads drained", await buffering.drain())
            await asyncio.sleep(self.args.heartbeat / self.args.speed)

    async def run(self) -> None:
        """Drive until `--count` reads were pushed (0: forever), heartbeating meanwhile."""
        if self.args.isapi_port is not None:
            user, _, password = self.args.isapi_user.partition(":")
            self.isapi = IsapiBarrierServer(user, password, self.barrier_opened)
            await self.isapi.start("127.0.0.1", self.args.isapi_port)
            log.info("ISAPI barriers at http://127.0.0.1:%d/<camera id>", self.isapi.port)
        beats = asyncio.create_task(self.heartbeats())
        try:
            done = 0
            while not self.args.count or done < self.args.count:
                delay = self.rng.expovariate(self.args.rate / 60.0) / self.args.speed
                await asyncio.sleep(delay)
                if time.monotonic() < self.silent_until:
                    continue
                try:
                    await self.drive()
                except aiohttp.ClientError as exc:
                    log.warning("push failed: %s", exc)
                done += 1
        finally:
            beats.cancel()
            if self.isapi is not None:
                await self.isapi.close()
            log.info("simulator stats: %s", self.stats)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of `courtyard simulate plate_reader`."""
    parser.add_argument("--target", default="http://127.0.0.1:8088", help="gateway listener base URL")
    parser.add_argument(
        "--protocol",
        choices=("zhenshi", "hikvision", "dahua"),
        default="zhenshi",
        help="camera vendor: Zhenshi JSON, Hikvision ANPR, Dahua ITSAPI (to <target>/lpr/<id>/NotificationInfo/...)",
    )
    parser.add_argument(
        "--hik-json", action="store_true", help="Hikvision: send the JSON EventNotificationAlert variant"
    )
    parser.add_argument(
        "--offline-buffer",
        type=int,
        default=0,
        metavar="N",
        help="Zhenshi: keep up to N reads while the gateway is unreachable, re-send them (isoffline) when it is back",
    )
    parser.add_argument("--entry-id", default="lpr-entry", help="entry camera device id (posts to /lpr/<id>)")
    parser.add_argument("--exit-id", default="lpr-exit", help="exit camera device id (posts to /lpr/<id>)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--vehicles", type=int, default=60, help="vehicles in the community")
    parser.add_argument("--extra-plate", action="append", help="add this plate to passing traffic (repeatable)")
    parser.add_argument(
        "--resident",
        action="append",
        help=f"a resident's plate, allowlisted at the gateway (default: {' '.join(RESIDENTS)})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help=f"vehicle movements per minute (default {DEFAULT_RATE:g}: "
        f"a read every {60 / DEFAULT_RATE:g} s on average, so the garage looks alive)",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="time multiplier (10 = ten times faster)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many movements (0: never)")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="keep-alive period, seconds")
    parser.add_argument("--image-bytes", type=int, default=20_000, help="picture size per read (0: none)")
    parser.add_argument("--oversize-bytes", type=int, default=3 * 1024 * 1024)
    parser.add_argument("--token", help="token for X-Auth-Token auth")
    parser.add_argument("--hmac-secret", help="secret for HMAC-signed pushes")
    parser.add_argument("--basic", help="user:password for basic auth")
    parser.add_argument("--fault", action="append", choices=FAULTS, help="fault to inject (repeatable)")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="probability a movement carries a fault")
    parser.add_argument("--silent-s", type=float, default=60.0, help="how long the 'silent' fault lasts")
    parser.add_argument(
        "--isapi-port", type=int, help="serve ISAPI barrier control (digest auth) at http://127.0.0.1:PORT/<camera id>"
    )
    parser.add_argument("--isapi-user", default="admin:admin12345", help="user:password for the ISAPI barriers")


async def serve(args: argparse.Namespace) -> None:
    """Run the simulated garage until cancelled (or `--count` movements)."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await GarageSim(args, session).run()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse simulator arguments (for tests and `python -m simulators.plate_reader`)."""
    parser = argparse.ArgumentParser(prog="courtyard simulate plate_reader", description=(__doc__ or "").split("\n")[0])
    add_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    asyncio.run(serve(parse_args()))
