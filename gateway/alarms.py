"""Raise/clear bookkeeping for conditions that must persist for a window before they alarm."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from gateway.driver import EventDraft
from gateway.ids import uuid7_from


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
