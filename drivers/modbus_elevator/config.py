"""Configuration of one elevator reached over Modbus TCP."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.modbus_elevator.regmap import load_map
from gateway.driver import DeviceConfig
from gateway.errors import ConfigError


class Thresholds(BaseModel):
    """Windows for alarms the gateway derives from status (docs/domain.md, "Elevators"; per-site tunable)."""

    model_config = ConfigDict(extra="forbid")

    trapped_s: float = Field(20.0, ge=0, description="Occupied, stopped, doors closed for this long")
    outside_door_zone_s: float = Field(45.0, ge=0, description="Stopped outside the door zone for this long")
    door_open_running_s: float = Field(1.0, ge=0, description="Running with the door open for this long")
    overspeed_ratio: float = Field(1.2, gt=1, description="speed / rated speed that counts as overspeed")
    overspeed_s: float = Field(0.0, ge=0)


class ModbusElevatorConfig(DeviceConfig):
    """An elevator controller or monitoring box on Modbus TCP, described by a register map."""

    driver: Literal["modbus_elevator"]
    host: str = "127.0.0.1"
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255, description="Modbus device id (slave address)")
    map: str = Field("gbt24476", description="Shipped map name or path to a map YAML file")
    poll_interval_s: float = Field(1.0, gt=0)
    timeout_s: float = Field(1.0, gt=0, description="Per request; keep below the poll interval")
    link: Literal["own", "shared"] = Field(
        "own", description="own: a TCP connection per elevator. shared: one connection for every elevator with"
        " this host and port (a serial-to-TCP gateway that takes few connections); requests take turns on it")
    lowest_floor: int = -2
    highest_floor: int = 30
    has_floor_zero: bool = False
    rated_speed_mps: float = Field(1.75, gt=0, le=10)
    floor_height_m: float = Field(3.0, gt=0)
    status_interval_s: float = Field(60.0, gt=0, description="Status is re-sent at least this often")
    speed_deadband_mps: float = Field(0.1, ge=0)
    load_deadband_pct: float = Field(5.0, ge=0)
    thresholds: Thresholds = Thresholds()

    @field_validator("map")
    @classmethod
    def _map_loads(cls, value: str) -> str:
        try:
            load_map(value)
        except FileNotFoundError:
            raise ValueError(f"register map {value!r} not found (shipped: gbt24476, monarch_vendor)") from None
        except ConfigError as exc:  # the map's own file:line: path: message, first problem first
            more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
            raise ValueError(f"register map {value!r} is invalid: {exc.problems[0]}{more}") from None
        return value

    def config_warnings(self) -> list[tuple[str, str]]:
        """(field, message) pairs `courtyard validate` prints: legal, but probably not meant."""
        if "occupied" not in load_map(self.map).fields:
            return [("map", f"register map {self.map!r} has no `occupied` field: "
                            "trapped-passenger detection is off for this elevator")]
        return []

    @model_validator(mode="after")
    def _floors(self) -> ModbusElevatorConfig:
        if self.lowest_floor > self.highest_floor:
            raise ValueError("lowest_floor must not exceed highest_floor")
        return self
