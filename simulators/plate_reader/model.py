"""The simulated garage: its vehicles, their movements, and a tally of what was sent."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from simulators.plate_reader.bodies import make_plate
from simulators.plate_reader.camera import PushResult

# ------------------------------------------------------------------ the garage


@dataclass
class Vehicle:
    """A car of the simulated community."""

    plate: str
    color: str
    inside: bool = False


@dataclass
class Garage:
    """Vehicles coming and going; deterministic for a seed."""

    rng: random.Random
    vehicles: list[Vehicle] = field(default_factory=list)

    residents: list[Vehicle] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        seed: int,
        size: int = 60,
        extra_plates: Sequence[str] = (),
        residents: Sequence[str] = (),
    ) -> Garage:
        """Passing traffic with a realistic colour mix, plus residents (on the gateway's allowlist)."""
        rng = random.Random(seed)
        colors = rng.choices(["blue", "yellow", "green", "yellow_green"], weights=[70, 8, 20, 2], k=size)
        vehicles = [Vehicle(make_plate(rng, c), c) for c in colors]
        vehicles += [Vehicle(p, _color_of(p)) for p in extra_plates]
        return cls(rng, vehicles, [Vehicle(p, _color_of(p)) for p in residents])

    def next_move(self) -> Vehicle:
        """Pick a vehicle: half the time a resident (they come and go), else passing traffic."""
        if self.residents and self.rng.random() < 0.5:
            return self.rng.choice(self.residents)
        return self.rng.choice(self.vehicles)

    def confidence(self) -> int:
        """Zhenshi-style 0-100 confidence: mostly high, sometimes poor (rain, dirt)."""
        if self.rng.random() < 0.05:
            return self.rng.randint(35, 69)
        return min(100, max(70, round(self.rng.gauss(93, 4))))


def _color_of(plate: str) -> str:
    if len(plate) == 8:
        return "yellow_green" if plate[-1] in "DF" and plate[2:7].isdigit() else "green"
    return "blue"


@dataclass
class SimStats:
    """Tally of what the simulator sent and what it got back."""

    pushes: int = 0
    opened: int = 0
    denied: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)

    def count(self, result: PushResult, *, reply_decides: bool = True) -> None:
        """Record one reply; `reply_decides` is False where barriers open by command (Hikvision)."""
        self.pushes += 1
        self.by_status[result.status] = self.by_status.get(result.status, 0) + 1
        if result.status == 200 and reply_decides:
            if result.opened:
                self.opened += 1
            else:
                self.denied += 1

