"""Wire formats of plate cameras that push over HTTP. Pure: bytes in, observations out.

Three formats are understood, each driven by the maps in `vendors.yaml`:

* Zhenshi-style JSON: `AlarmInfoPlate{serialno, channel, result.PlateResult{...}}` (plate
  reads, images as base64), `AlarmGioIn{result.TriggerResult{source, value}}` (GPIO inputs),
  and the heartbeat, a form (`multipart/form-data`, or urlencoded on some firmware) with
  `device_name, ipaddr, port, user_name, pass_wd, serialno, channel_num`. The reply
  `Response_AlarmInfoPlate{info: ok|no, plateid}` opens or holds the barrier; for a record
  buffered while the server was unreachable (`isoffline: 1`) it also carries
  `ContinuePushOffline{plateid, continue: 1}`, without which the camera stops draining its buffer.
  Plate-type codes differ by firmware: see `zhenshi_types.yaml`.
* Hikvision-style ANPR: `EventNotificationAlert` as XML or JSON, either bare or as a part of a
  `multipart/form-data` push with JPEG parts (`anpr.xml`/`anpr.json`, `licensePlatePicture.jpg`);
  `videoloss`/`inactive` is its heartbeat.
* Dahua ITSAPI: JSON `{"Picture": {"Plate": {...}, "SnapInfo": {...}, "CutoutPic": ...}}`
  posted to the fixed path `/NotificationInfo/TollgateInfo`, and keep-alives to
  `/NotificationInfo/KeepAlive`; both answered `{"Result": true}`.

A plate text may carry a colour word in front (`蓝苏A8HK52`); `plates.check_plate` strips it.

Every malformed input raises `PushRejected` with an HTTP status and a reason a camera
installer can act on; nothing else escapes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import parse_qsl
from xml.etree import ElementTree

import yaml
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree

from drivers.http_plate_reader.plates import ConfidenceScale
from schemas.lpr import PlateColor, VehicleDirection

Vendor = Literal["zhenshi", "hikvision", "dahua"]
#: What a vendor's direction field can mean: entry/exit where the camera knows, or only the
#: motion relative to the camera (forward/reverse), which the lane config turns into entry/exit.
Heading = Literal["entry", "exit", "unknown", "forward", "reverse"]
MAPS_FILE = Path(__file__).with_name("vendors.yaml")
_COLORS: frozenset[str] = frozenset({"blue", "yellow", "white", "black", "green", "yellow_green", "unknown"})
_HEADINGS: frozenset[str] = frozenset({"entry", "exit", "unknown", "forward", "reverse"})
#: Dahua's fixed ITSAPI paths (appended to a camera's `path`, if it has one).
DAHUA_TOLLGATE = "/NotificationInfo/TollgateInfo"
DAHUA_KEEPALIVE = "/NotificationInfo/KeepAlive"


class PushRejected(Exception):
    """A push the gateway cannot use; `status` and `reason` go back to the camera."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        reason = reason[:200]  # reasons may quote the input: keep them short
        super().__init__(f"{error}: {reason}")
        self.status = status
        self.error = error
        self.reason = reason


@dataclass(frozen=True)
class VendorMap:
    """One vendor's code tables, loaded from `vendors.yaml`."""

    confidence_scale: ConfidenceScale
    colors: dict[str, PlateColor]
    types: dict[str, str | None]
    directions: dict[str, Heading]
    #: Versioned plate-type tables (Zhenshi firmware generations); `types` is the default one.
    type_tables: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def color(self, code: object) -> PlateColor | None:
        """Courtyard colour for a vendor code; unmapped codes become 'unknown', absent ones None."""
        if code is None or code == "":
            return None
        return self.colors.get(str(code).strip().lower(), "unknown")

    def plate_type(self, code: object, table: str | None = None) -> str | None:
        """Courtyard plate type token for a vendor code: None when absent, 'unknown' when unmapped.

        `table` names one of `type_tables` (a camera's `type_table:`); the raw code is kept by
        the caller (raw_code), so an unmapped code loses nothing.
        """
        if code is None or code == "":
            return None
        types = self.type_tables.get(table, self.types) if table else self.types
        return types.get(str(code).strip().lower()) or "unknown"

    def direction(self, code: object) -> Heading | None:
        """What the vendor's direction field says: entry/exit, or forward/reverse motion."""
        if code is None:
            return None
        return self.directions.get(str(code).strip().lower())


