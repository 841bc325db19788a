"""Node maps: which OPC UA nodes mean what, and how their values translate.

A vendor's PA system is described entirely by one YAML file (see `maps/`). Adding a vendor
means writing a map, not code: the driver, the codec and the simulator all read it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.yamlfile import load_model

MAPS_DIR = Path(__file__).parent / "maps"

PointType = Literal["number", "enum", "bool", "text", "texts"]
DataType = Literal["Boolean", "Int16", "UInt16", "Int32", "UInt32", "Float", "Double", "String"]

#: Vocabulary each enumerated role must translate into (docs/domain.md, "PA").
ROLE_VOCAB: dict[str, frozenset[str]] = {
    "zone_state": frozenset({"idle", "background", "paging", "emergency", "fault"}),
    "amp_fault": frozenset({"ok", "overheat", "overload", "channel_failure"}),
    "line_status": frozenset({"ok", "short", "open", "earth", "speaker_damaged"}),
    "emergency_source": frozenset({"none", "fire_linkage", "manual"}),
}
LINE_FAULTS = ("short", "open", "earth", "speaker_damaged")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Point(_Model):
    """One node and how to translate its raw value.

    Exactly one of `node` (a NodeId string; without `ns=`/`nsu=` it lives in the map's
    namespace) or `path` (BrowseNames from Objects, `/`-separated; `3:Name` pins an index,
    plain names use the map's namespace) must be given.
    """

    node: str | None = None
    path: str | None = None
    enum: str | None = Field(None, description="Name of a table in `enums`")
    scale: float = 1.0
    offset: float = 0.0
    range: tuple[float, float] | None = Field(None, description="Valid device range after scaling")
    invert: bool = Field(False, description="Active when the node reads false (fail-safe contacts)")
    datatype: DataType | None = Field(None, description="OPC UA type the device uses (simulator)")

    @model_validator(mode="after")
    def _one_reference(self) -> Point:
        if (self.node is None) == (self.path is None):
            raise ValueError("give exactly one of `node` or `path`")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError("range must be [low, high]")
        return self


class Zone(_Model):
    """A broadcast zone: what it plays, how loud, at which priority."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str | None = None
    state: Point | None = None
    volume: Point | None = None
    source: Point | None = None
    priority: Point | None = None


class Amplifier(_Model):
    """A power amplifier (or channel): temperature, load, fault, spare switch-over."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str | None = None
    temperature: Point | None = None
    load: Point | None = None
    fault: Point | None = None
    spare_switched: Point | None = None
    spare: str | None = Field(None, description="Id of the spare amplifier that takes over")


class Line(_Model):
    """A loudspeaker line, supervised either by one status enum or by one flag per fault."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    zone: str | None = None
    status: Point | None = None
    short: Point | None = None
    open: Point | None = None
    earth: Point | None = None
    speaker_damaged: Point | None = None


class Power(_Model):
    """Mains, backup supply and battery supervision (EN 54-4 style)."""

    mains_fault: Point | None = None
    backup_fault: Point | None = None
    battery: Point | None = Field(None, description="Battery charge in percent")
    battery_low: Point | None = Field(None, description="Device's own battery-low flag")
    battery_low_below: float = Field(30.0, description="Percent under which `battery` raises pa.battery_low")


class Emergency(_Model):
    """The emergency (voice alarm) broadcast status."""

    active: Point
    source: Point | None = None
    zones: Point | None = None
    message: Point | None = None


class CommandMethod(_Model):
    """One command as an OPC UA method call: its BrowseName on the commands object.

    The arguments are fixed per command (docs/commands.md): `emergency_start(zones: String,
    message: String, priority: Int32)`, `emergency_stop()`, `play(zones: String, clip: String)`,
    `set_volume(zone: String, db: Double)`; zones are comma-separated ids, empty for all. Every
    method returns one Int32 result code, looked up in `PaCommands.results` (0 = done).
    """

    method: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class PaCommands(_Model):
    """Commands the PA system takes (`commands:` in the map), each confirmed by reading nodes back."""

    object: str = Field(description="Browse path (from Objects) of the object holding the methods")
    results: dict[int, str] = Field(default_factory=lambda: {0: "ok"},
                                    description="Result code -> reason; 0 means the system did it")
    clips: tuple[str, ...] = Field((), description="Clips the system holds; empty: not checked by the gateway")
    emergency_start: CommandMethod | None = None
    emergency_stop: CommandMethod | None = None
    play: CommandMethod | None = None
    set_volume: CommandMethod | None = None

    def offered(self) -> dict[str, CommandMethod]:
        """Command name -> method, for the commands this map describes."""
        names = ("emergency_start", "emergency_stop", "play", "set_volume")
        return {n: m for n in names if (m := getattr(self, n)) is not None}


class NodeMap(_Model):
    """A whole vendor's PA system."""

    vendor: str
    model: str | None = None
    namespace: str = Field(description="Namespace URI the vendor's nodes live in")
    raw_prefix: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Namespace of `raw_code`")
    root: str = Field("PA", description="Simulator: top object under Objects for `node` points")
    enums: dict[str, dict[int | str, str]] = {}
    zones: tuple[Zone, ...] = ()
    amplifiers: tuple[Amplifier, ...] = ()
    lines: tuple[Line, ...] = ()
    power: Power = Power()
    emergency: Emergency | None = None
    commands: PaCommands | None = None

    @field_validator("enums")
    @classmethod
    def _enum_keys(cls, v: dict[str, dict[int | str, str]]) -> dict[str, dict[int | str, str]]:
        return {name: {_norm_key(k): val for k, val in table.items()} for name, table in v.items()}

    @model_validator(mode="after")
    def _consistent(self) -> NodeMap:
        ids = [z.id for z in self.zones]
        for what, seq in (("zone", ids), ("amplifier", [a.id for a in self.amplifiers]),
                          ("line", [ln.id for ln in self.lines])):
            dupes = {i for i in seq if seq.count(i) > 1}
            if dupes:
                raise ValueError(f"duplicate {what} ids: {sorted(dupes)}")
        for ln in self.lines:
            if ln.zone is not None and ln.zone not in ids:
                raise ValueError(f"line {ln.id}: unknown zone {ln.zone!r}")
        for key, role, point in self.points():
            if point.enum is not None and point.enum not in self.enums:
                raise ValueError(f"{key}: unknown enum table {point.enum!r}")
            vocab = ROLE_VOCAB.get(role)
            if vocab is not None:
                if point.enum is None:
                    raise ValueError(f"{key}: needs an `enum` table")
                extra = set(self.enums[point.enum].values()) - vocab
                if extra:
                    raise ValueError(f"{key}: enum {point.enum!r} maps to unknown values {sorted(extra)}; "
                                     f"allowed: {sorted(vocab)}")
        return self

    def points(self) -> Iterator[tuple[str, str, Point]]:
        """Every point as (key, role, point); keys are stable names like `zone.z1.volume`."""
        for z in self.zones:
            for field, role in (("state", "zone_state"), ("volume", "number"), ("source", "source"),
                                ("priority", "number")):
                p = getattr(z, field)
                if p is not None:
                    yield f"zone.{z.id}.{field}", role, p
        for a in self.amplifiers:
            for field, role in (("temperature", "number"), ("load", "number"), ("fault", "amp_fault"),
                                ("spare_switched", "bool")):
                p = getattr(a, field)
                if p is not None:
                    yield f"amp.{a.id}.{field}", role, p
        for ln in self.lines:
            if ln.status is not None:
                yield f"line.{ln.id}.status", "line_status", ln.status
            for flag in LINE_FAULTS:
                p = getattr(ln, flag)
                if p is not None:
                    yield f"line.{ln.id}.{flag}", "bool", p
        pw = self.power
        for field, role in (("mains_fault", "bool"), ("backup_fault", "bool"), ("battery", "number"),
                            ("battery_low", "bool")):
            p = getattr(pw, field)
            if p is not None:
                yield f"power.{field}", role, p
        if self.emergency is not None:
            em = self.emergency
            yield "emergency.active", "bool", em.active
            for field, role in (("source", "emergency_source"), ("zones", "texts"), ("message", "text")):
                p = getattr(em, field)
                if p is not None:
                    yield f"emergency.{field}", role, p

    def point_table(self) -> dict[str, tuple[str, Point]]:
        """Key -> (role, point)."""
        return {key: (role, p) for key, role, p in self.points()}

    def zone(self, zone_id: str) -> Zone | None:
        """The zone with this id, if configured."""
        return next((z for z in self.zones if z.id == zone_id), None)


def _norm_key(k: int | str) -> int | str:
    """Enum keys from YAML may be ints or numeric strings; keep ints as ints."""
    if isinstance(k, str):
        try:
            return int(k)
        except ValueError:
            return k
    return k


def map_path(ref: str) -> Path:
    """A map reference: a built-in name (`courtyard_sim`) or a path to a YAML file."""
    candidate = MAPS_DIR / f"{ref}.yaml"
    if "/" not in ref and not ref.endswith((".yaml", ".yml")) and candidate.is_file():
        return candidate
    return Path(ref)


@functools.cache
def _load_cached(path: Path, mtime: float) -> NodeMap:
    return load_model(NodeMap, path)  # ConfigError: "vendor.yaml:12: zones.z1.source: ..."


def load_map(ref: str) -> NodeMap:
    """Load and validate a node map (cached per file version)."""
    path = map_path(ref).resolve()
    return _load_cached(path, path.stat().st_mtime)


def builtin_maps() -> list[str]:
    """Names of the maps shipped with the driver."""
    return sorted(p.stem for p in MAPS_DIR.glob("*.yaml"))
