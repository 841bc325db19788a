"""Envelope building blocks shared by every device kind."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

SCHEMA_ID = "courtyard.event/1"

DeviceKind = Literal["elevator", "access_gate", "pa", "plate_reader", "camera"]
EventClass = Literal["status", "event", "alarm", "fault", "connectivity", "command"]
Severity = Literal["critical", "major", "minor", "info"]
AlarmState = Literal["raised", "cleared", "momentary"]
QualityStatus = Literal["valid", "suspect", "rejected"]

#: Integers a device sends are bounded to what every consumer can store (InfluxDB, SQLite and
#: most JSON stacks use signed 64-bit integers). The bound is enforced by the envelope, not by
#: the payload model: `Event` drops a value outside and marks the event `rejected`, so a driver
#: building a payload from a hostile number never crashes, and no write is refused downstream.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[int, WithJsonSchema({"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX})]
#: A count or index: never negative (refused by the payload model), at most int64 (see `Int64`).
Count64 = Annotated[int, Field(ge=0), WithJsonSchema({"type": "integer", "minimum": 0, "maximum": INT64_MAX})]

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
    floor: str | None = Field(None, description="Floor as people name it: B1, 1, 12A")
    garage: str | None = None
    zone: str | None = Field(None, description="Finer place: lobby, column 14, ramp")

    def over(self, base: Location) -> Location:
        """This location, with fields it leaves unset taken from `base` (a channel over its camera)."""
        return Location(**{k: v if v is not None else getattr(base, k) for k, v in self.__dict__.items()})


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
    misses: Count64 = Field(0, description="Consecutive failed polls or missed heartbeats")
    reason: str | None = None
