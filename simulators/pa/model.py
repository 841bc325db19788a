"""A PA system that behaves: schedules, paging, emergency priority, heat, power. No I/O.

The model speaks in semantic values (zone states, dB, degC, percent). `values()` lists them
under the node map's point keys; the OPC UA server encodes them through the same map the
driver decodes with, so any vendor map gives a matching simulated device.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from drivers.opcua_pa.nodemap import LINE_FAULTS, NodeMap

EMERGENCY_PRIORITY = 255
PAGING_PRIORITY = 100
CLIP_PRIORITY = 50
CLIP_SECONDS = 8.0
MUSIC_PRIORITY = 10
OVERHEAT_C = 85.0
OVERHEAT_CLEAR_C = 75.0
OVERLOAD_PCT = 120.0


@dataclass
class ZoneModel:
    """One zone's audio state."""

    id: str
    volume_db: float = -20.0
    paging_left_s: float = 0.0
    clip_left_s: float = 0.0
    clip: str = ""
    state: str = "idle"
    source: str = "none"
    priority: int = 0


@dataclass
class AmpModel:
    """One amplifier and the zones it drives."""

    id: str
    zones: list[str]
    has_spare: bool
    temperature_c: float = 30.0
    load_pct: float = 0.0
    fault: str = "ok"
    forced_fault: str | None = None
    heat_boost_c: float = 0.0
    spare_switched: bool = False


@dataclass
class PowerModel:
    """Mains, backup supply and battery."""

    mains_fault: bool = False
    backup_fault: bool = False
    battery_pct: float = 100.0


@dataclass
class EmergencyModel:
    """The voice-alarm broadcast."""

    active: bool = False
    source: str = "none"
    zones: tuple[str, ...] = ()
    message: str = ""
    priority: int = EMERGENCY_PRIORITY