def resolve_direction(heading: Heading | None, forward_is: VehicleDirection | None) -> VehicleDirection | None:
    """Entry/exit of a read: forward/reverse motion means something only with the lane's `forward_is`."""
    if heading in ("forward", "reverse"):
        if forward_is in ("entry", "exit"):
            other: VehicleDirection = "exit" if forward_is == "entry" else "entry"
            return forward_is if heading == "forward" else other
        return "unknown"
    return cast(VehicleDirection | None, heading)


def _lower_keys(table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        return {}
    return {str(k).strip().lower(): v for k, v in table.items()}


def parse_type_tables(doc: Any, where: str) -> tuple[str, dict[str, dict[str, str | None]]]:
    """Validate a versioned type-table document `{default: name, tables: {name: {code: token}}}`."""
    if not isinstance(doc, dict) or not isinstance(doc.get("tables"), dict) or not doc["tables"]:
        raise ValueError(f"{where}: expected a mapping with `default` and a non-empty `tables`")
    tables: dict[str, dict[str, str | None]] = {}
    for name, table in doc["tables"].items():
        if not isinstance(table, dict):
            raise ValueError(f"{where}: tables.{name}: must be a mapping of code -> plate type")
        tables[str(name)] = {k: (None if v is None else str(v)) for k, v in _lower_keys(table).items()}
    default = str(doc.get("default", ""))
    if default not in tables:
        raise ValueError(f"{where}: default {default!r} is not one of the tables {sorted(tables)}")
    return default, tables


def parse_maps(doc: Any, base: Path | None = None) -> dict[str, VendorMap]:
    """Validate the YAML document of vendor maps (raises ValueError naming the bad entry).

    `type_tables: <file>` (relative to `base`) loads versioned plate-type tables; the file's
    default table becomes `types`.
    """
    if not isinstance(doc, dict):
        raise ValueError("vendor maps: top level must be a mapping of vendor -> tables")
    maps: dict[str, VendorMap] = {}
    for vendor, body in doc.items():
        if not isinstance(body, dict):
            raise ValueError(f"vendor maps: {vendor}: must be a mapping")
        scale = body.get("confidence_scale", "auto")
        if scale not in ("percent", "unit", "auto"):
            raise ValueError(f"vendor maps: {vendor}.confidence_scale: {scale!r} is not percent|unit|auto")
        colors = _lower_keys(body.get("colors"))
        for key, value in colors.items():
            if value not in _COLORS:
                raise ValueError(f"vendor maps: {vendor}.colors.{key}: {value!r} is not one of {sorted(_COLORS)}")
        directions = _lower_keys(body.get("directions"))
        for key, value in directions.items():
            if value not in _HEADINGS:
                raise ValueError(f"vendor maps: {vendor}.directions.{key}: {value!r} is not one of {sorted(_HEADINGS)}")
        types = {k: (None if v is None else str(v)) for k, v in _lower_keys(body.get("types")).items()}
        tables: dict[str, dict[str, str | None]] = {}
        if body.get("type_tables") is not None:
            source = (base or MAPS_FILE.parent) / str(body["type_tables"])
            try:
                text = source.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"vendor maps: {vendor}.type_tables: cannot read {source}: {exc}") from None
            default, tables = parse_type_tables(yaml.safe_load(text), f"{source.name}")
            types = tables[default]
        maps[str(vendor)] = VendorMap(scale, colors, types, cast(dict[str, Heading], directions), tables)
    return maps


