"""Turn decoded node values into Courtyard events: status changes and raise/clear lifecycles.

The normalizer remembers the last raw value of every point and the set of open alarms.
Feeding it a full snapshot after a reconnect therefore reconciles by itself: a fault that
cleared while the link was down yields its `cleared` (same `alarm_id`), a new one its
`raised`, and nothing else is repeated. It does no I/O; the driver and replay share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from drivers.opcua_pa.codec import Decoded, decode
from drivers.opcua_pa.nodemap import LINE_FAULTS, NodeMap
from gateway.alarms import AlarmTracker, OpenAlarm
from gateway.driver import EventDraft
from schemas.common import VALID, EventClass, Quality, Severity
from schemas.pa import PaPayload

_ZONE_STATUS = {
    "state": "pa.zone_state", "volume": "pa.volume", "source": "pa.source", "priority": "pa.zone_state",
}
_EMERGENCY_META = ("emergency.source", "emergency.zones", "emergency.message")


@dataclass(slots=True)
class Raised:
    """What a raise carried, for its clear (kept as the tracker's `OpenAlarm.data`)."""

    type: str
    cls: EventClass
    severity: Severity
    payload: PaPayload


class PaNormalizer:
    """Stateful translation of point changes (key, raw value) into event drafts."""

    def __init__(self, nodemap: NodeMap, *, temperature_deadband_c: float = 1.0,
                 load_deadband_pct: float = 5.0, on_reject: Callable[[str], None] | None = None,
                 scope: str = "") -> None:
        self.map = nodemap
        self.alarms = AlarmTracker(scope)  # scope: the device id, part of every alarm id
        self._now: datetime | None = None
        self._raises = 0
        self.table = nodemap.point_table()
        self.temperature_deadband_c = temperature_deadband_c
        self.load_deadband_pct = load_deadband_pct
        self._on_reject = on_reject
        self.raw: dict[str, Any] = {}
        self.values: dict[str, Any] = {}
        self._amp_reported: dict[str, tuple[float | None, float | None, tuple[str, ...]]] = {}
        self._dirty: dict[tuple[str, str], tuple[str, Decoded[Any]]] = {}

    # ------------------------------------------------------------------ entry point

    def apply(self, changes: Iterable[tuple[str, Any]], *, time: datetime | None = None,
              now: datetime | None = None) -> list[EventDraft]:
        """Apply changes in order and return the events they cause (possibly none).

        `now` is the input's receipt time: with it, alarm ids derive from (device, condition,
        time, raise count), so a replay of the same inputs at the same times gives the same ids.
        """
        self._now = time or now
        batch = [(k, v) for k, v in changes if k in self.table]
        out: list[EventDraft] = []
        self._dirty = {}
        # Emergency metadata first, so a broadcast raised in this batch carries its source/zones.
        for key, raw in batch:
            if key in _EMERGENCY_META:
                self._store(key, raw)
        for key, raw in batch:
            if key in _EMERGENCY_META:
                continue
            if key in self.raw and self.raw[key] == raw and type(self.raw[key]) is type(raw):
                continue
            out.extend(self._change(key, raw, time))
        out.extend(self._flush_status(time))
        return out

    def active_alarms(self) -> dict[str, OpenAlarm]:
        """Open alarms by condition key, e.g. `line_fault:l1:short`."""
        return self.alarms.open_alarms()

    def forget(self) -> None:
        """The last events were not committed: forget the values seen (the next snapshot or
        change re-derives every status) and re-confirm open alarms on their next observation."""
        self.raw.clear()
        self._amp_reported.clear()
        self.alarms.forget()

    # ------------------------------------------------------------------ internals

    def _store(self, key: str, raw: Any) -> Decoded[Any]:
        role, point = self.table[key]
        dec = decode(self.map, role, point, raw, name=key.rsplit(".", 1)[-1])
        self.raw[key] = raw
        if dec.status != "rejected":
            self.values[key] = dec.value
        return dec

    def _change(self, key: str, raw: Any, time: datetime | None) -> list[EventDraft]:
        previous = self.values.get(key)
        dec = self._store(key, raw)
        group, _, rest = key.partition(".")
        ident, _, field = rest.rpartition(".")
        raw_code = f"{self.map.raw_prefix}:{key}={raw}"
        if dec.status == "rejected":
            if self._on_reject is not None:
                self._on_reject(key)
            return [self._rejected(key, raw, dec, raw_code=raw_code, time=time)]
        if group == "zone":
            return self._zone(ident, field, previous, dec, raw_code=raw_code, time=time)
        if group == "amp":
            return self._amp(ident, field, previous, dec, raw_code=raw_code, time=time)
        if group == "line":
            return self._line(ident, field, dec, raw_code, time)
        if group == "power":
            return self._power(field, dec, raw_code, time)
        if key == "emergency.active":
            return self._emergency(bool(dec.value), raw_code, time)
        return []

    def _rejected(self, key: str, raw: Any, dec: Decoded[Any], *, raw_code: str,
                  time: datetime | None) -> EventDraft:
        group, _, rest = key.partition(".")
        ident, _, field = rest.rpartition(".")
        types = {"zone": _ZONE_STATUS.get(field, "pa.zone_state"), "amp": "pa.amp_status",
                 "line": "pa.line_fault", "power": f"pa.{field}" if field != "battery" else "pa.battery_low",
                 "emergency": "pa.emergency_broadcast"}
        typ = types.get(group, "pa.zone_state")
        if typ == "pa.amp_status" and field in ("fault", "spare_switched"):
            typ = "pa.amp_fault" if field == "fault" else "pa.spare_amp_switched"
        cls: EventClass = "fault"
        if typ in ("pa.zone_state", "pa.volume", "pa.source", "pa.amp_status"):
            cls = "status"
        elif typ == "pa.emergency_broadcast":
            cls = "alarm"
        elif typ == "pa.spare_amp_switched":
            cls = "event"
        payload = PaPayload(
            zone=ident if group == "zone" else None,
            amplifier=ident if group == "amp" else None,
            line=ident if group == "line" else None,
            raw={key: str(raw)[:128]},
        )
        return EventDraft(type=typ, cls=cls, payload=payload, raw_code=raw_code[:200], time=time,
                          quality=Quality(status="rejected", reasons=dec.reasons))

    @staticmethod
    def _quality(dec: Decoded[Any]) -> Quality:
        return VALID if dec.status == "valid" else Quality(status=dec.status, reasons=dec.reasons)

    def _zone(self, zone_id: str, field: str, previous: Any, dec: Decoded[Any], *, raw_code: str,
              time: datetime | None) -> list[EventDraft]:
        """Zone status is coalesced per batch: one event per (zone, type) carrying the whole zone."""
        if previous == dec.value and dec.status == "valid":
            return []
        typ = _ZONE_STATUS[field]
        worst = self._dirty.get((zone_id, typ))
        if worst is None or worst[1].status == "valid":
            self._dirty[(zone_id, typ)] = (raw_code, dec)
        return []

    def _flush_status(self, time: datetime | None) -> list[EventDraft]:
        out: list[EventDraft] = []
        for (ident, typ), (raw_code, _dec) in self._dirty.items():
            if typ == "pa.amp_status":
                out.extend(self._amp_status(ident, raw_code, time))
                continue
            zone = self.map.zone(ident)
            base = f"zone.{ident}."
            prio = self.values.get(base + "priority")
            reasons = tuple(sorted({r for f in ("state", "volume", "source", "priority")
                                    for r in self._reasons(base + f)}))
            raw = {k: str(v) for k, v in self.raw.items() if k.startswith(base)} if reasons else None
            payload = PaPayload(
                zone=ident, zone_name=zone.name if zone else None, zone_state=self.values.get(base + "state"),
                volume_db=self.values.get(base + "volume"), source=self.values.get(base + "source"),
                priority=int(prio) if prio is not None else None, raw=raw)
            quality = Quality(status="suspect", reasons=reasons) if reasons else VALID
            out.append(EventDraft(type=typ, cls="status", payload=payload, raw_code=raw_code,
                                  quality=quality, time=time))
        self._dirty = {}
        return out

    def _amp(self, amp_id: str, field: str, previous: Any, dec: Decoded[Any], *, raw_code: str,
             time: datetime | None) -> list[EventDraft]:
        base = f"amp.{amp_id}."
        temp = self.values.get(base + "temperature")
        load = self.values.get(base + "load")
        if field == "fault":
            fault = dec.value if dec.value != "ok" else None
            out: list[EventDraft] = []
            for kind in ("overheat", "overload", "channel_failure"):
                out.extend(self._condition(
                    f"amp_fault:{amp_id}:{kind}", fault == kind, typ="pa.amp_fault", cls="fault",
                    severity="major", raw_code=raw_code, time=time,
                    payload=PaPayload(amplifier=amp_id, fault=kind, temperature_c=temp, load_pct=load)))
            return out
        if field == "spare_switched":
            if dec.value and not previous:
                amp = next(a for a in self.map.amplifiers if a.id == amp_id)
                return [EventDraft(type="pa.spare_amp_switched", cls="event", severity="minor",
                                   payload=PaPayload(amplifier=amp_id, spare=amp.spare),
                                   raw_code=raw_code, time=time)]
            return []
        self._dirty[(amp_id, "pa.amp_status")] = (raw_code, dec)
        return []

    def _amp_status(self, amp_id: str, raw_code: str, time: datetime | None) -> list[EventDraft]:
        """Temperature / load telemetry: report on a deadband, and whenever quality changes."""
        base = f"amp.{amp_id}."
        temp = self.values.get(base + "temperature")
        load = self.values.get(base + "load")
        last_t, last_l, last_reasons = self._amp_reported.get(amp_id, (None, None, ()))
        reasons = tuple(sorted({r for k in ("temperature", "load") for r in self._reasons(base + k)}))
        moved = (
            (temp is not None and (last_t is None or abs(temp - last_t) >= self.temperature_deadband_c))
            or (load is not None and (last_l is None or abs(load - last_l) >= self.load_deadband_pct))
        )
        if not moved and reasons == last_reasons:
            return []
        self._amp_reported[amp_id] = (temp, load, reasons)
        quality = Quality(status="suspect", reasons=reasons) if reasons else VALID
        raw = {base + k: str(self.raw[base + k]) for k in ("temperature", "load") if base + k in self.raw}
        return [EventDraft(type="pa.amp_status", cls="status", raw_code=raw_code, quality=quality, time=time,
                           payload=PaPayload(amplifier=amp_id, temperature_c=temp, load_pct=load,
                                             raw=raw if reasons else None))]

    def _reasons(self, key: str) -> tuple[str, ...]:
        if key not in self.table or key not in self.raw:
            return ()
        role, point = self.table[key]
        return decode(self.map, role, point, self.raw[key], name=key.rsplit(".", 1)[-1]).reasons

    def _line(self, line_id: str, field: str, dec: Decoded[Any], raw_code: str,
              time: datetime | None) -> list[EventDraft]:
        line = next(ln for ln in self.map.lines if ln.id == line_id)
        zone = self.map.zone(line.zone) if line.zone else None
        zname = zone.name if zone else None
        out: list[EventDraft] = []
        faults = LINE_FAULTS if field == "status" else (field,)
        for fault in faults:
            active = dec.value == fault if field == "status" else bool(dec.value)
            out.extend(self._condition(
                f"line_fault:{line_id}:{fault}", active, typ="pa.line_fault", cls="fault", severity="major",
                payload=PaPayload(line=line_id, zone=line.zone, zone_name=zname, fault=fault), raw_code=raw_code,
                time=time))
        return out

    def _power(self, field: str, dec: Decoded[Any], raw_code: str, time: datetime | None) -> list[EventDraft]:
        if field == "battery":
            pct = float(dec.value or 0.0)
            return self._condition(
                "battery_low", pct < self.map.power.battery_low_below, typ="pa.battery_low", cls="fault",
                severity="major", payload=PaPayload(battery_pct=pct, fault="battery_low"), raw_code=raw_code,
                time=time, quality=self._quality(dec))
        typ, fault = {"mains_fault": ("pa.mains_fault", "mains_loss"),
                      "backup_fault": ("pa.backup_power_fault", "backup_supply"),
                      "battery_low": ("pa.battery_low", "battery_low")}[field]
        return self._condition(
            field, bool(dec.value), typ=typ, cls="fault", severity="major", raw_code=raw_code, time=time,
            payload=PaPayload(fault=fault, battery_pct=self.values.get("power.battery")))

    def _emergency(self, active: bool, raw_code: str, time: datetime | None) -> list[EventDraft]:
        source = self.values.get("emergency.source", "none") if active else None
        zones: tuple[str, ...] = self.values.get("emergency.zones", ())
        message = self.values.get("emergency.message") or None
        reasons: list[str] = []
        if active:
            if source in (None, "none"):
                reasons.append("emergency_without_source")
            if any(self.map.zone(z) is None for z in zones):
                reasons.append("unknown_zone")
        payload = PaPayload(
            emergency_source=(source if source not in (None, "none") else "unknown") if active else None,
            zones=zones if active else None, message=message if active else None)
        quality = Quality(status="suspect", reasons=tuple(reasons)) if reasons else VALID
        return self._condition("emergency", active, typ="pa.emergency_broadcast", cls="alarm",
                               severity="critical", payload=payload, raw_code=raw_code, time=time,
                               quality=quality)

    def _condition(self, cid: str, active: bool, *, typ: str, cls: EventClass, severity: Severity,
                   payload: PaPayload, raw_code: str, time: datetime | None,
                   quality: Quality = VALID) -> list[EventDraft]:
        """Raise or clear one condition; no event when its state did not change."""
        if active:
            self._raises += 1  # part of the id: the same input raising twice gets two ids
            alarm = self.alarms.raise_(cid, self._now, str(self._raises),
                                       data=Raised(typ, cls, severity, payload))
            if alarm is None:
                self._raises -= 1
                return []
            return [EventDraft(type=typ, cls=cls, severity=severity, state="raised", alarm_id=alarm.alarm_id,
                               payload=payload, raw_code=raw_code, quality=quality, time=time)]
        current = self.alarms.clear(cid)
        if current is None:
            return []
        raised: Raised = current.data
        return [EventDraft(type=raised.type, cls=raised.cls, severity=raised.severity, state="cleared",
                           alarm_id=current.alarm_id, payload=raised.payload, raw_code=raw_code,
                           quality=quality, time=time)]
