"""The `http_plate_reader` push driver: one instance per camera, one listener per address.

Per push: decode (codec), validate the plate (plates), decide the barrier (gate), store the
images (media), commit the events, and only then reply, so a barrier never opens on a
decision that could still be lost. Heartbeats and pushes keep the camera online; silence
for `offline_after` heartbeat intervals takes it offline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from drivers.http_plate_reader.barrier import IsapiBarrier
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
from drivers.http_plate_reader.listener import Policy, PushReply, PushRequest, error_body, open_listener
from drivers.http_plate_reader.media import MediaStore, image_name
from drivers.http_plate_reader.plates import check_plate, rescale_confidence
from gateway.driver import DeviceContext, EventDraft, PushDriver
from gateway.errors import DeviceUnavailable, OutboxFull
from gateway.ids import uuid7
from schemas.common import Quality, Severity
from schemas.lpr import LprPayload

#: Decoding steps worth counting but not worth lowering a read's quality.
_INFO_REASONS = frozenset({"decoded_gbk", "decoded_base64", "repaired_latin1_gbk", "repaired_utf8_gbk", "body_gbk"})
#: Device clocks further off than this are ignored (gateway receipt time is used instead).
MAX_CLOCK_SKEW = timedelta(hours=24)
#: A camera re-sends a buffered record it got no answer for (e.g. a live read interrupted the
#: drain); the same plateid within this window is the same record, committed once.
OFFLINE_DEDUPE_S = 3600.0
#: Longest a push waits for outbox room (`overflow: block`) before 503 + Retry-After: below
#: the cameras' own request timeouts (typically 3 to 10 s), so they get an answer and retry.
PUSH_COMMIT_WAIT_S = 2.0


@dataclass
class _Recent:
    """The last committed read of a plate on a lane, for de-duplication."""

    at: float
    decision: Decision
    committed: asyncio.Future[None] | None  # None: committed already (or replaying, where no loop runs)
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
    except RuntimeError:  # replay outside a loop: nothing can wait on it
        return None


def _json_reply(doc: Any, status: int = 200) -> PushReply:
    return PushReply(status, json.dumps(doc, ensure_ascii=False).encode())


class HttpPlateReader(PushDriver):
    """One plate camera pushing to the gateway."""

    def __init__(self, config: HttpPlateReaderConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.cfg = config
        self.maps = vendor_maps()[config.protocol]
        self.scale = config.confidence_scale or self.maps.confidence_scale
        self.rules = GateRules(config.access)
        self.policy = Policy(
            config.auth, config.max_body_bytes, config.rate_limit_per_s, config.rate_burst,
            tuple(config.allow_sources), config.rate_limit_total_per_s, config.rate_total_burst, config.listener,
        )
        self.media: MediaStore | None = None  # the shared, writing store; set by run()
        # URIs come from this camera's own settings, so a replay (no run()) names images identically.
        self._uris = MediaStore(config.media.path, config.media.max_bytes, uri_prefix=config.media.uri_prefix)
        self._recent: dict[tuple[str, str], _Recent] = {}
        self._last_seen: float | None = None
        self._online: bool | None = None
        self._gate_state: str | None = None
        self._open_seq = 0
        self._went_up = False  # barrier reported up since the last open (or was up already)
        self._stuck_alarm: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.barrier = IsapiBarrier(config.barrier) if config.barrier is not None else None

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Register with the shared listener and watch heartbeats until cancelled."""
        cfg = self.cfg
        key = f"http_plate_reader:{cfg.listen_host}:{cfg.listen_port}"
        try:
            listener = await self.ctx.shared(key, lambda: open_listener(cfg.listen_host, cfg.listen_port, cfg.listener))
        except OSError as exc:
            raise DeviceUnavailable(f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: {exc}") from exc
        try:
            self.media = await self.ctx.shared(f"http_plate_reader:media:{cfg.media.path.resolve()}", self._open_media)
        except OSError as exc:
            raise DeviceUnavailable(f"media folder {cfg.media.path} unusable: {exc}") from exc
        try:
            for path in cfg.url_paths:
                listener.register(path, self)
        except ValueError as exc:
            for path in cfg.url_paths:
                listener.unregister(path, self)
            raise DeviceUnavailable(str(exc)) from exc
        paths = " ".join(cfg.url_paths)
        self.ctx.log.info("camera %s listening on %s:%s %s", cfg.id, cfg.listen_host, listener.port, paths)
        try:
            await self._watch_heartbeats()
        finally:
            for path in cfg.url_paths:
                listener.unregister(path, self)
            for task in self._tasks:
                task.cancel()
            if self.barrier is not None:
                await self.barrier.aclose()

    async def _open_media(self) -> MediaStore:
        store = MediaStore(self.cfg.media.path, self.cfg.media.max_bytes, uri_prefix=self.cfg.media.uri_prefix)
        await asyncio.to_thread(store.scan)
        return store

    async def _watch_heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.heartbeat_interval_s
        started = loop.time()
        while True:
            await asyncio.sleep(min(interval / 4, 1.0))
            silent = loop.time() - (self._last_seen if self._last_seen is not None else started)
            misses = int(silent // interval)
            if misses >= self.cfg.offline_after and self._online is not False:
                self._online = False
                await self.ctx.set_online(
                    False,
                    reason=f"no push or heartbeat for {silent:.1f} s",
                    misses=misses,
                )

    async def _seen(self) -> None:
        self._last_seen = asyncio.get_running_loop().time()
        if self._online is not True:
            self._online = True
            await self.ctx.set_online(True, reason="push received")

    # ------------------------------------------------------------ listener callbacks

    def refused(self, status: int, error: str, reason: str) -> None:
        """Count pushes the listener refused (auth, size, rate, method)."""
        self.ctx.counters.inc(f"lpr.refused.{error}")

    async def handle(self, request: PushRequest) -> PushReply:
        """Decode, decide, store, commit, then reply."""
        # Every push marks its receipt time (what ctx.now() says until we next await); the body,
        # base64 pictures included, is only kept when recording is on.
        raw = (
            {
                "content_type": request.content_type,
                "body_b64": base64.b64encode(request.body).decode(),
                "path": request.path,
            }
            if self.ctx.recording
            else {}
        )
        self.ctx.record("push", raw)
        now = self.ctx.now()
        # De-duplication runs on receipt time too, so a replay (fed the recorded times) suppresses the same reads.
        outcome = self.process(request.content_type, request.body, now, now.timestamp(), request.path)
        reply = await self._answer(outcome)
        if outcome.alive:  # after the push's own events, as a replay (push, then link change) orders them
            await self._seen()
        return reply

    async def _answer(self, outcome: Outcome) -> PushReply:
        """Commit what one push produced (store images first), then say what to reply."""
        if outcome.duplicate:  # answer as the original did, once the original is committed
            if outcome.wait_for is not None:
                try:
                    await asyncio.shield(outcome.wait_for)
                except Exception:
                    return PushReply(503, error_body("not_committed", "the original read could not be committed"))
            return outcome.reply
        try:
            drafts = outcome.drafts
            if outcome.images:
                drafts = await self._store_images(outcome)
                if not drafts:
                    return PushReply(507, error_body("media_failed", "image could not be stored"))
            if drafts:
                await self.ctx.emit(drafts, wait_s=PUSH_COMMIT_WAIT_S)
        except asyncio.CancelledError as exc:  # e.g. shutdown: duplicates waiting on this read must not hang
            self._forget(outcome, exc)
            raise
        except OutboxFull as exc:  # nothing committed, barrier not opened: the camera retries later
            self._forget(outcome, exc)
            self.ctx.counters.inc("lpr.outbox_full")
            return PushReply(503, error_body("outbox_full", str(exc)),
                             headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
        except Exception as exc:
            self._forget(outcome, exc)
            self.ctx.log.error("events not committed: %s", exc)
            return PushReply(503, error_body("not_committed", f"{type(exc).__name__}: events not committed"))
        self._committed(outcome)
        if outcome.decision is not None and outcome.decision.opens:
            if self.barrier is not None:
                self._background(self._command_barrier(outcome.drafts[-1]))
            if self.cfg.gate_input is not None:
                self._watch_barrier()
        return outcome.reply

    async def _store_images(self, outcome: Outcome) -> list[EventDraft]:
        assert self.media is not None
        try:
            for name, data in outcome.images:
                await self.media.store(name, data)
        except (OSError, ValueError) as exc:
            self.ctx.counters.inc("lpr.image_store_failed")
            self.ctx.log.error("image store failed: %s", exc)
            self._forget(outcome, exc)
            return []
        return outcome.drafts

    def _committed(self, outcome: Outcome) -> None:
        if outcome.dedupe_key is not None:
            recent = self._recent.get(outcome.dedupe_key)
            if recent is not None and recent.committed is not None:
                if not recent.committed.done():
                    recent.committed.set_result(None)
                recent.committed = None

    def _forget(self, outcome: Outcome, exc: BaseException) -> None:
        if outcome.dedupe_key is not None:
            recent = self._recent.pop(outcome.dedupe_key, None)
            if recent is not None and recent.committed is not None and not recent.committed.done():
                recent.committed.set_exception(RuntimeError(f"original read not committed: {exc!r}"))
                recent.committed.exception()  # retrieved: no "never retrieved" warning if nobody waits

    # ------------------------------------------------------------ decoding (no I/O)

    def replay(self, channel: str, data: Any, now: datetime) -> list[EventDraft]:
        """Feed a recorded input through the same code; images get the same URIs, unwritten.

        Channels: `push` (a camera's request), `barrier_stuck` (the barrier window ran out) and
        `barrier_command` (how an ISAPI open went): the last two are the driver's own timers and
        I/O outcomes, recorded so a replay reproduces their events, alarm ids included.
        """
        if not isinstance(data, dict):
            return []
        if channel == "barrier_stuck":
            return self._stuck_drafts(data, now)
        if channel == "barrier_command":
            return [self._command_draft(data, now)]
        if channel != "push":
            return []
        try:
            body = base64.b64decode(str(data.get("body_b64", "")), validate=True)
        except (binascii.Error, ValueError):
            return []
        path = str(data.get("path") or self.cfg.url_paths[0])
        outcome = self.process(str(data.get("content_type", "")), body, now, now.timestamp(), path)
        self._committed(outcome)
        return [] if outcome.duplicate else outcome.drafts

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
        self._gate_state = state
        self._went_up = self._went_up or state == "up"
        drafts = [EventDraft(type="lpr.gate_state", cls="status", payload=LprPayload(gate_state=state), time=now)]
        if state == "up" and self._stuck_alarm is not None:
            drafts.append(
                EventDraft(
                    type="lpr.barrier_stuck",
                    cls="fault",
                    severity="major",
                    state="cleared",
                    alarm_id=self._stuck_alarm,
                    payload=LprPayload(gate_state=state),
                    time=now,
                )
            )
            self._stuck_alarm = None
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
            window = OFFLINE_DEDUPE_S if key[0].startswith("offline:") else self.cfg.dedupe_s
            return recent.at < mono - window and recent.committed is None

        for key in [k for k, r in self._recent.items() if stale(k, r)]:
            del self._recent[key]

    # ------------------------------------------------------------ barrier supervision

    def _background(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _watch_barrier(self) -> None:
        self._open_seq += 1
        self._went_up = self._gate_state == "up"  # GPIO reports changes only: a barrier already up counts
        self._background(self._expect_up(self._open_seq))

    async def _command_barrier(self, decision: EventDraft) -> None:
        """Open a barrier the push reply cannot open (ISAPI), and record how that went."""
        assert self.barrier is not None
        failure = await self.barrier.command("open")
        self.ctx.counters.inc("lpr.barrier_commands" if failure is None else "lpr.barrier_command_failed")
        gate = decision.payload
        assert isinstance(gate, LprPayload)
        outcome = {"seq": decision.seq, "plate": gate.plate, "lane": gate.lane, "direction": gate.direction,
                   "failure": failure}
        self.ctx.record("barrier_command", outcome)
        try:
            await self.ctx.emit([self._command_draft(outcome, self.ctx.now())])
        except Exception:
            self.ctx.log.exception("barrier command event not committed")

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

    async def _expect_up(self, seq: int) -> None:
        await asyncio.sleep(self.cfg.barrier_timeout_s)
        # Up at any moment of the window is enough: a barrier may already be down again when it ends.
        if seq != self._open_seq or self._went_up or self._stuck_alarm is not None:
            return
        ran_out = {"alarm_id": uuid7(), "gate_state": self._gate_state or "down"}
        self.ctx.record("barrier_stuck", ran_out)  # an input like a push: a replay raises the same alarm
        drafts = self._stuck_drafts(ran_out, self.ctx.now())
        try:
            await self.ctx.emit(drafts)
        except Exception:  # the outbox refused: keep serving pushes, try again on the next open
            self.ctx.log.exception("barrier_stuck fault not committed")
            self._stuck_alarm = None

    def _stuck_drafts(self, ran_out: dict[str, Any], now: datetime) -> list[EventDraft]:
        """The barrier window ran out: raise `lpr.barrier_stuck` (cleared by the next 'up')."""
        self._stuck_alarm = str(ran_out.get("alarm_id") or uuid7())
        return [
            EventDraft(
                type="lpr.barrier_stuck",
                cls="fault",
                severity="major",
                state="raised",
                alarm_id=self._stuck_alarm,
                payload=LprPayload(
                    gate_state=str(ran_out.get("gate_state") or "down"),
                    detail=f"opened, but barrier not up after {self.cfg.barrier_timeout_s:g} s",
                ),
                time=now,
            )
        ]
