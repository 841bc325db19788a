"""Configuration of one pump controller."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.driver import DeviceConfig


class PumpConfig(DeviceConfig):
    """A booster-pump controller on Modbus TCP (holding registers 0..3, see registers.py)."""

    driver: Literal["modbus_water_pump"]
    host: str = "127.0.0.1"
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255)
    poll_interval_s: float = Field(1.0, gt=0)
    timeout_s: float = Field(1.0, gt=0)
    dry_run_s: float = Field(10.0, ge=0, description="Running with no flow for this long raises pump.dry_run")
    pressure_deadband_bar: float = Field(0.2, ge=0, description="Smaller pressure changes send no status")
