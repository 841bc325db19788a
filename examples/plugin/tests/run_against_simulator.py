"""Run the gateway in-process against the pump simulator; print the events it committed (JSON lines).

`python run_against_simulator.py CONFIG.yaml PORT`: the config's device must point at PORT.
The simulator starts healthy, runs dry for a while, then recovers, so a `water_pump.dry_run`
alarm is raised and cleared. Used by the repository's tests/test_example_plugin.py.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from courtyard_pump.simulator import PumpSimulator

from gateway.config import load_config
from gateway.history import query
from gateway.runtime import Gateway


async def _until(cfg_path: Path, type_: str, state: str, timeout: float = 30.0) -> None:
    """Wait until the outbox holds such an event (polls, so a loaded machine only takes longer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if any(row.type == type_ and f'"state":"{state}"' in row.body.replace(" ", "") for row in query(cfg_path)):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no {type_} {state} within {timeout} s")


async def main(config_path: Path, port: int) -> None:
    cfg = load_config(config_path)
    async with PumpSimulator(port=port) as sim, Gateway(cfg, sinks=[]):
        await _until(cfg.outbox.path, "water_pump.status", "momentary")
        await sim.inject("dry_run")
        await _until(cfg.outbox.path, "water_pump.dry_run", "raised")
        await sim.clear("dry_run")
        await _until(cfg.outbox.path, "water_pump.dry_run", "cleared")
    for row in query(cfg.outbox.path):
        print(row.body)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
