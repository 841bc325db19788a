"""Raise/clear bookkeeping: windowed conditions, and alarms carried across a gateway restart."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.driver import EventDraft
from gateway.ids import uuid7, uuid7_from
from schemas.common import Quality
from schemas.event import Event


@dataclass
class _Condition:
    since: datetime | None = None
    alarm_id: str | None = None


#: Builds the draft for a raise (state="raised") or a clear (state="cleared").
DraftBuilder = Callable[[str, str, float], EventDraft]  # (state, alarm_id, duration_s)


class AlarmTracker:
    """Tracks named conditions; a condition true for `window_s` raises once, and clears once.

    The same `alarm_id` is carried by the raise and its clear, so the platform can pair them.
    """

    def __init__(self, scope: str = "") -> None:
        self.scope = scope  # e.g. the device id: part of every alarm id
        self._conds: dict[str, _Condition] = {}

    def update(self, key: str, active: bool, now: datetime, window_s: float, build: DraftBuilder) -> list[EventDraft]:
        """Feed one observation of condition `key`; return the drafts it causes (0 or 1)."""
        cond = self._conds.setdefault(key, _Condition())
        if active:
            if cond.since is None:
                cond.since = now
            duration = (now - cond.since).total_seconds()
            if cond.alarm_id is None and duration >= window_s:
                # Deterministic: a replay of the same inputs raises the same alarm id.
                cond.alarm_id = uuid7_from(now, self.scope, key)
                return [build("raised", cond.alarm_id, duration)]
            return []
        drafts = []
        if cond.alarm_id is not None:
            duration = (now - cond.since).total_seconds() if cond.since else 0.0
            drafts.append(build("cleared", cond.alarm_id, duration))
        cond.since = None
        cond.alarm_id = None
        return drafts


#: Payload fields that name the part of a device a condition is about (PA zone, line and
#: amplifier, plate-reader lane, access door/reader) or which of several conditions of one type
#: it is (PA `fault`: overheat vs overload). Two raises match only when all of these agree.
ENTITY_FIELDS = ("zone", "line", "amplifier", "lane", "door_no", "reader_no", "fault")

ConditionKey = tuple[str, str, tuple[tuple[str, Any], ...]]


def condition_key(event: Event) -> ConditionKey:
    """(device, type, sub-entity): what makes a raise the same condition as an earlier one."""
    payload = event.payload
    entity = tuple((f, getattr(payload, f)) for f in ENTITY_FIELDS if getattr(payload, f, None) is not None)
    return event.device.id, event.type, entity


def restart_clear(raised: Event, now: datetime) -> Event:
    """The clear of an alarm a previous run left open, nobody having confirmed it since."""
    return raised.model_copy(update={
        "id": uuid7(), "time": now, "received": now, "state": "cleared",
        "quality": Quality(status="suspect", reasons=("gateway_restarted",)),
    })


class RestartConfirmation:
    """Alarms left open by the previous run, waiting for drivers to confirm them after a restart.

    Drivers keep alarm state in memory, so after a restart a fault that still holds is raised
    again with a new id. During the grace window such a raise (same device, type and
    sub-entity) *confirms* the old alarm: it is dropped, and every later event of the new id
    (its clear) is rewritten to the old id, so the platform sees one alarm, never a flap. A
    `device.online` clears a pending `device.offline` at once. What is still pending when the
    window ends is cleared as `gateway_restarted`.
    """

    def __init__(self, previous: Sequence[Event]) -> None:
        self._pending: dict[ConditionKey, list[Event]] = {}
        for ev in previous:
            if ev.alarm_id is None:
                continue
            self._pending.setdefault(condition_key(ev), []).append(ev)
        self._alias: dict[str, str] = {}  # new alarm_id -> the confirmed old one
        self.open = True
        self.confirmed = 0

    def pending(self) -> list[Event]:
        """Alarms not yet confirmed."""
        return [ev for evs in self._pending.values() for ev in evs]

    def take_devices(self, devices: set[str]) -> list[Event]:
        """Stop waiting for `devices` (no driver runs them); return their pending alarms."""
        out = []
        for key in [k for k in self._pending if k[0] in devices]:
            out.extend(self._pending.pop(key))
        return out

    def admit(self, events: Sequence[Event]) -> list[Event]:
        """The events to commit, after confirming and re-identifying alarms."""
        out: list[Event] = []
        for ev in events:
            if ev.alarm_id is not None and ev.alarm_id in self._alias:
                old = self._alias[ev.alarm_id]
                if ev.state == "cleared":
                    del self._alias[ev.alarm_id]
                out.append(ev.model_copy(update={"alarm_id": old}))
                continue
            if self.open and ev.state == "raised" and ev.alarm_id is not None:
                key = condition_key(ev)
                if self._pending.get(key):
                    self._alias[ev.alarm_id] = str(self._take(key).alarm_id)
                    self.confirmed += 1
                    continue  # already raised (and retained) under the old id: not published again
            if self.open and ev.type == "device.online" and ev.state == "momentary":
                key = (ev.device.id, "device.offline", ())
                if self._pending.get(key):
                    old_ev = self._take(key)
                    out.append(ev.model_copy(update={"state": "cleared", "alarm_id": old_ev.alarm_id}))
                    continue
            out.append(ev)
        return out

    def _take(self, key: ConditionKey) -> Event:
        waiting = self._pending[key]
        ev = waiting.pop(0)
        if not waiting:
            del self._pending[key]
        return ev

    def expire(self) -> list[Event]:
        """End the window: the alarms nobody confirmed (to be cleared)."""
        self.open = False
        out = self.pending()
        self._pending.clear()
        return out
