"""Dahua eventManager lines -> signals: `Code=...;action=Start|Stop|Pulse;index=N;data={...}`.

One attach part usually holds one event, but firmwares also pack several, one per line (the
`data` JSON may itself span lines, so events are split where a line starts with `Code=`).
`Heartbeat` parts are liveness only.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from drivers.camera.config import CameraConfig
from drivers.camera.events import CameraInputError, Signal, SignalState, classify
from drivers.camera.isapi import confidence

MAX_BODY_CHARS = 64 * 1024
_EVENT = re.compile(r"^Code=([^;\r\n]{1,80});action=([^;\r\n]{1,20});index=([^;\r\n]{1,10})(?:;data=(.*))?\s*$",
                    re.DOTALL)
_SPLIT = re.compile(r"\r?\n(?=Code=)")
ACTIONS: dict[str, SignalState] = {"start": "start", "stop": "stop", "pulse": "pulse"}
EBIKE_OBJECTS = frozenset({"electricbicycle", "ebike", "e-bike", "electricmotorcycle", "electrombile"})


def _utc(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    if not 946684800 <= value <= 4102444800:  # 2000..2100: anything else is not a clock
        return None
    return datetime.fromtimestamp(value, UTC)


def parse_line(text: str, pictures: tuple[str, ...] = (), codes: dict[str, str] | None = None) -> Signal:
    """One `Code=...` event."""
    match = _EVENT.match(text.strip())
    if match is None:
        raise CameraInputError("malformed_event", text.strip()[:120])
    code, action, index, data_text = match.groups()
    state = ACTIONS.get(action.strip().lower())
    if state is None:
        raise CameraInputError("bad_action", f"action={action[:20]}")
    try:
        channel = int(index) + 1
    except ValueError:
        raise CameraInputError("malformed_event", f"index={index[:10]}") from None
    if not 1 <= channel <= 4096:
        raise CameraInputError("malformed_event", f"index={index[:10]}")
    data: dict[str, Any] = {}
    if data_text is not None and data_text.strip():
        try:
            parsed = json.loads(data_text)
        except (ValueError, RecursionError) as exc:
            raise CameraInputError("malformed_data", f"{code}: {str(exc)[:100]}") from None
        if isinstance(parsed, dict):
            data = parsed
    detection, rule = classify("dahua", code, codes)
    obj = data.get("Object")
    target = str(obj.get("ObjectType"))[:40] if isinstance(obj, dict) and obj.get("ObjectType") else None
    if detection == "intrusion" and target and target.lower() in EBIKE_OBJECTS:
        detection, rule = "ebike", None  # an intrusion rule that caught an e-bike is the e-bike alarm
    region = data.get("Name")
    rule_id = data.get("RuleId", data.get("RuleID"))
    return Signal(
        detection=detection, state=state, code=f"dahua:{code}", channel=channel, rule=rule,
        region=str(region)[:80] if region else None,
        region_id=str(rule_id)[:40] if rule_id is not None else None,
        target=target, confidence=confidence(data.get("Confidence")), time=_utc(data.get("UTC")),
        pictures=pictures,
    )


def parse_event(raw: dict[str, Any], config: CameraConfig) -> list[Signal]:
    """Signals of one recorded attach part: `{"body", "pictures"}`."""
    body = raw.get("body")
    if not isinstance(body, str):
        raise CameraInputError("malformed_event", "no body")
    if len(body) > MAX_BODY_CHARS:
        raise CameraInputError("event_too_large", f"{len(body)} characters")
    text = body.strip()
    if not text or text.lower() == "heartbeat":
        return []
    pictures = tuple(str(p) for p in raw.get("pictures") or [] if isinstance(p, str))[:4]
    return [parse_line(chunk, pictures, config.codes) for chunk in _SPLIT.split(text) if chunk.strip()]
