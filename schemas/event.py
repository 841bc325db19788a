"""The event envelope `courtyard.event/1` and its typed payloads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from schemas.access import AccessPayload
from schemas.common import (
    VALID,
    AlarmState,
    ConnectivityPayload,
    DeviceRef,
    EventClass,
    Frozen,
    Quality,
    Severity,
)
from schemas.elevator import ElevatorPayload
from schemas.lpr import LprPayload
from schemas.pa import PaPayload

# One line per payload family; the discriminator is the payload's `kind`.
Payload = Annotated[
    ElevatorPayload | ConnectivityPayload | LprPayload | PaPayload | AccessPayload,
    Field(discriminator="kind"),
]


class Event(Frozen):
    """One normalized fact about one device, as published on MQTT and kept in the outbox."""

    schema_: Literal["courtyard.event/1"] = Field("courtyard.event/1", alias="schema")
    id: str = Field(description="UUIDv7: unique and time-sortable; consumers dedupe on it")
    time: AwareDatetime = Field(description="When it happened (device clock when trusted, else gateway)")
    received: AwareDatetime = Field(description="When the gateway received it (UTC)")
    site: str
    gateway: str
    device: DeviceRef
    class_: EventClass = Field(alias="class")
    type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
    severity: Severity = "info"
    state: AlarmState = "momentary"
    alarm_id: str | None = Field(None, description="Ties a raised alarm or fault to its clear")
    raw_code: str | None = Field(None, description="Namespaced source code, e.g. gbt24476:4")
    seq: int | None = Field(None, description="Device sequence number, when the device has one")
    quality: Quality = VALID
    simulated: bool = False
    scenario: str | None = None
    payload: Payload

    model_config = Frozen.model_config | {"populate_by_name": True}

    def to_json(self) -> str:
        """Serialize exactly as published (aliases, no nulls dropped)."""
        return self.model_dump_json(by_alias=True)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_time_ns(when: datetime) -> int:
    """Nanoseconds since the epoch, as InfluxDB wants them (exact, no float rounding)."""
    return ((when - _EPOCH) // timedelta(microseconds=1)) * 1000
