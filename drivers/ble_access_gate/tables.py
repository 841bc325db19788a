"""Code tables as data: device event codes -> the normalized access vocabulary.

A table is a YAML file (see tables/cogp.yaml for the keys). A device that speaks the COGP wire
format with another vendor's numbering needs a new table file, not new code. Tables are
validated when loaded, so a typo fails at configuration time instead of at 3 a.m.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from gateway.yamlfile import load_model
from schemas.access import CredentialType, DenyReason, DoorMode
from schemas.common import AlarmState, EventClass, Severity

TABLE_DIR = Path(__file__).with_name("tables")
BUILTIN_TABLES = ("cogp", "hik")


class TableEntry(BaseModel):
    """How one device code is normalized."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    code: int | None = Field(None, ge=0, le=0xFFFF)
    major: int | None = Field(None, ge=0, le=0xF)
    minor: int | None = Field(None, ge=0, le=0xFFF)
    type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
    cls: EventClass = Field("event", alias="class")
    severity: Severity = "info"
    state: AlarmState = "momentary"
    alarm: str | None = None
    clears: tuple[str, ...] = ()
    credential_type: CredentialType | None = None
    reason: DenyReason | None = None
    mode: DoorMode | None = None

    @model_validator(mode="after")
    def _check(self) -> TableEntry:
        if self.code is None and (self.major is None or self.minor is None):
            raise ValueError("an entry needs `code`, or `major` and `minor`")
        if self.state != "momentary" and self.alarm is None:
            raise ValueError(f"{self.type}: state {self.state} needs an `alarm` key")
        return self

    @property
    def wire_code(self) -> int:
        """The u16 carried in the record: `code`, or (major << 12) | minor."""
        if self.code is not None:
            return self.code
        assert self.major is not None and self.minor is not None
        return (self.major << 12) | self.minor


class CodeTable(BaseModel):
    """A vendor's numbering, indexed by wire code."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    raw_code: str = Field(description="str.format pattern with {code}, {major}, {minor}")
    events: tuple[TableEntry, ...]

    @model_validator(mode="after")
    def _unique(self) -> CodeTable:
        seen: set[int] = set()
        for e in self.events:
            if e.wire_code in seen:
                raise ValueError(f"duplicate code 0x{e.wire_code:04x} ({e.type})")
            seen.add(e.wire_code)
        return self

    _index: dict[int, TableEntry] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        """Index entries once; lookups happen per notification."""
        self._index = {e.wire_code: e for e in self.events}

    def lookup(self, code: int) -> TableEntry | None:
        """The entry for a wire code, or None when the table does not know it."""
        return self._index.get(code)

    def format_code(self, code: int) -> str:
        """Namespaced raw code for the envelope, e.g. `cogp:0x0002` or `hik:5/0x06`."""
        return self.raw_code.format(code=code, major=code >> 12, minor=code & 0xFFF)


class Enumerations(BaseModel):
    """Profile-wide byte enumerations (tables/profile.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    credential_types: dict[int, CredentialType]
    directions: dict[int, Literal["in", "out", "unknown"]]
    reasons: dict[int, DenyReason | None]
    modes: dict[int, DoorMode]
    command_refusals: dict[int, str] = {}


@cache
def load_table(name_or_path: str) -> CodeTable:
    """Load a built-in table by name (`cogp`, `hik`) or any table file by path."""
    path = TABLE_DIR / f"{name_or_path}.yaml" if name_or_path in BUILTIN_TABLES else Path(name_or_path)
    return load_model(CodeTable, path)  # ConfigError: "table.yaml:12: events.3: ..."


@cache
def load_enumerations() -> Enumerations:
    """The profile's enumerations."""
    return load_model(Enumerations, TABLE_DIR / "profile.yaml")
