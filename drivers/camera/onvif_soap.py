"""The few ONVIF SOAP 1.2 messages the camera driver needs, built and parsed by hand. Pure: no I/O.

Why not zeep / onvif-zeep-async: see the ONVIF section of drivers/camera/README.md. In short,
the driver needs eight operations; a hand-written layer parses with defusedxml (no DTDs, no
entities, whatever the encoding), bounds every count and length, and costs no WSDL loading per
camera.

Requests carry a WS-Security UsernameToken with a PasswordDigest
(`Base64(SHA1(nonce + created + password))`), `created` taken from the camera's clock (the
caller passes the gateway time corrected by the skew measured with GetSystemDateAndTime), and
WS-Addressing `To`/`Action` headers, which subscription managers route on.

Every parse failure raises `SoapError` (malformed, refused, oversized) or `SoapFault` (the camera
answered a SOAP fault); nothing else escapes.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape, quoteattr

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "wsnt": "http://docs.oasis-open.org/wsn/b-2",
    "tev": "http://www.onvif.org/ver10/events/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tns1": "http://www.onvif.org/ver10/topics",
}
PASSWORD_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest"
)
NONCE_BASE64 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
#: Topic namespaces whose prefix is rewritten to a canonical one, whatever prefix a camera declares.
CANONICAL_TOPIC_PREFIXES: dict[str, str] = {NS["tns1"]: "tns1"}

#: Bounds on what one response may hold; past them the response is refused, not truncated.
MAX_RESPONSE_BYTES = 1 << 20
MAX_NOTIFICATIONS = 500
MAX_ITEMS = 32
MAX_TEXT = 256

EVENTS_ACTIONS = {
    "CreatePullPointSubscription": "http://www.onvif.org/ver10/events/wsdl/EventPortType/CreatePullPointSubscriptionRequest",
    "PullMessages": "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription/PullMessagesRequest",
    "Renew": "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/RenewRequest",
    "Unsubscribe": "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/UnsubscribeRequest",
}


class SoapError(Exception):
    """A response the driver cannot use: not XML, a DTD, too large, or not the expected shape."""


class SoapFault(SoapError):
    """The device answered with a SOAP fault; `code` and `subcode` are local names (e.g. `NotAuthorized`)."""

    def __init__(self, code: str, subcode: str, reason: str) -> None:
        super().__init__(f"SOAP fault {code}/{subcode}: {reason}")
        self.code = code
        self.subcode = subcode
        self.reason = reason

    @property
    def auth(self) -> bool:
        """True for the faults cameras send on a bad or expired UsernameToken."""
        return self.subcode in {"NotAuthorized", "FailedAuthentication", "InvalidSecurityToken"}

    @property
    def unknown_subscription(self) -> bool:
        """True when the subscription no longer exists (expired or unsubscribed)."""
        return self.subcode in {"ResourceUnknownFault", "UnableToDestroySubscriptionFault"} or (
            "ResourceUnknown" in self.reason
        )


# --- building requests --------------------------------------------------------------------------


def password_digest(nonce: bytes, created: str, password: str) -> str:
    """WS-Security PasswordDigest: Base64(SHA1(nonce + created + password))."""
    return base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest()).decode()


def iso_z(when: datetime) -> str:
    """UTC `YYYY-MM-DDThh:mm:ssZ` (some firmware refuses `+00:00` in `Created`)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def security_header(user: str, password: str, *, created: datetime, nonce: bytes) -> str:
    """A `wsse:Security` header with a UsernameToken; `created` must be the camera's time."""
    stamp = iso_z(created)
    return (
        f'<wsse:Security xmlns:wsse="{NS["wsse"]}" xmlns:wsu="{NS["wsu"]}" s:mustUnderstand="true">'
        "<wsse:UsernameToken>"
        f"<wsse:Username>{escape(user)}</wsse:Username>"
        f'<wsse:Password Type="{PASSWORD_DIGEST}">{password_digest(nonce, stamp, password)}</wsse:Password>'
        f'<wsse:Nonce EncodingType="{NONCE_BASE64}">{base64.b64encode(nonce).decode()}</wsse:Nonce>'
        f"<wsu:Created>{stamp}</wsu:Created>"
        "</wsse:UsernameToken></wsse:Security>"
    )


