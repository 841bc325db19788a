"""Configuration of one BLE access gate (validated only; no I/O happens here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.driver import DeviceConfig


class BleAccessGateConfig(DeviceConfig):
    """One gate, turnstile or door controller speaking the Courtyard Open Gate Profile over BLE."""

    driver: Literal["ble_access_gate"]
    address: str | None = Field(
        None, description="BLE address (AA:BB:CC:DD:EE:FF) or platform id (UUID on macOS)"
    )
    scan_name: str | None = Field(None, description="Find the device by advertised name instead of address")
    backend: str = Field(
        "native",
        description="native (bleak's platform backend), a registered backend (simulated: in-process "
        "gate; bumble: virtual radio, tests), or module:Class of a BaseBleakClient subclass",
    )
    code_table: str = Field("cogp", description="cogp, hik, or a path to a table YAML file")
    credential_key: SecretStr = Field(description="HMAC key for credential ids; keep it in an env var")
    doors: int = Field(1, ge=1, le=8)
    readers: int = Field(2, ge=1, le=16)
    max_clock_skew_s: float = Field(120.0, gt=0, description="Beyond this the device time is not trusted")
    connect_timeout_s: float = Field(10.0, gt=0)
    heartbeat_s: float = Field(30.0, gt=0, description="Status read interval; a failed read means link lost")
    history_batch: int = Field(64, ge=1, le=0xFFFF, description="Records asked per history request")
    history_timeout_s: float = Field(5.0, gt=0)
    dedupe_window: int = Field(4096, ge=16, description="Sequence numbers remembered for gap tracking")

    @field_validator("code_table")
    @classmethod
    def _table_loads(cls, value: str) -> str:
        # Load it now, so `courtyard validate` reports a missing or broken table, not startup.
        from drivers.ble_access_gate.tables import load_table

        try:
            load_table(value)
        except Exception as exc:
            raise ValueError(f"code table {value!r} cannot be loaded: {exc}") from None
        return value

    @field_validator("credential_key")
    @classmethod
    def _key_strength(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("credential_key must be at least 16 characters")
        return v

    @model_validator(mode="after")
    def _target(self) -> BleAccessGateConfig:
        if not self.address and not self.scan_name:
            raise ValueError("set `address` or `scan_name`")
        if self.backend != "native" and ":" not in self.backend:
            from gateway.registry import backends  # named backends (simulated, bumble) are registered

            if self.backend not in backends("ble_access_gate"):
                known = ", ".join(["native", *sorted(backends("ble_access_gate")), "module:Class"])
                raise ValueError(f"backend must be one of {known}")
        return self

    @property
    def target(self) -> str:
        """What to connect to: the address, else the scan name (the simulated backend accepts either)."""
        return self.address or self.scan_name or ""
