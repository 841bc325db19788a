"""Record the input of one golden case per device fault, from short scenario runs.

`python tests/cases/record_faults.py [NAME...]` (from the repository root) runs, for each fault
below, a scenario with one simulated device: the fault is injected, held, then cleared. The
gateway records its raw inputs (`courtyard run --scenario ... --record`), with MQTT pointed at
a closed port (the recording is all that is kept), and the recording becomes
`tests/cases/<driver>/<fault>/{config.yaml,input.jsonl}`. Then review and run
`python -m gateway.testing regen tests/cases/<driver>`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from gateway.testing import case_from_recording

CASES = Path(__file__).resolve().parent
PA = {"id": "pa-north", "kind": "pa", "name": "North PA", "location": {"zone": "north"},
      "settings": {"map": "courtyard_sim", "rate": 0, "hour": 19.5}}
GATE = {"id": "gate-north", "kind": "access_gate", "name": "North gate", "location": {"zone": "north"},
        "settings": {"rate": 0, "doors": 2}}
LPR = {"id": "lpr-b1-in", "kind": "plate_reader", "name": "B1 entrance", "location": {"garage": "B1"},
       "settings": {"direction": "entry", "rate": 0, "heartbeat_s": 10}}

#: case name -> (driver, device, fault, params, extra timeline steps)
FAULTS: dict[str, tuple[str, dict[str, Any], str, dict[str, Any], list[dict[str, Any]]]] = {
    "line_open": ("opcua_pa", PA, "line_open", {"line": "l1"}, []),
    "earth_fault": ("opcua_pa", PA, "earth_fault", {"line": "l3"}, []),
    "speaker_damaged": ("opcua_pa", PA, "speaker_damaged", {"line": "l1"}, []),
    "amp_overload": ("opcua_pa", PA, "amp_overload", {"amp": "a1"}, []),
    "channel_failure": ("opcua_pa", PA, "channel_failure", {"amp": "a2"}, []),
    "amp_overheat": ("opcua_pa", PA, "amp_overheat", {"amp": "a1"}, []),
    "backup_fault": ("opcua_pa", PA, "backup_fault", {}, []),
    "battery_low": ("opcua_pa", PA, "battery_low", {"pct": 15}, []),
    "held_open": ("ble_access_gate", GATE, "held_open", {"door": 1}, []),
    "tamper": ("ble_access_gate", GATE, "tamper", {}, []),
    "dead_battery": ("ble_access_gate", GATE, "dead_battery", {}, []),
    "fire_release": ("ble_access_gate", GATE, "fire_release", {}, []),
    "clock_skew": ("http_plate_reader", LPR, "clock_skew", {"seconds": 172800},
                   [{"at": "8s", "device": "lpr-b1-in", "do": "car", "params": {"plate": "京A12345"}}]),
    "wrong_credentials": ("http_plate_reader", LPR, "wrong_credentials", {},
                          [{"at": "8s", "device": "lpr-b1-in", "do": "car", "params": {"plate": "京A12345"}}]),
}


def scenario(name: str, device: dict[str, Any], fault: str, params: dict[str, Any],
             extra: list[dict[str, Any]]) -> dict[str, Any]:
    dev = device["id"]
    timeline = [{"at": "4s", "device": dev, "inject": fault, "params": params}, *extra,
                {"at": "30s", "device": dev, "clear": fault, "params": params}]
    return {"scenario": f"case-{name}".replace("_", "-"), "description": f"golden case: {fault} raised and cleared",
            "seed": 1, "speed": 4, "duration": "40s", "site": {"id": "case-site", "name": "Case site"},
            "devices": [device], "timeline": sorted(timeline, key=lambda s: int(s["at"][:-1]))}


def main(names: list[str]) -> int:
    env = {**os.environ, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": "9"}
    for name, (driver, device, fault, params, extra) in FAULTS.items():
        if names and name not in names:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            spec, rec = Path(tmp, "scenario.yaml"), Path(tmp, "rec.jsonl")
            spec.write_text(yaml.safe_dump(scenario(name, device, fault, params, extra), allow_unicode=True))
            cmd = [sys.executable, "-m", "gateway", "run", "--scenario", str(spec), "--record", str(rec)]
            run = subprocess.run(cmd, env={**env, "COURTYARD_DATA": tmp}, capture_output=True, text=True, check=False)
            if not rec.exists():
                print(f"{name}: no recording\n{run.stderr[-2000:]}", file=sys.stderr)
                continue
            case = case_from_recording(rec, CASES / driver / name)
            print(f"{case.name}: {sum(1 for _ in rec.open()) - 1} inputs (scenario exit {run.returncode})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
