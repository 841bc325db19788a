"""Courtyard's event schema: the envelope and one payload model per device kind."""

from schemas.common import SCHEMA_ID, ConnectivityPayload, DeviceRef, Location, Quality
from schemas.elevator import ElevatorPayload
from schemas.event import Event, Payload

__all__ = [
    "SCHEMA_ID",
    "ConnectivityPayload",
    "DeviceRef",
    "ElevatorPayload",
    "Event",
    "Location",
    "Payload",
    "Quality",
]
