"""The camera's pure decoder: raw inputs (alert bodies, event lines) in, event drafts out.

Raw inputs are JSON-able and recorded, so `courtyard replay` gives the same events:

    isapi, isapi_push  {"ctype": "application/xml", "body": "<EventNotificationAlert ...>", "pictures": [...]}
    dahua              {"body": "Code=...;action=...;index=N;data={...}", "pictures": [...]}
    onvif              what drivers/camera/onvif.py records (its `parse` reads it)
    tick               {}: pulse-held alarms whose hold ran out are cleared
    reject             {"error": "...", "detail": "..."}: the transport refused input (bad boundary, ...)

`pictures` are media-store names the transport wrote before ingesting: events carry their URI.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from drivers.camera.config import CameraConfig
from drivers.camera.events import CameraInputError, Context, Signal, SignalBook, rejected
from gateway.driver import DeviceContext, EventDraft
from gateway.media import MediaStore
from schemas.common import Location, Quality

Parser = Callable[[dict[str, Any], CameraConfig], list[Signal]]
#: channel -> "module:function" parsing that channel's raw input into signals (imported on first use)
PARSERS: dict[str, str] = {
    "isapi": "drivers.camera.isapi:parse_alert",
    "isapi_push": "drivers.camera.isapi:parse_alert",
    "dahua": "drivers.camera.dahua:parse_event",
    "onvif": "drivers.camera.onvif:parse",
}


class CameraDecoder:
    """One camera's decoding state: open alarms, pulse holds; never raises on camera data."""

    def __init__(self, config: CameraConfig, ctx: DeviceContext | None = None) -> None:
        self.config = config
        self.ctx = ctx
        names = {n: ch.name for n, ch in config.channels.items() if ch.name}
        media = MediaStore(config.media.path, config.media.max_bytes, uri_prefix=config.media.uri_prefix)
        self.book = SignalBook(
            Context(config.id, config.protocol, motion=config.motion, pulse_hold_s=config.pulse_hold_s,
                    channel_names=names),
            place=self._place, snapshot_uri=media.uri,
        )
        self._parsers: dict[str, Parser] = {}
        self.rejected = 0

    def _place(self, channel: int | None) -> dict[str, Any]:
        location = self.config.channel_location(channel)
        return {"location": location if location != Location() else None,
                "where": self.config.channel_where(channel)}

    def _parser(self, channel: str) -> Parser:
        parser = self._parsers.get(channel)
        if parser is None:
            module, _, name = PARSERS[channel].partition(":")
            parser = self._parsers[channel] = getattr(importlib.import_module(module), name)
        return parser

    def feed(self, channel: str, raw: Any, now: datetime) -> list[EventDraft]:
        """Drafts for one raw input received at `now`."""
        if channel == "tick":
            return self.book.expire(now)
        if channel == "reject":
            data = raw if isinstance(raw, dict) else {}
            return [*self.book.expire(now), self._reject(str(data.get("error", "rejected")),
                                                          str(data.get("detail", "")))]
        if channel not in PARSERS or not isinstance(raw, dict):
            return [self._reject("unknown_channel", f"no parser for channel {channel!r}")]
        try:
            signals = self._parser(channel)(raw, self.config)
        except CameraInputError as exc:
            return [*self.book.expire(now), self._reject(exc.error, exc.detail)]
        except Exception as exc:  # a parser bug must not take the camera down: counted, kept
            return [*self.book.expire(now), self._reject("parser_error", f"{type(exc).__name__}: {exc}")]
        drafts: list[EventDraft] = self.book.expire(now)
        for signal in signals:
            when = signal.time
            if when is None or abs((when - now).total_seconds()) <= self.config.max_clock_skew_s:
                drafts += self.book.feed(signal, now)
                continue
            # The camera's clock is off: its time would misplace the event; receipt time, suspect.
            suspect = Quality(status="suspect", reasons=("clock_skew",))
            drafts += [replace(d, quality=suspect) for d in self.book.feed(replace(signal, time=None), now)]
        return drafts

    def signals(self, channel: str, raw: Any) -> list[Signal]:
        """What an input says, without bookkeeping (the transport asks before fetching a snapshot)."""
        if channel not in PARSERS or not isinstance(raw, dict):
            return []
        try:
            return self._parser(channel)(raw, self.config)
        except Exception:
            return []

    def forget(self) -> None:
        """A commit failed: open alarms are reported again by their next signal (same alarm ids)."""
        self.book.forget()

    def next_expiry(self) -> datetime | None:
        """When a pulse-held alarm is due to clear (the transport feeds a `tick` then)."""
        return self.book.next_expiry()

    def is_open(self, signal: Signal) -> bool:
        """True when a raise for `signal` would only extend an open alarm (no snapshot needed)."""
        return self.book.is_open(signal.key)

    def _reject(self, error: str, detail: str) -> EventDraft:
        self.rejected += 1
        if self.ctx is not None:
            self.ctx.counters.inc(f"camera.rejected.{error}")
        return rejected(self.config.protocol, error, detail)
