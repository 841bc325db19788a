"""Registers in, event drafts out: pure, so live polls, replays and golden cases agree."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from courtyard_pump.config import PumpConfig
from courtyard_pump.payload import PumpPayload
from courtyard_pump.registers import COUNT, OVERHEAT, RUNNING
from gateway.alarms import AlarmTracker
from gateway.driver import DeviceContext, EventDraft
from schemas.common import AlarmState, Quality, Severity


class PumpDecoder:
    """Status on change (or pressure beyond the deadband), `pump.overheat` from the controller's
    bit, and `pump.dry_run` derived: running with no flow for `dry_run_s`."""

    def __init__(self, config: PumpConfig, ctx: DeviceContext) -> None:
        self.config = config
        self.ctx = ctx
        self.alarms = AlarmTracker(config.id)
        self._last: tuple[bool, float, int] | None = None

    def feed(self, channel: str, raw: Any, now: datetime) -> list[EventDraft]:
        """One poll's `{"registers": [4 words]}`; anything else is a rejected status event."""
        words = raw.get("registers") if isinstance(raw, dict) else None
        if (channel != "poll" or not isinstance(words, list) or len(words) != COUNT
                or not all(isinstance(w, int) and 0 <= w <= 0xFFFF for w in words)):
            self.ctx.counters.inc("rejected")
            return [EventDraft(type="water_pump.status", cls="status", payload=PumpPayload(raw={"data": raw}),
                               quality=Quality(status="rejected", reasons=("malformed_registers",)))]
        bits, centibar, flow, decidegrees = words
        running = bool(bits & RUNNING)
        pressure = centibar / 100
        temp = decidegrees / 10
        state = PumpPayload(running=running, pressure_bar=pressure, flow_lpm=flow, motor_temp_c=temp)
        drafts: list[EventDraft] = []
        last = self._last
        if last is None or last[0] != running or abs(last[1] - pressure) >= self.config.pressure_deadband_bar \
                or (last[2] == 0) != (flow == 0):
            drafts.append(EventDraft(type="water_pump.status", cls="status", payload=state))
            self._last = (running, pressure, flow)
        if bits & OVERHEAT:
            if (alarm := self.alarms.raise_("overheat", now)) is not None:
                drafts.append(self._alarm("water_pump.overheat", "raised", alarm.alarm_id, state, "major"))
        elif (alarm := self.alarms.clear("overheat")) is not None:
            drafts.append(self._alarm("water_pump.overheat", "cleared", alarm.alarm_id, state, "major"))

        def dry_run(st: str, alarm_id: str, duration: float) -> EventDraft:
            payload = state.model_copy(update={"duration_s": round(duration, 3)})
            return self._alarm("water_pump.dry_run", "raised" if st == "raised" else "cleared", alarm_id, payload,
                               "critical")

        drafts += self.alarms.update("dry_run", running and flow == 0, now, self.config.dry_run_s, dry_run)
        return drafts

    @staticmethod
    def _alarm(type_: str, state: AlarmState, alarm_id: str, payload: PumpPayload, severity: Severity) -> EventDraft:
        return EventDraft(type=type_, cls="fault", severity=severity, state=state, alarm_id=alarm_id, payload=payload)

    def forget(self) -> None:
        """A commit failed: send status again, re-confirm open alarms from the next poll."""
        self._last = None
        self.alarms.forget()
