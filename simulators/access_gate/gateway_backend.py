"""The BLE gate driver's non-radio backends, registered by name (`simulators.BACKENDS`).

`backend: simulated` runs each configured gate in the gateway's own process behind the
in-memory bleak backend; `backend: bumble` talks real ATT over bumble's virtual radio (tests).
The driver finds them through the registry (`gateway.registry.backend`), so it never imports
this package itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner

from drivers.ble_access_gate.config import BleAccessGateConfig


@dataclass(frozen=True)
class GateBackend:
    """A bleak client (and scanner) class, and whether the gate must be started in-process."""

    client: type[BaseBleakClient]
    scanner: type[BaseBleakScanner] | None = None
    in_process: bool = False

    async def start(self, config: BleAccessGateConfig) -> Any:
        """Start the in-process gate at the configured address (the runtime closes it on shutdown)."""
        from simulators.access_gate.backend import spawn
        from simulators.access_gate.options import SimulationConfig

        sim: SimulationConfig = getattr(config, "simulation", None) or SimulationConfig()
        return await spawn(config.target, seed=sim.seed, doors=config.doors, arrivals_per_min=sim.arrivals_per_min,
                           speed=sim.speed, clock_skew_s=sim.clock_skew_s, table=config.code_table)


def _simulated() -> GateBackend:
    from simulators.access_gate.backend import SimulatedBleakClient, SimulatedBleakScanner

    return GateBackend(SimulatedBleakClient, SimulatedBleakScanner, in_process=True)


def _bumble() -> GateBackend:
    from simulators.access_gate.bumble_link import BumbleBleakClient

    return GateBackend(BumbleBleakClient)


SIMULATED = _simulated()
BUMBLE = _bumble()
