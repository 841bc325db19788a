"""The plate camera's decoder: one push in, plate reads, gate decisions and faults out (no I/O).

Channels, as the transport ingests them and a recording keeps them:

* `push`: `{"content_type", "body_b64", "path"}`, one accepted camera request (live and not
  recording, `body` holds the bytes instead, sparing a base64 round trip). `feed`
  returns a `Decoded` list: the drafts, with the push's `Outcome` (the reply to send, the
  images to store first, de-duplication) attached for the transport.
* `barrier_stuck`: `{"gate_state"}`, the barrier window ran out (the transport's timer).
* `barrier_command`: how an ISAPI open went (`{"seq", "plate", "lane", "direction", "failure"}`).

The steps live in their own modules: `codec.py` parses the vendor body, `reads.py` grades the
read, `dedupe.py` suppresses repeats and `gate.py` decides the barrier; this module strings
them together and builds the events and the vendor's reply.

Timers and I/O outcomes are inputs like pushes, so a replay reproduces their events, alarm
ids included. De-duplication runs on receipt time, so a replay suppresses the same reads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drivers.http_plate_reader.codec import (
    DAHUA_REPLY_OK,
    HIKVISION_REPLY_OK,
    ZHENSHI_HEARTBEAT_REPLY,
    Heartbeat,
    IoTrigger,
    PlateObservation,
    PushRejected,
    decode,
    token,
    vendor_maps,
    zhenshi_reply,
)
from drivers.http_plate_reader.config import HttpPlateReaderConfig
from drivers.http_plate_reader.dedupe import Key, RecentReads, offline_key
from drivers.http_plate_reader.gate import Decision, GateRules
from drivers.http_plate_reader.listener import PushReply, error_body
from drivers.http_plate_reader.media import MediaStore, image_name
from drivers.http_plate_reader.reads import PlateRead, decode_read
from gateway.alarms import AlarmTracker
from gateway.driver import DeviceContext, EventDraft
from schemas.common import Quality, Severity
from schemas.lpr import LprPayload

#: Buffered records were decided by the camera long ago: the gateway records them, undecided.
_UNDECIDED = Decision("deny", "unknown")


@dataclass
class Outcome:
    """What one push turns into: events to commit, images to store, and the reply."""

    drafts: list[EventDraft]
    reply: PushReply
    images: list[tuple[str, bytes]] = field(default_factory=list)
    dedupe_key: Key | None = None
    decision: Decision | None = None
    duplicate: bool = False
    wait_for: asyncio.Future[None] | None = None
    alive: bool = True


def _json_reply(doc: Any, status: int = 200) -> PushReply:
    return PushReply(status, json.dumps(doc, ensure_ascii=False).encode())


STUCK = "barrier_stuck"


class Decoded(list[EventDraft]):
    """`feed`'s drafts for a push, with its `Outcome` attached (what the transport replies)."""

    def __init__(self, drafts: list[EventDraft], outcome: Outcome) -> None:
        super().__init__(drafts)
        self.outcome = outcome


