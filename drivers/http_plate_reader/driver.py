"""The `http_plate_reader` push driver (transport): one instance per camera, one listener per address.

Per push: hand it to `ctx.ingest` (the decoder decodes, validates the plate, decides the
barrier), store the images before the commit, and only once the events are committed reply,
so a barrier never opens on a decision that could still be lost. Heartbeats and pushes keep
the camera online; silence for `offline_after` heartbeat intervals takes it offline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import Coroutine, Sequence
from typing import Any

from drivers.http_plate_reader.barrier import IsapiBarrier
from drivers.http_plate_reader.commands import mailbox, reply_instruction
from drivers.http_plate_reader.config import HttpPlateReaderConfig
from drivers.http_plate_reader.decoder import STUCK, Decoded, Outcome, PlateDecoder
from drivers.http_plate_reader.listener import Policy, PushReply, PushRequest, error_body, open_listener
from drivers.http_plate_reader.media import MediaStore
from gateway.driver import DeviceContext, EventDraft, Ingested, PushDriver
from gateway.errors import DeviceUnavailable, OutboxFull
from schemas.lpr import LprPayload

__all__ = ["HttpPlateReader", "Outcome"]

#: Longest a push waits for outbox room (`overflow: block`) before 503 + Retry-After: below
#: the cameras' own request timeouts (typically 3 to 10 s), so they get an answer and retry.
PUSH_COMMIT_WAIT_S = 2.0


class _MediaFailed(Exception):
    """An image could not be stored: the push's events must not be committed."""


