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


async def main(config_path: Path, port: int) -> None:
    cfg = load_config(config_path)
    async with PumpSimulator(port=port) as sim, Gateway(cfg, sinks=[]):
        await asyncio.sleep(0.6)
        await sim.inject("dry_run")
        await asyncio.sleep(0.8)
        await sim.clear("dry_run")
        await asyncio.sleep(0.6)
    for row in query(cfg.outbox.path):
        print(row.body)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