class PlateDecoder:
    """Decoding and gate decisions for one camera; the state is de-duplication and the barrier."""

    def __init__(self, config: HttpPlateReaderConfig, ctx: DeviceContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self.maps = vendor_maps()[config.protocol]
        self.scale = config.confidence_scale or self.maps.confidence_scale
        self.rules = GateRules(config.access)
        # URIs come from this camera's own settings, so a replay names images identically (unwritten).
        self._uris = MediaStore(config.media.path, config.media.max_bytes, uri_prefix=config.media.uri_prefix)
        self.recent = RecentReads(config.dedupe_s)
        self.gate_state: str | None = None
        self.alarms = AlarmTracker(config.id)

    def feed(self, channel: str, raw: Any, now: datetime) -> list[EventDraft]:
        """One push, barrier timer or barrier command outcome, received at `now`."""
        if not isinstance(raw, dict):
            self.ctx.counters.inc("lpr.bad_input")
            return []
        if channel == STUCK:
            return self._stuck_drafts(raw, now)
        if channel == "barrier_command":
            return [self._command_draft(raw, now)]
        if channel != "push":
            self.ctx.counters.inc("lpr.bad_input")
            return []
        body = raw.get("body")  # live and not recording: the bytes themselves
        if not isinstance(body, bytes):
            try:
                body = base64.b64decode(str(raw.get("body_b64", "")), validate=True)
            except (binascii.Error, ValueError):
                self.ctx.counters.inc("lpr.bad_input")
                return []
        path = str(raw.get("path") or self.cfg.url_paths[0])
        outcome = self.process(str(raw.get("content_type", "")), body, now, now.timestamp(), path)
        return Decoded([] if outcome.duplicate else outcome.drafts, outcome)

    def forget(self) -> None:
        """A commit failed: an open `barrier_stuck` is re-confirmed by the next timer or cleared by 'up'.

        De-duplication is settled per push by the transport (`not_committed`).
        """
        self.alarms.forget()

    def committed(self, outcome: Outcome) -> None:
        """The transport committed this push: duplicates waiting on it may answer now."""
        if outcome.dedupe_key is not None:
            self.recent.committed(outcome.dedupe_key)

    def not_committed(self, outcome: Outcome, exc: BaseException) -> None:
        """This push was not committed: its retry is not a duplicate, and its duplicates fail too."""
        if outcome.dedupe_key is not None:
            self.recent.not_committed(outcome.dedupe_key, exc)

    def process(self, content_type: str, body: bytes, now: datetime, mono: float, path: str) -> Outcome:
        """Turn one push into events and a reply. Pure apart from de-duplication state; never raises."""
        try:
            observation = decode(self.cfg.protocol, body, content_type, path)
            if self.cfg.serial and observation.serial and observation.serial != self.cfg.serial:
                raise PushRejected(
                    403,
                    "wrong_camera",
                    f"serial {token(observation.serial) or '?'} is not the camera configured at this path",
                )
        except PushRejected as rejected:
            self.ctx.counters.inc(f"lpr.rejected.{rejected.error}")
            draft = EventDraft(
                type="lpr.push_rejected",
                cls="event",
                severity="minor",
                payload=LprPayload(detail=f"{rejected.error}: {rejected.reason}"[:500]),
                quality=Quality(status="rejected", reasons=(rejected.error,)),
                time=now,
            )
            reply = PushReply(rejected.status, error_body(rejected.error, rejected.reason))
            return Outcome([draft], reply, alive=rejected.status != 403)
        if isinstance(observation, Heartbeat):
            self.ctx.counters.inc("lpr.heartbeats")
            return Outcome([], self._ok_reply(path))
        if isinstance(observation, IoTrigger):
            return Outcome(self._io_drafts(observation, now), self._ok_reply(path))
        return self._plate(observation, now, mono, path)

    def _ok_reply(self, path: str) -> PushReply:
        if self.cfg.protocol == "zhenshi":
            return _json_reply(ZHENSHI_HEARTBEAT_REPLY)
        if self.cfg.protocol == "dahua":
            return _json_reply(DAHUA_REPLY_OK)
        return PushReply(200, HIKVISION_REPLY_OK.format(path=path).encode(), "application/xml")

    def _decision_reply(self, decision: Decision, path: str, obs: PlateObservation | None = None) -> PushReply:
        """The reply to a read; Zhenshi's echoes `plateid`, and lets a buffered record's drain go on."""
        if self.cfg.protocol == "zhenshi":
            plateid = obs.seq if obs is not None else None
            return _json_reply(zhenshi_reply(decision.opens, plateid, offline=bool(obs and obs.is_offline)))
        return self._ok_reply(path)

    def _io_drafts(self, trigger: IoTrigger, now: datetime) -> list[EventDraft]:
        if self.cfg.gate_input is None or trigger.source != self.cfg.gate_input:
            return [
                EventDraft(
                    type="lpr.io_trigger",
                    cls="event",
                    raw_code=f"{trigger.vendor}:gio/{trigger.source}",
                    payload=LprPayload(io_input=trigger.source, io_value=trigger.value),
                    time=now,
                )
            ]
        state = "up" if trigger.value else "down"
        self.gate_state = state
        drafts = [EventDraft(type="lpr.gate_state", cls="status", payload=LprPayload(gate_state=state), time=now)]
        stuck = self.alarms.clear(STUCK) if state == "up" else None
        if stuck is not None:
            drafts.append(
                EventDraft(
                    type="lpr.barrier_stuck",
                    cls="fault",
                    severity="major",
                    state="cleared",
                    alarm_id=stuck.alarm_id,
                    payload=LprPayload(gate_state=state),
                    time=now,
                )
            )
        return drafts

    def _plate(self, obs: PlateObservation, now: datetime, mono: float, path: str) -> Outcome:
        """A plate read: decode it, then refuse it (oversize), record it (buffered) or decide (live)."""
        read = decode_read(obs, self.cfg, self.maps, self.scale, now, self.ctx.counters)
        if read.oversize is not None:
            return self._refuse_oversize(read, obs)
        images = [(image_name(self.cfg.id, img.data), img.data) for img in obs.images]
        uris = tuple(self._uris.uri(n) for n, _ in images) or None
        if obs.is_offline:  # buffered while the camera was cut off: its barrier acted long ago, nothing to decide
            return self._buffered(read, obs, mono, path, images, uris)
        return self._live(read, obs, now, mono, path, images, uris)

    def _read_draft(self, read: PlateRead, obs: PlateObservation, payload: LprPayload,
                    severity: Severity = "info") -> EventDraft:
        return EventDraft(
            type="lpr.plate_read", cls="event", severity=severity, payload=payload, quality=read.quality,
            seq=obs.seq, time=read.time, raw_code=read.raw_code,
        )

    def _refuse_oversize(self, read: PlateRead, obs: PlateObservation) -> Outcome:
        """Record the read (rejected, without images) and refuse the push with 413."""
        self.ctx.counters.inc("lpr.rejected.image_too_large")
        reason = f"image of {read.oversize} bytes exceeds {self.cfg.media.max_image_bytes}"
        refusal: dict[str, Any] = {"error": "image_too_large", "reason": reason}
        if self.cfg.protocol == "zhenshi" and obs.seq is not None:
            # The read is recorded (rejected): a buffered record must not block the camera's drain.
            refusal.update(zhenshi_reply(False, obs.seq, offline=bool(obs.is_offline)))
        return Outcome([self._read_draft(read, obs, read.payload)], _json_reply(refusal, 413))

    def _buffered(self, read: PlateRead, obs: PlateObservation, mono: float, path: str,
                  images: list[tuple[str, bytes]], uris: tuple[str, ...] | None) -> Outcome:
        """A record the camera buffered while offline: recorded once (by its plateid), never decided."""
        key = offline_key(obs.serial, obs.seq)
        if key is not None:
            recent = self.recent.duplicate_of(key, mono)
            if recent is not None:
                self.ctx.counters.inc("lpr.offline_duplicates")
                reply = self._decision_reply(recent.decision, path, obs)
                return Outcome([], reply, duplicate=True, wait_for=recent.committed)
            self.recent.remember(key, mono, _UNDECIDED)
        blocked = read.check.usable and self.rules.is_blocked(read.check.plate or "")
        payload = read.payload.model_copy(update={"image_uri": uris})
        draft = self._read_draft(read, obs, payload, "major" if blocked else "info")
        self.ctx.counters.inc("lpr.offline_reads")
        return Outcome([draft], self._decision_reply(_UNDECIDED, path, obs), images, key)

    def _live(self, read: PlateRead, obs: PlateObservation, now: datetime, mono: float, path: str,
              images: list[tuple[str, bytes]], uris: tuple[str, ...] | None) -> Outcome:
        """A live read: suppress a repeat within `dedupe_s`, else decide the barrier and emit both events."""
        lane = read.payload.lane or "0"
        key = (read.check.plate, lane) if read.check.plate is not None and not read.rejected else None
        recent = self.recent.duplicate_of(key, mono)
        if recent is not None:
            recent.suppressed += 1
            self.ctx.counters.inc("lpr.duplicates_suppressed")
            return Outcome([], self._decision_reply(recent.decision, path, obs), duplicate=True,
                           wait_for=recent.committed)
        decision = self.rules.decide(read.check, now)
        suppressed = self.recent.remember(key, mono, decision) if key is not None else None
        payload = read.payload.model_copy(update={"image_uri": uris, "suppressed": suppressed})
        severity: Severity = "major" if decision.reason == "blocklist" else "info"
        gate = EventDraft(
            type="lpr.gate_decision", cls="event", severity=severity, seq=obs.seq, time=read.time,
            payload=LprPayload(
                plate=payload.plate, lane=lane, direction=payload.direction, decision=decision.action,
                reason=decision.reason, pass_id=decision.pass_id,
            ),
        )
        self.ctx.counters.inc("lpr.reads")
        reply = self._decision_reply(decision, path, obs)
        return Outcome([self._read_draft(read, obs, payload, severity), gate], reply, images, key, decision)

    @staticmethod
    def _command_draft(outcome: dict[str, Any], now: datetime) -> EventDraft:
        failure = outcome.get("failure")
        seq = outcome.get("seq")
        return EventDraft(
            type="lpr.barrier_command",
            cls="command",
            severity="info" if failure is None else "major",
            seq=seq if isinstance(seq, int) else None,
            payload=LprPayload(
                plate=outcome.get("plate"), lane=outcome.get("lane"), direction=outcome.get("direction"),
                decision="open", detail=None if failure is None else str(failure),
            ),
            quality=Quality() if failure is None else Quality(status="suspect", reasons=("barrier_command_failed",)),
            time=now,
        )

    def _stuck_drafts(self, ran_out: dict[str, Any], now: datetime) -> list[EventDraft]:
        """The barrier window ran out: raise `lpr.barrier_stuck` (cleared by the next 'up').

        Older recordings carry the alarm id the driver drew then; new ones derive it from `now`.
        """
        recorded = ran_out.get("alarm_id")
        alarm = self.alarms.raise_(STUCK, now, alarm_id=str(recorded) if recorded else None)
        if alarm is None:  # raised already
            return []
        return [
            EventDraft(
                type="lpr.barrier_stuck",
                cls="fault",
                severity="major",
                state="raised",
                alarm_id=alarm.alarm_id,
                payload=LprPayload(
                    gate_state=str(ran_out.get("gate_state") or "down"),
                    detail=f"opened, but barrier not up after {self.cfg.barrier_timeout_s:g} s",
                ),
                time=now,
            )
        ]
