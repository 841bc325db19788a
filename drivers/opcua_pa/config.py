"""Configuration of one OPC UA PA system (validated, never connects)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from drivers.opcua_pa.nodemap import builtin_maps, load_map
from gateway.driver import DeviceConfig
from gateway.errors import ConfigError


class OpcUaPaConfig(DeviceConfig):
    """One PA system reached through an OPC UA server; what its nodes mean comes from `map`."""

    driver: Literal["opcua_pa"]
    url: str = Field(pattern=r"^opc\.tcp://", description="Endpoint, e.g. opc.tcp://10.0.0.5:4840/")
    map: str = Field("courtyard_sim", description="Built-in node map name or path to a YAML node map")
    publishing_interval_ms: float = Field(100.0, ge=0, description="Subscription publishing interval")
    queue_size: int = Field(16, ge=1, le=1000, description="Server queue per node (changes per interval)")
    watchdog_s: float = Field(1.0, gt=0, description="Keep-alive probe period; failed probe = link loss")
    request_timeout_s: float = Field(4.0, gt=0)
    username: str | None = None
    password: SecretStr | None = None
    temperature_deadband_c: float = Field(1.0, ge=0, description="Report amp temperature on this change")
    load_deadband_pct: float = Field(5.0, ge=0, description="Report amplifier load on this change")
    device_time: bool = Field(False, description="Trust the server's SourceTimestamp as event time")

    @field_validator("map")
    @classmethod
    def _map_loads(cls, v: str) -> str:
        try:
            load_map(v)
        except FileNotFoundError:
            raise ValueError(f"node map {v!r} not found (shipped: {', '.join(builtin_maps())})") from None
        except ConfigError as exc:  # the map's own file:line: path: message, first problem first
            more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
            raise ValueError(f"node map {v!r} is invalid: {exc.problems[0]}{more}") from None
        return v
