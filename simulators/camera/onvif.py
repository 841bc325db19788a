"""ONVIF device, media and events (PullPoint) services of a simulated camera, as SOAP 1.2 over HTTP.

Written apart from the driver's SOAP layer on purpose (its own parsing and building), so that
a bug shared by both cannot hide; tests also drive it with zeep (onvif-zeep-async).

Per camera, under its path prefix (`/<camera>` on the one-port server):

    POST {prefix}/onvif/device_service        GetSystemDateAndTime (no auth), GetCapabilities, GetServices
    POST {prefix}/onvif/media_service         GetProfiles, GetSnapshotUri
    POST {prefix}/onvif/event_service         CreatePullPointSubscription
    POST {prefix}/onvif/subscription/<n>      PullMessages, Renew, Unsubscribe, SetSynchronizationPoint
    GET  {prefix}/onvif/snapshot.jpg          the current picture

Every operation but GetSystemDateAndTime needs a WS-UsernameToken with a PasswordDigest whose
`Created` is within `max_skew_s` of the camera's clock (which runs `clock_skew_s` away from
real time) and whose nonce was not seen before. A subscription lives until its termination
time (camera clock); PullMessages on an expired one answers `ResourceUnknownFault`.

Faults (the camera model's fault set): `auth_failure` (every token refused), `clock_skew`
(the camera's clock 7 h off), `pullpoint_expiry` (subscriptions end 2 s after creation),
`malformed_xml` (every third PullMessages answer is cut short), `silent` (requests hang until
the client gives up), and, for tests only, `renew_refused` (Renew answers a fault while the
subscription lives on). `OnvifCamera.expire_all()` ends every subscription at once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree

SOAP = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
WSA = "http://www.w3.org/2005/08/addressing"
WSNT = "http://docs.oasis-open.org/wsn/b-2"
TEV = "http://www.onvif.org/ver10/events/wsdl"
TDS = "http://www.onvif.org/ver10/device/wsdl"
TRT = "http://www.onvif.org/ver10/media/wsdl"
TT = "http://www.onvif.org/ver10/schema"
TNS1 = "http://www.onvif.org/ver10/topics"
XMLNS = (
    f'xmlns:s="{SOAP}" xmlns:wsa="{WSA}" xmlns:wsnt="{WSNT}" xmlns:tev="{TEV}" xmlns:tds="{TDS}" '
    f'xmlns:trt="{TRT}" xmlns:tt="{TT}" xmlns:tns1="{TNS1}" '
    'xmlns:tnshik="http://www.hikvision.com/2011/event/topics" '
    'xmlns:tnsdh="http://www.dahuatech.com/2011/event/topics" '
    'xmlns:wsrf-rw="http://docs.oasis-open.org/wsrf/rw-2" xmlns:ter="http://www.onvif.org/ver10/error"'
)
MAX_REQUEST_BYTES = 64 * 1024
MAX_QUEUE = 1000
MAX_PULL_TIMEOUT_S = 60.0
#: Faults this module honours beyond the model's list (tests set them on the camera's fault set).
EXTRA_FAULTS = ("renew_refused",)

#: detection -> (topic, data item, source items) per camera family, as those families publish them.
TOPICS: dict[str, dict[str, tuple[str, str, dict[str, str]]]] = {
    "generic": {
        "intrusion": ("tns1:RuleEngine/FieldDetector/ObjectsInside", "IsInside",
                      {"VideoSourceConfigurationToken": "VideoSourceToken{ch}", "Rule": "Field{ch}"}),
        "line": ("tns1:RuleEngine/LineDetector/Crossed", "ObjectId",
                 {"VideoSourceConfigurationToken": "VideoSourceToken{ch}", "Rule": "Line{ch}"}),
        "motion": ("tns1:RuleEngine/CellMotionDetector/Motion", "IsMotion",
                   {"VideoSourceConfigurationToken": "VideoSourceToken{ch}", "Rule": "MyMotionDetectorRule"}),
        "tamper": ("tns1:VideoSource/GlobalSceneChange/ImagingService", "State", {"Source": "VideoSourceToken{ch}"}),
        "video_loss": ("tns1:VideoSource/SignalLoss", "State", {"Source": "VideoSourceToken{ch}"}),
        "fire": ("tns1:RuleEngine/FireDetector/Fire", "State",
                 {"VideoSourceConfigurationToken": "VideoSourceToken{ch}", "Rule": "Fire{ch}"}),
        "smoke": ("tns1:RuleEngine/SmokeDetector/Smoke", "State",
                  {"VideoSourceConfigurationToken": "VideoSourceToken{ch}", "Rule": "Smoke{ch}"}),
    },
    "hikvision": {
        "intrusion": ("tns1:RuleEngine/FieldDetector/ObjectsInside", "IsInside",
                      {"VideoSourceConfigurationToken": "VideoSourceToken{ch}", "Rule": "MyFieldDetector{ch}"}),
        "line": ("tns1:RuleEngine/LineDetector/Crossed", "ObjectId",
                 {"VideoSourceConfigurationToken": "VideoSourceToken{ch}", "Rule": "MyLineDetector{ch}"}),
        "motion": ("tns1:RuleEngine/CellMotionDetector/Motion", "IsMotion",
                   {"VideoSourceConfigurationToken": "VideoSourceToken{ch}", "Rule": "MyMotionDetectorRule"}),
        "tamper": ("tns1:RuleEngine/TamperDetector/Tamper", "IsTamper",
                   {"VideoSourceConfigurationToken": "VideoSourceToken{ch}", "Rule": "MyTamperDetectorRule"}),
        "video_loss": ("tns1:VideoSource/SignalLoss", "State", {"Source": "VideoSourceToken{ch}"}),
        "fire": ("tns1:RuleEngine/tnshik:FireDetection/FireDetection", "IsFire",
                 {"VideoSourceConfigurationToken": "VideoSourceToken{ch}", "Rule": "FireDetection{ch}"}),
        "smoke": ("tns1:RuleEngine/tnshik:SmokeDetection/SmokeDetection", "IsSmoke",
                  {"VideoSourceConfigurationToken": "VideoSourceToken{ch}", "Rule": "SmokeDetection{ch}"}),
        "ebike": ("tns1:RuleEngine/tnshik:NonMotorVehicleDetection/EBike", "IsEBike",
                  {"VideoSourceConfigurationToken": "VideoSourceToken{ch}", "Rule": "EBike{ch}"}),
    },
    "dahua": {
        "intrusion": ("tns1:RuleEngine/FieldDetector/ObjectsInside", "IsInside",
                      {"VideoSourceConfigurationToken": "{ch0}", "Rule": "CrossRegion{ch}"}),
        "line": ("tns1:RuleEngine/LineDetector/Crossed", "ObjectId",
                 {"VideoSourceConfigurationToken": "{ch0}", "Rule": "CrossLine{ch}"}),
        "motion": ("tns1:RuleEngine/CellMotionDetector/Motion", "IsMotion",
                   {"VideoSourceConfigurationToken": "{ch0}", "Rule": "MotionDetection"}),
        "tamper": ("tns1:VideoSource/GlobalSceneChange/ImagingService", "State", {"Source": "{ch0}"}),
        "video_loss": ("tns1:VideoSource/SignalLoss", "State", {"Source": "{ch0}"}),
        "fire": ("tns1:RuleEngine/tnsdh:FireDetection/Fire", "State",
                 {"VideoSourceConfigurationToken": "{ch0}", "Rule": "FireDetection{ch}"}),
        "smoke": ("tns1:RuleEngine/tnsdh:SmokeDetection/Smoke", "State",
                  {"VideoSourceConfigurationToken": "{ch0}", "Rule": "SmokeDetection{ch}"}),
        "ebike": ("tns1:RuleEngine/tnsdh:ElectricBicycleDetection/EBike", "State",
                  {"VideoSourceConfigurationToken": "{ch0}", "Rule": "EBike{ch}"}),
    },
}
#: A PullMessages answer cut short (the `malformed_xml` fault).
BROKEN = b'<?xml version="1.0"?><s:Envelope xmlns:s="' + SOAP.encode() + b'"><s:Body><tev:PullMessagesRes'
#: A fake JPEG (SOI ... EOI), enough for clients that check the magic bytes.
PICTURE = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + bytes(range(256)) * 4 + b"\xff\xd9"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def parse_duration(text: str) -> float | None:
    """Seconds of an xs:duration like `PT60S`/`PT1M30S`/`P1DT2H` (None if it is not one)."""
    m = _DURATION.match(text.strip())
    if not m or text.strip() in {"P", "PT"}:
        return None
    d, h, mi, s = m.groups()
    return int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


def parse_datetime(text: str) -> datetime | None:
    """An absolute xs:dateTime (UTC assumed when no offset is given)."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass
