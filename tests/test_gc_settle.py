"""A running gateway tunes the cycle collector once started (docs/architecture.md, "Scale")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.runtime import GC_THRESHOLDS
from tests.helpers import base_config

# Runs `run_until_signal` as `courtyard run` does, reports the collector once it is settled
# (or that it never was), then stops itself with SIGTERM, the way an operator would.
_PROBE = """
import asyncio, gc, json, os, signal, sys
from gateway.config import parse_config
from gateway.runtime import Gateway, run_until_signal

async def main():
    before = gc.get_threshold()
    async def probe():
        for _ in range(200):
            if gc.get_freeze_count():
                break
            await asyncio.sleep(0.05)
        print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
        os.kill(os.getpid(), signal.SIGTERM)
    task = asyncio.create_task(probe())
    await run_until_signal(Gateway(parse_config(json.loads(sys.argv[1]))))
    await task

asyncio.run(main())
"""


def test_a_started_gateway_freezes_what_it_built_and_collects_less_often(tmp_path: Path) -> None:
    cfg = base_config(tmp_path)
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(cfg)], check=False, capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert tuple(report["before"]) == (700, 10, 10)  # Python's defaults, before the gateway started
    assert tuple(report["after"]) == GC_THRESHOLDS
    assert report["frozen"] > 10_000  # modules, configuration, drivers: out of every future pass