@cache
def vendor_maps() -> dict[str, VendorMap]:
    """The built-in vendor maps."""
    return parse_maps(yaml.safe_load(MAPS_FILE.read_text(encoding="utf-8")), MAPS_FILE.parent)


@dataclass(frozen=True)
class Image:
    """One picture carried by a push."""

    name: str
    data: bytes


@dataclass(frozen=True)
class PlateObservation:
    """A plate read as the camera reported it, before validation."""

    vendor: Vendor
    license: object  # str, or bytes when the vendor sends them; decoded by plates.check_plate
    color_code: object = None
    type_code: object = None
    confidence: object = None
    direction_code: object = None
    lane: str | None = None
    seq: int | None = None
    device_time: datetime | None = None
    serial: str | None = None
    is_offline: bool | None = None
    is_fake: bool | None = None
    images: tuple[Image, ...] = ()
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Heartbeat:
    """A keep-alive from the camera."""

    vendor: Vendor
    serial: str | None = None


@dataclass(frozen=True)
class IoTrigger:
    """A GPIO input changed (Zhenshi AlarmGioIn): barrier loop, ground sensor, button."""

    vendor: Vendor
    source: int
    value: int
    serial: str | None = None


Observation = PlateObservation | Heartbeat | IoTrigger


# ---------------------------------------------------------------- shared helpers


def text_of(body: bytes) -> tuple[str, tuple[str, ...]]:
    """Body as text: UTF-8, else GBK (older firmware); rejects anything else."""
    try:
        return body.decode("utf-8-sig"), ()
    except UnicodeDecodeError:
        pass
    try:
        return body.decode("gbk"), ("body_gbk",)
    except UnicodeDecodeError:
        raise PushRejected(400, "bad_encoding", "body is neither UTF-8 nor GBK text") from None


_INT = re.compile(r"-?[0-9]{1,18}")
_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,32}")


