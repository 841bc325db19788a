"""Settings of a simulated gate (`backend: simulated`), added to `ble_access_gate` device entries by the registry.

They are not part of the driver's production config model: `simulators.CONFIG_EXTENSIONS`
registers them, and `gateway.registry.device_config_model` builds the model that accepts them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SimulationConfig(BaseModel):
    """Gate model used when `backend: simulated` (no radio): the peripheral runs in-process."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 1
    arrivals_per_min: float = Field(6.0, gt=0, le=6000)
    speed: float = Field(1.0, gt=0, le=1000, description="Simulated seconds per wall-clock second")
    clock_skew_s: float = Field(0.0, description="Offset of the simulated device clock")
