"""The camera event vocabulary, shared by every protocol (ISAPI, Dahua, ONVIF).

Each protocol's parser turns what the camera sent into `Signal`s: a detection from the
common vocabulary, its state (`start`, `stop`, `pulse`) and the details. `SignalBook` turns
signals into event drafts, the same way for every brand:

* `start` raises an alarm (once) that stays open until a `stop` on the same key;
* `pulse` (Dahua `action=Pulse`, Hikvision `eventState=active` repeats) raises once and keeps
  the alarm open while pulses keep coming; `pulse_hold_s` after the last one it is cleared;
* `stop` clears the open alarm; a `stop` with nothing open is liveness only (Hikvision sends
  `videoloss`/`inactive` as its heartbeat);
* motion is `info` and only sent when the camera's config turns it on;
* a code nobody maps becomes `camera.event.unknown` with the raw code, never dropped.

Vendor codes per protocol are in `VENDOR_CODES`; a camera config may add its own (`codes:`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from gateway.alarms import AlarmTracker, OpenAlarm
from gateway.driver import EventDraft
from schemas.camera import CameraPayload, CameraProtocol, Detection, Rule
from schemas.common import EventClass, Quality, Severity

DETECTIONS: tuple[str, ...] = get_args(Detection)

SignalState = Literal["start", "stop", "pulse"]
#: (channel) -> payload fields saying where it looks (`location`, `where`)
PlaceFn = Callable[[int | None], dict[str, Any]]
#: media store name -> the stable URI events carry
UriFn = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class EventKind:
    """How one detection is published."""

    type: str
    cls: EventClass
    severity: Severity
    alarm: bool  # raised/cleared pair (else momentary)


#: detection -> how it is published. Fire and smoke are life safety: critical.
EVENT_KINDS: dict[str, EventKind] = {
    "fire": EventKind("camera.fire_detected", "alarm", "critical", True),
    "smoke": EventKind("camera.smoke_detected", "alarm", "critical", True),
    "ebike": EventKind("camera.ebike_detected", "alarm", "major", True),
    "intrusion": EventKind("camera.intrusion", "alarm", "major", True),
    "tamper": EventKind("camera.tamper", "alarm", "major", True),
    "video_loss": EventKind("camera.video_loss", "fault", "major", True),
    "motion": EventKind("camera.motion", "event", "info", False),
    "unknown": EventKind("camera.event.unknown", "event", "info", False),
}

#: Vendor event code -> (detection, intrusion rule). Codes are compared case-insensitively.
VENDOR_CODES: dict[str, dict[str, tuple[str, Rule | None]]] = {
    # Hikvision ISAPI `eventType` (alertStream and HTTP listening), thermal and AI-box firmwares.
    "isapi": {
        "firedetection": ("fire", None),
        "fireescapedetection": ("fire", None),
        "smokedetection": ("smoke", None),
        "smokeandfiredetection": ("fire", None),
        "ebikedetection": ("ebike", None),
        "electrombiledetection": ("ebike", None),
        "nonmotorvehicledetection": ("ebike", None),
        "fielddetection": ("intrusion", "intrusion"),
        "linedetection": ("intrusion", "line_crossing"),
        "regionentrance": ("intrusion", "region_entrance"),
        "regionexiting": ("intrusion", "region_exit"),
        "loitering": ("intrusion", "loitering"),
        "videoloss": ("video_loss", None),
        "shelteralarm": ("tamper", None),
        "tamperdetection": ("tamper", None),
        "vmd": ("motion", None),
        "motiondetection": ("motion", None),
    },
    # Dahua eventManager `Code=`.
    "dahua": {
        "firedetection": ("fire", None),
        "firewarning": ("fire", None),
        "smokedetection": ("smoke", None),
        "electricbicycledetection": ("ebike", None),
        "ebikedetection": ("ebike", None),
        "crosslinedetection": ("intrusion", "line_crossing"),
        "crossregiondetection": ("intrusion", "intrusion"),
        "leftdetection": ("intrusion", "loitering"),
        "videoloss": ("video_loss", None),
        "videoblind": ("tamper", None),
        "videoabnormaldetection": ("tamper", None),
        "videomotion": ("motion", None),
    },
}
VENDOR_CODES["isapi_push"] = VENDOR_CODES["isapi"]


def classify(protocol: str, code: str, extra: dict[str, str] | None = None) -> tuple[str, Rule | None]:
    """(detection, rule) of a vendor code; `unknown` when neither the table nor the config knows it."""
    low = code.strip().lower()
    if extra:
        for key, value in extra.items():
            if key.lower() == low:
                return value, None
    return VENDOR_CODES.get(protocol, {}).get(low, ("unknown", None))


class CameraInputError(ValueError):
    """What a camera sent cannot be understood; `error` is the counter/quality reason."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Signal:
    """One detection as a parser understood it, before alarm bookkeeping."""

    detection: str
    state: SignalState
    code: str  # raw vendor code, namespaced: "isapi:fielddetection", "dahua:CrossLineDetection"
    channel: int | None = None
    rule: Rule | None = None
    region: str | None = None
    region_id: str | None = None
    target: str | None = None
    confidence: float | None = None
    time: datetime | None = None  # the camera's clock, when it sent one
    pictures: tuple[str, ...] = ()  # media store names (never bytes)

    @property
    def key(self) -> str:
        """The condition one raise/clear pair is about: detection, channel and rule region."""
        return f"{self.detection}:{self.channel or 0}:{self.region_id or ''}"


@dataclass(slots=True)
class _Hold:
    """What an open alarm needs beyond the tracker's bookkeeping: its signal and pulse hold."""

    last: datetime
    pulse: bool
    signal: Signal


