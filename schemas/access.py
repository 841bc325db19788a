"""Access-control payload: gates, turnstiles and door controllers (docs/domain.md, "Access gates")."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field

from schemas.common import Frozen, Int64

CredentialType = Literal["none", "card", "pin", "face", "fingerprint", "qr", "ble", "remote"]
PassDirection = Literal["in", "out", "unknown"]
DenyReason = Literal[
    "no_permission",
    "expired",
    "outside_schedule",
    "unknown_credential",
    "anti_passback",
    "interlock",
    "multi_factor_timeout",
    "blocklist",
    "liveness_failed",
]
DoorMode = Literal["normal", "always_open", "always_closed", "fire_release"]


class AccessPayload(Frozen):
    """Body of every `access.*`, `door.*`, `gate.*` and access-device `device.*` event.

    Credentials never appear in clear: `credential_hash` is a keyed hash (HMAC-SHA256) made
    inside the driver, so the platform can correlate passes without learning card numbers.
    """

    kind: Literal["access"] = "access"
    door_no: int | None = Field(None, ge=0, le=255, description="Door or lane number (0: whole device)")
    reader_no: int | None = Field(None, ge=0, le=255)
    direction: PassDirection | None = None
    credential_type: CredentialType | None = None
    credential_hash: str | None = Field(
        None, pattern=r"^[0-9a-f]{32}$", description="HMAC-SHA256 of the credential id, first 128 bits, hex"
    )
    reason: DenyReason | None = Field(None, description="Why access was denied (access.denied)")
    mode: DoorMode | None = None
    door_open: bool | None = None
    locked: bool | None = None
    open_doors: tuple[Int64, ...] | None = Field(None, description="Doors reported open (gate.status)")
    tamper: bool | None = None
    mains_present: bool | None = None
    on_battery: bool | None = None
    battery_pct: int | None = Field(None, ge=0, le=100)
    firmware: str | None = None
    device_time: AwareDatetime | None = Field(None, description="Device clock as reported (kept when skewed)")
    raw_hex: str | None = Field(None, description="Raw frame of a rejected record, hex")
    error: str | None = Field(None, description="Decode error of a rejected record")
