"""The plate camera's decoder: one push in, plate reads, gate decisions and faults out (no I/O).

Channels, as the transport ingests them and a recording keeps them:

* `push`: `{"content_type", "body_b64", "path"}`, one accepted camera request (live and not
  recording, `body` holds the bytes instead, sparing a base64 round trip). `feed`
  returns a `Decoded` list: the drafts, with the push's `Outcome` (the reply to send, the
  images to store first, de-duplication) attached for the transport.
* `barrier_stuck`: `{"gate_state"}`, the barrier window ran out (the transport's timer).
* `barrier_command`: how an ISAPI open went (`{"seq", "plate", "lane", "direction", "failure"}`).

Timers and I/O outcomes are inputs like pushes, so a replay reproduces their events, alarm
ids included. De-duplication runs on receipt time, so a replay suppresses the same reads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
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
    resolve_direction,
    token,
    vendor_maps,
    zhenshi_reply,
)
from drivers.http_plate_reader.config import HttpPlateReaderConfig
from drivers.http_plate_reader.gate import Decision, GateRules
from drivers.http_plate_reader.listener import PushReply, error_body
from drivers.http_plate_reader.media import MediaStore, image_name
from drivers.http_plate_reader.plates import check_plate, rescale_confidence
from gateway.alarms import AlarmTracker
from gateway.driver import DeviceContext, EventDraft
from schemas.common import Quality, Severity
from schemas.lpr import LprPayload

#: Decoding steps worth counting but not worth lowering a read's quality.
_INFO_REASONS = frozenset({"decoded_gbk", "decoded_base64", "repaired_latin1_gbk", "repaired_utf8_gbk", "body_gbk"})
#: Device clocks further off than this are ignored (gateway receipt time is used instead).
MAX_CLOCK_SKEW = timedelta(hours=24)
#: A camera re-sends a buffered record it got no answer for (e.g. a live read interrupted the
#: drain); the same plateid within this window is the same record, committed once.
OFFLINE_DEDUPE_S = 3600.0


@dataclass
class _Recent:
    """The last committed read of a plate on a lane, for de-duplication."""

    at: float
    decision: Decision
    committed: asyncio.Future[None] | None  # None: committed already
    suppressed: int = 0


@dataclass
class Outcome:
    """What one push turns into: events to commit, images to store, and the reply."""

    drafts: list[EventDraft]
    reply: PushReply
    images: list[tuple[str, bytes]] = field(default_factory=list)
    dedupe_key: tuple[str, str] | None = None
    decision: Decision | None = None
    duplicate: bool = False
    wait_for: asyncio.Future[None] | None = None
    alive: bool = True


def _pending_future() -> asyncio.Future[None] | None:
    try:
        return asyncio.get_running_loop().create_future()
    except RuntimeError:  # decoding outside a loop (tests, tools): nothing can wait on it
        return None


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
        self._recent: dict[tuple[str, str], _Recent] = {}
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
            recent = self._recent.get(outcome.dedupe_key)
            if recent is not None and recent.committed is not None:
                if not recent.committed.done():
                    recent.committed.set_result(None)
                recent.committed = None

    def not_committed(self, outcome: Outcome, exc: BaseException) -> None:
        """This push was not committed: its retry is not a duplicate, and its duplicates fail too."""
        if outcome.dedupe_key is not None:
            recent = self._recent.pop(outcome.dedupe_key, None)
            if recent is not None and recent.committed is not None and not recent.committed.done():
                recent.committed.set_exception(RuntimeError(f"original read not committed: {exc!r}"))
                recent.committed.exception()  # retrieved: no "never retrieved" warning if nobody waits

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
        cfg = self.cfg
        check = check_plate(obs.license, color=self.maps.color(obs.color_code))
        color = check.color  # the vendor's colour code, else a colour word in front of the plate
        confidence, conf_reasons = rescale_confidence(obs.confidence, self.scale)
        reasons = [*obs.notes, *check.reasons, *conf_reasons]
        if confidence is not None and confidence < cfg.min_confidence:
            reasons.append("low_confidence")
        if obs.is_fake:
            reasons.append("fake_plate_flag")
        for reason in reasons:
            if reason in _INFO_REASONS:
                self.ctx.counters.inc(f"lpr.{reason}")
        doubts = [r for r in reasons if r not in _INFO_REASONS]
        status = "rejected" if check.status == "rejected" else ("suspect" if doubts else "valid")
        lane = cfg.lane or obs.lane or "0"
        heading = cfg.direction or resolve_direction(self.maps.direction(obs.direction_code), cfg.forward_is)
        oversize = [img for img in obs.images if len(img.data) > cfg.media.max_image_bytes]
        if oversize:
            status, doubts = "rejected", [*doubts, "image_too_large"]
        payload = LprPayload(
            plate=check.plate if check.status != "rejected" else None,  # never an invalid plate in `plate`
            plate_raw=check.plate_raw,
            plate_color=color,
            plate_type=self.maps.plate_type(obs.type_code, cfg.type_table),
            plate_class=check.plate_class,
            confidence=confidence,
            direction=heading or "unknown",
            lane=lane,
            is_offline_replay=obs.is_offline,
            is_fake_plate=obs.is_fake,
        )
        device_time = obs.device_time
        if device_time is not None and abs(device_time - now) > MAX_CLOCK_SKEW and not obs.is_offline:
            self.ctx.counters.inc("lpr.clock_skew")
            device_time = None
        # Without a usable device clock, the read happened when it was received (not when it is committed).
        device_time = device_time or now
        quality = Quality(status=status, reasons=tuple(dict.fromkeys(doubts))) if status != "valid" else Quality()
        type_code = token(obs.type_code)
        raw_code = f"{obs.vendor}:type/{type_code}" if type_code is not None else None
        if oversize:
            self.ctx.counters.inc("lpr.rejected.image_too_large")
            biggest = max(len(img.data) for img in oversize)
            draft = EventDraft(
                type="lpr.plate_read",
                cls="event",
                payload=payload,
                quality=quality,
                seq=obs.seq,
                time=device_time,
                raw_code=raw_code,
            )
            limit = cfg.media.max_image_bytes
            reason = f"image of {biggest} bytes exceeds {limit}"
            refusal: dict[str, Any] = {"error": "image_too_large", "reason": reason}
            if cfg.protocol == "zhenshi" and obs.seq is not None:
                # The read is recorded (rejected): a buffered record must not block the camera's drain.
                refusal.update(zhenshi_reply(False, obs.seq, offline=bool(obs.is_offline)))
            return Outcome([draft], _json_reply(refusal, 413))

        names = [(image_name(cfg.id, img.data), img.data) for img in obs.images]
        uris = tuple(self._uris.uri(n) for n, _ in names) or None
        if obs.is_offline:  # buffered while the camera was cut off: its barrier acted long ago, nothing to decide
            offline_key = (f"offline:{obs.serial or ''}", str(obs.seq)) if obs.seq is not None else None
            if offline_key is not None:
                recent = self._recent.get(offline_key)
                if recent is not None and mono - recent.at < OFFLINE_DEDUPE_S:
                    self.ctx.counters.inc("lpr.offline_duplicates")
                    reply = self._decision_reply(recent.decision, path, obs)
                    return Outcome([], reply, duplicate=True, wait_for=recent.committed)
                self._recent[offline_key] = _Recent(mono, Decision("deny", "unknown"), _pending_future())
                self._prune(mono)
            blocked = check.usable and self.rules.is_blocked(check.plate or "")
            read = EventDraft(
                type="lpr.plate_read",
                cls="event",
                severity="major" if blocked else "info",
                payload=payload.model_copy(update={"image_uri": uris}),
                quality=quality,
                seq=obs.seq,
                time=device_time,
                raw_code=raw_code,
            )
            self.ctx.counters.inc("lpr.offline_reads")
            reply = self._decision_reply(Decision("deny", "unknown"), path, obs)
            return Outcome([read], reply, names, offline_key)

        key = (check.plate, lane) if check.plate is not None and status != "rejected" else None
        if key is not None and cfg.dedupe_s > 0:
            recent = self._recent.get(key)
            if recent is not None and mono - recent.at < cfg.dedupe_s:
                recent.suppressed += 1
                self.ctx.counters.inc("lpr.duplicates_suppressed")
                return Outcome(
                    [], self._decision_reply(recent.decision, path, obs), duplicate=True, wait_for=recent.committed
                )
        decision = self.rules.decide(check, now)
        suppressed: int | None = None
        if key is not None:
            previous = self._recent.get(key)
            suppressed = previous.suppressed if previous is not None and previous.suppressed else None
            self._recent[key] = _Recent(mono, decision, _pending_future())
            self._prune(mono)

        payload = payload.model_copy(update={"image_uri": uris, "suppressed": suppressed})
        severity: Severity = "major" if decision.reason == "blocklist" else "info"
        read = EventDraft(
            type="lpr.plate_read",
            cls="event",
            severity=severity,
            payload=payload,
            quality=quality,
            seq=obs.seq,
            time=device_time,
            raw_code=raw_code,
        )
        gate = EventDraft(
            type="lpr.gate_decision",
            cls="event",
            severity=severity,
            seq=obs.seq,
            time=device_time,
            payload=LprPayload(
                plate=payload.plate,
                lane=lane,
                direction=payload.direction,
                decision=decision.action,
                reason=decision.reason,
                pass_id=decision.pass_id,
            ),
        )
        self.ctx.counters.inc("lpr.reads")
        return Outcome([read, gate], self._decision_reply(decision, path, obs), names, key, decision)

    def _prune(self, mono: float) -> None:
        if len(self._recent) < 1024:
            return

        def stale(key: tuple[str, str], recent: _Recent) -> bool:
            # Past its window an entry goes, committed or not: whoever waits holds its future.
            window = OFFLINE_DEDUPE_S if key[0].startswith("offline:") else self.cfg.dedupe_s
            return recent.at < mono - window

        for key in [k for k, r in self._recent.items() if stale(k, r)]:
            del self._recent[key]

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
