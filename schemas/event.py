"""The event envelope `courtyard.event/1` and its typed payloads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import AwareDatetime, BaseModel, Field, create_model, model_validator

from schemas.access import AccessPayload
from schemas.alarm import AlarmLifecyclePayload
from schemas.camera import CameraPayload
from schemas.command import CommandPayload
from schemas.common import (
    INT64_MAX,
    INT64_MIN,
    VALID,
    AlarmState,
    ConnectivityPayload,
    DeviceKind,
    DeviceRef,
    EventClass,
    Frozen,
    Int64,
    Quality,
    Severity,
)
from schemas.elevator import ElevatorPayload
from schemas.lpr import LprPayload
from schemas.pa import PaPayload
from schemas.rule import RulePayload

# One line per payload family; the discriminator is the payload's `kind`.
Payload = Annotated[
    ElevatorPayload | ConnectivityPayload | LprPayload | PaPayload | AccessPayload | CameraPayload | CommandPayload
    | AlarmLifecyclePayload | RulePayload,
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
    seq: Int64 | None = Field(None, description="Device sequence number, when the device has one")
    quality: Quality = VALID
    simulated: bool = False
    scenario: str | None = None
    payload: Payload

    model_config = Frozen.model_config | {"populate_by_name": True}

    @model_validator(mode="before")
    @classmethod
    def _reject_unstorable_integers(cls, data: Any) -> Any:
        """A device integer outside int64 (`plateid: 2**70`) makes the event `rejected`, value dropped.

        Unbounded, it would make InfluxDB refuse the write (and everything batched with it).
        Covers `seq` and the payload's fields, one level deep (`raw`, `open_doors`), whether the
        payload comes as a model (drivers) or a mapping (JSON).
        """
        if not isinstance(data, dict):
            return data
        if _all_storable(data):  # nearly every event: nothing to fix, found in one pass
            return data
        reasons: list[str] = []
        if _unstorable(data.get("seq")):
            data = {**data, "seq": None}
            reasons.append("seq_out_of_range")
        payload = data.get("payload")
        fields = payload if isinstance(payload, dict) else getattr(payload, "__dict__", None)
        if isinstance(fields, dict):
            fixed: dict[str, Any] = {}
            for key, value in fields.items():
                if _unstorable(value):
                    fixed[key] = None
                    reasons.append(f"{key}_out_of_range")
                elif isinstance(value, dict) and any(_unstorable(v) for v in value.values()):
                    reasons += [f"{key}.{k}_out_of_range" for k, v in value.items() if _unstorable(v)]
                    fixed[key] = {k: v for k, v in value.items() if not _unstorable(v)}
                elif isinstance(value, list | tuple) and any(_unstorable(v) for v in value):
                    reasons.append(f"{key}_out_of_range")
                    fixed[key] = type(value)(v for v in value if not _unstorable(v))
            if fixed:
                new = {**payload, **fixed} if isinstance(payload, dict) else payload.model_copy(update=fixed)
                data = {**data, "payload": new}
        if reasons:
            quality = data.get("quality", VALID)
            if not isinstance(quality, Quality):
                quality = Quality.model_validate(quality)
            data = {**data, "quality": Quality(status="rejected", reasons=tuple(dict.fromkeys(
                (*quality.reasons, *reasons))))}
        return data

    def to_json(self) -> str:
        """Serialize exactly as published (aliases, no nulls dropped)."""
        return self.model_dump_json(by_alias=True)


#: Value types that can never hold an integer out of int64 range.
_FLAT = frozenset({str, float, bool, type(None)})


def _all_storable(data: dict[str, Any]) -> bool:
    """True when `seq` and the payload's fields are all plain in-range values (no containers)."""
    seq = data.get("seq")
    if seq is not None and (type(seq) is not int or not INT64_MIN <= seq <= INT64_MAX):
        return False
    payload = data.get("payload")
    fields = payload if isinstance(payload, dict) else getattr(payload, "__dict__", None)
    if not isinstance(fields, dict):
        return True
    for value in fields.values():
        kind = type(value)
        if kind in _FLAT:
            continue
        if kind is not int or not INT64_MIN <= value <= INT64_MAX:
            return False  # a container, an int subclass or out of range: the full check decides
    return True


def _unstorable(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX


#: What the models above cover: the built-in kinds and payloads.
BUILTIN_KINDS: tuple[str, ...] = get_args(DeviceKind)
BUILTIN_PAYLOADS: frozenset[type[BaseModel]] = frozenset(get_args(get_args(Payload)[0]))


def payload_kind(model: type[BaseModel]) -> str | None:
    """The discriminator value of a payload model (its `kind: Literal["..."]`), None when it has none."""
    field = model.model_fields.get("kind")
    args = get_args(field.annotation) if field is not None else ()
    return args[0] if len(args) == 1 and isinstance(args[0], str) and field.default == args[0] else None  # type: ignore[union-attr]


def build_event_model(kinds: tuple[str, ...], payloads: tuple[type[BaseModel], ...]) -> type[Event]:
    """The envelope for a set of device kinds and payload models (the driver registry's).

    For exactly the built-in set this is `Event` itself, so its JSON Schema stays as published;
    otherwise a subclass whose `device.kind` and `payload` union also admit what plugins add.
    """
    payload_set = frozenset(payloads) | {ConnectivityPayload}
    if set(kinds) <= set(BUILTIN_KINDS) and payload_set <= BUILTIN_PAYLOADS:
        return Event
    all_kinds = tuple(dict.fromkeys((*BUILTIN_KINDS, *kinds)))
    ordered = [*get_args(get_args(Payload)[0]), *sorted(payload_set - BUILTIN_PAYLOADS, key=lambda m: m.__name__)]
    kind: Any = Literal[all_kinds]
    ref: Any = create_model("DeviceRef", __base__=DeviceRef, kind=(kind, ...))
    payload: Any = Annotated[Union[tuple(ordered)], Field(discriminator="kind")]  # noqa: UP007
    model: type[Event] = create_model("Event", __base__=Event, device=(ref, ...), payload=(payload, ...))
    return model


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_time_ns(when: datetime) -> int:
    """Nanoseconds since the epoch, as InfluxDB wants them (exact, no float rounding)."""
    return ((when - _EPOCH) // timedelta(microseconds=1)) * 1000