def token(value: object) -> str | None:
    """A short identifier (lane, code) from untrusted input, or None: never free text in events."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if abs(value) < 10**12 else None
    if isinstance(value, str) and _TOKEN.fullmatch(value.strip()):
        return value.strip()
    return None


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_flag(value: object) -> bool | None:
    number = _as_int(value)
    if number is not None:
        return number != 0
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


# ---------------------------------------------------------------- Zhenshi JSON


def _zhenshi_time(stamp: object) -> datetime | None:
    if not isinstance(stamp, dict):
        return None
    timeval = stamp.get("Timeval")
    if not isinstance(timeval, dict):
        return None
    sec, usec = _as_int(timeval.get("sec")), _as_int(timeval.get("usec")) or 0
    if sec is None or not 0 < sec < 2**33 or not 0 <= usec < 1_000_000:
        return None
    return datetime.fromtimestamp(sec + usec / 1e6, tz=UTC)


def _b64_image(name: str, value: object, notes: list[str]) -> Image | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return Image(name, base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        notes.append(f"bad_base64_{name}")
        return None


#: Fields of the documented Zhenshi heartbeat form; any of them marks a form as a heartbeat.
_HEARTBEAT_FIELDS = frozenset({"device_name", "ipaddr", "serialno", "channel_num"})
MAX_FORM_FIELDS = 32


def _form_fields(body: bytes, content_type: str) -> dict[str, str] | None:
    """Fields of a form body (multipart or urlencoded), None when the body is not a form."""
    ctype = content_type.lower()
    if ctype.startswith("multipart/"):
        return {p.name.strip(): text_of(p.data)[0].strip() for p in split_multipart(body, content_type)}
    stripped = body.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()
    # Urlencoded, declared so or not (some firmware sends it as text/plain or with no type at all).
    if ctype.startswith("application/x-www-form-urlencoded") or (
        stripped[:1] not in (b"{", b"[", b"<", b"") and b"=" in stripped[:64]
    ):
        text, _ = text_of(body)
        try:
            pairs = parse_qsl(text.strip(), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except ValueError:
            raise PushRejected(400, "bad_form", f"more than {MAX_FORM_FIELDS} form fields") from None
        return {k.strip(): v.strip() for k, v in pairs}
    return None


def _zhenshi_form(fields: dict[str, str]) -> Heartbeat:
    if not _HEARTBEAT_FIELDS & set(fields):
        names = ", ".join(sorted(fields)[:5]) or "none"
        raise PushRejected(
            422, "unknown_message", f"form without device_name/serialno is not a heartbeat; fields: {names}"
        )
    serial = fields.get("serialno")
    return Heartbeat("zhenshi", serial or None)


def decode_zhenshi(body: bytes, content_type: str = "application/json") -> Observation:
    """Decode one Zhenshi-style push: plate read or GPIO input (JSON), heartbeat (form or JSON)."""
    fields = _form_fields(body, content_type)
    if fields is not None:
        return _zhenshi_form(fields)
    text, steps = text_of(body)
    notes = list(steps)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PushRejected(400, "malformed_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise PushRejected(400, "malformed_json", "nesting too deep") from None
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise PushRejected(400, "malformed_json", str(exc)[:200]) from None
    if not isinstance(doc, dict):
        raise PushRejected(400, "bad_payload", "top level must be a JSON object")
    if "heartbeat" in doc or "Heartbeat" in doc or doc.get("type") == "heartbeat":
        serial = doc.get("serialno")
        return Heartbeat("zhenshi", serial if isinstance(serial, str) else None)
    if "AlarmGioIn" in doc:
        return _zhenshi_gio(doc["AlarmGioIn"])
    alarm = doc.get("AlarmInfoPlate")
    if not isinstance(alarm, dict):
        keys = ", ".join(sorted(str(k) for k in doc)[:5]) or "none"
        raise PushRejected(
            422,
            "unknown_message",
            f"expected AlarmInfoPlate, AlarmGioIn or heartbeat; got keys: {keys}",
        )
    return _zhenshi_plate(alarm, notes)


def _zhenshi_plate(alarm: dict[str, Any], notes: list[str]) -> PlateObservation:
    """`AlarmInfoPlate`: one read, with its pictures (base64) and the camera's record number."""
    result = alarm.get("result")
    plate = result.get("PlateResult") if isinstance(result, dict) else None
    if not isinstance(plate, dict):
        raise PushRejected(422, "bad_payload", "AlarmInfoPlate.result.PlateResult missing or not an object")
    if "license" not in plate:
        raise PushRejected(422, "bad_payload", "PlateResult.license missing")
    serial = alarm.get("serialno")
    channel = alarm.get("channel")
    images = [
        img
        for img in (
            _b64_image("full", plate.get("imageFile"), notes),
            _b64_image("plate", plate.get("imageFragmentFile"), notes),
        )
        if img is not None
    ]
    return PlateObservation(
        vendor="zhenshi",
        license=plate.get("license"),
        color_code=plate.get("colorType"),
        type_code=plate.get("type"),
        confidence=plate.get("confidence"),
        direction_code=plate.get("direction"),
        lane=token(channel),
        seq=_as_int(plate.get("plateid")),
        device_time=_zhenshi_time(plate.get("timeStamp")),
        serial=serial if isinstance(serial, str) else None,
        is_offline=_as_flag(plate.get("isoffline")),
        is_fake=_as_flag(plate.get("is_fake_plate")),
        images=tuple(images),
        notes=tuple(notes),
    )


