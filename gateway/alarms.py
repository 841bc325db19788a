"""The one alarm tracker every decoder uses: raise/clear pairs, hold windows, forget and reconcile.

An alarm is keyed by its condition (e.g. `line_fault:l1:short`, `door_forced:2`). Its raise
and its clear carry the same `alarm_id`, derived from the input that raised it
(`gateway.ids.uuid7_from`), so a replay of the same inputs at the same times gives the same
ids. A decoder asks the tracker what to emit; the tracker never builds events itself, except
through the `build` callback of `update`.

After a failed commit (`forget`) every open alarm becomes *unconfirmed*: the raise may never
have reached the outbox. The next observation of its condition reports it again: still
active, the raise is re-emitted with the same id (consumers treat a repeated raise as one);
gone, the clear is emitted. Nothing is left open for ever, nothing is raised twice with two ids.

Below the tracker: alarms carried across a gateway restart (`RestartConfirmation`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.driver import EventDraft
from gateway.ids import uuid7, uuid7_from
from schemas.common import AlarmState, Quality
from schemas.event import Event


@dataclass(slots=True)
class OpenAlarm:
    """A raised, not yet cleared alarm; `data` is whatever the decoder needs for its clear."""

    key: str
    alarm_id: str
    since: datetime | None
    data: Any = None
    confirmed: bool = True


@dataclass(slots=True)
class _Pending:
    since: datetime


#: Builds the draft for a raise (state="raised") or a clear (state="cleared").
DraftBuilder = Callable[[AlarmState, str, float], EventDraft]  # (state, alarm_id, duration_s)


class AlarmTracker:
    """Open alarms of one device, by condition key."""

    def __init__(self, scope: str = "") -> None:
        self.scope = scope  # the device id: part of every alarm id
        self._open: dict[str, OpenAlarm] = {}
        self._pending: dict[str, _Pending] = {}  # active, but not yet for their hold window

    # --- queries --------------------------------------------------------------------------

    def get(self, key: str) -> OpenAlarm | None:
        """The open alarm of condition `key`, if any."""
        return self._open.get(key)

    def open_alarms(self) -> dict[str, OpenAlarm]:
        """Every open alarm by condition key."""
        return dict(self._open)

    def new_id(self, now: datetime | None, key: str, *parts: str) -> str:
        """The id an alarm raised now for `key` gets: derived from the input (random without a time)."""
        return uuid7() if now is None else uuid7_from(now, self.scope, key, *parts)

    # --- momentary conditions: one input raises, another clears ----------------------------

    def raise_(self, key: str, now: datetime | None, *parts: str, data: Any = None,
               alarm_id: str | None = None) -> OpenAlarm | None:
        """Condition `key` is active: the alarm to emit a raise for, or None when it is open already.

        A new alarm's id derives from (`now`, scope, `key`, `parts`) unless `alarm_id` is given;
        an unconfirmed one (see `forget`) is returned again, with its id, and is confirmed.
        """
        current = self._open.get(key)
        if current is not None:
            if current.confirmed:
                return None
            current.confirmed = True
            return current
        alarm = OpenAlarm(key, alarm_id or self.new_id(now, key, *parts), now, data)
        self._open[key] = alarm
        return alarm

    def ensure(self, key: str, now: datetime | None, *parts: str, data: Any = None) -> OpenAlarm:
        """The open alarm of `key`, raised now if there is none (for devices that repeat raises)."""
        alarm = self.raise_(key, now, *parts, data=data)
        return alarm if alarm is not None else self._open[key]

    def clear(self, key: str) -> OpenAlarm | None:
        """Condition `key` is gone: the alarm to emit a clear for, or None when none was open."""
        self._pending.pop(key, None)
        return self._open.pop(key, None)

    # --- conditions observed over time, with a hold window ---------------------------------

    def update(self, key: str, active: bool, now: datetime, window_s: float, build: DraftBuilder) -> list[EventDraft]:
        """One observation of condition `key`: raise once it held for `window_s`, clear once it ends."""
        current = self._open.get(key)
        if not active:
            self._pending.pop(key, None)
            if current is None:
                return []
            del self._open[key]
            return [build("cleared", current.alarm_id, _since(current.since, now))]
        if current is not None:
            if current.confirmed:
                return []
            current.confirmed = True  # re-report a raise that may not have been committed
            return [build("raised", current.alarm_id, _since(current.since, now))]
        pending = self._pending.setdefault(key, _Pending(now))
        duration = _since(pending.since, now)
        if duration < window_s:
            return []
        del self._pending[key]
        alarm = OpenAlarm(key, self.new_id(now, key), pending.since)
        self._open[key] = alarm
        return [build("raised", alarm.alarm_id, duration)]

    # --- after a failed commit, after a reconnect ------------------------------------------

    def forget(self) -> None:
        """A commit failed: mark every open alarm unconfirmed, so its next observation reports it again."""
        for alarm in self._open.values():
            alarm.confirmed = False

    def reconcile(self, active: Iterable[str], *, within: Callable[[str], bool] | None = None) -> list[OpenAlarm]:
        """After a reconnect's full snapshot: close every open alarm (of keys `within` selects) not in `active`.

        Returns the alarms to emit clears for; raises for what is active are the decoder's to emit.
        """
        still = set(active)
        gone = [a for k, a in self._open.items() if k not in still and (within is None or within(k))]
        for alarm in gone:
            del self._open[alarm.key]
        return gone


def _since(since: datetime | None, now: datetime) -> float:
    return max((now - since).total_seconds(), 0.0) if since is not None else 0.0


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
