"""Write the input of the modbus_elevator fault cases by driving the elevator simulator's model.

`python tests/cases/record_elevator.py` (from the repository root) rewrites
`tests/cases/modbus_elevator/<fault>/{config.yaml,input.jsonl}` for each device fault the
simulator knows: the car is called, the fault injected, held, then cleared. Each poll is the
registers the simulator's Modbus server would serve (`ElevatorSimulator.encode`), in the
recording format, at simulated times 0.5 s apart. Then review and run
`python -m gateway.testing regen tests/cases/modbus_elevator`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from simulators.elevator import ElevatorModel, ElevatorSimulator

OUT = Path(__file__).resolve().parent / "modbus_elevator"
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
DEVICE = "lift-b1-1"
POLL_S = 0.5
#: fault -> (value, when injected, how long held) in seconds; the car is called to floor 9 at 1 s.
FAULTS: dict[str, tuple[Any, float, float]] = {
    "outside_door_zone": (True, 8.0, 8.0),
    "overspeed": (True, 8.0, 4.0),
    "door_open_running": (True, 8.0, 3.0),
    "alarm_button": (True, 2.0, 3.0),
    "fire_mode": (True, 2.0, 4.0),
    "fault_code": (7, 2.0, 3.0),
}


def config() -> dict[str, Any]:
    return {"site": "case-site", "gateway_id": "gw-1", "devices": [{
        "id": DEVICE, "driver": "modbus_elevator", "simulated": True, "map": "gbt24476",
        "lowest_floor": -2, "highest_floor": 18, "poll_interval_s": POLL_S,
        "thresholds": {"trapped_s": 3, "outside_door_zone_s": 3, "door_open_running_s": 1},
    }]}


def record(fault: str, value: Any, start: float, hold: float) -> list[dict[str, Any]]:
    model = ElevatorModel(lowest=-2, highest=18, seed=3, call_rate_per_s=0.0)
    sim = ElevatorSimulator(elevators={1: model})
    lines: list[dict[str, Any]] = [{"t": T0.isoformat(), "device": DEVICE, "channel": "link",
                                    "data": {"online": True, "reason": None, "misses": 0, "alarm_id": None}}]
    t = 0.0
    while t <= start + hold + 3.0:
        if abs(t - 1.0) < 1e-9:
            model.call(1, 9)
        if abs(t - start) < 1e-9:
            model.faults[fault] = value
            if fault == "fire_mode":
                model.service_mode = "fire_return"
        if abs(t - (start + hold)) < 1e-9:
            model.faults.pop(fault, None)
            if fault == "fire_mode":
                model.service_mode = "normal"
        words = sim.encode(model)
        blocks = [[b.address, [words[a] for a in range(b.address, b.address + b.count)]] for b in sim.map.blocks]
        lines.append({"t": (T0 + timedelta(seconds=t)).isoformat(), "device": DEVICE, "channel": "poll",
                      "data": {"blocks": blocks}})
        model.step(POLL_S)
        t = round(t + POLL_S, 6)
    return lines


def main() -> None:
    for fault, (value, start, hold) in FAULTS.items():
        case = OUT / fault
        case.mkdir(parents=True, exist_ok=True)
        (case / "config.yaml").write_text(yaml.safe_dump(config(), sort_keys=False), encoding="utf-8")
        lines = record(fault, value, start, hold)
        (case / "input.jsonl").write_text("".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines),
                                          encoding="utf-8")
        print(f"{case}: {len(lines)} lines")


if __name__ == "__main__":
    main()
