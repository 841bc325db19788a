"""Edge linkage rules: the YAML model (`rules:` in the config, or rule files) and the rule events.

A rule says *when* (which committed events trigger it), optionally how a trigger is
*confirmed* (GB 50116 4.1.6: two independent detectors), what to *do* (commands to devices
chosen by id or by location and tags), what to undo when a tentative action is not confirmed,
and what to do *on clear*. See docs/rules.md.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from schemas.command import NAME_PATTERN, ArgValue
from schemas.common import AlarmState, EventClass, Severity

RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
LocationField = Literal["building", "unit", "floor", "garage", "zone"]
LOCATION_FIELDS: tuple[str, ...] = ("building", "unit", "floor", "garage", "zone")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _seconds(value: Any) -> Any:
    """`30`, `30s`, `500ms`, `2m`, `1h` -> seconds (numbers pass through)."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"bad duration {value!r}: a number with ms, s, m or h (e.g. 30s)")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return value


def _listify(value: Any) -> Any:
    """A single value where a list is expected: `type: camera.fire_detected`."""
    return [value] if isinstance(value, str | int | float) and not isinstance(value, bool) else value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0, le=86400)]
Patterns = Annotated[list[str], BeforeValidator(_listify), Field(min_length=1, max_length=64)]
Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LocationMatch(_Model):
    """Location fields to match (each a shell pattern or a list of them; all given must match)."""

    building: Patterns | None = None
    unit: Patterns | None = None
    floor: Patterns | None = None
    garage: Patterns | None = None
    zone: Patterns | None = None


