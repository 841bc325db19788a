"""Scenario adapter for PA systems: one OPC UA PA simulator per device, the opcua_pa driver."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from simulators.net import free_port
from simulators.pa import PaSimulator
from simulators.scenario.adapter import KindAdapter, UnknownAction
from simulators.scenario.model import ScenarioDevice

log = logging.getLogger(__name__)

#: inject/clear name -> line fault it puts on (or takes off) a speaker line.
LINE_FAULT_ACTIONS = {"line_short": "short", "line_open": "open", "earth_fault": "earth",
                      "speaker_damaged": "speaker_damaged"}
#: inject/clear name -> amplifier fault forced on the device.
AMP_FAULT_ACTIONS = {"amp_overload": "overload", "channel_failure": "channel_failure"}
DEVICE_FAULTS = {*LINE_FAULT_ACTIONS, *AMP_FAULT_ACTIONS, "amp_overheat", "mains_loss", "backup_fault",
                 "battery_low", "garbage"}
TRANSPORT_FAULTS = {"disconnect", "session_drop", "server_restart", "slow_replies"}


def _zones(value: Any) -> list[str]:
    """`zones` param as a list: a YAML list, a comma string, or nothing (all zones)."""
    if value is None or value == "all":
        return []
    if isinstance(value, str):
        return [z.strip() for z in value.split(",") if z.strip()]
    return [str(z) for z in value]


class PaAdapter(KindAdapter):
    """PA systems: each scenario device is a `PaSimulator` on its own OPC UA port.

    Settings (all optional; times in scenario seconds):
      map                  node map of the simulated system (default `courtyard_sim`: zones z1-z4,
                           amplifiers a1/a2 with a spare, lines l1-l4)
      paging_rate (or rate) random microphone pages per zone per second (default 0.002; 0: none)
      music                background music on its daily schedule (default true; false: zones idle)
      music_hours          [from, to] hours of that schedule (default [7, 22])
      hour                 time of day the simulated clock starts at (default 12.0)
      battery_drain_pct_s  battery drain per second on mains loss (default 0.05; recharge at half)
      tick_s               simulator behaviour step in real seconds (default 0.2)
      watchdog_s           driver keep-alive period (default 1.0), request_timeout_s (default 4.0):
                           divided by speed, with floors of 0.2 s and 1.0 s real time
      offline_after        reconnect misses before `device.offline` (default 3); the driver's
                           back-off (0.5 s doubling to 10 s) is divided by speed, floors 0.1/0.5 s
      publishing_interval_ms, temperature_deadband_c, load_deadband_pct: passed to the driver

    Actions (params in brackets; a missing zone/line/amp is chosen with the scenario's rng):
      do:     page [zone, seconds=5], emergency_broadcast [zones (list, "z1,z2" or all),
              source=manual|fire_linkage, message], stop_emergency, set_volume [zone, db]
      inject: line_short / line_open / earth_fault / speaker_damaged [line or zone],
              amp_overheat / amp_overload / channel_failure [amp], mains_loss, backup_fault,
              battery_low [pct=20], garbage [point=line.l1.status, value=77] (raw value the map
              cannot decode), disconnect (endpoint down until cleared), session_drop (server closes
              every session; the driver reconnects), server_restart [down=2] (stop, come back with a
              new address space), slow_replies [seconds=1] (every request answered that much later)
      clear:  the same names end the fault (session_drop and server_restart are momentary: no-op)
    """

    kind = "pa"

    def __init__(self, devices: list[ScenarioDevice], *, seed: int, speed: float, scenario: str) -> None:
        super().__init__(devices, seed=seed, speed=speed, scenario=scenario)
        self.sims: dict[str, PaSimulator] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def actions(self) -> dict[str, set[str]]:
        faults = DEVICE_FAULTS | TRANSPORT_FAULTS
        return {"do": {"page", "emergency_broadcast", "stop_emergency", "set_volume"},
                "inject": set(faults), "clear": set(faults)}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for dev in self.devices:
            s = dev.settings
            rate = float(s.get("paging_rate", s.get("rate", 0.002)))
            sim = PaSimulator(
                port=free_port(), nodemap=str(s.get("map", "courtyard_sim")), seed=self.rng.randrange(1 << 30),
                tick_s=float(s.get("tick_s", 0.2)), speed=self.speed, paging_rate=rate)
            model = sim.model
            hours = s.get("music_hours", (7.0, 22.0)) if s.get("music", True) else (0.0, 0.0)
            model.music_hours = (float(hours[0]), float(hours[1]))
            model.hour = float(s.get("hour", 12.0)) % 24.0
            model.battery_drain_pct_s = float(s.get("battery_drain_pct_s", 0.05))
            model.resolve()
            self.sims[dev.id] = sim  # registered first, so stop() cleans up after a failed start
            await sim.start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for sim in self.sims.values():
            with contextlib.suppress(Exception):
                await sim.stop()

    def device_configs(self) -> list[dict[str, Any]]:
        out = []
        for dev in self.devices:
            s, sim = dev.settings, self.sims[dev.id]
            entry: dict[str, Any] = {
                "id": dev.id, "driver": "opcua_pa", "name": dev.name, "simulated": True,
                "location": dev.location.model_dump(exclude_none=True),
                "vendor": sim.map.vendor, "model": sim.map.model,
                "url": sim.url, "map": str(s.get("map", "courtyard_sim")),
                "publishing_interval_ms": float(s.get("publishing_interval_ms", 100.0)),
                "watchdog_s": max(0.2, float(s.get("watchdog_s", 1.0)) / self.speed),
                "request_timeout_s": max(1.0, float(s.get("request_timeout_s", 4.0)) / self.speed),
                "backoff": {"initial_s": max(0.1, 0.5 / self.speed), "max_s": max(0.5, 10.0 / self.speed)},
            }
            for key in ("temperature_deadband_c", "load_deadband_pct"):
                if key in s:
                    entry[key] = float(s[key])
            if "offline_after" in s:
                entry["offline_after"] = int(s["offline_after"])
            out.append(entry)
        return out

    # ------------------------------------------------------------------ actions

    async def apply(self, device: ScenarioDevice, verb: str, action: str, params: dict[str, Any]) -> None:
        self.check(verb, action)
        sim = self.sims[device.id]
        if verb == "do":
            await self._do(sim, action, params)
        elif verb == "inject":
            await self._fault(sim, action, params, on=True)
        elif verb == "clear":
            await self._fault(sim, action, params, on=False)
        else:
            raise UnknownAction(verb)

    async def _do(self, sim: PaSimulator, action: str, params: dict[str, Any]) -> None:
        if action == "page":
            zone = self._zone(sim, params)
            sim.model.page(zone, float(params.get("seconds", 5.0)))
            await sim.publish()
        elif action == "emergency_broadcast":
            source = str(params.get("source", "manual"))
            if source not in ("manual", "fire_linkage"):
                raise ValueError(f"pa emergency_broadcast: source must be manual or fire_linkage, not {source!r}")
            message = str(params.get("message", "fire_evacuation" if source == "fire_linkage" else "evacuation"))
            zones = _zones(params.get("zones", params.get("zone")))
            unknown = [z for z in zones if z not in sim.model.zones]
            if unknown:
                raise ValueError(f"pa emergency_broadcast: unknown zones {unknown}")
            await sim.start_emergency(zones, message, source=source)
        elif action == "stop_emergency":
            await sim.stop_emergency()
        elif action == "set_volume":
            zone = self._zone(sim, params)
            db = float(params.get("db", params.get("volume_db", -20.0)))
            if not await sim.set_volume(zone, db):
                log.info("pa: set_volume on %s refused during the emergency broadcast", zone)

    async def _fault(self, sim: PaSimulator, action: str, params: dict[str, Any], *, on: bool) -> None:
        model = sim.model
        if action in LINE_FAULT_ACTIONS:
            fault = LINE_FAULT_ACTIONS[action]
            if on:
                await sim.set_line_fault(self._line(sim, params), fault)
            else:
                named = params.get("line") or params.get("zone")
                lines = [self._line(sim, params)] if named else list(model.lines)
                for line in lines:
                    if fault in model.lines[line]:
                        await sim.set_line_fault(line, None)
        elif action in AMP_FAULT_ACTIONS:
            fault = AMP_FAULT_ACTIONS[action]
            for amp in self._amps(sim, params, on=on, fault=fault):
                model.amp_fault(amp, fault if on else None)
            await sim.publish()
        elif action == "amp_overheat":
            for amp in self._amps(sim, params, on=on, fault="overheat"):
                await sim.overheat(amp, on)
        elif action == "mains_loss":
            await sim.mains_loss(on)
        elif action == "backup_fault":
            await sim.backup_fault(on)
        elif action == "battery_low":
            await sim.set_battery(float(params.get("pct", 20.0)) if on else 100.0)
        elif action == "garbage":
            point = str(params.get("point", "line.l1.status"))
            if point not in sim.map.point_table():
                raise ValueError(f"pa garbage: unknown point {point!r}")
            await sim.write_raw(point, params.get("value", 77) if on else None)
        else:
            await self._transport(sim, action, params, on=on)

    async def _transport(self, sim: PaSimulator, action: str, params: dict[str, Any], *, on: bool) -> None:
        if action == "disconnect":
            await (sim.go_offline() if on else sim.go_online())
        elif action == "session_drop":
            if on:
                sim.drop_sessions()
        elif action == "server_restart":
            if on:
                down = float(params.get("down", params.get("seconds", 2.0))) / self.speed
                self._background(sim.restart(down_s=down))
        elif action == "slow_replies":
            sim.set_response_delay(float(params.get("seconds", 1.0)) / self.speed if on else 0.0)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a long fault (a restart) without holding up the timeline; stop() cancels it."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ targets

    def _zone(self, sim: PaSimulator, params: dict[str, Any]) -> str:
        zone = params.get("zone")
        if zone is None:
            return self.rng.choice(sorted(sim.model.zones))
        if str(zone) not in sim.model.zones:
            raise ValueError(f"pa: unknown zone {zone!r}; known: {', '.join(sorted(sim.model.zones))}")
        return str(zone)

    def _line(self, sim: PaSimulator, params: dict[str, Any]) -> str:
        """`line`, else the line feeding `zone`, else a random line."""
        line, zone = params.get("line"), params.get("zone")
        if line is None and zone is not None:
            line = next((ln.id for ln in sim.map.lines if ln.zone == str(zone)), None)
            if line is None:
                raise ValueError(f"pa: no line feeds zone {zone!r}")
        if line is None:
            return self.rng.choice(sorted(sim.model.lines))
        if str(line) not in sim.model.lines:
            raise ValueError(f"pa: unknown line {line!r}; known: {', '.join(sorted(sim.model.lines))}")
        return str(line)

    def _amps(self, sim: PaSimulator, params: dict[str, Any], *, on: bool, fault: str) -> list[str]:
        """`amp`; else on inject one random amplifier, on clear every one carrying `fault`."""
        amp = params.get("amp", params.get("amplifier"))
        amps = sim.model.amps
        if amp is None:
            if on:
                return [self.rng.choice(sorted(amps))]
            return sorted(a.id for a in amps.values()
                          if a.forced_fault == fault or (fault == "overheat" and a.heat_boost_c > 0))
        if str(amp) not in amps:
            raise ValueError(f"pa: unknown amplifier {amp!r}; known: {', '.join(sorted(amps))}")
        return [str(amp)]


__all__ = ["DEVICE_FAULTS", "TRANSPORT_FAULTS", "PaAdapter"]