class Notification:
    """One event as the camera queues it for its subscribers."""

    topic: str
    utc: datetime
    op: str
    source: dict[str, str]
    data: dict[str, str]

    def xml(self) -> str:
        """The wsnt:NotificationMessage element."""

        def items(values: dict[str, str]) -> str:
            return "".join(f"<tt:SimpleItem Name={quoteattr(k)} Value={quoteattr(v)}/>" for k, v in values.items())

        return (
            "<wsnt:NotificationMessage>"
            '<wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">'
            f"{escape(self.topic)}</wsnt:Topic>"
            f'<wsnt:Message><tt:Message UtcTime="{_iso(self.utc)}" PropertyOperation="{self.op}">'
            f"<tt:Source>{items(self.source)}</tt:Source><tt:Data>{items(self.data)}</tt:Data>"
            "</tt:Message></wsnt:Message></wsnt:NotificationMessage>"
        )


class SimLike(Protocol):
    """What the ONVIF services need of a simulated camera (simulators.camera.model.SimCamera)."""

    id: str
    brand: str
    channels: int
    username: str
    password: str
    faults: set[str]

    def camera_time(self, now: datetime | None = None) -> datetime: ...

    def subscribe(self) -> asyncio.Queue[Any]: ...

    def unsubscribe(self, queue: asyncio.Queue[Any]) -> None: ...