class EventMatch(_Model):
    """Which committed events match: every field given must hold."""

    type: Patterns = Field(["*"], description="Event type patterns, e.g. camera.fire_detected, 'camera.*'")
    class_: Annotated[list[EventClass], BeforeValidator(_listify)] | None = Field(None, alias="class")
    severity: Severity | None = Field(None, description="At least this severity (critical > major > minor > info)")
    state: Annotated[list[AlarmState], BeforeValidator(_listify)] = Field(
        ["raised", "momentary"], description="Event states that trigger (a clear triggers `on_clear`, not `do`)")
    devices: Patterns | None = Field(None, description="Device id patterns")
    kinds: Patterns | None = Field(None, description="Device kinds: camera, elevator, pa, access_gate, plate_reader")
    location: LocationMatch | None = None
    tags: Patterns | None = Field(None, description="The device must carry every one of these tags")
    payload: dict[str, Annotated[list[Scalar], BeforeValidator(_listify)]] | None = Field(
        None, description="Payload fields that must equal one of the values given, e.g. {where: [lobby, elevator_car]}")
    hours: str | None = Field(None, pattern=r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$",
                              description="Only when the event's time of day is in this range, e.g. 22:00-06:00")
    timezone: str = Field("Asia/Shanghai", description="Time zone of `hours` (IANA name)")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(v)
        except (ValueError, KeyError, OSError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    def in_hours(self, when: datetime) -> bool:
        """Whether `when` falls in `hours` (a range past midnight wraps), in `timezone`."""
        if self.hours is None:
            return True
        from zoneinfo import ZoneInfo

        start, end = self.hours.split("-")
        local = when.astimezone(ZoneInfo(self.timezone)).strftime("%H:%M")
        return start <= local < end if start <= end else (local >= start or local < end)


class Confirm(_Model):
    """A trigger acts only once enough independent sources agree within a window."""

    count: int = Field(2, ge=2, le=20, description="Distinct sources needed, the trigger included")
    distinct: list[Literal["device", "type", "channel"]] = Field(
        ["device", "type"], min_length=1,
        description="What makes two sources distinct: device, event type, camera channel (combined)")
    within_s: Seconds = Field(60.0, gt=0, description="All of them within this window")
    by: list[EventMatch] = Field(
        default_factory=list, description="Other events that count as confirmation (a second detector, the fire"
        " panel's outputs) besides further triggers")
    same: list[LocationField] = Field(
        default_factory=list, description="Confirming events must share these location fields with the trigger")


class Target(_Model):
    """The devices an action goes to: every configured device that matches all the fields given."""

    devices: Patterns | None = Field(None, description="Device ids or patterns")
    kind: str | None = Field(None, description="Device kind")
    location: LocationMatch | None = None
    same: list[LocationField] = Field(
        default_factory=list, description="Share these location fields with the trigger's device (that lift's"
        " building and unit)")
    tags: Patterns | None = Field(None, description="Every one of these tags")
    trigger: bool = Field(False, description="The trigger's own device")

    @model_validator(mode="after")
    def _selects_something(self) -> Target:
        if not (self.devices or self.kind or self.location or self.same or self.tags or self.trigger):
            raise ValueError("a target needs devices, kind, location, same, tags or trigger")
        return self


class Action(_Model):
    """One command to every target device."""

    command: str = Field(pattern=NAME_PATTERN)
    to: Target
    args: dict[str, ArgValue] = Field(default_factory=dict, max_length=16)
    timeout_s: Seconds = Field(30.0, gt=0, le=3600, description="TTL of the command and the longest wait for its"
                               " outcome")
    tentative: bool = Field(False, description="Done at the first trigger, before confirmation; `undo` reverses it"
                            " when no confirmation comes in time")


class Rule(_Model):
    """One linkage rule."""

    id: str = Field(pattern=RULE_ID_PATTERN, description="Names the rule: requester `rule:<id>`")
    description: str | None = None
    enabled: bool = True
    when: Annotated[list[EventMatch], BeforeValidator(lambda v: [v] if isinstance(v, dict) else v)] = Field(
        min_length=1, description="Triggers: any of these")
    confirm: Confirm | None = None
    do: list[Action] = Field(min_length=1, max_length=32)
    undo: list[Action] = Field(default_factory=list, max_length=32,
                               description="Reverses tentative actions that no confirmation kept")
    on_clear: list[Action] = Field(default_factory=list, max_length=32,
                                   description="When the trigger's alarm clears (after a firing): release, stop")
    mode: Literal["single", "restart", "queued"] = Field(
        "single", description="A trigger while a firing runs: ignored, restarts it, or waits its turn")
    per: Literal["rule", "device"] | list[LocationField] = Field(
        "device", description="Firings are kept apart per trigger device, per place (e.g. [building, unit]: one"
        " e-bike incident per lift bank), or not at all (rule)")
    cooldown_s: Seconds = Field(0.0, description="After a firing starts, further triggers are ignored this long")
    max_queued: int = Field(8, ge=1, le=100)

    @field_validator("undo")
    @classmethod
    def _undo_not_tentative(cls, v: list[Action]) -> list[Action]:
        if any(a.tentative for a in v):
            raise ValueError("undo actions cannot be tentative")
        return v

    @model_validator(mode="after")
    def _tentative_needs_confirm(self) -> Rule:
        if any(a.tentative for a in self.do) and self.confirm is None:
            raise ValueError("tentative actions need `confirm` (what would keep them?)")
        if self.undo and not any(a.tentative for a in self.do):
            raise ValueError("`undo` reverses tentative actions: mark the actions it undoes `tentative: true`")
        return self


class RuleFile(_Model):
    """A rules file: `rules: [...]`."""

    rules: list[Rule] = Field(default_factory=list)


class RuleActionResult(BaseModel):
    """One command a firing sent, and how it ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phase: Literal["do", "undo", "clear"]
    device: str
    command: str
    command_id: str
    state: str
    reason: str | None = None


class RulePayload(BaseModel):
    """Payload of `rule.fired`, `rule.completed` and `rule.failed` (class `event`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["rule"] = "rule"
    rule: str
    firing_id: str
    phase: Literal["tentative", "confirmed", "undo", "clear"]
    triggers: list[str] = Field(default_factory=list, description="Ids of the events that fired it")
    actions: list[RuleActionResult] = Field(default_factory=list)
    latency_ms: float | None = Field(None, description="From the trigger's commit to this event")
    reason: str | None = None