@dataclass
class Context:
    """What turning a signal into a payload needs from the device's config."""

    device: str
    protocol: CameraProtocol
    motion: bool = False
    pulse_hold_s: float = 30.0
    channel_names: dict[int, str] = field(default_factory=dict)


class SignalBook:
    """Open alarms of one camera (in the gateway's `AlarmTracker`); signals in, raise/clear drafts out."""

    def __init__(self, ctx: Context, *, place: PlaceFn | None = None, snapshot_uri: UriFn | None = None) -> None:
        self.ctx = ctx
        self.alarms = AlarmTracker(ctx.device)  # ids derive from (receipt time, device, key)
        self._place = place or (lambda channel: {})
        self._uri = snapshot_uri or (lambda name: name)
        self.heartbeats = 0
        self.motion_dropped = 0

    def is_open(self, key: str) -> bool:
        """True when the condition `key` has an open alarm (a raise needs no new snapshot then)."""
        return self.alarms.get(key) is not None

    def open_keys(self) -> list[str]:
        """Keys of every open alarm."""
        return list(self.alarms.open_alarms())

    def _holds(self) -> list[tuple[str, OpenAlarm, _Hold]]:
        return [(k, a, a.data) for k, a in self.alarms.open_alarms().items() if isinstance(a.data, _Hold)]

    def next_expiry(self) -> datetime | None:
        """When the earliest pulse-held alarm is due to clear (None: nothing to expire)."""
        hold = timedelta(seconds=self.ctx.pulse_hold_s)
        due = [h.last + hold for _, _, h in self._holds() if h.pulse]
        return min(due) if due else None

    def forget(self) -> None:
        """A commit failed: every open alarm becomes unconfirmed, and its next signal reports it again.

        Still active, the raise is sent again with the same id (consumers treat a repeated raise
        as one); gone, the clear is sent. Dropping the alarms instead would leave one whose raise
        was committed earlier open for ever on the platform.
        """
        self.alarms.forget()

    def expire(self, now: datetime) -> list[EventDraft]:
        """Clear every pulse-held alarm whose hold ran out by `now`."""
        hold = timedelta(seconds=self.ctx.pulse_hold_s)
        drafts: list[EventDraft] = []
        for key, alarm, h in self._holds():
            if h.pulse and now - h.last >= hold:
                self.alarms.clear(key)
                drafts.append(self._draft(h.signal, "cleared", alarm.alarm_id, now, since=alarm.since,
                                          at=h.last + hold))
        return drafts

    def feed(self, signal: Signal, now: datetime) -> list[EventDraft]:
        """Drafts for one signal (and for holds that ran out before it)."""
        drafts = self.expire(now)
        kind = EVENT_KINDS[signal.detection]
        if signal.detection == "motion" and not self.ctx.motion:
            self.motion_dropped += 1
            return drafts
        if not kind.alarm:
            if signal.state != "stop":
                drafts.append(self._draft(signal, "momentary", None, now))
            return drafts
        key = signal.key
        if signal.state == "stop":
            gone = self.alarms.clear(key)
            if gone is None:
                self.heartbeats += 1  # e.g. Hikvision's videoloss/inactive keep-alive
                return drafts
            first = gone.data.signal if isinstance(gone.data, _Hold) else signal
            drafts.append(self._draft(first, "cleared", gone.alarm_id, now, since=gone.since,
                                      pictures=signal.pictures))
            return drafts
        pulse = signal.state == "pulse"
        current = self.alarms.get(key)
        if current is not None and isinstance(current.data, _Hold):
            current.data.last = now
            current.data.pulse = current.data.pulse and pulse
        alarm = self.alarms.raise_(key, now, data=_Hold(now, pulse, signal))
        if alarm is not None:  # new, or unconfirmed after a failed commit: (re-)raise with its id
            first = alarm.data.signal if isinstance(alarm.data, _Hold) else signal
            drafts.append(self._draft(first, "raised", alarm.alarm_id, now))
        return drafts

    def _draft(self, signal: Signal, state: Literal["raised", "cleared", "momentary"], alarm_id: str | None,
               now: datetime, *, since: datetime | None = None, at: datetime | None = None,
               pictures: tuple[str, ...] = ()) -> EventDraft:
        kind = EVENT_KINDS[signal.detection]
        pics = pictures or signal.pictures
        payload = CameraPayload(
            detection=signal.detection,
            channel=signal.channel,
            channel_name=self.ctx.channel_names.get(signal.channel or 0),
            protocol=self.ctx.protocol,
            rule=signal.rule,
            region=signal.region,
            region_id=signal.region_id,
            target=signal.target,
            confidence=signal.confidence,
            snapshot_uri=self._uri(pics[0]) if pics and state != "cleared" else None,
            pulse=(signal.state == "pulse") if kind.alarm else None,
            duration_s=round(((at or now) - since).total_seconds(), 3) if since is not None else None,
            code=signal.code if signal.detection == "unknown" else None,
            **self._place(signal.channel),
        )
        return EventDraft(
            type=kind.type, cls=kind.cls, severity=kind.severity,
            state=state, alarm_id=alarm_id, raw_code=signal.code[:120], payload=payload,
            time=at if at is not None else (signal.time if state != "cleared" else None),
        )


def rejected(protocol: CameraProtocol, error: str, detail: str) -> EventDraft:
    """A `camera.input_rejected` draft: what a camera sent could not be understood (counted, kept)."""
    return EventDraft(
        type="camera.input_rejected", cls="event", severity="minor",
        payload=CameraPayload(detection="unknown", protocol=protocol, detail=f"{error}: {detail}"[:500]),
        quality=Quality(status="rejected", reasons=(error,)), raw_code=f"{protocol}:{error}",
    )