def envelope(body: str, *, security: str = "", to: str | None = None, action: str | None = None) -> bytes:
    """A SOAP 1.2 envelope around `body` (already XML), with optional security and addressing headers."""
    headers = security
    if action:
        headers += f"<wsa:Action>{escape(action)}</wsa:Action>"
    if to:
        headers += f"<wsa:To>{escape(to)}</wsa:To>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:wsa="{NS["wsa"]}" xmlns:tds="{NS["tds"]}" '
        f'xmlns:trt="{NS["trt"]}" xmlns:tev="{NS["tev"]}" xmlns:wsnt="{NS["wsnt"]}" xmlns:tt="{NS["tt"]}">'
        f"<s:Header>{headers}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def duration(seconds: float) -> str:
    """An xs:duration such as `PT60S` (whole seconds, at least 1)."""
    return f"PT{max(1, round(seconds))}S"


GET_SYSTEM_DATE_AND_TIME = "<tds:GetSystemDateAndTime/>"
GET_CAPABILITIES = "<tds:GetCapabilities><tds:Category>All</tds:Category></tds:GetCapabilities>"
GET_PROFILES = "<trt:GetProfiles/>"
UNSUBSCRIBE = "<wsnt:Unsubscribe/>"


def create_pull_point_subscription(termination_s: float) -> str:
    """Body of CreatePullPointSubscription with a relative initial termination time."""
    return (
        "<tev:CreatePullPointSubscription>"
        f"<tev:InitialTerminationTime>{duration(termination_s)}</tev:InitialTerminationTime>"
        "</tev:CreatePullPointSubscription>"
    )


def pull_messages(timeout_s: float, limit: int) -> str:
    """Body of PullMessages: wait at most `timeout_s` for up to `limit` messages."""
    return (
        f"<tev:PullMessages><tev:Timeout>{duration(timeout_s)}</tev:Timeout>"
        f"<tev:MessageLimit>{int(limit)}</tev:MessageLimit></tev:PullMessages>"
    )


def renew(termination_s: float) -> str:
    """Body of Renew with a relative termination time."""
    return f"<wsnt:Renew><wsnt:TerminationTime>{duration(termination_s)}</wsnt:TerminationTime></wsnt:Renew>"


def get_snapshot_uri(profile: str) -> str:
    """Body of media GetSnapshotUri for one profile token."""
    return f"<trt:GetSnapshotUri><trt:ProfileToken>{escape(profile)}</trt:ProfileToken></trt:GetSnapshotUri>"


# --- parsing responses --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed SOAP envelope: its body's first child, and every namespace prefix it declared."""

    body: Element
    prefixes: dict[str, str] = field(default_factory=dict)  # prefix -> namespace URI


def _q(prefix: str, local: str) -> str:
    return f"{{{NS[prefix]}}}{local}"


def local(tag: str) -> str:
    """Local part of a `{ns}local` tag."""
    return tag.rpartition("}")[2]


def parse(data: bytes, *, max_bytes: int = MAX_RESPONSE_BYTES) -> Document:
    """Parse a SOAP response safely; raise `SoapFault` for a fault and `SoapError` for anything unusable."""
    if len(data) > max_bytes:
        raise SoapError(f"response of {len(data)} bytes exceeds {max_bytes}")
    prefixes: dict[str, str] = {}
    root: Element | None = None
    try:
        for event, item in SafeElementTree.iterparse(
            BytesIO(data), events=("start-ns", "end"), forbid_dtd=True, forbid_entities=True, forbid_external=True
        ):
            if event == "start-ns":
                prefix, uri = item
                prefixes.setdefault(prefix, uri)
            else:
                root = item
    except (ParseError, DefusedXmlException, ValueError, UnicodeError) as exc:
        raise SoapError(f"malformed XML: {type(exc).__name__}: {str(exc)[:120]}") from exc
    if root is None or root.tag != _q("s", "Envelope"):
        raise SoapError("not a SOAP 1.2 envelope")
    body = root.find(_q("s", "Body"))
    if body is None or len(body) == 0:
        raise SoapError("SOAP envelope without a body")
    first = body[0]
    if first.tag == _q("s", "Fault"):
        raise _fault(first)
    return Document(first, prefixes)