@dataclass
class Subscription:
    """A PullPoint subscription: the camera's detections for it, and its termination time (camera clock)."""

    id: int
    termination: datetime
    detections: asyncio.Queue[Any]
    created: datetime
    pending: deque[Notification] = field(default_factory=lambda: deque(maxlen=MAX_QUEUE))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pulls: int = 0
    renewals: int = 0


class SoapFaultReply(Exception):
    """Raised inside a handler to answer a SOAP fault."""

    def __init__(self, status: int, code: str, subcode: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.subcode, self.reason = status, code, subcode, reason


def _fault_body(code: str, subcode: str, reason: str) -> str:
    return (
        f"<s:Fault><s:Code><s:Value>s:{code}</s:Value><s:Subcode><s:Value>{subcode}</s:Value></s:Subcode>"
        f'</s:Code><s:Reason><s:Text xml:lang="en">{escape(reason)}</s:Text></s:Reason></s:Fault>'
    )


def _envelope(body: str, action: str | None = None) -> bytes:
    header = f"<s:Header><wsa:Action>{action}</wsa:Action></s:Header>" if action else "<s:Header/>"
    return (f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope {XMLNS}>{header}'
            f"<s:Body>{body}</s:Body></s:Envelope>").encode()


@dataclass
class OnvifStats:
    """What a test can check the camera saw."""

    subscriptions: int = 0
    renewals: int = 0
    unsubscribes: int = 0
    pulls: int = 0
    auth_failures: int = 0
    expired_pulls: int = 0


class OnvifCamera:
    """The ONVIF services of one simulated camera (any brand: real Hikvision and Dahua cameras speak ONVIF too)."""

    def __init__(self, sim: SimLike, *, max_skew_s: float = 300.0, max_termination_s: float = 3600.0,
                 early_expiry_s: float = 2.0) -> None:
        self.sim = sim
        self.family = sim.brand if sim.brand in TOPICS else "generic"
        self.max_skew_s = max_skew_s
        self.max_termination_s = max_termination_s
        self.early_expiry_s = early_expiry_s
        self.stats = OnvifStats()
        self.snapshot_guard: Callable[[web.Request], bool | None] | None = None
        self.picture: Callable[[], bytes] = lambda: PICTURE
        self._subs: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self._nonces: OrderedDict[str, None] = OrderedDict()

    # --- the camera's world ---------------------------------------------------------------------

    @property
    def faults(self) -> set[str]:
        """The camera's faults (shared with its other protocols)."""
        return self.sim.faults

    def now(self) -> datetime:
        """The camera's clock (skewed under `clock_skew`)."""
        return self.sim.camera_time()

    @property
    def subscriptions(self) -> dict[int, Subscription]:
        """Live subscriptions by id."""
        return self._subs

    def notification(self, det: Any) -> list[Notification]:
        """A model detection as this family publishes it (start/stop/pulse -> true/false/true+false)."""
        detection = "line" if det.detection == "intrusion" and det.rule == "line" else det.detection
        spec = TOPICS[self.family].get(detection)
        when = det.time
        if spec is None:  # a detection the family has no topic for: a vendor topic the driver won't know
            topic = f"tns1:RuleEngine/Vendor/{det.code or det.detection}"
            token = {"VideoSourceConfigurationToken": f"VideoSourceToken{det.channel}"}
            return [Notification(topic, when, "Changed", token, {"State": "true"})]
        topic, item, source = spec
        src = {k: v.format(ch=det.channel, ch0=det.channel - 1) for k, v in source.items()}
        if det.region:
            src["Rule"] = det.region
        if detection == "line":  # a crossing has no state: an object id, once
            return [Notification(topic, when, "Changed", src, {item: str(det.seq)})]
        extra = {"Confidence": str(det.confidence)} if det.confidence is not None and det.state != "stop" else {}
        if det.state == "stop":
            return [Notification(topic, when, "Changed", src, {item: "false"})]
        notes = [Notification(topic, when, "Changed", src, {item: "true", **extra})]
        if det.state == "pulse":
            notes.append(Notification(topic, when, "Changed", src, {item: "false"}))
        return notes

    def deliver(self, note: Notification) -> None:
        """Queue any notification (tests use this for unknown topics and odd items)."""
        for sub in self._subs.values():
            sub.pending.append(note)
            sub.wake.set()

    def expire_all(self) -> None:
        """Every subscription's termination time is now (the next call on it is refused)."""
        for sub in self._subs.values():
            sub.termination = self.now() - timedelta(seconds=1)
            sub.wake.set()

    def close(self) -> None:
        """Drop every subscription (server shutdown)."""
        for sub in list(self._subs.values()):
            self._drop(sub)

    def _drop(self, sub: Subscription) -> None:
        self._subs.pop(sub.id, None)
        self.sim.unsubscribe(sub.detections)
        sub.wake.set()

    # --- HTTP ------------------------------------------------------------------------------------

    async def handle(self, request: web.Request, rest: str) -> web.StreamResponse:
        """Serve one request for `rest` (the path under the camera's prefix, `/onvif/...`)."""
        prefix = request.path[: len(request.path) - len(rest)] if request.path.endswith(rest) else ""
        base = f"{request.scheme}://{request.host}{prefix}/onvif/"
        if request.method == "GET" and rest == "/onvif/snapshot.jpg":
            return await self._snapshot(request)
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        if rest == "/onvif/device_service":
            return await self._serve(request, lambda root, op: self._device(root, op, base))
        if rest == "/onvif/media_service":
            return await self._serve(request, lambda root, op: self._media(root, op, base))
        if rest == "/onvif/event_service":
            return await self._serve(request, lambda root, op: self._events(root, op, base))
        if rest.startswith("/onvif/subscription/"):
            sid = rest.rsplit("/", 1)[1]
            sub = self._subs.get(int(sid)) if sid.isdigit() else None
            if "malformed_xml" in self.faults and sub is not None and sub.pulls % 3 == 1:
                sub.pulls += 1  # every third answer is cut short
                await request.read()
                return web.Response(body=BROKEN, content_type="application/soap+xml")
            return await self._serve(request, lambda root, op: self._subscription(root, op, sid))
        raise web.HTTPNotFound(text=f"no ONVIF service at {rest}")

    async def _read(self, request: web.Request) -> tuple[Element, Element]:
        while "silent" in self.faults:  # noqa: ASYNC110 - hang until the client gives up (fault set: no event)
            await asyncio.sleep(0.1)
        raw = await request.content.read(MAX_REQUEST_BYTES + 1)
        if len(raw) > MAX_REQUEST_BYTES:
            raise SoapFaultReply(400, "Sender", "ter:InvalidArgVal", "request too large")
        try:
            root = SafeElementTree.fromstring(raw, forbid_dtd=True)
        except (ParseError, DefusedXmlException, ValueError) as exc:
            raise SoapFaultReply(400, "Sender", "ter:WellFormed", f"malformed request: {exc}") from exc
        body = root.find(f"{{{SOAP}}}Body")
        if root.tag != f"{{{SOAP}}}Envelope" or body is None or len(body) == 0:
            raise SoapFaultReply(400, "Sender", "ter:WellFormed", "not a SOAP 1.2 envelope")
        return root, body[0]

    def _check_auth(self, root: Element) -> None:
        """Verify the UsernameToken digest, its freshness on the camera's clock, and the nonce."""
        token = root.find(f"{{{SOAP}}}Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
        if "auth_failure" in self.faults or token is None:
            self.stats.auth_failures += 1
            raise SoapFaultReply(400, "Sender", "ter:NotAuthorized", "Sender not Authorized")
        user = token.findtext(f"{{{WSSE}}}Username") or ""
        digest = token.findtext(f"{{{WSSE}}}Password") or ""
        nonce_b64 = (token.findtext(f"{{{WSSE}}}Nonce") or "").strip()
        created = (token.findtext(f"{{{WSU}}}Created") or "").strip()
        try:
            nonce = base64.b64decode(nonce_b64, validate=True)
        except ValueError:
            nonce = b""
        password = self.sim.password.encode()
        expected = base64.b64encode(hashlib.sha1(nonce + created.encode() + password).digest()).decode()
        when = parse_datetime(created)
        fresh = when is not None and abs((when - self.now()).total_seconds()) <= self.max_skew_s
        ok = hmac.compare_digest(user, self.sim.username) and hmac.compare_digest(digest.strip(), expected)
        if not (ok and nonce and fresh) or nonce_b64 in self._nonces:
            self.stats.auth_failures += 1
            raise SoapFaultReply(400, "Sender", "ter:NotAuthorized", "Sender not Authorized")
        self._nonces[nonce_b64] = None
        while len(self._nonces) > 4096:
            self._nonces.popitem(last=False)

    async def _serve(self, request: web.Request, handler: Callable[[Element, Element], Any]) -> web.Response:
        try:
            root, op = await self._read(request)
            result = handler(root, op)
            if asyncio.iscoroutine(result):
                result = await result
            body, action = result
            return web.Response(body=_envelope(body, action), content_type="application/soap+xml", charset="utf-8")
        except SoapFaultReply as fault:
            body = _envelope(_fault_body(fault.code, fault.subcode, fault.reason))
            return web.Response(status=fault.status, body=body, content_type="application/soap+xml", charset="utf-8")

    def _device(self, root: Element, op: Element, base: str) -> tuple[str, str | None]:
        name = op.tag.rpartition("}")[2]
        if name == "GetSystemDateAndTime":
            now = self.now()
            return (
                "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
                "<tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings>"
                "<tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone><tt:UTCDateTime>"
                f"<tt:Time><tt:Hour>{now.hour}</tt:Hour><tt:Minute>{now.minute}</tt:Minute>"
                f"<tt:Second>{now.second}</tt:Second></tt:Time>"
                f"<tt:Date><tt:Year>{now.year}</tt:Year><tt:Month>{now.month}</tt:Month>"
                f"<tt:Day>{now.day}</tt:Day></tt:Date>"
                "</tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>",
                None,
            )
        self._check_auth(root)
        if name == "GetCapabilities":
            return (
                "<tds:GetCapabilitiesResponse><tds:Capabilities>"
                f"<tt:Device><tt:XAddr>{base}device_service</tt:XAddr></tt:Device>"
                f"<tt:Events><tt:XAddr>{base}event_service</tt:XAddr>"
                "<tt:WSSubscriptionPolicySupport>false</tt:WSSubscriptionPolicySupport>"
                "<tt:WSPullPointSupport>true</tt:WSPullPointSupport>"
                "<tt:WSPausableSubscriptionManagerInterfaceSupport>false</tt:WSPausableSubscriptionManagerInterfaceSupport>"
                "</tt:Events>"
                f"<tt:Media><tt:XAddr>{base}media_service</tt:XAddr>"
                "<tt:StreamingCapabilities><tt:RTPMulticast>false</tt:RTPMulticast><tt:RTP_TCP>true</tt:RTP_TCP>"
                "<tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP></tt:StreamingCapabilities></tt:Media>"
                "</tds:Capabilities></tds:GetCapabilitiesResponse>",
                None,
            )
        if name == "GetServices":
            services = (
                ("http://www.onvif.org/ver10/device/wsdl", "device_service"),
                ("http://www.onvif.org/ver10/events/wsdl", "event_service"),
                ("http://www.onvif.org/ver10/media/wsdl", "media_service"),
            )
            return (
                "<tds:GetServicesResponse>"
                + "".join(
                    f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{base}{path}</tds:XAddr>"
                    "<tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version></tds:Service>"
                    for ns, path in services
                )
                + "</tds:GetServicesResponse>",
                None,
            )
        if name == "GetDeviceInformation":
            return (
                f"<tds:GetDeviceInformationResponse><tds:Manufacturer>{escape(self.family.capitalize())}"
                "</tds:Manufacturer><tds:Model>SIM-ONVIF</tds:Model><tds:FirmwareVersion>1.0</tds:FirmwareVersion>"
                f"<tds:SerialNumber>{escape(self.sim.id)}</tds:SerialNumber><tds:HardwareId>1</tds:HardwareId>"
                "</tds:GetDeviceInformationResponse>",
                None,
            )
        raise SoapFaultReply(400, "Receiver", "ter:ActionNotSupported", f"{name} is not supported")

    def _media(self, root: Element, op: Element, base: str) -> tuple[str, str | None]:
        self._check_auth(root)
        name = op.tag.rpartition("}")[2]
        if name == "GetProfiles":
            profiles = "".join(
                f'<trt:Profiles token="Profile_{ch}" fixed="true"><tt:Name>mainStream{ch}</tt:Name></trt:Profiles>'
                for ch in range(1, self.sim.channels + 1)
            )
            return f"<trt:GetProfilesResponse>{profiles}</trt:GetProfilesResponse>", None
        if name == "GetSnapshotUri":
            token = op.findtext(f"{{{TRT}}}ProfileToken") or "Profile_1"
            ch = token.rpartition("_")[2] if token.rpartition("_")[2].isdigit() else "1"
            return (
                f"<trt:GetSnapshotUriResponse><trt:MediaUri><tt:Uri>{base}snapshot.jpg?channel={ch}</tt:Uri>"
                "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>false"
                "</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:GetSnapshotUriResponse>",
                None,
            )
        raise SoapFaultReply(400, "Receiver", "ter:ActionNotSupported", f"{name} is not supported")

    def _termination(self, text: str | None, default_s: float) -> datetime:
        now = self.now()
        if not text:
            return now + timedelta(seconds=default_s)
        seconds = parse_duration(text)
        if seconds is not None:
            return now + timedelta(seconds=min(seconds, self.max_termination_s))
        when = parse_datetime(text)
        if when is None or when <= now:
            raise SoapFaultReply(400, "Sender", "wsnt:UnacceptableTerminationTimeFault", f"bad termination {text!r}")
        return min(when, now + timedelta(seconds=self.max_termination_s))

    def _events(self, root: Element, op: Element, base: str) -> tuple[str, str | None]:
        self._check_auth(root)
        name = op.tag.rpartition("}")[2]
        if name != "CreatePullPointSubscription":
            raise SoapFaultReply(400, "Receiver", "ter:ActionNotSupported", f"{name} is not supported")
        termination = self._termination(op.findtext(f"{{{TEV}}}InitialTerminationTime"), 60.0)
        sub = Subscription(next(self._ids), termination, self.sim.subscribe(), self.now())
        self._subs[sub.id] = sub
        self.stats.subscriptions += 1
        return (
            "<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference>"
            f"<wsa:Address>{base}subscription/{sub.id}</wsa:Address>"
            "</tev:SubscriptionReference>"
            f"<wsnt:CurrentTime>{_iso(self.now())}</wsnt:CurrentTime>"
            f"<wsnt:TerminationTime>{_iso(termination)}</wsnt:TerminationTime>"
            "</tev:CreatePullPointSubscriptionResponse>",
            "http://www.onvif.org/ver10/events/wsdl/EventPortType/CreatePullPointSubscriptionResponse",
        )

    def _live(self, sid: str) -> Subscription:
        sub = self._subs.get(int(sid)) if sid.isdigit() else None
        if sub is None:
            raise SoapFaultReply(400, "Receiver", "wsrf-rw:ResourceUnknownFault", "unknown subscription")
        if "pullpoint_expiry" in self.faults and (self.now() - sub.created).total_seconds() >= self.early_expiry_s:
            sub.termination = self.now() - timedelta(seconds=1)
        if sub.termination <= self.now():
            self._drop(sub)
            self.stats.expired_pulls += 1
            raise SoapFaultReply(400, "Receiver", "wsrf-rw:ResourceUnknownFault", "subscription expired")
        return sub

    async def _subscription(self, root: Element, op: Element, sid: str) -> tuple[str, str | None]:
        self._check_auth(root)
        name = op.tag.rpartition("}")[2]
        sub = self._live(sid)
        if name == "PullMessages":
            return await self._pull(sub, op)
        if name == "Renew":
            if "renew_refused" in self.faults:
                raise SoapFaultReply(400, "Receiver", "wsnt:UnacceptableTerminationTimeFault", "renew refused")
            sub.termination = self._termination(op.findtext(f"{{{WSNT}}}TerminationTime"), 60.0)
            sub.renewals += 1
            self.stats.renewals += 1
            return (
                f"<wsnt:RenewResponse><wsnt:TerminationTime>{_iso(sub.termination)}</wsnt:TerminationTime>"
                f"<wsnt:CurrentTime>{_iso(self.now())}</wsnt:CurrentTime></wsnt:RenewResponse>",
                "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/RenewResponse",
            )
        if name == "SetSynchronizationPoint":  # nothing is latched here: no states to re-send
            return ("<tev:SetSynchronizationPointResponse/>",
                    "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription/SetSynchronizationPointResponse")
        if name == "Unsubscribe":
            self._drop(sub)
            self.stats.unsubscribes += 1
            return "<wsnt:UnsubscribeResponse/>", "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/UnsubscribeResponse"
        raise SoapFaultReply(400, "Receiver", "ter:ActionNotSupported", f"{name} is not supported")

    def _drain(self, sub: Subscription) -> None:
        while True:
            try:
                det = sub.detections.get_nowait()
            except asyncio.QueueEmpty:
                return
            if det is not None:
                sub.pending.extend(self.notification(det))

    async def _pull(self, sub: Subscription, op: Element) -> tuple[str, str | None]:
        timeout = parse_duration(op.findtext(f"{{{TEV}}}Timeout") or "") or 0.0
        try:
            limit = int(op.findtext(f"{{{TEV}}}MessageLimit") or "1")
        except ValueError:
            raise SoapFaultReply(400, "Sender", "ter:InvalidArgVal", "bad MessageLimit") from None
        if limit < 1:
            raise SoapFaultReply(400, "Sender", "ter:InvalidArgVal", "MessageLimit must be positive")
        sub.pulls += 1
        self.stats.pulls += 1
        self._drain(sub)
        if not sub.pending:
            sub.wake.clear()
            getter = asyncio.ensure_future(sub.detections.get())
            waker = asyncio.ensure_future(sub.wake.wait())
            done, _ = await asyncio.wait({getter, waker}, timeout=min(timeout, MAX_PULL_TIMEOUT_S),
                                         return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            if getter in done:
                det = getter.result()
                if det is not None:
                    sub.pending.extend(self.notification(det))
            else:
                getter.cancel()
            self._drain(sub)
        if sub.id not in self._subs or sub.termination <= self.now():
            self._drop(sub)
            self.stats.expired_pulls += 1
            raise SoapFaultReply(400, "Receiver", "wsrf-rw:ResourceUnknownFault", "subscription expired")
        notes = [sub.pending.popleft() for _ in range(min(limit, len(sub.pending)))]
        return (
            f"<tev:PullMessagesResponse><tev:CurrentTime>{_iso(self.now())}</tev:CurrentTime>"
            f"<tev:TerminationTime>{_iso(sub.termination)}</tev:TerminationTime>"
            + "".join(n.xml() for n in notes)
            + "</tev:PullMessagesResponse>",
            "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription/PullMessagesResponse",
        )

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        if self.snapshot_guard is not None:
            verdict = self.snapshot_guard(request)
            if verdict is not True:
                return web.Response(status=401, text="Unauthorized")
        return web.Response(body=self.picture(), content_type="image/jpeg")


def install(server: Any) -> None:
    """Plug the ONVIF services into the camera simulator's one-port server (`CameraServer`).

    Every camera answers ONVIF under `/<id>/onvif/...` (and the first `onvif` camera at the bare
    `/onvif/...`, where off-the-shelf clients look); the topic family follows the camera's brand.
    """
    services: dict[str, OnvifCamera] = {}

    def service(cam: Any) -> OnvifCamera:
        svc = services.get(cam.id)
        if svc is None:
            svc = services[cam.id] = OnvifCamera(cam)
            guard = getattr(server, "guard", None)
            if guard is not None:
                def check(request: web.Request, _cam: Any = cam) -> bool | None:
                    verdict: bool | None = guard.check(request, _cam)
                    return verdict

                svc.snapshot_guard = check
        return svc

    async def handle(request: web.Request, cam: Any, rest: str) -> web.StreamResponse:
        svc = service(cam)
        if request.method == "GET" and rest == "/onvif/snapshot.jpg" and svc.snapshot_guard is not None:
            verdict = svc.snapshot_guard(request)
            if verdict is not True:
                return web.Response(status=401, text="Unauthorized",
                                    headers={"WWW-Authenticate": server.guard.challenge()})
            from simulators.camera.model import jpeg

            return web.Response(body=jpeg(int(datetime.now(UTC).timestamp())), content_type="image/jpeg")
        return await svc.handle(request, rest)

    server.handlers["onvif"] = handle
    server.onvif = services
