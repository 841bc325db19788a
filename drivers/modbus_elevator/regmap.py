"""Register maps as data: where each elevator fact lives, and how its words translate.

A map file (YAML) names the register blocks to read, one entry per field (address, bit
mask and shift, sign, scale, divisor, enumeration) and the code tables that turn fault
codes, event codes and alarm bits into event types. `decode()` and `encode()` are pure and
inverse of each other, so the simulator speaks any map the driver reads.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.yamlfile import load_model
from schemas.common import EventClass, Severity

MAPS_DIR = Path(__file__).parent / "maps"

FieldName = Literal[
    "floor", "direction", "car_running", "door_zone", "door_state", "occupied", "service_mode",
    "speed_mps", "load_pct", "fault_code", "event_code",
]
EnumValue = str | bool | int


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Block(_M):
    """A contiguous register range read in one request."""

    address: int = Field(ge=0, le=65535)
    count: int = Field(ge=1, le=125)


class FieldSpec(_M):
    """How one fact is encoded in one register."""

    address: int = Field(ge=0, le=65535)
    mask: int = Field(0xFFFF, ge=1, le=0xFFFF)
    shift: int = Field(0, ge=0, le=15)
    signed: bool = False
    scale: float = Field(1.0, gt=0, description="value = word * scale")
    divisor: int = Field(1, ge=1, description="value = word / divisor, must divide exactly (e.g. fault code x100)")
    enum: dict[int, EnumValue] | None = None

    def extract(self, word: int) -> int:
        """The raw integer of this field inside `word`."""
        raw = (word & self.mask) >> self.shift
        if self.signed:
            width = (self.mask >> self.shift).bit_length()
            if raw & (1 << (width - 1)):
                raw -= 1 << width
        return raw

    def insert(self, word: int, raw: int) -> int:
        """`word` with this field set to `raw`."""
        width = (self.mask >> self.shift).bit_length()
        raw &= (1 << width) - 1
        return (word & ~self.mask & 0xFFFF) | ((raw << self.shift) & self.mask)


class CodeEntry(_M):
    """What a device code means."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: str = Field(pattern=r"^elevator\.[a-z0-9_.]+$")
    cls: EventClass = Field("fault", alias="class")
    severity: Severity = "major"
    condition: bool = Field(True, description="Raised while present, cleared when gone; false: momentary")
    note: str | None = None


class BitTable(_M):
    """An alarm bitfield: one word, bit number -> meaning."""

    address: int = Field(ge=0, le=65535)
    bits: dict[int, CodeEntry]


class CommandArg(_M):
    """One argument of a command: the register it is written to, and its bounds."""

    address: int = Field(ge=0, le=65535)
    signed: bool = False
    min: int = Field(0, ge=-32768, le=65535)
    max: int = Field(65535, ge=-32768, le=65535)

    def word(self, value: int) -> int:
        """The register word for `value` (two's complement when signed)."""
        return value & 0xFFFF


class CommandSpec(_M):
    """One command: its code in the mailbox, its arguments, and the read-back that confirms it."""

    code: int = Field(ge=1, le=65535)
    args: dict[str, CommandArg] = {}
    #: After the controller acknowledged the command: status fields that must read back one of
    #: these values (e.g. `door_state: [open, opening]` for `hold_door`) before it counts as done.
    confirm: dict[FieldName, tuple[EnumValue, ...]] = {}
    note: str | None = None


class CommandMailbox(_M):
    """How the controller takes requests: a mailbox of holding registers, written and read back.

    The gateway writes `seq..` (sequence number, command code, arguments) in one write; the
    controller acts or refuses, then sets `ack` to that sequence number and `result` to 0
    (done) or a refusal code. Nothing is assumed from the write itself: only `ack == seq`
    read back from the device, and then the `confirm` fields, make a command succeed.
    """

    block: Block
    seq: int = Field(ge=0, le=65535)
    code: int = Field(ge=0, le=65535)
    ack: int = Field(ge=0, le=65535)
    result: int = Field(ge=0, le=65535)
    refusals: dict[int, str] = Field({}, description="result code -> reason (the controller's own words)")
    commands: dict[str, CommandSpec]

    @model_validator(mode="after")
    def _layout(self) -> CommandMailbox:
        inside = range(self.block.address, self.block.address + self.block.count)
        for name, cmd in self.commands.items():
            written = self.write_range(name)
            if any(a not in inside for a in (*written, self.ack, self.result)):
                raise ValueError(f"command {name}: registers outside the mailbox block")
            if self.ack in written or self.result in written:
                raise ValueError(f"command {name}: its write would overwrite ack/result")
            if cmd.confirm and not cmd.code:
                raise ValueError(f"command {name}: no code")
        return self

    def write_range(self, name: str) -> range:
        """The registers one write of command `name` covers (sequence number, code, arguments)."""
        regs = [self.seq, self.code, *(a.address for a in self.commands[name].args.values())]
        return range(min(regs), max(regs) + 1)

    def frame(self, name: str, seq: int, args: dict[str, int]) -> tuple[int, list[int]]:
        """(start address, words) of the one write that submits command `name`."""
        cmd = self.commands[name]
        span = self.write_range(name)
        words = dict.fromkeys(span, 0)
        words[self.seq] = seq & 0xFFFF
        words[self.code] = cmd.code
        for arg, spec in cmd.args.items():
            words[spec.address] = spec.word(args[arg])
        return span.start, [words[a] for a in span]


