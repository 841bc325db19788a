"""Wire formats of plate cameras that push over HTTP. Pure: bytes in, observations out.

Two formats are understood, each driven by the maps in `vendors.yaml`:

* Zhenshi-style JSON: `AlarmInfoPlate{serialno, channel, result.PlateResult{...}}` (plate
  reads, images as base64), `AlarmGioIn{result.TriggerResult{source, value}}` (GPIO inputs)
  and heartbeats. The reply `Response_AlarmInfoPlate{info: ok|no}` opens or holds the barrier.
* Hikvision-style ANPR: `multipart/form-data` with an `anpr.xml` part
  (`EventNotificationAlert/ANPR{licensePlate, confidenceLevel, plateColor, ...}`) and JPEG
  parts, or a bare XML `EventNotificationAlert` (`videoloss`/`inactive` is its heartbeat).

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
from typing import Any, Literal
from xml.etree import ElementTree

import yaml
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree

from drivers.http_plate_reader.plates import ConfidenceScale
from schemas.lpr import PlateColor, VehicleDirection

Vendor = Literal["zhenshi", "hikvision"]
MAPS_FILE = Path(__file__).with_name("vendors.yaml")
_COLORS: frozenset[str] = frozenset({"blue", "yellow", "white", "black", "green", "yellow_green", "unknown"})


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
    directions: dict[str, VehicleDirection]

    def color(self, code: object) -> PlateColor | None:
        """Courtyard colour for a vendor code; unmapped codes become 'unknown', absent ones None."""
        if code is None or code == "":
            return None
        return self.colors.get(str(code).strip().lower(), "unknown")

    def plate_type(self, code: object) -> str | None:
        """Courtyard plate type token for a vendor code, None when unmapped."""
        if code is None:
            return None
        return self.types.get(str(code).strip().lower())

    def direction(self, code: object) -> VehicleDirection | None:
        """Entry/exit from the vendor's direction field, when the vendor's field means that."""
        if code is None:
            return None
        return self.directions.get(str(code).strip().lower())


def _lower_keys(table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        return {}
    return {str(k).strip().lower(): v for k, v in table.items()}


def parse_maps(doc: Any) -> dict[str, VendorMap]:
    """Validate the YAML document of vendor maps (raises ValueError naming the bad entry)."""
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
            if value not in ("entry", "exit", "unknown"):
                raise ValueError(f"vendor maps: {vendor}.directions.{key}: {value!r} is not entry|exit|unknown")
        types = {k: (None if v is None else str(v)) for k, v in _lower_keys(body.get("types")).items()}
        maps[str(vendor)] = VendorMap(scale, colors, types, directions)
    return maps


@cache
def vendor_maps() -> dict[str, VendorMap]:
    """The built-in vendor maps."""
    return parse_maps(yaml.safe_load(MAPS_FILE.read_text(encoding="utf-8")))


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


def decode_zhenshi(body: bytes) -> Observation:
    """Decode one Zhenshi-style JSON push (plate read, GPIO input or heartbeat)."""
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


def zhenshi_reply(open_gate: bool) -> dict[str, Any]:
    """The reply that opens (`ok`) or holds (`no`) a Zhenshi barrier."""
    return {"Response_AlarmInfoPlate": {"info": "ok" if open_gate else "no"}}


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


def decode_hikvision(body: bytes, content_type: str) -> Observation:
    """Decode one Hikvision-style ANPR push (multipart with XML + JPEGs, or bare XML)."""
    images: list[Image] = []
    if content_type.lower().startswith("multipart/"):
        parts = split_multipart(body, content_type)
        xml_parts = [p for p in parts if p.name.lower().endswith(".xml") or "xml" in p.content_type]
        if not xml_parts:
            raise PushRejected(422, "bad_payload", "multipart push has no XML part (anpr.xml)")
        xml = xml_parts[0].data
        for part in parts:
            if part is not xml_parts[0] and part.data:
                if not part.data.startswith(b"\xff\xd8"):
                    raise PushRejected(422, "bad_image", f"part {part.name or '?'} is not a JPEG")
                images.append(Image(part.name.rsplit(".", 1)[0] or "image", part.data))
    else:
        xml = body
    root = _parse_xml(xml)
    if _local(root.tag) != "EventNotificationAlert":
        raise PushRejected(422, "unknown_message", f"expected EventNotificationAlert, got {_local(root.tag)}")
    event_type = (_child_text(root, "eventType") or "").lower()
    if event_type == "videoloss" and (_child_text(root, "eventState") or "").lower() == "inactive":
        return Heartbeat("hikvision", _child_text(root, "macAddress") or _child_text(root, "ipAddress"))
    anpr = _child(root, "ANPR")
    if event_type != "anpr" or anpr is None:
        raise PushRejected(422, "unknown_message", f"eventType {event_type or '?'} carries no ANPR block")
    plate = _child_text(anpr, "licensePlate")
    if plate is None:
        raise PushRejected(422, "bad_payload", "ANPR.licensePlate missing")
    lane = token(_child_text(anpr, "laneNo") or _child_text(anpr, "line"))
    return PlateObservation(
        vendor="hikvision",
        license=plate,
        color_code=_child_text(anpr, "plateColor"),
        type_code=_child_text(anpr, "plateType"),
        confidence=_child_text(anpr, "confidenceLevel"),
        direction_code=_child_text(anpr, "direction"),
        lane=lane,
        seq=_as_int(_child_text(root, "activePostCount")),
        device_time=_iso_time(_child_text(root, "dateTime")),
        serial=_child_text(root, "macAddress") or _child_text(root, "ipAddress"),
        images=tuple(images),
    )


HIKVISION_REPLY_OK = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<ResponseStatus version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">'
    "<requestURL>{path}</requestURL><statusCode>1</statusCode><statusString>OK</statusString>"
    "<subStatusCode>ok</subStatusCode></ResponseStatus>"
)


def decode(vendor: Vendor, body: bytes, content_type: str) -> Observation:
    """Decode a push in `vendor`'s format; raises `PushRejected`, nothing else."""
    try:
        if vendor == "zhenshi":
            return decode_zhenshi(body)
        return decode_hikvision(body, content_type)
    except PushRejected:
        raise
    except Exception as exc:  # a decoder bug must not become a 500 loop for the camera
        raise PushRejected(400, "undecodable", f"{type(exc).__name__} while decoding") from exc
