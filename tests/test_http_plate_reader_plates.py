"""Plate normalization and GA 36 validation (pure)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.http_plate_reader.plates import (
    PROVINCES,
    canonical,
    check_plate,
    normalize,
    rescale_confidence,
)

SERIAL = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
AUTHORITY = "ABCDEFGHJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"

province = st.sampled_from(PROVINCES)
authority = st.sampled_from(AUTHORITY)
serial_char = st.sampled_from(SERIAL)
digits = st.text(DIGITS, min_size=1, max_size=1)

ordinary = st.builds(
    lambda p, a, s, last: p + a + s + last,
    province,
    authority,
    st.text(SERIAL, min_size=4, max_size=4),
    st.sampled_from(SERIAL),
)
suffixed = st.builds(
    lambda p, a, s, suffix: p + a + s + suffix,
    province,
    authority,
    st.text(SERIAL, min_size=4, max_size=4),
    st.sampled_from("挂学警港澳领"),
)
nev_small = st.builds(
    lambda p, a, first, second, tail: p + a + first + second + tail,
    province,
    authority,
    st.sampled_from("DFABCEGHJK"),
    serial_char,
    st.text(DIGITS, min_size=4, max_size=4),
)
nev_large = st.builds(
    lambda p, a, body, last: p + a + body + last,
    province,
    authority,
    st.text(DIGITS, min_size=5, max_size=5),
    st.sampled_from("DF"),
)
embassy = st.builds(lambda d: "使" + d, st.text(DIGITS, min_size=6, max_size=6))

FULL_WIDTH = {chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)}


def disguise(plate: str, how: int) -> str:
    """Spellings cameras really send for the same plate."""
    if how == 0:
        return "".join(FULL_WIDTH.get(ch, ch) for ch in plate)
    if how == 1:
        return plate[:2] + "·" + plate[2:]
    if how == 2:
        return " " + plate[:2].lower() + " " + plate[2:].lower() + " "
    if how == 3:
        return plate[:2] + "." + plate[2:] + "\x00"
    return plate


@given(ordinary, st.integers(0, 4))
def test_ordinary_plates_accepted_in_any_spelling(plate: str, how: int) -> None:
    check = check_plate(disguise(plate, how), color="blue")
    assert check.status == "valid", check
    assert check.plate == plate
    assert check.plate_class == "ordinary"
    assert check.plate_raw is not None


@given(nev_small, st.integers(0, 4))
def test_small_nev_plates_accepted(plate: str, how: int) -> None:
    check = check_plate(disguise(plate, how), color="green")
    assert (check.status, check.plate, check.plate_class) == ("valid", plate, "nev_small")


@given(nev_large)
def test_large_nev_plates_accepted(plate: str) -> None:
    check = check_plate(plate, color="yellow_green")
    assert (check.status, check.plate_class) == ("valid", "nev_large")


@given(suffixed)
def test_suffixed_plates_accepted(plate: str) -> None:
    check = check_plate(plate)
    assert (check.status, check.plate_class) == ("valid", "ordinary")


@given(embassy)
def test_embassy_plates_accepted(plate: str) -> None:
    assert check_plate(plate, color="black").plate_class == "embassy"


@given(st.one_of(ordinary, nev_small, nev_large), st.sampled_from(["utf-8", "gbk"]))
def test_base64_and_gbk_decoded(plate: str, encoding: str) -> None:
    encoded = base64.b64encode(plate.encode(encoding)).decode()
    check = check_plate(encoded)
    assert check.plate == plate
    assert "decoded_base64" in check.reasons
    assert check_plate(plate.encode("gbk")).plate == plate
    assert check_plate(plate.encode("gbk").decode("latin-1")).plate == plate


@given(nev_small, st.sampled_from(["blue", "yellow"]))
def test_eight_character_blue_or_yellow_is_suspect(plate: str, color: str) -> None:
    check = check_plate(plate, color=color)  # type: ignore[arg-type]
    assert check.status == "suspect"
    assert "color_length_mismatch" in check.reasons


@given(ordinary)
def test_seven_character_green_is_suspect(plate: str) -> None:
    assert check_plate(plate, color="green").reasons == ("color_length_mismatch",)


@pytest.mark.parametrize(
    ("plate", "reason"),
    [
        ("京A12O45", "letter_i_or_o_in_serial"),
        ("京AI2345", "letter_i_or_o_in_serial"),
        ("京I12345", "bad_authority_letter"),
        ("X A12345", "bad_province"),
        ("京A1234", "bad_length"),
        ("京A123456789", "bad_length"),
        ("京A1234学9", "bad_nev_serial"),
        ("京AZ12345", "bad_nev_serial"),
        ("京A1234D5", "bad_nev_serial"),
        ("京A12-3学4", "bad_serial"),
        ("使12345", "bad_embassy_plate"),
        ("", "empty_plate"),
        (None, "missing_plate"),
        (42, "plate_not_text"),
    ],
)
def test_invalid_plates_rejected_with_reason(plate: object, reason: str) -> None:
    check = check_plate(plate)
    assert check.status == "rejected"
    assert reason in check.reasons


def test_no_plate_placeholder_is_suspect_not_rejected() -> None:
    check = check_plate("_无_")
    assert (check.plate, check.plate_class, check.status) == (None, "none", "suspect")


def test_suffix_colour_checked() -> None:
    assert check_plate("京A1234警", color="white").status == "valid"
    assert check_plate("京A1234警", color="blue").reasons == ("color_suffix_mismatch",)


def test_canonical_rejects_typos_in_config() -> None:
    assert canonical("粤b·d12345") == "粤BD12345"
    with pytest.raises(ValueError, match="letter_i_or_o"):
        canonical("粤BO12345")


@given(st.one_of(st.text(), st.binary(), st.none(), st.integers(), st.floats(), st.lists(st.text())))
@settings(max_examples=400)
def test_no_input_crashes_the_checker(value: object) -> None:
    check = check_plate(value, color="blue")
    assert check.status in ("valid", "suspect", "rejected")
    if check.status != "rejected":
        assert check.plate is None or check.plate == normalize(check.plate)
    if check.status == "rejected":
        assert check.reasons


@given(
    st.one_of(st.text(), st.none(), st.integers(), st.floats(allow_nan=True), st.booleans()),
    st.sampled_from(["percent", "unit", "auto"]),
)
def test_confidence_is_always_in_unit_range(value: object, scale: str) -> None:
    number, _ = rescale_confidence(value, scale)  # type: ignore[arg-type]
    assert number is None or 0 <= number <= 1


def test_confidence_scales() -> None:
    assert rescale_confidence(97, "percent") == (0.97, ())
    assert rescale_confidence("0.91", "unit") == (0.91, ())
    assert rescale_confidence(88, "auto") == (0.88, ())
    assert rescale_confidence(0.5, "auto") == (0.5, ())
    assert rescale_confidence(101, "percent") == (None, ("confidence_out_of_range",))
