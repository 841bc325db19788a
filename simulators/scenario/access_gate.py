"""Scenario adapter for access gates: simulated COGP peripherals, the ble_access_gate driver.

BLE has no loopback socket: a simulated gate is a peripheral registered on the in-process
radio (`simulators.access_gate.backend`) that the driver's `backend: simulated` connects to.
So the gateway must run in the same process as this adapter (`courtyard simulate --scenario`
with its in-process gateway, or a test); a gateway in another process would not find the gates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import zlib
from typing import Any

from simulators.access_gate.backend import register, unregister
from simulators.access_gate.model import Behaviour, GateModel
from simulators.access_gate.peripheral import SimulatedGatePeripheral
from simulators.scenario.adapter import KindAdapter, UnknownAction
from simulators.scenario.model import ScenarioDevice

#: Faults with an inject and a clear.
FAULTS = frozenset({
    "forced_door", "held_open", "tailgating", "tamper", "disconnect", "garbage", "clock_skew",
    "dead_battery", "silence", "fire_release",
})
BEHAVIOURS = frozenset({"passage", "burst", "tailgating"})

DEFAULT_KEY = "courtyard-scenario-credential-key"


class AccessGateAdapter(KindAdapter):
    """Simulated gates of a scenario, one peripheral per device, driven at the scenario's speed.

    Settings (all optional; durations in scenario seconds, scaled by `speed` for the driver):

    - `rate`: background arrivals per minute (default 6; 0: none, only the timeline acts)
    - `doors` (1), `readers` (2), `table` (`cogp` or `hik`: the code table the gate numbers with)
    - `address`: BLE address (default derived from the device's position and the seed)
    - `behaviour`: per-arrival probabilities overriding the model's (`granted`, `tailgating`,
      `reverse_entry`, `held_open`, `forced`, `tamper`, `exit_button`)
    - `clock_skew_s`: device clock offset at start, real seconds (default 0)
    - driver windows: `heartbeat_s` (30), `connect_timeout_s` (10), `history_timeout_s` (5),
      `backoff_initial_s` (0.5), `backoff_max_s` (30), all divided by `speed`; `max_clock_skew_s`
      (120, not scaled: device clocks keep real time); `credential_key` (a fixed demo key)

    Actions (`door` param: default 1):

    - do `passage`: `outcome` granted|denied (granted), `reason` (denied only; drawn if absent),
      `credential` (text or hex; drawn from residents if absent), `cred_type` (card|face|qr|ble|pin,
      drawn), `direction` in|out (in), `tailgate` (false)
    - do `burst`: `n` random arrivals (10) `interval` scenario seconds apart (1)
    - do `tailgating`: a granted passage followed by a tailgater (gate.tailgating)
    - inject/clear `forced_door`: forced open, stays open; clear closes it (alarm cleared)
    - inject/clear `held_open`: badge in and prop the door (held-open raised); clear closes it
    - inject/clear `tailgating`: every granted passage is tailgated until cleared
    - inject/clear `tamper`: enclosure open (device.tamper raised) until cleared
    - inject/clear `disconnect`: link dropped, gate out of range until cleared
      (`hold: false`: drop the link once, the driver reconnects and backfills at once)
    - inject/clear `garbage`: the next `n` (1) records go out garbled (CRC fails -> rejected,
      then backfilled from history); clear disarms what is left
    - inject/clear `clock_skew`: device clock off by `seconds` (600); clear sets it right
    - inject/clear `dead_battery`: mains lost and battery flat (both reported), then dark; clear
      restores power (the records made meanwhile are backfilled on reconnect)
    - inject/clear `silence`: hung radio: link up, nothing sent, reads never answered, until
      cleared (the driver's heartbeat times out and it reconnects)
    - inject/clear `fire_release`: fire linkage, every door unlocked and open (door.mode raised,
      mode fire_release; status mode fire_release); clear returns to normal and closes them

    A gate only sends what its code table has a code for (`hik` has no battery-restored code).
    """

    kind = "access_gate"

    def __init__(self, devices: list[ScenarioDevice], *, seed: int, speed: float, scenario: str) -> None:
        super().__init__(devices, seed=seed, speed=speed, scenario=scenario)
        self.gates: dict[str, SimulatedGatePeripheral] = {}
        self._behaviour: dict[str, Behaviour] = {}

    def actions(self) -> dict[str, set[str]]:
        return {"do": set(BEHAVIOURS), "inject": set(FAULTS), "clear": set(FAULTS)}

    async def start(self) -> None:
        for i, dev in enumerate(self.devices):
            s = dev.settings
            behaviour = dataclasses.replace(Behaviour(), **{k: float(v) for k, v in s.get("behaviour", {}).items()})
            model = GateModel(
                seed=self.rng.randrange(1 << 30), doors=int(s.get("doors", 1)),
                arrivals_per_min=float(s.get("rate", 6.0)), start_time=time.time(),
                table=str(s.get("table", "cogp")), behaviour=behaviour,
            )
            model.clock = time.time  # behaviour runs at `speed`, the device clock keeps real time
            model.clock_skew = float(s.get("clock_skew_s", 0.0))
            address = str(s.get("address") or self._address(i))
            gate = register(SimulatedGatePeripheral(address, model, name=f"COGP-{dev.id}"[:29]))
            gate.start(speed=self.speed)
            self.gates[dev.id] = gate
            self._behaviour[dev.id] = behaviour

    def _window(self, settings: dict[str, Any], name: str, default: float, floor: float = 0.05) -> float:
        """A driver time window from scenario seconds to real seconds."""
        return max(floor, float(settings.get(name, default)) / self.speed)

    def _address(self, index: int) -> str:
        """A stable address per scenario, seed and position (two scenarios may share a process)."""
        tag = zlib.crc32(f"{self.scenario}:{self.seed}".encode()).to_bytes(4, "big")
        return "C0:57:5C:" + ":".join(f"{b:02X}" for b in (tag[0], tag[1], index & 0xFF))

    async def stop(self) -> None:
        for gate in self.gates.values():
            with contextlib.suppress(Exception):
                await gate.aclose()
            unregister(gate)

    def device_configs(self) -> list[dict[str, Any]]:
        out = []
        for dev in self.devices:
            s, gate = dev.settings, self.gates[dev.id]
            window = functools.partial(self._window, s)

            out.append({
                "id": dev.id, "driver": "ble_access_gate", "name": dev.name, "simulated": True,
                "location": dev.location.model_dump(exclude_none=True),
                "address": gate.address, "backend": "simulated",
                "code_table": str(s.get("table", "cogp")),
                "credential_key": str(s.get("credential_key", DEFAULT_KEY)),
                "doors": gate.model.doors, "readers": int(s.get("readers", 2)),
                "heartbeat_s": window("heartbeat_s", 30.0),
                "connect_timeout_s": window("connect_timeout_s", 10.0, 0.2),
                "history_timeout_s": window("history_timeout_s", 5.0, 0.2),
                "max_clock_skew_s": float(s.get("max_clock_skew_s", 120.0)),
                "backoff": {"initial_s": window("backoff_initial_s", 0.5, 0.01),
                            "max_s": window("backoff_max_s", 30.0, 0.05)},
            })
        return out

    async def apply(self, device: ScenarioDevice, verb: str, action: str, params: dict[str, Any]) -> None:
        self.check(verb, action)
        gate = self.gates[device.id]
        model = gate.model
        door = int(params.get("door", 1))
        if verb == "do":
            if action == "passage":
                model.passage(
                    door=door, outcome=str(params.get("outcome", "granted")),
                    direction=str(params.get("direction", "in")),
                    cred_type=params.get("cred_type"), credential=_credential(params.get("credential")),
                    reason=params.get("reason"), tailgate=bool(params.get("tailgate", False)),
                )
            elif action == "tailgating":
                model.passage(door=door, direction=str(params.get("direction", "in")), tailgate=True)
            else:  # burst
                model.arrivals(int(params.get("n", 10)), float(params.get("interval", 1.0)))
        elif verb in ("inject", "clear"):
            self._fault(device.id, gate, action, verb == "inject", door, params)
        else:
            raise UnknownAction(verb)
        gate.publish()

    def _fault(
        self, dev_id: str, gate: SimulatedGatePeripheral, fault: str, on: bool, door: int, params: dict[str, Any]
    ) -> None:
        model, faults = gate.model, gate.faults
        if fault == "forced_door":
            if on:
                model.force_door(door, hold=True)
            else:
                model.release(door)
        elif fault == "held_open":
            if on:
                model.prop_open(door)
            else:
                model.release(door)
        elif fault == "tailgating":
            model.behaviour = dataclasses.replace(self._behaviour[dev_id], tailgating=1.0) if on else (
                self._behaviour[dev_id])
        elif fault == "tamper":
            model.set_tamper(on)
        elif fault == "disconnect":
            faults.refuse_connections = on and bool(params.get("hold", True))
            if on:
                gate.disconnect_all()
        elif fault == "garbage":
            faults.garble = faults.garble + int(params.get("n", 1)) if on else 0
        elif fault == "clock_skew":
            model.clock_skew = float(params.get("seconds", 600.0)) if on else 0.0
        elif fault == "dead_battery":
            if on and model.mains:
                gate.die()
            elif not on and not model.mains:
                gate.revive()
        elif fault == "silence":
            gate.set_silent(on)
        else:  # fire_release
            model.fire_release(on)


def _credential(value: Any) -> bytes | None:
    """A scripted credential id: an int (card number), hex digits, or any text."""
    if value is None:
        return None
    if isinstance(value, int):
        return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    text = str(value)
    try:
        return bytes.fromhex(text)
    except ValueError:
        return text.encode()
