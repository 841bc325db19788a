"""Elevator payload (docs/domain.md, "Elevators")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import Frozen, Int64

Direction = Literal["up", "down", "none"]
DoorState = Literal["closed", "open", "opening", "closing", "unknown"]
ServiceMode = Literal[
    "out_of_service", "normal", "inspection", "fire_return", "firefighter",
    "emergency_power", "earthquake", "unknown",
]
TrapKind = Literal["at_level", "between_floors"]


class ElevatorPayload(Frozen):
    """Body of every `elevator.*` event; fields not relevant to an event type are null."""

    kind: Literal["elevator"] = "elevator"
    floor: Int64 | None = Field(None, description="Physical floor index (negative below ground)")
    direction: Direction | None = None
    car_running: bool | None = None
    door_zone: bool | None = None
    door_state: DoorState | None = None
    occupied: bool | None = None
    service_mode: ServiceMode | None = None
    speed_mps: float | None = Field(None, ge=0)
    load_pct: float | None = Field(None, ge=0)
    fault_code: Int64 | None = Field(None, description="Device fault code as decoded by the register map")
    duration_s: float | None = Field(None, ge=0, description="How long the condition lasted before it was raised")
    rated_mps: float | None = Field(None, gt=0)
    ratio: float | None = Field(None, ge=0, description="speed / rated speed (overspeed)")
    trap: TrapKind | None = None
    mode_from: ServiceMode | None = None
    mode_to: ServiceMode | None = None
    raw: dict[str, Int64] | None = Field(None, description="Raw decoded values of a rejected sample, by field name")
