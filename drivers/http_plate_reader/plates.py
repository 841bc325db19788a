"""Plate normalization and validation (GA 36 conventions; docs/domain.md). Pure: no I/O.

Cameras send plates full-width or half-width, with spaces, dots or middle dots, as UTF-8,
GBK, base64 of either, or as GBK bytes someone decoded as Latin-1. Everything that follows
(allowlists, de-duplication, history queries) needs one spelling per plate, so this module
turns any of those into a canonical plate and says how far it can be trusted.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from schemas.lpr import PlateClass, PlateColor

Status = Literal["valid", "suspect", "rejected"]

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
EMBASSY = "使"
#: Letters of the serial: A-Z without I and O (never issued, too close to 1 and 0).
_SERIAL_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
#: Issuing-authority letter: any letter but I (O is used by police authorities).
_AUTHORITY_LETTERS = "ABCDEFGHJKLMNOPQRSTUVWXYZ"
_SUFFIXES = "挂学警港澳领"
_SMALL_NEV_FIRST = "DFABCEGHJK"

_SEPARATORS = re.compile(r"[\s.·•・‧∙\-_]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # controls, and lone surrogates JSON cannot carry
_SERIAL = re.compile(f"[{_SERIAL_LETTERS}0-9]")
#: Strings cameras send when they saw a vehicle but no plate.
_NO_PLATE = frozenset({"无", "无牌", "无牌车", "无车牌", "NONE", "NOPLATE", "UNKNOWN", "未识别"})
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")

#: Expected colours by suffix character; a different colour is suspect, not rejected.
_SUFFIX_COLORS: dict[str, frozenset[str]] = {
    "挂": frozenset({"yellow"}),
    "学": frozenset({"yellow"}),
    "警": frozenset({"white"}),
    "港": frozenset({"black"}),
    "澳": frozenset({"black"}),
    "领": frozenset({"black"}),
}
_NEV_COLORS = frozenset({"green", "yellow_green"})
#: Colour words some firmware (Hikvision China) puts before the plate: `蓝苏A8HK52`, `黄-粤B12345`.
_PREFIX_COLORS: dict[str, PlateColor] = {
    "黄绿": "yellow_green",
    "蓝": "blue",
    "黄": "yellow",
    "绿": "green",
    "白": "white",
    "黑": "black",
}
# Only before a province (or embassy) character: `黑A12345` is a Heilongjiang plate, not a black one.
_COLOR_PREFIX = re.compile(f"^\\s*(黄绿|蓝|黄|绿|白|黑)[牌色]?[\\s.·•・‧∙\\-_:]*(?=[{PROVINCES}{EMBASSY}])")


@dataclass(frozen=True, slots=True)
class PlateCheck:
    """Outcome of checking one plate: the canonical spelling and how far to trust it."""

    plate: str | None
    plate_raw: str | None
    plate_class: PlateClass | None
    status: Status
    reasons: tuple[str, ...]
    color: PlateColor | None = None  # the colour the camera spelled into the plate text, if it did

    @property
    def usable(self) -> bool:
        """True when the plate can be matched against lists (valid or merely suspect)."""
        return self.plate is not None and self.status != "rejected"


def _plate_like(text: str) -> bool:
    head = normalize(split_color_prefix(text)[1])[:1]
    return bool(head) and (head in PROVINCES or head == EMBASSY)


def decode_bytes(data: bytes) -> tuple[str | None, tuple[str, ...]]:
    """Decode plate bytes as UTF-8 or GBK (older firmware); None when neither works.

    Some GBK plates are also valid UTF-8 (豫 is D4 A5, which UTF-8 reads as 'Ԥ'), so the
    decoding that yields a province character wins; UTF-8 otherwise.
    """
    data = data.rstrip(b"\x00")
    utf8: str | None
    gbk: str | None
    try:
        utf8 = data.decode("utf-8")
    except UnicodeDecodeError:
        utf8 = None
    try:
        gbk = data.decode("gbk")
    except UnicodeDecodeError:
        gbk = None
    if utf8 is not None and (_plate_like(utf8) or gbk is None or not _plate_like(gbk)):
        return utf8, ()
    if gbk is not None:
        return gbk, ("decoded_gbk",)
    return None, ("undecodable_bytes",)


def _repair_mojibake(text: str) -> tuple[str, tuple[str, ...]]:
    """Undo GBK bytes decoded as Latin-1 ('ÕãA88888') or as UTF-8 ('ԤA0000A') somewhere upstream."""
    if text.isascii() or _plate_like(text):
        return text, ()
    for codec, reason in (("latin-1", "repaired_latin1_gbk"), ("utf-8", "repaired_utf8_gbk")):
        try:
            fixed = text.encode(codec).decode("gbk")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
        if _plate_like(fixed):
            return fixed, (reason,)
    return text, ()


def _maybe_base64(text: str) -> tuple[str, tuple[str, ...]]:
    """Decode base64 when it yields a plate; plain ASCII that merely looks like base64 is kept."""
    candidate = text.strip()
    if len(candidate) < 8 or len(candidate) % 4 or not _BASE64.match(candidate):
        return text, ()
    try:
        data = base64.b64decode(candidate, validate=True)
    except (binascii.Error, ValueError):
        return text, ()
    decoded, reasons = decode_bytes(data)
    if decoded is not None and _plate_like(decoded):
        return decoded, ("decoded_base64", *reasons)
    return text, ()


def to_text(
    value: object, *, encoding: Literal["auto", "plain", "base64"] = "auto"
) -> tuple[str | None, tuple[str, ...]]:
    """Turn whatever a camera put in its plate field into text, noting each decoding step."""
    if value is None:
        return None, ("missing_plate",)
    if isinstance(value, bytes | bytearray):
        return decode_bytes(bytes(value))
    if not isinstance(value, str):
        return None, ("plate_not_text",)
    if encoding == "plain":
        return value, ()
    if encoding == "base64":
        try:
            return decode_bytes(base64.b64decode(value.strip(), validate=True))
        except (binascii.Error, ValueError):
            return None, ("bad_base64",)
    if _plate_like(value):
        return value, ()
    text, reasons = _repair_mojibake(value)
    if reasons:
        return text, reasons
    return _maybe_base64(value)


def normalize(text: str) -> str:
    """Canonical spelling: half-width (NFKC), upper case, no separators or control characters."""
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text)
    return _SEPARATORS.sub("", text).upper()


def classify(plate: str) -> tuple[PlateClass | None, tuple[str, ...]]:
    """Which GA 36 plate rule `plate` (already normalized) satisfies, or why none does."""
    if not plate:
        return None, ("empty_plate",)
    if plate[0] == EMBASSY:
        if len(plate) == 7 and plate[1:].isascii() and plate[1:].isdigit():
            return "embassy", ()
        return None, ("bad_embassy_plate",)
    if plate[0] not in PROVINCES:
        return None, ("bad_province",)
    if len(plate) not in (7, 8):
        return None, ("bad_length",)
    authority = plate[1]
    if authority not in _AUTHORITY_LETTERS:
        return None, ("bad_authority_letter",)
    serial = plate[2:]
    if any(ch in "IO" for ch in serial):
        return None, ("letter_i_or_o_in_serial",)
    if len(plate) == 7:
        body, last = serial[:4], serial[4]
        if all(_SERIAL.fullmatch(ch) for ch in body) and (_SERIAL.fullmatch(last) or last in _SUFFIXES):
            return "ordinary", ()
        return None, ("bad_serial",)
    if serial[0] in _SMALL_NEV_FIRST and _SERIAL.fullmatch(serial[1]) and serial[2:].isascii() and serial[2:].isdigit():
        return "nev_small", ()
    if serial[:5].isascii() and serial[:5].isdigit() and serial[5] in "DF":
        return "nev_large", ()
    return None, ("bad_nev_serial",)


def _colour_reasons(plate: str, plate_class: PlateClass, color: PlateColor | None) -> tuple[str, ...]:
    if color is None or color == "unknown":
        return ()
    if plate_class in ("nev_small", "nev_large"):
        return () if color in _NEV_COLORS else ("color_length_mismatch",)
    if color in _NEV_COLORS:
        return ("color_length_mismatch",)
    if plate_class == "embassy":
        return () if color == "black" else ("color_suffix_mismatch",)
    expected = _SUFFIX_COLORS.get(plate[-1])
    if expected is not None and color not in expected:
        return ("color_suffix_mismatch",)
    return ()


def split_color_prefix(text: str) -> tuple[PlateColor | None, str]:
    """Strip a leading colour word (`蓝苏A8HK52`, `蓝-苏A8HK52`, `蓝 苏A8HK52`) and return it as data."""
    match = _COLOR_PREFIX.match(unicodedata.normalize("NFKC", text))
    if match is None:
        return None, text
    return _PREFIX_COLORS[match.group(1)], unicodedata.normalize("NFKC", text)[match.end() :]


def is_no_plate(text: str) -> bool:
    """True for the placeholders cameras send for a vehicle without a readable plate."""
    return normalize(text) in _NO_PLATE


def check_plate(
    value: object,
    *,
    color: PlateColor | None = None,
    encoding: Literal["auto", "plain", "base64"] = "auto",
) -> PlateCheck:
    """Decode, normalize and validate one plate. Never raises, whatever `value` is.

    A colour word in front of the plate is stripped; it stands in for `color` when the camera
    sent no colour code (or 'unknown'), and comes back as `PlateCheck.color`.
    """
    text, steps = to_text(value, encoding=encoding)
    if text is None:
        return PlateCheck(None, None, None, "rejected", steps, color)
    raw = _CONTROL.sub("", text)[:64]
    prefix, text = split_color_prefix(text)
    if prefix is not None and color in (None, "unknown"):
        color = prefix
    if is_no_plate(text):
        return PlateCheck(None, raw, "none", "suspect", (*steps, "no_plate_read"), color)
    plate = normalize(text)
    if len(plate) > 16:
        return PlateCheck(None, raw, None, "rejected", (*steps, "bad_length"), color)
    plate_class, problems = classify(plate)
    if plate_class is None:
        return PlateCheck(plate or None, raw, None, "rejected", (*steps, *problems), color)
    colour = _colour_reasons(plate, plate_class, color)
    return PlateCheck(plate, raw, plate_class, "suspect" if colour else "valid", (*steps, *colour), color)


def canonical(plate: str) -> str:
    """Normalize and validate a configured plate (allowlists); raises ValueError with the reason."""
    check = check_plate(plate, encoding="plain")
    if check.plate is None or check.status == "rejected":
        raise ValueError(f"invalid plate {plate!r}: {', '.join(check.reasons)}")
    return check.plate


ConfidenceScale = Literal["percent", "unit", "auto"]


def rescale_confidence(value: object, scale: ConfidenceScale) -> tuple[float | None, tuple[str, ...]]:
    """Confidence as 0..1: Zhenshi sends 0-100, others 0-1; 'auto' treats values above 1 as percent."""
    if value is None or isinstance(value, bool):
        return None, ()
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None, ("bad_confidence",)
    if not isinstance(value, int | float):
        return None, ("bad_confidence",)
    try:
        number = float(value)  # a 400-digit JSON integer overflows here
    except OverflowError:
        return None, ("bad_confidence",)
    if math.isnan(number):
        return None, ("bad_confidence",)
    if scale == "percent" or (scale == "auto" and number > 1):
        number /= 100
    if not 0 <= number <= 1:
        return None, ("confidence_out_of_range",)
    return round(number, 4), ()
