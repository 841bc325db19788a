"""Configuration of one plate camera (one device entry) for the `http_plate_reader` driver."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from drivers.http_plate_reader.listener_config import (
    Auth,
    BasicAuth,
    HmacAuth,
    ListenerSettings,
    NoAuth,
    SourceNetwork,
    TokenAuth,
    unauthenticated_network_problem,
)
from drivers.http_plate_reader.plates import canonical
from gateway.driver import DeviceConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Authentication and listener limits are generic (shared with other push drivers): see listener_config.
LprNoAuth = NoAuth
LprTokenAuth = TokenAuth
LprHmacAuth = HmacAuth
LprBasicAuth = BasicAuth


class LprVisitorPass(_Strict):
    """A temporary permission for one plate."""

    plate: str
    valid_until: AwareDatetime
    valid_from: AwareDatetime | None = None
    pass_id: str | None = None

    @field_validator("plate")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return canonical(value)


class LprAccessConfig(_Strict):
    """Local lists that decide the barrier at the edge, so it works while the broker is down."""

    allowlist: list[str] = Field(default_factory=list)
    blocklist: list[str] = Field(default_factory=list)
    visitors: list[LprVisitorPass] = Field(default_factory=list)
    unknown: Literal["open", "deny"] = Field(
        "deny",
        description="Decision for plates on no list (exit lanes often use open)",
    )

    @field_validator("allowlist", "blocklist")
    @classmethod
    def _canonical_all(cls, values: list[str]) -> list[str]:
        return [canonical(v) for v in values]


class LprMediaConfig(_Strict):
    """Where images go: a bounded folder, oldest evicted first. Cameras sharing a path share the budget."""

    path: Path = Path("./courtyard-data/lpr-media")
    max_bytes: int = Field(512 * 1024 * 1024, gt=0)
    max_image_bytes: int = Field(2 * 1024 * 1024, gt=0, description="Larger images are rejected with 413")
    uri_prefix: str | None = Field(
        None,
        description="Prefix for image URIs (e.g. an HTTP server over `path`); default file:// URIs",
    )


class LprBarrierConfig(_Strict):
    """ISAPI barrier control, for cameras whose push reply cannot open the barrier (Hikvision)."""

    url: str = Field(pattern=r"^https?://[^\s]+$", description="Camera base URL, e.g. http://192.168.1.65")
    channel: int = Field(1, ge=1)
    username: str = "admin"
    password: SecretStr
    auth: Literal["digest", "basic"] = "digest"
    timeout_s: float = Field(2.0, gt=0)


class HttpPlateReaderConfig(DeviceConfig):
    """One licence-plate camera pushing reads to the gateway's shared HTTP listener."""

    driver: Literal["http_plate_reader"]
    protocol: Literal["zhenshi", "hikvision", "dahua"] = "zhenshi"
    listen_host: str = Field(
        "127.0.0.1",
        description="Address of the listener shared by cameras on the same port; a non-loopback address needs"
        " auth, allow_sources or explicit consent",
    )
    listen_port: int = Field(8088, ge=1, le=65535)
    path: str | None = Field(
        None,
        description=(
            "URL path this camera posts to; default /lpr/<device id>. Dahua (ITSAPI) posts to the fixed "
            "/NotificationInfo/TollgateInfo and /NotificationInfo/KeepAlive, under `path` if set (default: /)"
        ),
    )
    auth: Auth = NoAuth()
    allow_sources: list[SourceNetwork] = Field(
        default_factory=list,
        description="Source addresses (CIDRs) this camera may push from; empty: any. Others get 403",
    )
    listener: ListenerSettings = Field(
        default_factory=ListenerSettings,
        description="Limits of the shared listener; cameras on the same address and port must agree",
    )
    serial: str | None = Field(None, description="Expected camera serial number; pushes from others get 403")
    lane: str | None = Field(None, description="Lane name; default: the camera's own channel/lane field")
    direction: Literal["entry", "exit", "unknown"] | None = Field(
        None,
        description="Direction of travel at this camera; default: from the vendor's field when it has one",
    )
    forward_is: Literal["entry", "exit"] | None = Field(
        None,
        description=(
            "What the camera's forward (towards the camera) motion means in this lane (Hikvision, Dahua); "
            "reverse means the other. Unset: forward/reverse reads have direction unknown"
        ),
    )
    type_table: str | None = Field(
        None,
        description="Plate-type code table of this camera's firmware (Zhenshi: v1 older, v2 documented; default v2)",
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    rate_limit_per_s: float = Field(20.0, gt=0, description="Sustained pushes per second per source address")
    rate_burst: int = Field(40, ge=1)
    rate_limit_total_per_s: float = Field(
        50.0, gt=0, description="Sustained authenticated pushes per second to this camera's path, all sources"
    )
    rate_total_burst: int = Field(100, ge=1)
    heartbeat_interval_s: float = Field(10.0, gt=0, description="Camera keep-alive period")
    dedupe_s: float = Field(10.0, ge=0, description="Same plate, same lane within this window: suppressed")
    min_confidence: float = Field(0.7, ge=0, le=1, description="Reads below this are marked suspect")
    confidence_scale: Literal["percent", "unit", "auto"] | None = Field(
        None,
        description="Override of the vendor map's confidence scale",
    )
    gate_input: int | None = Field(None, ge=0, description="GPIO input wired to the barrier's up/down contact")
    barrier_timeout_s: float = Field(
        5.0,
        gt=0,
        description="After an open, barrier must report up within this time (needs gate_input)",
    )
    access: LprAccessConfig = LprAccessConfig()
    media: LprMediaConfig = LprMediaConfig()
    barrier: LprBarrierConfig | None = Field(
        None, description="Open the barrier with an ISAPI command after an open decision is committed"
    )

    @field_validator("path")
    @classmethod
    def _path_shape(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or any(c in value for c in "?# ")):
            raise ValueError("path must start with / and contain no '?', '#' or spaces")
        return value

    @model_validator(mode="after")
    def _lists_disjoint(self) -> HttpPlateReaderConfig:
        both = set(self.access.allowlist) & set(self.access.blocklist)
        if both:
            raise ValueError(f"access: plates on both allowlist and blocklist: {', '.join(sorted(both))}")
        return self

    @model_validator(mode="after")
    def _known_type_table(self) -> HttpPlateReaderConfig:
        if self.type_table is not None:
            from drivers.http_plate_reader.codec import vendor_maps  # codec loads YAML: only when needed

            tables = vendor_maps()[self.protocol].type_tables
            if self.type_table not in tables:
                known = ", ".join(sorted(tables)) or f"none for {self.protocol}"
                raise ValueError(f"type_table {self.type_table!r} unknown; tables: {known}")
        return self

    @model_validator(mode="after")
    def _no_open_network_listener(self) -> HttpPlateReaderConfig:
        problem = unauthenticated_network_problem(self.listen_host, self.auth, self.allow_sources)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def url_path(self) -> str:
        """The path this camera posts to (Dahua: the prefix of its two fixed paths)."""
        if self.protocol == "dahua":
            return (self.path or "").rstrip("/")
        return self.path or f"/lpr/{self.id}"

    @property
    def url_paths(self) -> tuple[str, ...]:
        """Every path this camera posts to: one, or Dahua's TollgateInfo and KeepAlive."""
        if self.protocol == "dahua":
            prefix = self.url_path
            return (f"{prefix}/NotificationInfo/TollgateInfo", f"{prefix}/NotificationInfo/KeepAlive")
        return (self.url_path,)
