"""Benchmark: configuration load + validate time, and how fast hostile configs are refused.

    .venv/bin/python bench/config_load.py [--devices 5000] [--plates 20000] [--cap 30]

Each case runs in its own process (so a runaway case is cut off after `--cap` seconds and
reported as such): a site with N elevators, one camera with an N-plate allowlist, and four
hostile files: a billion-laughs (9 levels of 9 aliases), a merge-key bomb (9 levels, each
merging the previous one and aliasing it 8 times), a 5,000-deep nested sequence and a duplicate key.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEAD = "site: bench\nmqtt: {enabled: false}\n"


def elevators(n: int) -> str:
    out = [HEAD, "devices:\n"]
    for i in range(n):
        out.append(
            f"  - id: lift-{i}\n    driver: modbus_elevator\n    name: Car {i}\n    host: 10.0.{i // 250}.{i % 250}\n"
            f"    port: 502\n    unit_id: {i % 247 + 1}\n    map: gbt24476\n    poll_interval_s: 1.0\n"
            "    timeout_s: 0.8\n    lowest_floor: -2\n    highest_floor: 18\n    location: {building: \"1\"}\n"
            "    thresholds: {trapped_s: 20, door_open_running_s: 1}\n"
        )
    return "".join(out)


def plates(n: int) -> str:
    allow = "".join(f"        - 京A{i:05d}\n" for i in range(n))
    return (HEAD + "devices:\n  - id: lpr-1\n    driver: http_plate_reader\n    listen_host: 127.0.0.1\n"
            "    access:\n      allowlist:\n" + allow)


def laughs(levels: int = 9) -> str:
    out = [HEAD, 'x-l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n']
    for k in range(1, levels + 1):
        out.append(f"x-l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]\n")
    return "".join(out)


def merge_bomb(levels: int = 9) -> str:
    out = [HEAD, "x-m0: &m0 {a: 1, b: 2, c: 3}\n"]
    for k in range(1, levels + 1):
        fields = ", ".join(f"k{k}_{j}: *m{k - 1}" for j in range(8))
        out.append(f"x-m{k}: &m{k} {{<<: *m{k - 1}, {fields}}}\n")
    return "".join(out)


def deep(depth: int = 5000) -> str:
    return HEAD + "devices: " + "[" * depth + "]" * depth + "\n"


def duplicate() -> str:
    return HEAD + "mqtt: {enabled: true}\n"


def text_for(case: str, n_devices: int, n_plates: int) -> str:
    return {
        "devices": lambda: elevators(n_devices), "plates": lambda: plates(n_plates), "laughs": laughs,
        "merge_bomb": merge_bomb, "deep": deep, "duplicate": duplicate,
    }[case]()


def one(case: str, n_devices: int, n_plates: int) -> None:
    """Run one case in this process; print `seconds outcome`."""
    from gateway.config import load_config_text
    from gateway.errors import ConfigError

    text = text_for(case, n_devices, n_plates)
    t0 = time.perf_counter()
    try:
        cfg = load_config_text(text, source=f"{case}.yaml")
        outcome = f"loaded ({len(cfg.devices)} devices)"
    except ConfigError as exc:
        outcome = f"refused: {str(exc).splitlines()[0][:90]}"
    except RecursionError:
        outcome = "RecursionError"
    print(f"{time.perf_counter() - t0:.3f} {outcome}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--plates", type=int, default=20000)
    ap.add_argument("--cap", type=float, default=30.0, help="seconds before a case is cut off")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        one(args.case, args.devices, args.plates)
        return
    labels = {
        "devices": f"{args.devices:,} elevators", "plates": f"{args.plates:,}-plate allowlist",
        "laughs": "billion laughs (9x9)", "merge_bomb": "merge-key bomb (9x9)", "deep": "5,000-deep nesting",
        "duplicate": "duplicate key",
    }
    print(f"{'case':<24} {'seconds':>8}  outcome")
    for case, label in labels.items():
        cmd = [sys.executable, __file__, "--case", case, "--devices", str(args.devices), "--plates", str(args.plates)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.cap, check=False)
        except subprocess.TimeoutExpired:
            print(f"{label:<24} {'>' + str(int(args.cap)):>8}  cut off")
            continue
        if out.returncode != 0:
            print(f"{label:<24} {'-':>8}  crashed: {out.stderr.strip().splitlines()[-1][:90]}")
            continue
        seconds, _, outcome = out.stdout.strip().partition(" ")
        print(f"{label:<24} {seconds:>8}  {outcome}")


if __name__ == "__main__":
    main()
