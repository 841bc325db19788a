"""The simulated car: calls, motion, doors, passengers and device faults (no I/O; seeded)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

DOOR_MOVE_S = 2.0
DOOR_OPEN_S = 3.0
DOOR_ZONE_M = 0.15
PASSENGER_LOAD_PCT = 8
#: Every value the model can put in an enum field; each shipped map must encode all of them.
DOOR_STATES = ("closed", "opening", "open", "closing")
DIRECTIONS = ("none", "up", "down")
SERVICE_MODES = ("normal", "fire_return")


@dataclass
class Call:
    """A passenger waiting at `origin` who wants `destination`."""

    origin: int
    destination: int
    boarded: bool = False


@dataclass
class ElevatorModel:
    """A single car. Time advances only through `step(dt)`, so runs are reproducible."""

    lowest: int = -2
    highest: int = 18
    has_floor_zero: bool = False
    rated_mps: float = 1.75
    floor_height_m: float = 3.0
    call_rate_per_s: float = 0.05
    seed: int = 1
    faults: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.floors = [f for f in range(self.lowest, self.highest + 1) if f != 0 or self.has_floor_zero]
        self.pos_m = self.floors.index(1 if 1 in self.floors else self.floors[0]) * self.floor_height_m
        self.phase = "idle"  # idle | moving | opening | open | closing | stuck
        self.timer = 0.0
        self.target: int | None = None
        self.calls: list[Call] = []
        self.speed = 0.0
        self.direction = "none"
        self.service_mode = "normal"
        self.time = 0.0
        self.hold_until: float | None = None  # hold_door: doors stay open until then
        self.recall: int | None = None  # return_to_floor: parked there until release_return

    # --- geometry ------------------------------------------------------------------------

    def _index_pos(self, floor: int) -> float:
        return self.floors.index(floor) * self.floor_height_m

    @property
    def floor(self) -> int:
        """Nearest floor to the car."""
        i = min(len(self.floors) - 1, max(0, round(self.pos_m / self.floor_height_m)))
        return self.floors[i]

    @property
    def door_zone(self) -> bool:
        """Car within the unlocking zone of a floor."""
        return abs(self.pos_m - self._index_pos(self.floor)) <= DOOR_ZONE_M

    @property
    def passengers(self) -> int:
        """Passengers in the car."""
        return sum(1 for c in self.calls if c.boarded) + (1 if self.faults.get("trapped") is not None else 0)

    # --- behaviour -----------------------------------------------------------------------

    def call(self, origin: int, destination: int) -> None:
        """A landing call from `origin` for `destination`."""
        if origin in self.floors and destination in self.floors and origin != destination:
            self.calls.append(Call(origin, destination))

    def _next_target(self) -> int | None:
        if self.service_mode == "fire_return":
            return 1 if 1 in self.floors else self.floors[0]
        if self.recall is not None:
            return self.recall
        for c in self.calls:
            return c.destination if c.boarded else c.origin
        return None

    def step(self, dt: float) -> None:
        """Advance the model by `dt` seconds."""
        self.time += dt
        if self.service_mode == "normal" and self.recall is None and self.rng.random() < self.call_rate_per_s * dt:
            a, b = self.rng.sample(self.floors, 2)
            self.call(a, b)
        stuck = "trapped" in self.faults or "outside_door_zone" in self.faults
        if stuck and self.phase == "moving" and not self.door_zone:
            self.phase, self.speed, self.direction = "stuck", 0.0, "none"
        if not stuck and self.phase == "stuck":
            self.phase = "moving"
        if self.phase == "stuck":
            return
        if self.phase == "idle":
            self.target = self._next_target()
            if self.target is None:
                return
            here = self._index_pos(self.target)
            if abs(here - self.pos_m) < 1e-6:
                self.phase, self.timer = "opening", 0.0
            else:
                self.phase = "moving"
                self.direction = "up" if here > self.pos_m else "down"
        if self.phase == "moving":
            assert self.target is not None
            goal = self._index_pos(self.target)
            self.speed = self.rated_mps * (1.4 if "overspeed" in self.faults else 1.0)
            step = self.speed * dt
            if stuck and not self.door_zone:
                return
            if abs(goal - self.pos_m) <= step:
                self.pos_m, self.speed, self.direction = goal, 0.0, "none"
                self.phase, self.timer = "opening", 0.0
            else:
                self.pos_m += step if goal > self.pos_m else -step
                # A stuck fault stops the car at the first point outside a door zone.
                if stuck and not self.door_zone:
                    self.phase, self.speed, self.direction = "stuck", 0.0, "none"
            return
        self.timer += dt
        if self.phase == "opening" and self.timer >= DOOR_MOVE_S:
            self.phase, self.timer = "open", 0.0
            self._exchange_passengers()
        elif self.phase == "open" and self.timer >= DOOR_OPEN_S and self.service_mode != "fire_return" \
                and not self._doors_kept_open():
            self.phase, self.timer = "closing", 0.0
        elif self.phase == "closing" and self.timer >= DOOR_MOVE_S:
            self.phase, self.timer = "idle", 0.0

    def _doors_kept_open(self) -> bool:
        """hold_door (until its time runs out: auto-release) or parked by return_to_floor."""
        if self.hold_until is not None and self.time >= self.hold_until:
            self.hold_until = None
        return self.hold_until is not None or (self.recall is not None and self.floor == self.recall)

    # --- commands (what a controller accepts; it refuses the rest) ----------------------------

    def command(self, name: str, arg: int) -> int:
        """Act on a command; 0 when done, else the refusal code of the maps' `refusals`."""
        if self.service_mode == "inspection":
            return REFUSE["inspection"]
        if self.service_mode in ("fire_return", "firefighter"):
            return REFUSE["fire_service"]
        if self.service_mode != "normal" or "fault_code" in self.faults:
            return REFUSE["out_of_service"]
        if name in ("call", "return_to_floor") and arg not in self.floors:
            return REFUSE["floor_not_served"]
        if name == "call":
            if self.recall is not None:
                return REFUSE["busy"]
            self.calls.append(Call(origin=arg, destination=arg, boarded=True))  # a car call
        elif name == "hold_door":
            if self.phase in ("moving", "stuck"):
                return REFUSE["car_moving"]
            self.hold_until = self.time + max(1, arg)
            if self.phase in ("idle", "closing"):
                self.phase, self.timer = "opening", 0.0
        elif name == "release_door":
            if self.hold_until is None:
                return REFUSE["not_held"]
            self.hold_until = None
        elif name == "return_to_floor":
            self.recall = arg
            self.calls.clear()
            if self.phase == "open" and self.floor != arg:
                self.phase, self.timer = "closing", 0.0
        elif name == "release_return":
            if self.recall is None:
                return REFUSE["no_return_active"]
            self.recall = None
        else:
            return REFUSE["busy"]
        return 0

    def _exchange_passengers(self) -> None:
        here = self.floor
        self.calls = [c for c in self.calls if not (c.boarded and c.destination == here)]
        for c in self.calls:
            if not c.boarded and c.origin == here:
                c.boarded = True

    # --- what the registers say ------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """Decoded register values (by field name) for the current state."""
        door = {"opening": "opening", "open": "open", "closing": "closing"}.get(self.phase, "closed")
        running = self.phase == "moving"
        if "door_open_running" in self.faults and running:
            door = "open"
        fault = self.faults.get("fault_code")
        return {
            "floor": self.floor,
            "direction": self.direction if running else "none",
            "car_running": running,
            "door_zone": self.door_zone,
            "door_state": door,
            "occupied": self.passengers > 0,
            "service_mode": self.service_mode,
            "speed_mps": round(self.speed, 2) if running else 0.0,
            "load_pct": min(100, self.passengers * PASSENGER_LOAD_PCT),
            "fault_code": int(fault) if fault is not None else 0,
            "event_code": 90 if "alarm_button" in self.faults else 0,
        }

    def bits(self) -> set[str]:
        """Event types whose alarm bit a vendor box would set now."""
        out = set()
        if "trapped" in self.faults and self.phase == "stuck":
            out.add("elevator.passenger_trapped")
        if "overspeed" in self.faults and self.phase == "moving":
            out.add("elevator.overspeed")
        if "alarm_button" in self.faults:
            out.add("elevator.alarm_button")
        return out


#: Refusal codes the controller answers with (the shipped maps' `commands.refusals`).
REFUSE = {"inspection": 1, "fire_service": 2, "out_of_service": 3, "floor_not_served": 4, "car_moving": 5,
          "busy": 6, "not_held": 7, "no_return_active": 8}