class RegisterMap(_M):
    """A complete elevator register map."""

    name: str
    description: str = ""
    namespace: str = Field(pattern=r"^[a-z0-9_]+$", description="raw_code namespace, e.g. gbt24476")
    table: Literal["holding", "input"] = "holding"
    blocks: tuple[Block, ...]
    fields: dict[FieldName, FieldSpec]
    fault_codes: dict[int, CodeEntry] = {}
    event_codes: dict[int, CodeEntry] = {}
    alarm_bits: tuple[BitTable, ...] = ()
    #: Requests the controller accepts (it may refuse them); absent: the elevator takes no commands.
    commands: CommandMailbox | None = None

    @model_validator(mode="after")
    def _addresses_are_read(self) -> RegisterMap:
        covered = {a for b in self.blocks for a in range(b.address, b.address + b.count)}
        wanted = {f.address for f in self.fields.values()} | {t.address for t in self.alarm_bits}
        missing = sorted(wanted - covered)
        if missing:
            raise ValueError(f"addresses {missing} are not inside any block")
        return self

    # --- decode ----------------------------------------------------------------------------

    def decode(self, words: dict[int, int]) -> tuple[dict[str, Any], dict[str, int], list[str]]:
        """Decode registers into (values, raw ints, problems). Never raises on any word values.

        A problem is a machine-readable reason such as `direction_out_of_range:7`; the field's
        value is then absent from `values`.
        """
        values: dict[str, Any] = {}
        raw: dict[str, int] = {}
        problems: list[str] = []
        for name, spec in self.fields.items():
            word = words.get(spec.address)
            if word is None:
                problems.append(f"{name}_missing")
                continue
            r = spec.extract(word & 0xFFFF)
            raw[name] = r
            if spec.enum is not None:
                if r in spec.enum:
                    values[name] = spec.enum[r]
                else:
                    problems.append(f"{name}_out_of_range:{r}")
                continue
            if spec.divisor != 1:
                if r % spec.divisor:
                    problems.append(f"{name}_not_integral:{r}")
                    continue
                r //= spec.divisor
            values[name] = round(r * spec.scale, 6) if spec.scale != 1.0 else r
        for table in self.alarm_bits:
            word = words.get(table.address)
            if word is not None:
                raw[f"bits@{table.address}"] = word & 0xFFFF
        return values, raw, problems

    def active_bits(self, words: dict[int, int]) -> dict[str, tuple[CodeEntry, str]]:
        """Alarm bits set: key -> (entry, raw_code)."""
        out = {}
        for table in self.alarm_bits:
            word = words.get(table.address, 0)
            for bit, entry in table.bits.items():
                if word >> bit & 1:
                    out[f"bit:{table.address}.{bit}"] = (entry, f"{self.namespace}:bit{table.address}.{bit}")
        return out

    # --- encode (simulators) ---------------------------------------------------------------

    def encode(self, values: dict[str, Any], bits: AbstractSet[str] = frozenset()) -> dict[int, int]:
        """Registers for `values` (field name -> decoded value) and set alarm `bits` (entry types).

        A value the map cannot represent (not in the field's enum, or too wide for its bits)
        raises `ValueError`: a simulator that silently wrote 0 instead would make the driver
        reject samples the device never sent. Fields the map lacks and alarm bits it has no
        bit for are skipped (the device cannot say them).
        """
        words: dict[int, int] = {a: 0 for b in self.blocks for a in range(b.address, b.address + b.count)}
        for name, spec in self.fields.items():
            if name not in values or values[name] is None:
                continue
            value = values[name]
            if spec.enum is not None:
                codes = [k for k, v in spec.enum.items() if v == value and type(v) is type(value)]
                if not codes:
                    raise ValueError(f"map {self.name}: {name}={value!r} has no code (enum: {spec.enum})")
                r = codes[0]
            else:
                r = round(value / spec.scale) * spec.divisor
            width = (spec.mask >> spec.shift).bit_length()
            low, high = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if spec.signed else (0, (1 << width) - 1)
            if not low <= r <= high:
                raise ValueError(f"map {self.name}: {name}={value!r} (raw {r}) does not fit {width} bits")
            words[spec.address] = spec.insert(words[spec.address], int(r))
        for table in self.alarm_bits:
            for bit, entry in table.bits.items():
                if entry.type in bits:
                    words[table.address] |= 1 << bit
        return words


@cache
def load_map(name_or_path: str) -> RegisterMap:
    """A shipped map by name (`gbt24476`, `monarch_vendor`) or a YAML file path.

    Raises `FileNotFoundError`, or `ConfigError` whose problems carry the map file's lines.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = MAPS_DIR / f"{name_or_path}.yaml"
    return load_model(RegisterMap, path)  # ConfigError: "map.yaml:12: fields.floor.mask: ..."


def shipped_maps() -> list[str]:
    """Names of the maps shipped with the driver."""
    return sorted(p.stem for p in MAPS_DIR.glob("*.yaml"))