class HttpPlateReader(PushDriver):
    """One plate camera pushing to the gateway."""

    def __init__(self, config: HttpPlateReaderConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.cfg = config
        self.plates = PlateDecoder(config, ctx)
        self.decoder = self.plates
        self.policy = Policy(
            config.auth, config.max_body_bytes, config.rate_limit_per_s, config.rate_burst,
            tuple(config.allow_sources), config.rate_limit_total_per_s, config.rate_total_burst, config.listener,
        )
        self.media: MediaStore | None = None  # the shared, writing store; set by run()
        self._last_seen: float | None = None
        self._online: bool | None = None
        self._open_seq = 0
        self._went_up = False  # barrier reported up since the last open (or was up already)
        self._tasks: set[asyncio.Task[None]] = set()
        self.barrier = IsapiBarrier(config.barrier) if config.barrier is not None else None

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Register with the shared listener and watch heartbeats until cancelled."""
        cfg = self.cfg
        key = f"http_plate_reader:{cfg.listen_host}:{cfg.listen_port}"
        try:
            self.media = await self.ctx.shared(f"http_plate_reader:media:{cfg.media.path.resolve()}", self._open_media)
        except OSError as exc:
            raise DeviceUnavailable(f"media folder {cfg.media.path} unusable: {exc}") from exc
        # Bind, then register with no await in between: a camera that posts the moment the port
        # opens must find its path, not a 404 it may take as "drop this record".
        try:
            listener = await self.ctx.shared(key, lambda: open_listener(cfg.listen_host, cfg.listen_port, cfg.listener))
        except OSError as exc:
            raise DeviceUnavailable(f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: {exc}") from exc
        try:
            for path in cfg.url_paths:
                listener.register(path, self)
        except ValueError as exc:
            for path in cfg.url_paths:
                listener.unregister(path, self)
            raise DeviceUnavailable(str(exc)) from exc
        if cfg.protocol == "zhenshi" or cfg.gate_input is not None:  # commands: delivery and read-back
            mailbox(cfg.id).gate_state = lambda: self.plates.gate_state
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
        """Ingest (decode, decide), store the images, commit, then reply from the decoded outcome."""
        # Recorded, the body travels as base64 (pictures included); live, as bytes (no copy).
        body: dict[str, Any] = (
            {"body_b64": base64.b64encode(request.body).decode()} if self.ctx.recording else {"body": request.body}
        )
        raw = {"content_type": request.content_type, "path": request.path, **body}
        decoded: list[Outcome] = []

        async def store_images(done: Sequence[Ingested]) -> None:
            drafts = done[0].drafts
            if not isinstance(drafts, Decoded):
                return  # the decoder crashed (counted by the runtime): nothing to store
            decoded.append(drafts.outcome)
            await self._store_images(drafts.outcome)

        try:
            await self.ctx.ingest("push", raw, before_commit=store_images, wait_s=PUSH_COMMIT_WAIT_S)
        except _MediaFailed as exc:
            self.plates.not_committed(decoded[0], exc)
            return PushReply(507, error_body("media_failed", "image could not be stored"))
        except asyncio.CancelledError as exc:  # e.g. shutdown: duplicates waiting on this read must not hang
            if decoded:
                self.plates.not_committed(decoded[0], exc)
            raise
        except OutboxFull as exc:  # nothing committed, barrier not opened: the camera retries later
            if not decoded:
                raise
            self.plates.not_committed(decoded[0], exc)
            self.ctx.counters.inc("lpr.outbox_full")
            return PushReply(503, error_body("outbox_full", str(exc)),
                             headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
        except Exception as exc:  # e.g. a disk error: the camera must retry, so it gets a 503
            if not decoded:  # failed before the commit: a bug, the listener answers 500
                raise
            self.plates.not_committed(decoded[0], exc)
            self.ctx.log.error("events not committed: %s", exc)
            return PushReply(503, error_body("not_committed", f"{type(exc).__name__}: events not committed"))
        if not decoded:
            return PushReply(500, error_body("internal", "the push could not be decoded"))
        outcome = decoded[0]
        reply = await self._answer(outcome)
        if self.cfg.protocol == "zhenshi" and outcome.alive and reply.status == 200:
            reply = self._deliver_command(outcome, reply)
        if outcome.alive:  # after the push's own events, as a replay (push, then link change) orders them
            await self._seen()
        return reply

    def _deliver_command(self, outcome: Outcome, reply: PushReply) -> PushReply:
        """The reply channel: the camera spoke (commands delivered earlier are taken); a queued
        command rides this reply unless it is a plate read's (that one carries its own decision)."""
        box = mailbox(self.cfg.id)
        box.seen()
        if outcome.decision is not None or outcome.duplicate or any(
                d.type == "lpr.plate_read" for d in outcome.drafts):
            return reply
        item = box.take(asyncio.get_running_loop().time())
        if item is None:
            return reply
        try:
            doc = json.loads(reply.body)
        except ValueError:
            return reply
        if not isinstance(doc, dict):
            return reply
        doc.update(reply_instruction(item))
        self.ctx.counters.inc("lpr.commands_delivered")
        return PushReply(reply.status, json.dumps(doc, ensure_ascii=False).encode(), reply.content_type, reply.headers)

    async def _answer(self, outcome: Outcome) -> PushReply:
        """The reply to a committed push; a duplicate answers as its original, once that is committed."""
        if self.plates.gate_state == "up":
            self._went_up = True
        if outcome.duplicate:
            if outcome.wait_for is not None:
                try:
                    await asyncio.shield(outcome.wait_for)
                except Exception:
                    return PushReply(503, error_body("not_committed", "the original read could not be committed"))
            return outcome.reply
        self.plates.committed(outcome)
        if outcome.decision is not None and outcome.decision.opens:
            if self.barrier is not None:
                self._background(self._command_barrier(outcome.drafts[-1]))
            if self.cfg.gate_input is not None:
                self._watch_barrier()
        return outcome.reply

    async def _store_images(self, outcome: Outcome) -> None:
        if not outcome.images:
            return
        assert self.media is not None
        try:
            for name, data in outcome.images:
                await self.media.store(name, data)
        except (OSError, ValueError) as exc:
            self.ctx.counters.inc("lpr.image_store_failed")
            self.ctx.log.error("image store failed: %s", exc)
            raise _MediaFailed(str(exc)) from exc

    # ------------------------------------------------------------ barrier supervision

    def _background(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _watch_barrier(self) -> None:
        self._open_seq += 1
        self._went_up = self.plates.gate_state == "up"  # GPIO reports changes only: a barrier already up counts
        self._background(self._expect_up(self._open_seq))

    async def _command_barrier(self, decision: EventDraft) -> None:
        """Open a barrier the push reply cannot open (ISAPI), and ingest how that went."""
        assert self.barrier is not None
        failure = await self.barrier.command("open")
        self.ctx.counters.inc("lpr.barrier_commands" if failure is None else "lpr.barrier_command_failed")
        gate = decision.payload
        assert isinstance(gate, LprPayload)
        outcome = {"seq": decision.seq, "plate": gate.plate, "lane": gate.lane, "direction": gate.direction,
                   "failure": failure}
        try:
            await self.ctx.ingest("barrier_command", outcome)
        except Exception:
            self.ctx.log.exception("barrier command event not committed")

    async def _expect_up(self, seq: int) -> None:
        await asyncio.sleep(self.cfg.barrier_timeout_s)
        # Up at any moment of the window is enough: a barrier may already be down again when it ends.
        stuck = self.plates.alarms.get(STUCK)
        if seq != self._open_seq or self._went_up or (stuck is not None and stuck.confirmed):
            return
        try:  # an input like a push: recorded, so a replay raises the same alarm
            await self.ctx.ingest(STUCK, {"gate_state": self.plates.gate_state or "down"})
        except Exception:  # the outbox refused: keep serving pushes, try again on the next open
            self.ctx.log.exception("barrier_stuck fault not committed")
