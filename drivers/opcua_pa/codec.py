"""Pure value translation: one raw node value + its map entry -> a typed value with a quality.

No I/O and no state: the same raw value always decodes the same way, which is what makes
record/replay and property testing possible. Raw values are the JSON-able form the driver
records (see `jsonable`), never asyncua objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from drivers.opcua_pa.nodemap import NodeMap, Point

T = TypeVar("T")
Status = Literal["valid", "suspect", "rejected"]


@dataclass(frozen=True, slots=True)
class Decoded(Generic[T]):
    """A decoded value; `value` is None when rejected."""

    value: T | None
    status: Status = "valid"
    reasons: tuple[str, ...] = ()


def _reject(reason: str) -> Decoded[Any]:
    return Decoded(None, "rejected", (reason,))


def jsonable(value: Any) -> Any:
    """Turn an OPC UA value into plain JSON data (for recording and decoding)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    text = getattr(value, "Text", None)  # LocalizedText
    if isinstance(text, str):
        return text
    return str(value)


def decode_number(point: Point, raw: Any, *, name: str) -> Decoded[float]:
    """Scale a numeric node; outside the device range is `suspect`, not rejected."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return _reject(f"{name}_not_a_number")
    if isinstance(raw, float) and not math.isfinite(raw):
        return _reject(f"{name}_not_finite")
    if abs(raw) > 1e15:
        return _reject(f"{name}_implausible")
    value = round(raw * point.scale + point.offset, 6)
    if point.range is not None and not point.range[0] <= value <= point.range[1]:
        return Decoded(value, "suspect", (f"{name}_out_of_range",))
    return Decoded(value)


def decode_enum(table: dict[int | str, str], raw: Any, *, name: str) -> Decoded[str]:
    """Look a code up in an enumeration table; unknown codes are rejected."""
    if isinstance(raw, bool):
        raw = int(raw)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if not isinstance(raw, int | str):
        return _reject(f"{name}_bad_type")
    value = table.get(raw)
    if value is None:
        return _reject(f"{name}_unknown_code")
    return Decoded(value)


def decode_bool(point: Point, raw: Any, *, name: str) -> Decoded[bool]:
    """A flag; 0/1 integers are accepted, `invert` handles fail-safe (normally closed) contacts."""
    if isinstance(raw, bool):
        value = raw
    elif isinstance(raw, int) and raw in (0, 1):
        value = bool(raw)
    else:
        return _reject(f"{name}_not_a_flag")
    return Decoded(value != point.invert)


def decode_text(raw: Any, *, name: str) -> Decoded[str]:
    """A string node (message ids, free text)."""
    if raw is None:
        return Decoded("")
    if isinstance(raw, str):
        return Decoded(raw[:256])
    if isinstance(raw, int) and not isinstance(raw, bool):
        return Decoded(str(raw))
    return _reject(f"{name}_not_text")


def decode_texts(raw: Any, *, name: str) -> Decoded[tuple[str, ...]]:
    """A list of ids: either a string array or one comma-separated string."""
    if raw is None:
        return Decoded(())
    items: list[Any]
    if isinstance(raw, str):
        items = raw.split(",")
    elif isinstance(raw, list):
        items = raw
    else:
        return _reject(f"{name}_not_a_list")
    if not all(isinstance(i, str) for i in items):
        return _reject(f"{name}_not_a_list")
    return Decoded(tuple(s.strip() for s in items if s.strip()))


def decode(nodemap: NodeMap, role: str, point: Point, raw: Any, *, name: str) -> Decoded[Any]:
    """Decode one raw value for a role as listed by `NodeMap.points()`; never raises."""
    try:
        if point.enum is not None:
            return decode_enum(nodemap.enums[point.enum], raw, name=name)
        if role == "number":
            return decode_number(point, raw, name=name)
        if role == "bool":
            return decode_bool(point, raw, name=name)
        if role == "texts":
            return decode_texts(raw, name=name)
        return decode_text(raw, name=name)
    except Exception:  # belt and braces: a decoder bug must not take the driver down
        return _reject(f"{name}_decode_error")


def encode(nodemap: NodeMap, role: str, point: Point, value: Any) -> Any:
    """Inverse of `decode` for valid values (the simulator writes through it)."""
    if point.enum is not None:
        for code, label in nodemap.enums[point.enum].items():
            if label == value:
                return code
        raise KeyError(f"{value!r} not in enum {point.enum}")
    if role == "number":
        raw = (float(value) - point.offset) / point.scale
        if point.datatype in ("Int16", "UInt16", "Int32", "UInt32"):
            return round(raw)
        return raw
    if role == "bool":
        return bool(value) != point.invert
    if role == "texts":
        return ",".join(value)
    return str(value)