def _zhenshi_gio(alarm: object) -> IoTrigger:
    result = alarm.get("result") if isinstance(alarm, dict) else None
    trigger = result.get("TriggerResult") if isinstance(result, dict) else None
    if not isinstance(trigger, dict):
        raise PushRejected(422, "bad_payload", "AlarmGioIn.result.TriggerResult missing or not an object")
    source, value = _as_int(trigger.get("source")), _as_int(trigger.get("value"))
    if source is None or value is None or source < 0:
        raise PushRejected(422, "bad_payload", "TriggerResult.source and .value must be integers")
    serial = alarm.get("serialno") if isinstance(alarm, dict) else None
    return IoTrigger("zhenshi", source, value, serial if isinstance(serial, str) else None)


def zhenshi_reply(open_gate: bool, plateid: int | None = None, *, offline: bool = False) -> dict[str, Any]:
    """The reply to a plate read: opens (`ok`) or holds (`no`) the barrier, echoes `plateid`.

    For a buffered record (`isoffline: 1`) the camera sends the next one only when the reply
    carries `ContinuePushOffline{plateid, continue: 1}` for this record.
    """
    body: dict[str, Any] = {"info": "ok" if open_gate else "no"}
    if plateid is not None:
        body["plateid"] = plateid
        if offline:
            body["ContinuePushOffline"] = {"plateid": plateid, "continue": 1}
    return {"Response_AlarmInfoPlate": body}


ZHENSHI_HEARTBEAT_REPLY: dict[str, Any] = {"status": "ok"}


# ---------------------------------------------------------------- Hikvision ANPR


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_DISPOSITION_NAME = re.compile(r'name="([^"]*)"', re.IGNORECASE)
_DISPOSITION_FILE = re.compile(r'filename="([^"]*)"', re.IGNORECASE)
MAX_PARTS = 16


@dataclass(frozen=True)
class Part:
    """One part of a multipart body."""

    name: str
    content_type: str
    data: bytes


