"""The payload of every `water_pump.*` event: the gateway's event schema gains it from `DRIVER.payload`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from schemas.common import Frozen


class PumpPayload(Frozen):
    """A booster pump's state; fields that do not apply to an event type are null."""

    kind: Literal["water_pump"] = "water_pump"
    running: bool | None = None
    pressure_bar: float | None = Field(None, description="Outlet pressure")
    flow_lpm: int | None = Field(None, ge=0, description="Flow, litres per minute")
    motor_temp_c: float | None = None
    duration_s: float | None = Field(None, ge=0, description="How long the condition held (alarms)")
    raw: dict[str, Any] | None = Field(None, description="The input, when it was rejected")
