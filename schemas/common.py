"""Envelope building blocks shared by every device kind."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_ID = "courtyard.event/1"

DeviceKind = Literal["elevator", "access_gate", "pa", "plate_reader"]
EventClass = Literal["status", "event", "alarm", "fault", "connectivity", "command"]
Severity = Literal["critical", "major", "minor", "info"]
AlarmState = Literal["raised", "cleared", "momentary"]
QualityStatus = Literal["valid", "suspect", "rejected"]

#: Event classes that travel in the priority lane (published ahead of status backlog).
PRIORITY_CLASSES: frozenset[str] = frozenset({"alarm", "fault", "connectivity", "command"})


class Frozen(BaseModel):
    """Base for every schema model: immutable, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Quality(Frozen):
    """How far the gateway trusts the data, and why."""

    status: QualityStatus = "valid"
    reasons: tuple[str, ...] = Field(default=(), description="Machine-readable reasons, e.g. 'floor_out_of_range'")


VALID = Quality()


class Location(Frozen):
    """Where a device is in the community."""

    building: str | None = None
    unit: str | None = None
    garage: str | None = None
    zone: str | None = None


class DeviceRef(Frozen):
    """The device an event is about."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    kind: DeviceKind
    driver: str
    vendor: str | None = None
    model: str | None = None
    location: Location = Location()


class ConnectivityPayload(Frozen):
    """Payload of `device.online` / `device.offline` (class `connectivity`)."""

    kind: Literal["connectivity"] = "connectivity"
    online: bool
    misses: int = Field(0, ge=0, description="Consecutive failed polls or missed heartbeats")
    reason: str | None = None
