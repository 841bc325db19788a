"""What the console shows, kept current from the committed event stream.

`LiveModel` watches the outbox (`Outbox.add_observer`): every committed batch updates the
devices' state, the alarm queue and the command states, and becomes numbered messages in a
bounded ring. A browser reads a snapshot (`snapshot()`, which carries the number it is current
to), then follows the stream from that number; after a reconnect it asks for what followed
the last number it saw (SSE `Last-Event-ID`). Numbers are prefixed with this run's id, so a
browser that reconnects to a restarted gateway, or fell behind further than the ring holds,
is told to reload its snapshot instead of silently missing something. Alarms are keyed by
`alarm_id`, so a message applied twice changes nothing.

With the alarm lifecycle (`gw.alarm_book`, gateway/alarm_book.py) the queue takes the book's
views for the alarms it manages; alarms it does not manage (and every alarm, without a book)
come from their raise and clear events and cannot be acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from pydantic import ValidationError

from schemas.event import Event

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)

SEVERITY_RANK = {"critical": 0, "major": 1, "minor": 2, "info": 3}
#: Messages kept for reconnecting browsers (a few minutes of a busy site).
RING = 20_000
#: Payload fields never merged into a device's state (raw dumps, per-event detail).
_NOT_STATE = {"raw", "raw_hex", "error", "detail", "kind", "duration_s", "suppressed"}
#: Payloads about something other than the device's own state (its alarms' lifecycle, rules, commands).
_NOT_DEVICE_STATE = {"alarm_lifecycle", "rule", "command", "connectivity"}


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def media_path(uri: str, stores: Sequence[tuple[Path, str | None]]) -> Path | None:
    """The file a media URI names, when it lies inside one of the media stores (root, uri_prefix).

    Events carry `file://` URIs, or `<uri_prefix>/<name>` when a store publishes its pictures
    through another server; either way the console serves the file itself, from the store.
    """
    parts = urlsplit(uri)
    candidates: list[Path] = []
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        candidates.append(Path(unquote(parts.path)))
    for root, prefix in stores:
        if prefix and uri.startswith(prefix.rstrip("/") + "/"):
            candidates.append(root / unquote(uri[len(prefix.rstrip("/")) + 1:]))
    for path in candidates:
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        for root, _ in stores:
            if real.is_relative_to(root.resolve()) and real.is_file():
                return real
    return None


@dataclass
class AlarmItem:
    """One alarm of the queue, as the page needs it."""

    alarm_id: str
    device: str
    kind: str
    type: str
    severity: str | None
    state: str  # active_unacked | active_acked | cleared_unacked | closed
    raised_at: str
    cleared_at: str | None = None
    shelved_until: str | None = None
    latched: bool = False
    acked_by: str | None = None
    comment: str | None = None
    location: dict[str, str] = field(default_factory=dict)
    last_event_id: str | None = None
    snapshot: str | None = None  # a console URL of the camera picture
    actions: list[str] = field(default_factory=list)  # command ids a rule started for it
    managed: bool = False  # its lifecycle is the alarm book's (acknowledge, shelve, reset apply)
    escalated: bool = False  # not acknowledged in its severity's time (the book says so)

    def public(self) -> dict[str, Any]:
        return asdict(self)


class LiveModel:
    """Devices, alarms and commands of one gateway, plus the numbered stream of their changes."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.run_id = secrets.token_hex(4)
        self.cursor = 0
        self._ring: deque[tuple[int, str]] = deque(maxlen=RING)  # (number, JSON message)
        self._waiter: asyncio.Future[None] | None = None  # resolved by the next message
        self.devices: dict[str, dict[str, Any]] = {}
        self.alarms: dict[str, AlarmItem] = {}
        self.commands: dict[str, dict[str, Any]] = {}
        self._raise_ids: dict[str, str] = {}  # raise event id -> alarm id (rule linkage)
        self._extras: dict[str, dict[str, Any]] = {}  # alarm id -> what its raise event adds
        self._unsubscribe: list[Callable[[], None]] = []
        self._book: Any = None
        self.counters = gw.counters.child("console.")
        for dev in gw.config.devices:
            self.devices[dev.id] = {
                "id": dev.id, "name": dev.name or dev.id, "driver": dev.driver, "kind": _kind_of(dev.driver),
                "enabled": dev.enabled, "location": dev.location.model_dump(exclude_none=True),
                "online": None, "since": None, "state": {}, "last": None,
            }

    # --- lifecycle -----------------------------------------------------------------------------

    async def attach(self) -> None:
        """Follow the committed stream (before any driver runs) and load the alarms left open."""
        self._unsubscribe.append(self.gw.outbox.add_observer(self._committed))
        from gateway import registry

        model = registry.event_model()
        for body in await self.gw.outbox.open_alarms():
            try:
                ev = model.model_validate_json(body)
            except ValidationError:
                continue
            if ev.alarm_id is not None:
                self._alarm_event(ev)

    async def start(self) -> None:
        """Once the gateway runs: take the queue from the alarm book, when there is one."""
        book = getattr(self.gw, "alarm_book", None)
        if book is not None and self._book is None:
            self._book = book
            for view in book.active():  # alarms it does not manage stay as their events left them
                self._apply_view(view, publish=False)
            self._unsubscribe.append(book.subscribe(self._book_changed))
            self._publish({"t": "reload"})  # pages reload their queue from the book's

    def stop(self) -> None:
        """Stop following (the ring stays readable)."""
        for undo in self._unsubscribe:
            undo()
        self._unsubscribe.clear()

    @property
    def alarm_book(self) -> Any:
        """The alarm book the queue follows (None: the queue follows raise and clear events)."""
        return self._book

    # --- the stream ---------------------------------------------------------------------------

    def _publish(self, message: dict[str, Any]) -> None:
        self.cursor += 1
        self._ring.append((self.cursor, json.dumps(message, separators=(",", ":"), default=str)))
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # every stream waiting wakes once, whatever the batch size

    def stream_id(self, n: int) -> str:
        """The SSE id of message `n`."""
        return f"{self.run_id}:{n}"

    def parse_stream_id(self, text: str | None) -> int | None:
        """The message number of an SSE id from this run; None: unknown (another run, garbage)."""
        if not text:
            return None
        run, _, n = text.partition(":")
        if run != self.run_id or not n.isdigit() or len(n) > 18:
            return None
        value = int(n)
        return value if value <= self.cursor else None

    def since(self, n: int) -> list[tuple[int, str]] | None:
        """Messages after `n`; None when some of them have left the ring (reload the snapshot)."""
        if n >= self.cursor:
            return []
        if not self._ring or self._ring[0][0] > n + 1:
            return None
        start = n + 1 - self._ring[0][0]
        return [self._ring[i] for i in range(start, len(self._ring))]

    async def wait(self, n: int, timeout: float) -> None:
        """Until there is a message after `n`, or `timeout` seconds."""
        if self.cursor > n:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._waiter), timeout)

    # --- what the page loads --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, current to `cursor`."""
        return {
            "cursor": self.stream_id(self.cursor),
            "devices": list(self.devices.values()),
            "alarms": [a.public() for a in self.queue()],
            "commands": self.commands,
            "lifecycle": self.alarm_book is not None,
        }

    def queue(self) -> list[AlarmItem]:
        """Open alarms, most severe first, then oldest first."""
        return sorted((a for a in self.alarms.values() if a.state != "closed"),
                      key=lambda a: (SEVERITY_RANK.get(a.severity or "info", 4), a.raised_at))

    # --- updates ---------------------------------------------------------------------------------

    def _committed(self, events: Sequence[Event]) -> None:
        for ev in events:
            try:
                self._event(ev)
            except Exception:  # one odd event must not stop the console's view of the rest
                self.counters.inc("event_errors")
                log.exception("console could not apply event %s", ev.id)

    def _event(self, ev: Event) -> None:
        dev = self.devices.get(ev.device.id)
        p = ev.payload.model_dump(mode="json", exclude_none=True)
        if dev is not None:
            changed = False
            if ev.class_ == "connectivity":
                online = bool(p.get("online"))
                if dev["online"] != online:
                    dev["online"], dev["since"], changed = online, _iso(ev.time), True
                if online is False and p.get("reason"):
                    dev["state"]["offline_reason"] = p["reason"]
                    changed = True
            elif ev.class_ in ("status", "event", "alarm", "fault") and p.get("kind") not in _NOT_DEVICE_STATE:
                for k, v in p.items():
                    if k not in _NOT_STATE and dev["state"].get(k) != v:
                        dev["state"][k] = v
                        changed = True
                if dev["online"] is not True and ev.class_ == "status" and ev.quality.status == "valid":
                    dev["online"], dev["since"], changed = True, _iso(ev.time), True
            if ev.class_ != "status":
                dev["last"] = {"type": ev.type, "time": _iso(ev.time), "severity": ev.severity}
                changed = True
            if changed:
                self._publish({"t": "device", "device": dev})
        if ev.class_ == "command":
            self._command(ev, p)
        elif ev.class_ == "event" and ev.type.startswith("rule."):
            self._rule(ev, p)
        if ev.class_ not in ("status", "command"):
            self._publish({"t": "event", "event": self.event_row(ev)})
        if ev.alarm_id is not None and ev.state == "raised":
            self._note_raise(ev)
        if ev.alarm_id is not None and ev.state in ("raised", "cleared"):
            item = self.alarms.get(ev.alarm_id)
            if item is not None and item.managed:  # the book owns its state; the raise adds the picture
                if ev.state == "raised":
                    self._decorate(item, publish=True)
            elif self._book is None or self._book.get(ev.alarm_id) is None:
                # Without a book, or an alarm the book does not manage (or has not taken in yet: its
                # view replaces this entry when it does).
                self._alarm_event(ev, publish=True)

    def event_row(self, ev: Event) -> dict[str, Any]:
        """One event as the page's event log shows it."""
        return {
            "id": ev.id, "time": _iso(ev.time), "device": ev.device.id, "kind": ev.device.kind, "class": ev.class_,
            "type": ev.type, "severity": ev.severity, "state": ev.state, "alarm_id": ev.alarm_id,
            "payload": ev.payload.model_dump(mode="json", exclude_none=True, exclude={"raw"}),
        }

    def _command(self, ev: Event, p: dict[str, Any]) -> None:
        cid = p.get("command_id")
        if not cid:
            return
        entry = {"id": cid, "device": ev.device.id, "name": p.get("name"), "state": p.get("command_state"),
                 "reason": p.get("reason"), "requester": p.get("requester"), "time": _iso(ev.time),
                 "args": p.get("args", {})}
        self.commands[cid] = entry
        if len(self.commands) > 2000:  # the journal keeps them all; the page needs the recent ones
            for old in list(self.commands)[:500]:
                del self.commands[old]
        self._publish({"t": "command", "command": entry})

    def _rule(self, ev: Event, p: dict[str, Any]) -> None:
        """Link the commands a rule started to the alarm that triggered it (best effort on the payload)."""
        alarm_ids = {a for a in (ev.alarm_id, p.get("alarm_id")) if isinstance(a, str)}
        for key in ("trigger_event_ids", "triggers", "trigger_events"):
            for tid in p.get(key) or ():
                if isinstance(tid, str) and tid in self._raise_ids:
                    alarm_ids.add(self._raise_ids[tid])
                elif isinstance(tid, dict) and isinstance(tid.get("alarm_id"), str):
                    alarm_ids.add(tid["alarm_id"])
        command_ids: list[str] = []
        for key in ("actions", "commands", "command_ids"):
            for item in p.get(key) or ():
                cid = item.get("command_id") if isinstance(item, dict) else item
                if isinstance(cid, str):
                    command_ids.append(cid)
        for aid in alarm_ids:
            item = self.alarms.get(aid)
            if item is not None:
                item.actions += [c for c in command_ids if c not in item.actions]
                self._publish({"t": "alarm", "alarm": item.public()})

    def _alarm_event(self, ev: Event, *, publish: bool = False) -> None:
        """Alarms no book manages: the raise puts them in the queue, the clear takes them out."""
        assert ev.alarm_id is not None
        item = self.alarms.get(ev.alarm_id)
        if ev.state == "raised":
            if item is None:
                item = self.alarms[ev.alarm_id] = AlarmItem(
                    alarm_id=ev.alarm_id, device=ev.device.id, kind=ev.device.kind, type=ev.type,
                    severity=ev.severity, state="active_unacked", raised_at=_iso(ev.time) or "",
                    location=ev.device.location.model_dump(exclude_none=True))
            self._note_raise(ev)
            self._decorate(item, publish=False)
        elif item is not None:  # cleared: with nobody to acknowledge it, it leaves the queue
            item.state, item.cleared_at = "closed", _iso(ev.time)
            del self.alarms[ev.alarm_id]
        else:
            return
        if publish:
            self._publish({"t": "alarm", "alarm": item.public()})

    def _note_raise(self, ev: Event) -> None:
        """What a raise event adds to its alarm: the camera's picture and place, the id rules refer to."""
        assert ev.alarm_id is not None
        self._raise_ids[ev.id] = ev.alarm_id
        p = ev.payload.model_dump(mode="json", exclude_none=True)
        extra: dict[str, Any] = {}
        uri = p.get("snapshot_uri") or (p.get("image_uri") or [None])[0]
        if isinstance(uri, str):
            extra["snapshot"] = "/media?uri=" + quote(uri, safe="")
        if isinstance(p.get("location"), dict):  # a camera channel's own place
            extra["location"] = p["location"]
        self._extras[ev.alarm_id] = extra
        if len(self._extras) > 10_000:  # closed alarms' extras: keep the recent ones
            for old in list(self._extras)[:2000]:
                self._extras.pop(old, None)
            self._raise_ids = {k: v for k, v in self._raise_ids.items() if v in self._extras}

    def _decorate(self, item: AlarmItem, *, publish: bool) -> None:
        extra = self._extras.get(item.alarm_id, {})
        item.snapshot = extra.get("snapshot", item.snapshot)
        if "location" in extra:
            item.location = {**item.location, **extra["location"]}
        if publish:
            self._publish({"t": "alarm", "alarm": item.public()})

    def _book_changed(self, view: Any) -> None:
        try:
            self._apply_view(view, publish=True)
        except Exception:
            self.counters.inc("alarm_errors")
            log.exception("console could not apply an alarm change")

    def _apply_view(self, view: Any, *, publish: bool) -> None:
        """An `AlarmView` from the alarm book: the queue entry takes its lifecycle state."""
        data = asdict(view) if is_dataclass(view) and not isinstance(view, type) else dict(vars(view))
        old = self.alarms.get(data["alarm_id"])
        item = AlarmItem(
            alarm_id=data["alarm_id"], device=data["device"], kind=data["kind"], type=data["type"],
            severity=data.get("severity"), state=data["state"], raised_at=_iso(data["raised_at"]) or "",
            cleared_at=_iso(data.get("cleared_at")), shelved_until=_iso(data.get("shelved_until")),
            latched=bool(data.get("latched")), acked_by=data.get("acked_by"), comment=data.get("comment"),
            location=dict(data.get("location") or {}), last_event_id=data.get("last_event_id"),
            snapshot=old.snapshot if old else None, actions=old.actions if old else [], managed=True,
            escalated=bool(data.get("escalated")),
        )
        self._decorate(item, publish=False)
        if item.state == "closed":
            self.alarms.pop(item.alarm_id, None)
        else:
            self.alarms[item.alarm_id] = item
        if publish:
            self._publish({"t": "alarm", "alarm": item.public()})


def _kind_of(driver: str) -> str:
    from gateway import registry

    try:
        return registry.get(driver).kind
    except Exception:
        return "unknown"