def split_multipart(body: bytes, content_type: str) -> list[Part]:
    """Split a multipart body into parts (RFC 2046), strictly: malformed bodies are rejected."""
    match = _BOUNDARY.search(content_type)
    if not match:
        raise PushRejected(400, "bad_multipart", "Content-Type has no boundary parameter")
    delimiter = b"--" + match.group(1).strip().encode("latin-1", "replace")
    chunks = body.split(delimiter)
    if len(chunks) < 3:
        raise PushRejected(400, "bad_multipart", "no parts found for the declared boundary")
    if not chunks[-1].startswith(b"--"):
        raise PushRejected(400, "bad_multipart", "closing boundary missing (body truncated?)")
    parts: list[Part] = []
    for raw in chunks[1:-1]:
        if len(parts) >= MAX_PARTS:
            raise PushRejected(400, "bad_multipart", f"more than {MAX_PARTS} parts")
        chunk = raw.removeprefix(b"\r\n").removesuffix(b"\r\n")
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise PushRejected(400, "bad_multipart", "part without a blank line after its headers")
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        named = _DISPOSITION_NAME.search(disposition) or _DISPOSITION_FILE.search(disposition)
        parts.append(Part(named.group(1) if named else "", headers.get("content-type", "").lower(), data))
    return parts


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_xml(data: bytes) -> ElementTree.Element:
    # defusedxml refuses DTDs and entities whatever the document's encoding (a byte search
    # for "<!DOCTYPE" misses UTF-16).
    try:
        root: ElementTree.Element = SafeElementTree.fromstring(data, forbid_dtd=True)
        return root
    except DefusedXmlException as exc:
        raise PushRejected(400, "bad_xml", f"DTDs and entities are not accepted ({type(exc).__name__})") from None
    except ElementTree.ParseError as exc:
        raise PushRejected(400, "malformed_xml", str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise PushRejected(400, "malformed_xml", type(exc).__name__) from None


def _child_text(element: ElementTree.Element | None, name: str) -> str | None:
    if element is None:
        return None
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return None


def _child(element: ElementTree.Element, name: str) -> ElementTree.Element | None:
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _iso_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _is_json_part(part: Part) -> bool:
    return "json" in part.content_type or part.name.lower().endswith(".json") or part.data.lstrip()[:1] == b"{"


def _is_xml_part(part: Part) -> bool:
    return part.name.lower().endswith(".xml") or "xml" in part.content_type or part.data.lstrip()[:1] == b"<"


def decode_hikvision(body: bytes, content_type: str) -> Observation:
    """Decode one Hikvision-style ANPR push: XML or JSON alert, bare or in a multipart with JPEGs."""
    images: list[Image] = []
    if content_type.lower().startswith("multipart/"):
        parts = split_multipart(body, content_type)
        alerts = [p for p in parts if not p.data.startswith(b"\xff\xd8") and (_is_xml_part(p) or _is_json_part(p))]
        if not alerts:
            raise PushRejected(422, "bad_payload", "multipart push has no XML or JSON part (anpr.xml / anpr.json)")
        alert = alerts[0]
        for part in parts:
            if part is not alert and part.data:
                if not part.data.startswith(b"\xff\xd8"):
                    raise PushRejected(422, "bad_image", f"part {part.name or '?'} is not a JPEG")
                images.append(Image(part.name.rsplit(".", 1)[0] or "image", part.data))
        document, is_json = alert.data, _is_json_part(alert) and not _is_xml_part(alert)
    else:
        document = body
        is_json = "json" in content_type.lower() or body.lstrip()[:1] == b"{"
    if is_json:
        return _hikvision_json(document, tuple(images))
    root = _parse_xml(document)
    if _local(root.tag) != "EventNotificationAlert":
        raise PushRejected(422, "unknown_message", f"expected EventNotificationAlert, got {_local(root.tag)}")
    anpr = _child(root, "ANPR")
    return _hikvision_alert(
        lambda name: _child_text(root, name),
        None if anpr is None else (lambda name: _child_text(anpr, name)),
        tuple(images),
    )


def _json_text(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None or isinstance(value, dict | list):
        return None
    return str(value).strip()


def _hikvision_json(document: bytes, images: tuple[Image, ...]) -> Observation:
    text, _ = text_of(document)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PushRejected(400, "malformed_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (RecursionError, ValueError) as exc:
        raise PushRejected(400, "malformed_json", type(exc).__name__) from None
    if isinstance(doc, dict) and isinstance(doc.get("EventNotificationAlert"), dict):
        doc = doc["EventNotificationAlert"]
    if not isinstance(doc, dict) or "eventType" not in doc:
        raise PushRejected(422, "unknown_message", "expected a JSON EventNotificationAlert (with eventType)")
    anpr = doc.get("ANPR")
    return _hikvision_alert(
        lambda name: _json_text(doc, name),
        (lambda name: _json_text(anpr, name)) if isinstance(anpr, dict) else None,
        images,
    )


def _hikvision_alert(
    root: Any,
    anpr: Any,
    images: tuple[Image, ...],
) -> Observation:
    """Common to the XML and JSON alert: `root(name)` and `anpr(name)` read a field's text."""
    event_type = (root("eventType") or "").lower()
    serial = root("macAddress") or root("ipAddress")
    if event_type == "videoloss" and (root("eventState") or "").lower() == "inactive":
        return Heartbeat("hikvision", serial)
    if event_type != "anpr" or anpr is None:
        raise PushRejected(422, "unknown_message", f"eventType {event_type or '?'} carries no ANPR block")
    plate = anpr("licensePlate")
    if plate is None:
        raise PushRejected(422, "bad_payload", "ANPR.licensePlate missing")
    return PlateObservation(
        vendor="hikvision",
        license=plate,
        color_code=anpr("plateColor"),
        type_code=anpr("plateType"),
        confidence=anpr("confidenceLevel"),
        direction_code=anpr("direction"),
        lane=token(anpr("laneNo") or anpr("line")),
        seq=_as_int(root("activePostCount")),
        device_time=_iso_time(root("dateTime")),
        serial=serial,
        images=images,
    )


# ---------------------------------------------------------------- Dahua ITSAPI


def _dahua_time(text: object) -> datetime | None:
    """ITSAPI times are camera-local without a zone ('2026-05-13 14:32:15.120'): trusted only with one."""
    return _iso_time(text.replace(" ", "T", 1)) if isinstance(text, str) else None


def decode_dahua(body: bytes, path: str) -> Observation:
    """Decode one Dahua ITSAPI push: TollgateInfo (plate read) or KeepAlive, told apart by the path."""
    keepalive = path.endswith(DAHUA_KEEPALIVE)
    if keepalive and not body.strip():
        return Heartbeat("dahua")
    text, steps = text_of(body)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PushRejected(400, "malformed_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (RecursionError, ValueError) as exc:
        raise PushRejected(400, "malformed_json", type(exc).__name__) from None
    if not isinstance(doc, dict):
        raise PushRejected(400, "bad_payload", "top level must be a JSON object")
    if keepalive:
        device = doc.get("DeviceID") or doc.get("DeviceId")
        return Heartbeat("dahua", device if isinstance(device, str) else None)
    if not path.endswith(DAHUA_TOLLGATE):
        raise PushRejected(404, "unknown_path", f"Dahua pushes go to {DAHUA_TOLLGATE} or {DAHUA_KEEPALIVE}")
    picture = doc.get("Picture")
    plate = picture.get("Plate") if isinstance(picture, dict) else None
    if not isinstance(picture, dict) or not isinstance(plate, dict):
        raise PushRejected(422, "bad_payload", "TollgateInfo needs Picture.Plate")
    if "PlateNumber" not in plate:
        raise PushRejected(422, "bad_payload", "Picture.Plate.PlateNumber missing")
    snap_info = picture.get("SnapInfo")
    snap: dict[str, Any] = snap_info if isinstance(snap_info, dict) else {}
    notes = list(steps)
    images = []
    for name, key in (("full", "NormalPic"), ("vehicle", "VehiclePic"), ("plate", "CutoutPic")):
        pic = picture.get(key)
        image = _b64_image(name, pic.get("Content"), notes) if isinstance(pic, dict) else None
        if image is not None:
            images.append(image)
    device = snap.get("DeviceID")
    return PlateObservation(
        vendor="dahua",
        license=plate.get("PlateNumber"),
        color_code=plate.get("PlateColor"),
        type_code=plate.get("PlateType"),
        confidence=plate.get("Confidence"),
        direction_code=snap.get("Direction"),
        lane=token(snap.get("LaneNo") if snap.get("LaneNo") is not None else snap.get("Lane")),
        seq=_as_int(snap.get("SnapSeq") if snap.get("SnapSeq") is not None else plate.get("UploadNum")),
        device_time=_dahua_time(snap.get("AccurateTime") or snap.get("SnapTime")),
        serial=device if isinstance(device, str) else None,
        images=tuple(images),
        notes=tuple(notes),
    )


DAHUA_REPLY_OK: dict[str, Any] = {"Result": True, "Message": "OK"}


HIKVISION_REPLY_OK = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<ResponseStatus version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">'
    "<requestURL>{path}</requestURL><statusCode>1</statusCode><statusString>OK</statusString>"
    "<subStatusCode>ok</subStatusCode></ResponseStatus>"
)


def decode(vendor: Vendor, body: bytes, content_type: str, path: str = "") -> Observation:
    """Decode a push in `vendor`'s format; raises `PushRejected`, nothing else."""
    try:
        if vendor == "zhenshi":
            return decode_zhenshi(body, content_type)
        if vendor == "dahua":
            return decode_dahua(body, path)
        return decode_hikvision(body, content_type)
    except PushRejected:
        raise
    except Exception as exc:  # a decoder bug must not become a 500 loop for the camera
        raise PushRejected(400, "undecodable", f"{type(exc).__name__} while decoding") from exc
