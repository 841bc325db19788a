"""From decoded registers to elevator events: validation, status on change, alarms.

Pure and deterministic given (registers, time): the same inputs replayed give the same
events. State kept per elevator: the last accepted status, alarm conditions and when the
status was last sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drivers.modbus_elevator.config import ModbusElevatorConfig
from drivers.modbus_elevator.regmap import CodeEntry, RegisterMap
from gateway.alarms import AlarmTracker, DraftBuilder
from gateway.driver import EventDraft
from schemas.common import AlarmState, Quality, Severity
from schemas.elevator import ElevatorPayload

STATUS_KEYS = ("floor", "direction", "car_running", "door_zone", "door_state", "occupied", "service_mode",
               "fault_code")
PAYLOAD_FIELDS = frozenset(ElevatorPayload.model_fields) - {"kind"}
SEVERE_MODES = frozenset({"fire_return", "firefighter", "earthquake", "emergency_power", "out_of_service"})
MAX_SPEED_MPS = 10.0


@dataclass
class ElevatorState:
    """What the normalizer remembers between samples."""

    last: dict[str, Any] | None = None
    last_time: datetime | None = None
    last_status_sent: datetime | None = None
    last_rejected_raw: dict[str, int] | None = None
    alarms: AlarmTracker = field(default_factory=AlarmTracker)  # scope set by the normalizer
    code_entries: dict[str, tuple[CodeEntry, str]] = field(default_factory=dict)


class ElevatorNormalizer:
    """Validates samples and derives events for one elevator."""

    def __init__(self, config: ModbusElevatorConfig, regmap: RegisterMap) -> None:
        self.cfg = config
        self.map = regmap
        self.state = ElevatorState(alarms=AlarmTracker(scope=config.id))

    def forget(self) -> None:
        """The last events were not committed: validate and report status afresh; open alarms
        (and the codes behind them) are kept, unconfirmed, so the next poll re-raises or clears them."""
        alarms, codes = self.state.alarms, self.state.code_entries
        alarms.forget()
        self.state = ElevatorState(alarms=alarms, code_entries=codes)

    # --- validation -----------------------------------------------------------------------

    def _validate(self, values: dict[str, Any], problems: list[str], now: datetime) -> tuple[list[str], list[str]]:
        """Split into (rejecting reasons, suspect reasons) (docs/domain.md, "Elevators")."""
        cfg = self.cfg
        rejected = list(problems)
        suspect: list[str] = []
        floor = values.get("floor")
        if floor is not None and (
            not cfg.lowest_floor <= floor <= cfg.highest_floor or (floor == 0 and not cfg.has_floor_zero)
        ):
            rejected.append(f"floor_out_of_range:{floor}")
        speed = values.get("speed_mps")
        if speed is not None and not 0 <= speed <= MAX_SPEED_MPS:
            rejected.append(f"speed_implausible:{speed}")
        load = values.get("load_pct")
        if load is not None and not 0 <= load <= 200:
            rejected.append(f"load_out_of_range:{load}")
        if rejected:
            return rejected, suspect
        if values.get("car_running") is False and values.get("direction") not in (None, "none"):
            suspect.append("direction_while_stopped")
        if values.get("door_zone") is True and "floor" not in values:
            suspect.append("door_zone_without_floor")
        last, last_time = self.state.last, self.state.last_time
        if last is not None and last_time is not None and floor is not None and last.get("floor") is not None:
            jump = abs(floor - last["floor"])
            dt = max((now - last_time).total_seconds(), 0.0)
            reach = math.ceil(cfg.rated_speed_mps * cfg.thresholds.overspeed_ratio * dt / cfg.floor_height_m) + 1
            if jump > reach:
                suspect.append(f"implausible_floor_jump:{jump}")
            elif jump >= 2 and not values.get("car_running") and not last.get("car_running"):
                suspect.append(f"floor_jump_while_stationary:{jump}")
        return rejected, suspect

    # --- main entry -----------------------------------------------------------------------

    def process(self, words: dict[int, int], now: datetime) -> list[EventDraft]:
        """One poll's registers in, the events they cause out. Never raises."""
        values, raw, problems = self.map.decode(words)
        rejected, suspect = self._validate(values, problems, now)
        if rejected:
            return self._rejected(raw, rejected, now)
        self.state.last_rejected_raw = None
        quality = Quality(status="suspect", reasons=tuple(suspect)) if suspect else Quality()
        drafts: list[EventDraft] = []
        drafts += self._mode_change(values)
        drafts += self._status(values, quality, now)
        drafts += self._device_codes(values, words, now)
        drafts += self._derived(values, now)
        self.state.last = values
        self.state.last_time = now
        return drafts

    def _payload(self, values: dict[str, Any], **extra: Any) -> ElevatorPayload:
        data = {k: v for k, v in values.items() if k in PAYLOAD_FIELDS}
        data.update(extra)
        return ElevatorPayload(**data)

    def _rejected(self, raw: dict[str, int], reasons: list[str], now: datetime) -> list[EventDraft]:
        # A stuck bad register would otherwise produce one rejected event per poll: report it
        # when it changes, and again at the status interval.
        st = self.state
        due = st.last_status_sent is None or (now - st.last_status_sent).total_seconds() >= self.cfg.status_interval_s
        if raw == st.last_rejected_raw and not due:
            return []
        st.last_rejected_raw = raw
        st.last_status_sent = now
        return [EventDraft(
            type="elevator.status", cls="status", payload=ElevatorPayload(raw=raw),
            quality=Quality(status="rejected", reasons=tuple(reasons)),
        )]

    def _status(self, values: dict[str, Any], quality: Quality, now: datetime) -> list[EventDraft]:
        st, cfg = self.state, self.cfg
        changed = st.last is None or any(values.get(k) != st.last.get(k) for k in STATUS_KEYS)
        if not changed and st.last is not None:
            speed, last_speed = values.get("speed_mps"), st.last.get("speed_mps")
            if speed is not None and last_speed is not None and abs(speed - last_speed) >= cfg.speed_deadband_mps:
                changed = True
            load, last_load = values.get("load_pct"), st.last.get("load_pct")
            if load is not None and last_load is not None and abs(load - last_load) >= cfg.load_deadband_pct:
                changed = True
        due = st.last_status_sent is None or (now - st.last_status_sent).total_seconds() >= cfg.status_interval_s
        if not (changed or due or quality.status != "valid"):
            return []
        st.last_status_sent = now
        return [EventDraft(type="elevator.status", cls="status", payload=self._payload(values), quality=quality)]

    def _mode_change(self, values: dict[str, Any]) -> list[EventDraft]:
        last = self.state.last
        mode = values.get("service_mode")
        if last is None or mode is None or last.get("service_mode") in (None, mode):
            return []
        return [EventDraft(
            type="elevator.mode_changed", cls="event",
            severity="major" if mode in SEVERE_MODES else "info",
            payload=self._payload(values, mode_from=last["service_mode"], mode_to=mode),
        )]

    def _code_draft(self, entry: CodeEntry, raw_code: str, values: dict[str, Any]) -> DraftBuilder:
        def build(state: AlarmState, alarm_id: str, duration: float) -> EventDraft:
            return EventDraft(
                type=entry.type, cls=entry.cls, severity=entry.severity, state=state,
                alarm_id=alarm_id, raw_code=raw_code, payload=self._payload(values, duration_s=round(duration, 3)),
            )
        return build

    def _device_codes(self, values: dict[str, Any], words: dict[int, int], now: datetime) -> list[EventDraft]:
        """Fault codes, event codes and alarm bits reported by the device itself."""
        drafts: list[EventDraft] = []
        tracker = self.state.alarms
        active: dict[str, tuple[CodeEntry, str]] = {}
        fault = values.get("fault_code")
        if fault:
            entry = self.map.fault_codes.get(fault) or CodeEntry(type="elevator.fault.unknown", severity="major")
            active[f"fault:{fault}"] = (entry, f"{self.map.namespace}:{fault}")
        event = values.get("event_code")
        last_event = (self.state.last or {}).get("event_code")
        if event:
            entry = self.map.event_codes.get(event) or CodeEntry(
                type="elevator.event.unknown", cls="event", severity="info", condition=False)
            if entry.condition:
                active[f"event:{event}"] = (entry, f"{self.map.namespace}:{event}")
            elif event != last_event:
                drafts.append(EventDraft(
                    type=entry.type, cls=entry.cls, severity=entry.severity, raw_code=f"{self.map.namespace}:{event}",
                    payload=self._payload(values),
                ))
        active.update(self.map.active_bits(words))
        seen = self.state.code_entries
        for key in dict.fromkeys([*seen, *active]):
            if key in active:
                seen[key] = active[key]
            entry, raw_code = seen[key]
            drafts += tracker.update(key, key in active, now, 0.0, self._code_draft(entry, raw_code, values))
            if key not in active:
                del seen[key]
        return drafts

    def _derived(self, values: dict[str, Any], now: datetime) -> list[EventDraft]:
        """Alarms the gateway derives from status over time windows."""
        th, tracker = self.cfg.thresholds, self.state.alarms
        running, door, zone = values.get("car_running"), values.get("door_state"), values.get("door_zone")
        speed = values.get("speed_mps")
        stopped = running is False and (speed is None or speed < 0.05)
        drafts: list[EventDraft] = []

        trapped = stopped and values.get("occupied") is True and door == "closed" and values.get("service_mode") in (
            None, "normal", "out_of_service")
        trap_kind = "at_level" if zone else "between_floors"

        def trapped_build(state: AlarmState, alarm_id: str, duration: float) -> EventDraft:
            return EventDraft(
                type="elevator.passenger_trapped", cls="alarm", severity="critical", state=state,
                alarm_id=alarm_id, payload=self._payload(values, duration_s=round(duration, 3), trap=trap_kind),
            )
        drafts += tracker.update("derived:trapped", bool(trapped), now, th.trapped_s, trapped_build)

        def simple(type_: str, severity: Severity, **extra: Any) -> DraftBuilder:
            def build(state: AlarmState, alarm_id: str, duration: float) -> EventDraft:
                return EventDraft(type=type_, cls="fault", severity=severity, state=state,
                                  alarm_id=alarm_id,
                                  payload=self._payload(values, duration_s=round(duration, 3), **extra))
            return build

        outside = stopped and zone is False
        drafts += tracker.update("derived:outside_zone", outside, now, th.outside_door_zone_s,
                                 simple("elevator.stopped_outside_door_zone", "major"))
        door_open_running = running is True and door in ("open", "opening")
        drafts += tracker.update("derived:door_open_running", door_open_running, now, th.door_open_running_s,
                                 simple("elevator.door_open_while_running", "critical"))
        rated = self.cfg.rated_speed_mps
        over = speed is not None and speed > rated * th.overspeed_ratio
        ratio = round(speed / rated, 3) if speed is not None else None
        drafts += tracker.update("derived:overspeed", over, now, th.overspeed_s,
                                 simple("elevator.overspeed", "critical", rated_mps=rated, ratio=ratio))
        return drafts