def _fault(fault: Element) -> SoapFault:
    code = fault.findtext(f"{_q('s', 'Code')}/{_q('s', 'Value')}") or ""
    subcode = ""
    node = fault.find(f"{_q('s', 'Code')}/{_q('s', 'Subcode')}")
    while node is not None:  # innermost subcode is the most specific
        subcode = node.findtext(_q("s", "Value")) or subcode
        node = node.find(_q("s", "Subcode"))
    reason = fault.findtext(f"{_q('s', 'Reason')}/{_q('s', 'Text')}") or ""
    return SoapFault(code.rpartition(":")[2][:MAX_TEXT], subcode.rpartition(":")[2][:MAX_TEXT], reason[:MAX_TEXT])


def _expect(doc: Document, prefix: str, name: str) -> Element:
    if doc.body.tag != _q(prefix, name):
        raise SoapError(f"expected {prefix}:{name}, got {local(doc.body.tag)[:MAX_TEXT]}")
    return doc.body


_DT = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})?$")


def parse_time(text: str | None) -> datetime | None:
    """An xs:dateTime as an aware UTC datetime; None when absent or unparsable (never raises)."""
    if not text:
        return None
    m = _DT.match(text.strip()[:64])
    if not m:
        return None
    try:
        frac = m.group(7) or ""
        micro = int((frac[1:] + "000000")[:6]) if frac else 0
        y, mo, d, h, mi, sec = (int(m.group(i)) for i in range(1, 7))
        when = datetime(y, mo, d, h, mi, sec, micro, tzinfo=UTC)
        tz = m.group(8)
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            when -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        return when
    except (ValueError, OverflowError):
        return None


