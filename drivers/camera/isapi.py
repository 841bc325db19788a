"""Hikvision ISAPI `EventNotificationAlert` (XML or JSON) -> signals.

The same document arrives on the alertStream (arming) and in posts to the gateway (HTTP
listening). XML is parsed with defusedxml and DTDs forbidden (no entity expansion, no external
fetches); namespaces are ignored, since firmwares disagree on them.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from drivers.camera.config import CameraConfig
from drivers.camera.events import CameraInputError, Signal, SignalState, classify

MAX_BODY_CHARS = 256 * 1024  # an alert is a few KB; pictures travel in their own parts


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_to_dict(body: str) -> dict[str, Any]:
    try:
        root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise CameraInputError("malformed_xml", str(exc)[:200]) from None
    if _local(root.tag) != "EventNotificationAlert":
        raise CameraInputError("not_an_alert", f"root element {_local(root.tag)[:60]!r}")
    doc: dict[str, Any] = {}
    for child in root:
        name = _local(child.tag)
        if name == "DetectionRegionList":
            entries = []
            for entry in child:
                entries.append({_local(e.tag): (e.text or "").strip() for e in entry})
            doc[name] = entries
        elif len(child) == 0:
            doc[name] = (child.text or "").strip()
    return doc


def _json_to_dict(body: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise CameraInputError("malformed_json", str(exc)[:200]) from None
    if isinstance(doc, dict) and isinstance(doc.get("EventNotificationAlert"), dict):
        doc = doc["EventNotificationAlert"]
    if not isinstance(doc, dict) or "eventType" not in doc:
        raise CameraInputError("not_an_alert", "JSON without eventType")
    return doc


def _int(value: Any) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < 1 << 31 else None


def confidence(value: Any) -> float | None:
    """A confidence as 0..1: percent (0..100) or unit values; None when absent or not a number."""
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number < 0 or number > 100:
        return None
    return round(number / 100 if number > 1 else number, 4)


def camera_time(value: Any) -> datetime | None:
    """The alert's dateTime when it names its offset (a naive time cannot be placed: None)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def alert_doc(ctype: str, body: str) -> dict[str, Any]:
    """The alert as a flat mapping, from XML or JSON (decided by content type, else by the first byte)."""
    if len(body) > MAX_BODY_CHARS:
        raise CameraInputError("alert_too_large", f"{len(body)} characters")
    text = body.lstrip("\ufeff \t\r\n")
    if not text:
        raise CameraInputError("empty_alert", "empty body")
    if "json" in ctype.lower() or text[0] in "{[":
        return _json_to_dict(text)
    return _xml_to_dict(text)


def parse_alert(raw: dict[str, Any], config: CameraConfig) -> list[Signal]:
    """Signals of one recorded ISAPI input: `{"ctype", "body", "pictures"}`."""
    body = raw.get("body")
    if not isinstance(body, str):
        raise CameraInputError("empty_alert", "no alert body")
    doc = alert_doc(str(raw.get("ctype", "")), body)
    code = str(doc.get("eventType", "")).strip()[:80]
    if not code:
        raise CameraInputError("not_an_alert", "eventType empty")
    detection, rule = classify("isapi", code, config.codes)
    state_text = str(doc.get("eventState", "active")).strip().lower()
    state: SignalState = "stop" if state_text == "inactive" else "pulse"
    regions = doc.get("DetectionRegionList")
    region = region_id = None
    if isinstance(regions, list) and regions and isinstance(regions[0], dict):
        first = regions[0]
        region_id = str(first.get("regionID", "")).strip()[:40] or None
        region = str(first.get("regionName", "")).strip()[:80] or None
    pictures = raw.get("pictures") or []
    return [Signal(
        detection=detection, state=state, code=f"isapi:{code}",
        channel=_int(doc.get("channelID", doc.get("dynChannelID"))),
        rule=rule, region=region or (f"region {region_id}" if region_id else None), region_id=region_id,
        target=(str(doc["targetType"])[:40] if doc.get("targetType") else None),
        confidence=confidence(doc.get("confidence")), time=camera_time(doc.get("dateTime")),
        pictures=tuple(str(p) for p in pictures if isinstance(p, str))[:4],
    )]
