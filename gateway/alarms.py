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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.driver import EventDraft
from gateway.ids import uuid7, uuid7_from


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
DraftBuilder = Callable[[str, str, float], EventDraft]  # (state, alarm_id, duration_s)


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