def parse_system_date_and_time(doc: Document) -> datetime:
    """The camera's UTC clock from a GetSystemDateAndTimeResponse."""
    resp = _expect(doc, "tds", "GetSystemDateAndTimeResponse")
    utc = resp.find(f"{_q('tds', 'SystemDateAndTime')}/{_q('tt', 'UTCDateTime')}")
    if utc is None:
        raise SoapError("GetSystemDateAndTime without UTCDateTime")
    try:
        d = utc.find(_q("tt", "Date"))
        t = utc.find(_q("tt", "Time"))
        if d is None or t is None:
            raise SoapError("UTCDateTime without Date or Time")
        values = [
            int(x.findtext(_q("tt", name)) or "")
            for x, name in ((d, "Year"), (d, "Month"), (d, "Day"), (t, "Hour"), (t, "Minute"), (t, "Second"))
        ]
        y, mo, dd, h, mi, sec = values
        return datetime(y, mo, dd, h, mi, sec, tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise SoapError(f"bad UTCDateTime: {exc}") from exc


def parse_capabilities(doc: Document) -> dict[str, str]:
    """Service addresses by category (`events`, `media`, `device`) from a GetCapabilitiesResponse."""
    resp = _expect(doc, "tds", "GetCapabilitiesResponse")
    caps = resp.find(_q("tds", "Capabilities"))
    found: dict[str, str] = {}
    for name in ("Device", "Events", "Media"):
        xaddr = caps.findtext(f"{_q('tt', name)}/{_q('tt', 'XAddr')}") if caps is not None else None
        if xaddr:
            found[name.lower()] = xaddr.strip()[:1024]
    return found


@dataclass(frozen=True, slots=True)
class Subscription:
    """A PullPoint subscription: its manager's address and the camera's view of its lifetime."""

    address: str
    current: datetime | None
    termination: datetime | None


def parse_subscription(doc: Document) -> Subscription:
    """A CreatePullPointSubscriptionResponse."""
    resp = _expect(doc, "tev", "CreatePullPointSubscriptionResponse")
    address = resp.findtext(f"{_q('tev', 'SubscriptionReference')}/{_q('wsa', 'Address')}")
    if not address or not address.strip():
        raise SoapError("subscription without an address")
    return Subscription(
        address.strip()[:1024],
        parse_time(resp.findtext(_q("wsnt", "CurrentTime"))),
        parse_time(resp.findtext(_q("wsnt", "TerminationTime"))),
    )


def parse_renew(doc: Document) -> tuple[datetime | None, datetime | None]:
    """(current time, termination time) from a RenewResponse."""
    resp = _expect(doc, "wsnt", "RenewResponse")
    current = parse_time(resp.findtext(_q("wsnt", "CurrentTime")))
    return current, parse_time(resp.findtext(_q("wsnt", "TerminationTime")))


def parse_profiles(doc: Document) -> list[str]:
    """Media profile tokens, in the camera's order."""
    resp = _expect(doc, "trt", "GetProfilesResponse")
    return [p.get("token", "")[:MAX_TEXT] for p in resp.findall(_q("trt", "Profiles"))[:MAX_ITEMS] if p.get("token")]


def parse_snapshot_uri(doc: Document) -> str:
    """The snapshot URL of a GetSnapshotUriResponse."""
    resp = _expect(doc, "trt", "GetSnapshotUriResponse")
    uri = resp.findtext(f"{_q('trt', 'MediaUri')}/{_q('tt', 'Uri')}")
    if not uri or not uri.strip():
        raise SoapError("GetSnapshotUri without a Uri")
    return uri.strip()[:1024]


def canonical_topic(text: str, prefixes: dict[str, str], extra: dict[str, str] | None = None) -> str:
    """A topic expression with each prefix replaced by the canonical one for its namespace.

    Cameras may bind the ONVIF topic namespace to any prefix; maps are written with `tns1:` (and
    with the prefixes a map declares for vendor namespaces in `extra`, URI -> prefix).
    """
    canon = {**CANONICAL_TOPIC_PREFIXES, **(extra or {})}

    def one(step: str) -> str:
        prefix, sep, rest = step.partition(":")
        if not sep:
            return step
        uri = prefixes.get(prefix)
        return f"{canon.get(uri, prefix) if uri else prefix}:{rest}"

    return "/".join(one(step) for step in text.strip()[:MAX_TEXT].split("/"))


def _items(parent: Element | None) -> dict[str, str]:
    items: dict[str, str] = {}
    if parent is None:
        return items
    for item in parent.findall(_q("tt", "SimpleItem"))[:MAX_ITEMS]:
        name = item.get("Name")
        if name:
            items[name[:MAX_TEXT]] = (item.get("Value") or "")[:MAX_TEXT]
    return items


def parse_pull_messages(doc: Document, *, vendor_prefixes: dict[str, str] | None = None) -> dict[str, Any]:
    """A PullMessagesResponse as JSON-able data (what the driver records and decodes).

    `{"current": iso|None, "termination": iso|None, "messages": [{"topic", "utc", "op",
    "source": {...}, "key": {...}, "data": {...}}]}`; a notification without a topic or a
    `tt:Message` is kept with what it has (the decoder counts it as unknown).
    """
    resp = _expect(doc, "tev", "PullMessagesResponse")
    notes = resp.findall(_q("wsnt", "NotificationMessage"))
    if len(notes) > MAX_NOTIFICATIONS:
        raise SoapError(f"{len(notes)} notifications in one response exceeds {MAX_NOTIFICATIONS}")
    messages: list[dict[str, Any]] = []
    for note in notes:
        topic = canonical_topic(note.findtext(_q("wsnt", "Topic")) or "", doc.prefixes, vendor_prefixes)
        msg = note.find(f"{_q('wsnt', 'Message')}/{_q('tt', 'Message')}")
        entry: dict[str, Any] = {"topic": topic}
        if msg is not None:
            entry["utc"] = (msg.get("UtcTime") or "")[:64] or None
            entry["op"] = (msg.get("PropertyOperation") or "")[:32] or None
            entry["source"] = _items(msg.find(_q("tt", "Source")))
            entry["key"] = _items(msg.find(_q("tt", "Key")))
            entry["data"] = _items(msg.find(_q("tt", "Data")))
        messages.append(entry)
    current = parse_time(resp.findtext(_q("tev", "CurrentTime")))
    termination = parse_time(resp.findtext(_q("tev", "TerminationTime")))
    return {
        "current": current.isoformat() if current else None,
        "termination": termination.isoformat() if termination else None,
        "messages": messages,
    }


def attr(value: str) -> str:
    """An XML attribute value, quoted and escaped (for the simulator and tests)."""
    return quoteattr(value)
