"""ONVIF device, media and events (PullPoint) services of a simulated camera, as SOAP 1.2 over HTTP.

Written apart from the driver's SOAP layer on purpose (its own parsing and building), so that
a bug shared by both cannot hide; tests also drive it with zeep (onvif-zeep-async).

Per camera, under its path prefix (`/<camera>` on the one-port server):

    POST {prefix}/onvif/device_service        GetSystemDateAndTime (no auth), GetCapabilities, GetServices
    POST {prefix}/onvif/media_service         GetProfiles, GetSnapshotUri
    POST {prefix}/onvif/event_service         CreatePullPointSubscription
    POST {prefix}/onvif/subscription/<n>      PullMessages, Renew, Unsubscribe
    GET  {prefix}/onvif/snapshot.jpg          the current picture

Every operation but GetSystemDateAndTime needs a WS-UsernameToken with a PasswordDigest whose
`Created` is within `max_skew_s` of the camera's clock (which runs `clock_skew_s` away from
real time) and whose nonce was not seen before. A subscription lives until its termination
time (camera clock); PullMessages on an expired one answers `ResourceUnknownFault`.

Faults (set with `OnvifCamera.faults`): `expire` (every subscription ends now),
`auth_failure` (every token refused), `malformed_xml` (the next PullMessages answer is
broken XML), `silent` (requests hang until the client gives up), `clock_skew` is the
`clock_skew_s` setting.
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
from typing import Any
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
    'xmlns:tnshik="http://www.hikvision.com/2011/event/topics" xmlns:tnsdh="http://www.dahuatech.com/2011/event/topics" '
    'xmlns:wsrf-rw="http://docs.oasis-open.org/wsrf/rw-2" xmlns:ter="http://www.onvif.org/ver10/error"'
)
MAX_REQUEST_BYTES = 64 * 1024
MAX_QUEUE = 1000
MAX_PULL_TIMEOUT_S = 60.0
FAULTS = ("expire", "auth_failure", "malformed_xml", "silent")

#: detection -> (topic, data item, source items) per camera family, as those families publish them.
#: `{on}`/`{off}` in a data item are filled with the family's boolean words.
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


@dataclass
class Subscription:
    """A PullPoint subscription: its queue and its termination time on the camera's clock."""

    id: int
    termination: datetime
    queue: deque[Notification] = field(default_factory=lambda: deque(maxlen=MAX_QUEUE))
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
    return f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope {XMLNS}>{header}<s:Body>{body}</s:Body></s:Envelope>'.encode()


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
    """One simulated camera's ONVIF services under `prefix` (e.g. `/cam-1`, or `` at the root)."""

    def __init__(
        self,
        *,
        prefix: str = "",
        username: str = "admin",
        password: str = "admin123",
        family: str = "generic",
        channels: int = 1,
        clock_skew_s: float = 0.0,
        max_skew_s: float = 300.0,
        max_termination_s: float = 3600.0,
        picture: Callable[[], bytes] | None = None,
        manufacturer: str | None = None,
    ) -> None:
        if family not in TOPICS:
            raise ValueError(f"unknown ONVIF family {family!r}; known: {', '.join(TOPICS)}")
        self.prefix = prefix.rstrip("/")
        self.username = username
        self.password = password
        self.family = family
        self.channels = channels
        self.clock_skew_s = clock_skew_s
        self.max_skew_s = max_skew_s
        self.max_termination_s = max_termination_s
        self.picture = picture or (lambda: PICTURE)
        self.manufacturer = manufacturer or family.capitalize()
        self.faults: set[str] = set()
        self.stats = OnvifStats()
        self.base_url = ""  # set by `attach` from the server's address
        self._subs: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self._nonces: OrderedDict[str, None] = OrderedDict()

    # --- the camera's world ---------------------------------------------------------------------

    def now(self) -> datetime:
        """The camera's clock: real time plus its skew."""
        return datetime.now(UTC) + timedelta(seconds=self.clock_skew_s)

    @property
    def subscriptions(self) -> dict[int, Subscription]:
        """Live subscriptions by id."""
        return self._subs

    def raise_event(self, detection: str, *, channel: int = 1, active: bool = True,
                    initialized: bool = False) -> Notification | None:
        """Queue a detection's notification to every subscription (None when the family has no such topic)."""
        spec = TOPICS[self.family].get(detection)
        if spec is None:
            return None
        topic, item, source = spec
        src = {k: v.format(ch=channel, ch0=channel - 1) for k, v in source.items()}
        if detection == "line":  # a line crossing is a pulse: no state, an object id
            data = {item: str(channel)}
        else:
            data = {item: "true" if active else "false"}
        note = Notification(topic, self.now(), "Initialized" if initialized else "Changed", src, data)
        self.deliver(note)
        return note

    def deliver(self, note: Notification) -> None:
        """Queue any notification (tests use this for unknown topics and odd items)."""
        for sub in self._subs.values():
            sub.queue.append(note)
            sub.wake.set()

    def expire_all(self) -> None:
        """The `expire` fault, once: every subscription's termination time is now."""
        for sub in self._subs.values():
            sub.termination = self.now() - timedelta(seconds=1)
            sub.wake.set()

    # --- HTTP ------------------------------------------------------------------------------------

    def attach(self, app: web.Application) -> None:
        """Add this camera's routes to an aiohttp application."""
        p = self.prefix
        app.router.add_post(f"{p}/onvif/device_service", self._device)
        app.router.add_post(f"{p}/onvif/media_service", self._media)
        app.router.add_post(f"{p}/onvif/event_service", self._events)
        app.router.add_post(f"{p}/onvif/subscription/{{sid}}", self._subscription)
        app.router.add_get(f"{p}/onvif/snapshot.jpg", self._snapshot)

    def _url(self, request: web.Request, path: str) -> str:
        base = self.base_url or f"{request.scheme}://{request.host}"
        return f"{base}{self.prefix}/onvif/{path}"

    async def _read(self, request: web.Request) -> tuple[Element, Element]:
        while "silent" in self.faults:  # hang until the client gives up (or the fault is lifted)
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
        expected = base64.b64encode(hashlib.sha1(nonce + created.encode() + self.password.encode()).digest()).decode()
        when = parse_datetime(created)
        fresh = when is not None and abs((when - self.now()).total_seconds()) <= self.max_skew_s
        ok = hmac.compare_digest(user, self.username) and hmac.compare_digest(digest.strip(), expected)
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
            return web.Response(status=fault.status, body=_envelope(_fault_body(fault.code, fault.subcode, fault.reason)),
                                content_type="application/soap+xml", charset="utf-8")

    async def _device(self, request: web.Request) -> web.Response:
        def handle(root: Element, op: Element) -> tuple[str, str | None]:
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
                    f"<tt:Device><tt:XAddr>{self._url(request, 'device_service')}</tt:XAddr></tt:Device>"
                    f"<tt:Events><tt:XAddr>{self._url(request, 'event_service')}</tt:XAddr>"
                    "<tt:WSSubscriptionPolicySupport>false</tt:WSSubscriptionPolicySupport>"
                    "<tt:WSPullPointSupport>true</tt:WSPullPointSupport>"
                    "<tt:WSPausableSubscriptionManagerInterfaceSupport>false</tt:WSPausableSubscriptionManagerInterfaceSupport>"
                    "</tt:Events>"
                    f"<tt:Media><tt:XAddr>{self._url(request, 'media_service')}</tt:XAddr>"
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
                        f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{self._url(request, path)}"
                        "</tds:XAddr><tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version>"
                        "</tds:Service>"
                        for ns, path in services
                    )
                    + "</tds:GetServicesResponse>",
                    None,
                )
            if name == "GetDeviceInformation":
                return (
                    f"<tds:GetDeviceInformationResponse><tds:Manufacturer>{escape(self.manufacturer)}</tds:Manufacturer>"
                    "<tds:Model>SIM-ONVIF</tds:Model><tds:FirmwareVersion>1.0</tds:FirmwareVersion>"
                    "<tds:SerialNumber>SIM0001</tds:SerialNumber><tds:HardwareId>1</tds:HardwareId>"
                    "</tds:GetDeviceInformationResponse>",
                    None,
                )
            raise SoapFaultReply(400, "Receiver", "ter:ActionNotSupported", f"{name} is not supported")

        return await self._serve(request, handle)

    async def _media(self, request: web.Request) -> web.Response:
        def handle(root: Element, op: Element) -> tuple[str, str | None]:
            self._check_auth(root)
            name = op.tag.rpartition("}")[2]
            if name == "GetProfiles":
                profiles = "".join(
                    f'<trt:Profiles token="Profile_{ch}" fixed="true"><tt:Name>mainStream{ch}</tt:Name></trt:Profiles>'
                    for ch in range(1, self.channels + 1)
                )
                return f"<trt:GetProfilesResponse>{profiles}</trt:GetProfilesResponse>", None
            if name == "GetSnapshotUri":
                return (
                    f"<trt:GetSnapshotUriResponse><trt:MediaUri><tt:Uri>{self._url(request, 'snapshot.jpg')}</tt:Uri>"
                    "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>false"
                    "</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:GetSnapshotUriResponse>",
                    None,
                )
            raise SoapFaultReply(400, "Receiver", "ter:ActionNotSupported", f"{name} is not supported")

        return await self._serve(request, handle)

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

    async def _events(self, request: web.Request) -> web.Response:
        def handle(root: Element, op: Element) -> tuple[str, str | None]:
            self._check_auth(root)
            name = op.tag.rpartition("}")[2]
            if name != "CreatePullPointSubscription":
                raise SoapFaultReply(400, "Receiver", "ter:ActionNotSupported", f"{name} is not supported")
            termination = self._termination(op.findtext(f"{{{TEV}}}InitialTerminationTime"), 60.0)
            sub = Subscription(next(self._ids), termination)
            self._subs[sub.id] = sub
            self.stats.subscriptions += 1
            return (
                "<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference>"
                f"<wsa:Address>{self._url(request, f'subscription/{sub.id}')}</wsa:Address>"
                "</tev:SubscriptionReference>"
                f"<wsnt:CurrentTime>{_iso(self.now())}</wsnt:CurrentTime>"
                f"<wsnt:TerminationTime>{_iso(termination)}</wsnt:TerminationTime>"
                "</tev:CreatePullPointSubscriptionResponse>",
                "http://www.onvif.org/ver10/events/wsdl/EventPortType/CreatePullPointSubscriptionResponse",
            )

        return await self._serve(request, handle)

    def _live(self, sid: str) -> Subscription:
        sub = self._subs.get(int(sid)) if sid.isdigit() else None
        if sub is None:
            raise SoapFaultReply(400, "Receiver", "wsrf-rw:ResourceUnknownFault", "unknown subscription")
        if "expire" in self.faults:
            self.faults.discard("expire")
            self.expire_all()
        if sub.termination <= self.now():
            del self._subs[sub.id]
            self.stats.expired_pulls += 1
            raise SoapFaultReply(400, "Receiver", "wsrf-rw:ResourceUnknownFault", "subscription expired")
        return sub

    async def _subscription(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]

        async def handle(root: Element, op: Element) -> tuple[str, str | None]:
            self._check_auth(root)
            name = op.tag.rpartition("}")[2]
            sub = self._live(sid)
            if name == "PullMessages":
                return await self._pull(sub, op)
            if name == "Renew":
                sub.termination = self._termination(op.findtext(f"{{{WSNT}}}TerminationTime"), 60.0)
                sub.renewals += 1
                self.stats.renewals += 1
                return (
                    f"<wsnt:RenewResponse><wsnt:TerminationTime>{_iso(sub.termination)}</wsnt:TerminationTime>"
                    f"<wsnt:CurrentTime>{_iso(self.now())}</wsnt:CurrentTime></wsnt:RenewResponse>",
                    "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/RenewResponse",
                )
            if name == "Unsubscribe":
                del self._subs[sub.id]
                self.stats.unsubscribes += 1
                return "<wsnt:UnsubscribeResponse/>", "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/UnsubscribeResponse"
            raise SoapFaultReply(400, "Receiver", "ter:ActionNotSupported", f"{name} is not supported")

        if "malformed_xml" in self.faults:
            try:
                await self._read(request)
            except SoapFaultReply:
                pass
            self.faults.discard("malformed_xml")
            return web.Response(body=b'<?xml version="1.0"?><s:Envelope xmlns:s="' + SOAP.encode() + b'"><s:Body><tev:Pull',
                                content_type="application/soap+xml")
        return await self._serve(request, handle)

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
        if not sub.queue:
            sub.wake.clear()
            try:
                await asyncio.wait_for(sub.wake.wait(), min(timeout, MAX_PULL_TIMEOUT_S))
            except TimeoutError:
                pass
        if sub.id not in self._subs or sub.termination <= self.now():
            self._subs.pop(sub.id, None)
            self.stats.expired_pulls += 1
            raise SoapFaultReply(400, "Receiver", "wsrf-rw:ResourceUnknownFault", "subscription expired")
        notes = [sub.queue.popleft() for _ in range(min(limit, len(sub.queue)))]
        return (
            f"<tev:PullMessagesResponse><tev:CurrentTime>{_iso(self.now())}</tev:CurrentTime>"
            f"<tev:TerminationTime>{_iso(sub.termination)}</tev:TerminationTime>"
            + "".join(n.xml() for n in notes)
            + "</tev:PullMessagesResponse>",
            "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription/PullMessagesResponse",
        )

    async def _snapshot(self, request: web.Request) -> web.Response:
        return web.Response(body=self.picture(), content_type="image/jpeg")
