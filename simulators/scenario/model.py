"""Scenario files: a site layout plus a timeline of behaviour and faults, with expectations.

The format is YAML validated by these models (JSON Schema: `schemas/scenario.schema.json`).
Times are scenario seconds (`12`, `"12s"`, `"2m"`); with `speed: 10` a scenario minute
plays in six real seconds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from schemas.common import Location  # the envelope's own location block: scenarios place devices the same way


def _kinds() -> Any:
    from gateway.registry import scenario_adapters  # kinds with a scenario adapter, plugins' included

    return Literal[tuple(scenario_adapters())]


if TYPE_CHECKING:
    Kind = str
else:
    Kind = _kinds()

_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def _seconds(value: Any) -> Any:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DUR.match(value)
        if not m:
            raise ValueError(f"bad duration {value!r}: use e.g. 30, 30s, 2m, 1h, 500ms")
        scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]
        return float(m.group(1)) * scale
    return value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0)]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScenarioDevice(_M):
    """One simulated device. `settings` go to the kind's adapter (simulator and driver knobs)."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    kind: Kind
    name: str | None = None
    location: Location = Location()
    tags: list[str] = Field(default_factory=list, description="Labels rules select devices by (gateway config `tags`)")
    settings: dict[str, Any] = Field(default_factory=dict)


class Building(_M):
    """A building of the site (informative; devices carry their own location)."""

    id: str
    name: str | None = None
    floors: tuple[int, int] | None = Field(None, description="lowest and highest floor")
    units: int | None = None


class Site(_M):
    """The community being simulated."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    name: str | None = None
    buildings: list[Building] = Field(default_factory=list)
    garages: list[str] = Field(default_factory=list)


class Step(_M):
    """One timeline entry: a behaviour (`do`), a fault (`inject`/`clear`) or an infrastructure fault."""

    at: Seconds
    device: str | None = None
    devices: list[str] | None = None
    kind: Kind | None = Field(None, description="apply to every device of this kind")
    do: str | None = None
    inject: str | None = None
    clear: str | None = None
    infra: Literal["broker_down", "database_down"] | None = None
    for_: Seconds | None = Field(None, alias="for", description="duration of an injected fault or outage")
    params: dict[str, Any] = Field(default_factory=dict)
    note: str | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        actions = [a for a in (self.do, self.inject, self.clear, self.infra) if a]
        if len(actions) != 1:
            raise ValueError("each step needs exactly one of: do, inject, clear, infra")
        if self.infra is None and not (self.device or self.devices or self.kind):
            raise ValueError("a device step needs `device`, `devices` or `kind`")
        if self.infra is not None and self.for_ is None:
            raise ValueError("an infra step needs `for` (how long the outage lasts)")
        return self

    @property
    def action(self) -> tuple[str, str]:
        """("do" | "inject" | "clear" | "infra", name)."""
        for verb in ("do", "inject", "clear", "infra"):
            name = getattr(self, verb)
            if name:
                return verb, name
        raise AssertionError("validated to have one action")


class Expectation(_M):
    """Something the platform should see on MQTT by the end of the run."""

    type: str = Field(description="event type; glob allowed, e.g. 'pa.*'")
    device: str | None = None
    state: Literal["raised", "cleared", "momentary"] | None = None
    severity: Literal["critical", "major", "minor", "info"] | None = None
    min_count: int = Field(1, ge=0)
    max_count: int | None = Field(None, ge=0, description="0: must not happen")
    payload: dict[str, Any] = Field(default_factory=dict, description="payload fields that must match")

    @model_validator(mode="after")
    def _bounds(self) -> Expectation:
        if "min_count" not in self.model_fields_set and self.max_count is not None:
            self.min_count = min(1, self.max_count)  # `max_count: 0` alone means "must not happen"
        if self.max_count is not None and self.min_count > self.max_count:
            raise ValueError("min_count exceeds max_count")
        return self


class Scenario(_M):
    """A whole scenario file."""

    scenario: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="short id, stamped on events")
    description: str = ""
    platform_should_see: str = Field("", description="plain-language statement of the expected outcome")
    seed: int = 1
    speed: float = Field(1.0, gt=0, le=100)
    duration: Seconds = 60.0
    site: Site
    devices: list[ScenarioDevice]
    timeline: list[Step] = Field(default_factory=list)
    expect: list[Expectation] = Field(default_factory=list)
    rules: list[str] = Field(
        default_factory=list, description="Rule files (relative to the scenario file) the gateway runs, with"
        " commands allowed to them on every device of the scenario")

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        ids = [d.id for d in self.devices]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"duplicate device ids: {sorted(dupes)}")
        known = set(ids)
        for i, step in enumerate(self.timeline):
            for dev in [step.device, *(step.devices or [])]:
                if dev is not None and dev not in known:
                    raise ValueError(f"timeline[{i}] names unknown device {dev!r}")
            if step.at > self.duration:
                raise ValueError(f"timeline[{i}] at {step.at}s is after the scenario's duration {self.duration}s")
        return self

    def targets(self, step: Step) -> list[ScenarioDevice]:
        """The devices a step applies to."""
        names = {step.device} if step.device else set(step.devices or [])
        return [d for d in self.devices if d.id in names or (step.kind is not None and d.kind == step.kind)]


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate a scenario file; ValueError names the file and the problems."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
        if isinstance(data, dict):  # top-level `x-...` keys hold YAML anchors, as in gateway configs
            data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
        scenario = Scenario.model_validate(data)
        if scenario.rules:  # relative to the scenario file, so it runs from any directory
            scenario = scenario.model_copy(update={"rules": [str((p.parent / r).resolve()) for r in scenario.rules]})
        return scenario
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{p}: {exc}") from exc
    except ValidationError as exc:
        lines = [f"{p}: {'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()]
        raise ValueError("\n".join(lines)) from None
