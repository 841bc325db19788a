"""Helpers for testing drivers without the gateway runtime.

`IngestingContext` gives a fake `DeviceContext` the runtime's `bind`/`ingest` behaviour on
top of three things the fake provides: `now()`, `emit(drafts)` and, optionally,
`record(channel, raw)`. Drafts reach `emit` with `time` set to the receipt time when the
decoder left it empty, as the runtime's envelopes would carry it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from gateway.driver import BeforeCommit, Decoder, EventDraft, Ingested
from gateway.errors import OutboxFull


class IngestingContext:
    """Mixin: the one ingest path (decode at receipt time, commit, forget on failure) for fakes."""

    decoder: Decoder | None = None

    def now(self) -> datetime:
        raise NotImplementedError

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        raise NotImplementedError

    def bind(self, decoder: Decoder) -> None:
        """The decoder `ingest` feeds."""
        self.decoder = decoder

    async def ingest(self, channel: str, raw: Any, *, before_commit: BeforeCommit | None = None,
                     wait_s: float | None = None) -> Ingested:
        """Like `DeviceRuntime.ingest`, with `emit` as the commit."""
        (done,) = await self.ingest_many([(channel, raw)], before_commit=before_commit, wait_s=wait_s)
        return done

    async def ingest_many(self, inputs: Sequence[tuple[str, Any]], *, before_commit: BeforeCommit | None = None,
                          wait_s: float | None = None) -> list[Ingested]:
        """Like `DeviceRuntime.ingest_many`: decode each input at its receipt time, one `emit` (no `wait_s`)."""
        assert self.decoder is not None, "no decoder bound"
        record = getattr(self, "record", None)
        done = []
        for channel, raw in inputs:
            now = self.now()
            if record is not None:
                record(channel, raw)
            drafts = self.decoder.feed(channel, raw, now)
            drafts[:] = [d if d.time else replace(d, time=now) for d in drafts]  # in place: keeps a list subclass
            done.append(Ingested(drafts, now))
        drafts = [d for i in done for d in i.drafts]
        try:
            if before_commit is not None:
                await before_commit(done)
            if drafts:
                await self.emit(drafts)
        except OutboxFull:  # only lane-1 events are refused for room: the decoder keeps its state
            raise
        except BaseException:
            self.decoder.forget()
            raise
        return done