@dataclass
class PaModel:
    """The whole simulated PA system."""

    nodemap: NodeMap
    seed: int = 1
    paging_rate: float = 0.0  # pages per zone per second (0: no random paging)
    music_hours: tuple[float, float] = (7.0, 22.0)
    ambient_c: float = 28.0
    battery_drain_pct_s: float = 0.05
    zones: dict[str, ZoneModel] = field(init=False)
    amps: dict[str, AmpModel] = field(init=False)
    lines: dict[str, set[str]] = field(init=False)
    power: PowerModel = field(init=False, default_factory=PowerModel)
    emergency: EmergencyModel = field(init=False, default_factory=EmergencyModel)
    overrides: dict[str, Any] = field(init=False, default_factory=dict)
    clips: tuple[str, ...] = ("chime", "evacuation", "all_clear", "gate_closing")
    commands: list[tuple[str, dict[str, Any]]] = field(init=False, default_factory=list)  # acted on (tests)
    refuse_commands: str | None = field(init=False, default=None)  # a refusal for every command (faults)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.zones = {z.id: ZoneModel(z.id) for z in self.nodemap.zones}
        ids = list(self.zones)
        n = max(len(self.nodemap.amplifiers), 1)
        per = max(1, -(-len(ids) // n))
        self.amps = {
            a.id: AmpModel(a.id, ids[i * per:(i + 1) * per], a.spare is not None)
            for i, a in enumerate(self.nodemap.amplifiers)
        }
        self.lines = {ln.id: set() for ln in self.nodemap.lines}
        self.hour = 12.0
        self.resolve()

    # ------------------------------------------------------------------ commands

    def command(self, name: str, args: dict[str, Any]) -> str:
        """A command method call: the result reason (`ok`, or why the system refuses), state changed on ok."""
        self.commands.append((name, dict(args)))
        if self.refuse_commands is not None:
            return self.refuse_commands
        if name == "emergency_stop":
            self.stop_emergency()
            return "ok"
        if name == "set_volume":
            if args["zone"] not in self.zones:
                return "unknown_zone"
            if not -80.0 <= args["db"] <= 0.0:
                return "out_of_range"
            return "ok" if self.set_volume(args["zone"], args["db"]) else "emergency_active"
        zones = [z for z in str(args["zones"]).split(",") if z.strip()]
        if any(z not in self.zones for z in zones):
            return "unknown_zone"
        if name == "emergency_start":
            if self.emergency.active and args["priority"] < self.emergency.priority:
                return "lower_priority"
            self.start_emergency(zones, args["message"], priority=args["priority"])
            return "ok"
        if args["clip"] not in self.clips:
            return "unknown_clip"
        targets = zones or list(self.zones)
        if self.emergency.active and set(targets) & set(self.emergency.zones):
            return "emergency_active"
        for z in targets:
            self.zones[z].clip, self.zones[z].clip_left_s = args["clip"], CLIP_SECONDS
        self.resolve()
        return "ok"

    def start_emergency(self, zones: list[str] | tuple[str, ...], message: str,
                        source: str = "manual", priority: int = EMERGENCY_PRIORITY) -> None:
        """Emergency broadcast: takes every listed zone (all when empty) at top priority, full volume."""
        targets = tuple(zones) or tuple(self.zones)
        unknown = [z for z in targets if z not in self.zones]
        if unknown:
            raise KeyError(f"unknown zones: {unknown}")
        self.emergency = EmergencyModel(True, source, targets, message, priority)
        self.resolve()

    def stop_emergency(self) -> None:
        """End the emergency broadcast; zones fall back to paging/music/idle."""
        self.emergency = EmergencyModel()
        self.resolve()

    def set_volume(self, zone: str, db: float) -> bool:
        """Set a zone's volume; refused during an emergency (output not adjustable, GB 16806 4.6.2)."""
        if zone not in self.zones:
            raise KeyError(zone)
        if self.emergency.active and zone in self.emergency.zones:
            return False
        self.zones[zone].volume_db = max(-80.0, min(0.0, float(db)))
        self.resolve()
        return True

    def page(self, zone: str, seconds: float = 5.0) -> None:
        """A microphone call into one zone."""
        self.zones[zone].paging_left_s = seconds
        self.resolve()

    # ------------------------------------------------------------------ faults

    def set_line_fault(self, line: str, fault: str | None) -> None:
        """Put one fault on a line (None clears all of its faults)."""
        if line not in self.lines:
            raise KeyError(line)
        if fault is not None and fault not in LINE_FAULTS:
            raise ValueError(f"line fault must be one of {LINE_FAULTS}")
        self.lines[line] = {fault} if fault else set()

    def overheat(self, amp: str, on: bool = True) -> None:
        """Block an amplifier's cooling: its temperature climbs past the overheat threshold."""
        self.amps[amp].heat_boost_c = 70.0 if on else 0.0
        if on:
            self.amps[amp].temperature_c = max(self.amps[amp].temperature_c, OVERHEAT_C + 1.0)
        else:
            self.amps[amp].temperature_c = min(self.amps[amp].temperature_c, OVERHEAT_CLEAR_C - 5.0)
        self.resolve()

    def amp_fault(self, amp: str, fault: str | None) -> None:
        """Force an amplifier fault (overload, channel_failure, overheat) or release it."""
        self.amps[amp].forced_fault = fault
        self.resolve()

    def mains_loss(self, on: bool = True) -> None:
        """Mains fails: the backup supply takes over and the battery starts draining."""
        self.power.mains_fault = on

    def backup_fault(self, on: bool = True) -> None:
        """The backup supply (charger/battery circuit) reports a fault."""
        self.power.backup_fault = on

    def set_battery(self, pct: float) -> None:
        """Jump the battery charge (e.g. to test battery-low)."""
        self.power.battery_pct = pct

    # ------------------------------------------------------------------ time

    def tick(self, dt: float) -> None:
        """Advance the model by `dt` seconds."""
        self.hour = (self.hour + dt / 3600.0) % 24.0
        for z in self.zones.values():
            z.clip_left_s = max(0.0, z.clip_left_s - dt)
            if z.paging_left_s > 0:
                z.paging_left_s = max(0.0, z.paging_left_s - dt)
            elif self.paging_rate > 0 and self.rng.random() < self.paging_rate * dt:
                z.paging_left_s = self.rng.uniform(3.0, 8.0)
        p = self.power
        if p.mains_fault:
            p.battery_pct = max(0.0, p.battery_pct - self.battery_drain_pct_s * dt)
        elif not p.backup_fault:
            p.battery_pct = min(100.0, p.battery_pct + self.battery_drain_pct_s * dt / 2)
        self.resolve()
        for a in self.amps.values():
            target = self.ambient_c + 0.35 * a.load_pct + a.heat_boost_c
            a.temperature_c += (target - a.temperature_c) * min(1.0, dt / 60.0) + self.rng.gauss(0.0, 0.05)
        self.resolve()

    def resolve(self) -> None:
        """Derive zone states, loads and amplifier faults from what is going on."""
        music = self.music_hours[0] <= self.hour < self.music_hours[1]
        em = self.emergency
        for z in self.zones.values():
            if em.active and z.id in em.zones:
                z.state, z.source, z.priority = "emergency", "message", em.priority
            elif z.clip_left_s > 0:
                z.state, z.source, z.priority = "paging", "message", CLIP_PRIORITY
            elif z.paging_left_s > 0:
                z.state, z.source, z.priority = "paging", "mic", PAGING_PRIORITY
            elif music:
                z.state, z.source, z.priority = "background", "music", MUSIC_PRIORITY
            else:
                z.state, z.source, z.priority = "idle", "none", 0
        for a in self.amps.values():
            load = 0.0
            for zid in a.zones:
                z = self.zones[zid]
                if z.state != "idle":
                    volume = 0.0 if z.state == "emergency" else z.volume_db
                    load += 100.0 * 10 ** (volume / 20.0) / max(len(a.zones), 1)
            a.load_pct = round(load, 1)
            if a.forced_fault is not None:
                a.fault = a.forced_fault
            elif a.temperature_c >= OVERHEAT_C or (a.fault == "overheat"
                                                   and a.temperature_c > OVERHEAT_CLEAR_C):
                a.fault = "overheat"
            elif a.load_pct > OVERLOAD_PCT:
                a.fault = "overload"
            else:
                a.fault = "ok"
            a.spare_switched = a.has_spare and a.fault != "ok"

    # ------------------------------------------------------------------ view

    def values(self) -> dict[str, Any]:
        """Semantic value of every mapped point, keyed like `NodeMap.points()`."""
        out: dict[str, Any] = {}
        for key, _role, _point in self.nodemap.points():
            group, _, rest = key.partition(".")
            ident, _, fld = rest.rpartition(".")
            out[key] = self._value(group, ident, fld)
        out.update(self.overrides)
        return out

    def _value(self, group: str, ident: str, fld: str) -> Any:
        if group == "zone":
            z = self.zones[ident]
            return {"state": z.state, "volume": 0.0 if z.state == "emergency" else z.volume_db,
                    "source": z.source, "priority": z.priority}[fld]
        if group == "amp":
            a = self.amps[ident]
            return {"temperature": round(a.temperature_c, 1), "load": a.load_pct, "fault": a.fault,
                    "spare_switched": a.spare_switched}[fld]
        if group == "line":
            faults = self.lines[ident]
            if fld == "status":
                return next(iter(sorted(faults)), "ok")
            return fld in faults
        if group == "power":
            p = self.power
            return {"mains_fault": p.mains_fault, "backup_fault": p.backup_fault,
                    "battery": round(p.battery_pct, 1),
                    "battery_low": p.battery_pct < self.nodemap.power.battery_low_below}[fld]
        em = self.emergency
        return {"active": em.active, "source": em.source, "zones": em.zones, "message": em.message}[fld]
