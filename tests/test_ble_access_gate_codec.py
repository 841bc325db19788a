"""COGP codec, code tables and normalizer: pure tests, plus properties over arbitrary bytes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ble_access_gate import codec
from drivers.ble_access_gate.config import BleAccessGateConfig
from drivers.ble_access_gate.normalize import REJECTED_TYPE, Normalizer, SeqTracker
from drivers.ble_access_gate.tables import load_enumerations, load_table
from gateway.errors import ConfigError, DecodeError
from schemas.access import AccessPayload
from simulators.access_gate.model import GateModel
from simulators.access_gate.testing import CountingCounters

KEY = "test-key-0123456789abcdef"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())


def config(**over: Any) -> BleAccessGateConfig:
    base: dict[str, Any] = {
        "id": "gate-1", "driver": "ble_access_gate", "address": "C0:57:0A:00:00:01", "credential_key": KEY,
        "doors": 2,
    }
    return BleAccessGateConfig.model_validate(base | over)


def rec(seq: int, code: int = 0x0001, **over: Any) -> codec.Record:
    fields: dict[str, Any] = {
        "history": False, "seq": seq, "device_time": T, "code": code, "credential_type": 1, "door": 1,
        "reader": 1, "direction": 1, "reason": 0, "credential": b"\x12\x34\x56\x78",
    }
    return codec.Record(**(fields | over))


def frame(seq: int, code: int = 0x0001, **over: Any) -> bytes:
    return codec.encode_record(rec(seq, code, **over))


def normalizer(**over: Any) -> tuple[Normalizer, CountingCounters]:
    counters = CountingCounters()
    return Normalizer(config(**over), counters), counters


# --- layout ----------------------------------------------------------------------------------


def test_record_layout_is_pinned() -> None:
    """The README's worked example, byte for byte (little-endian everywhere)."""
    raw = bytes.fromhex("015b000000b738086b01000301020200048f7d1621b94f")
    r = codec.decode_record_frame(raw)
    assert r == codec.Record(
        history=False, seq=91, device_time=0x6B0838B7, code=0x0001, credential_type=3, door=1, reader=2,
        direction=2, reason=0, credential=bytes.fromhex("8f7d1621"),
    )
    assert codec.encode_record(r) == raw


def test_status_and_history_end_round_trip() -> None:
    st_ = codec.Status(doors=2, open_mask=1, locked_mask=2, mode=3, flags=0x0B, battery_pct=None,
                       last_seq=7, device_time=T, firmware=(1, 2, 3))
    raw = codec.encode_status(st_)
    assert len(raw) == codec.STATUS_LEN == 20
    assert codec.decode_status(raw) == st_
    end = codec.HistoryEnd(first_available=3, next_seq=9, more=True)
    assert codec.decode_record_frame(codec.encode_history_end(end)) == end
    assert codec.decode_history_request(codec.encode_history_request(5, 10)) == (5, 10)
    cmd = codec.Command(op=codec.CMD_OPEN_ONCE, door=1, duration_s=5, request_id=42)
    assert codec.decode_command(codec.encode_command(cmd)) == cmd


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"\x07" + bytes(20), "bad_frame_type"),
        (frame(1)[:10], "short"),
        (frame(1)[:-3] + frame(1)[-2:], "length_mismatch"),
        (frame(1)[:-1] + bytes([frame(1)[-1] ^ 1]), "bad_crc"),
    ],
)
def test_bad_frames_raise_typed_errors(raw: bytes, reason: str) -> None:
    with pytest.raises(codec.FrameError) as info:
        codec.decode_record_frame(raw)
    assert info.value.reason == reason
    assert isinstance(info.value, DecodeError)


records = st.builds(
    codec.Record,
    history=st.booleans(),
    seq=st.integers(0, codec.SEQ_MAX),
    device_time=st.integers(0, 0xFFFF_FFFF),
    code=st.integers(0, 0xFFFF),
    credential_type=st.integers(0, 255),
    door=st.integers(0, 255),
    reader=st.integers(0, 255),
    direction=st.integers(0, 255),
    reason=st.integers(0, 255),
    credential=st.binary(max_size=codec.MAX_CREDENTIAL_LEN),
)


@given(records)
def test_any_record_round_trips(r: codec.Record) -> None:
    assert codec.decode_record_frame(codec.encode_record(r)) == r


@given(st.binary(max_size=80))
@settings(max_examples=600)
def test_decoders_never_crash(data: bytes) -> None:
    for decode in (codec.decode_record_frame, codec.decode_status, codec.decode_history_request,
                   codec.decode_command):
        with contextlib.suppress(codec.FrameError):
            decode(data)


@given(st.lists(st.tuples(st.sampled_from(["event", "history", "status"]), st.binary(max_size=60)), max_size=20))
@settings(max_examples=300)
def test_normalizer_never_raises_on_any_bytes(feed: list[tuple[str, bytes]]) -> None:
    norm, _ = normalizer()
    for channel, data in feed:
        drafts = norm.feed(channel, data, NOW)  # type: ignore[arg-type]
        for d in drafts:
            assert isinstance(d.payload, AccessPayload)
            if d.type == REJECTED_TYPE:
                assert d.quality.status == "rejected"


@given(records.map(codec.encode_record), st.integers(0, 40), st.integers(1, 255))
def test_any_single_byte_corruption_is_rejected(raw: bytes, pos: int, xor: int) -> None:
    """CRC-16 catches every burst up to 16 bits, so a garbled byte never decodes as a record."""
    b = bytearray(raw)
    b[pos % len(b)] ^= xor
    norm, counters = normalizer()
    [d] = norm.feed("event", bytes(b), NOW)
    assert d.type == REJECTED_TYPE and d.quality.status == "rejected"
    assert counters.values["rejected"] == 1


# --- tables ----------------------------------------------------------------------------------


def test_tables_load_and_format_codes() -> None:
    cogp, hik = load_table("cogp"), load_table("hik")
    assert cogp.format_code(0x0012) == "cogp:0x0012"
    assert hik.format_code((5 << 12) | 0x1B) == "hik:5/0x1b"
    forced = hik.lookup((5 << 12) | 0x1B)
    assert forced is not None and forced.type == "door.forced_open" and forced.severity == "major"
    assert {e.type for e in hik.events} >= {"access.granted", "access.denied", "door.held_open", "gate.tailgating"}


def test_hik_reason_comes_from_the_table() -> None:
    norm, _ = normalizer(code_table="hik")
    [d] = norm.feed("event", frame(1, (5 << 12) | 0x0A, reason=0), NOW)
    assert d.type == "access.denied"
    assert d.raw_code == "hik:5/0x0a"
    assert isinstance(d.payload, AccessPayload) and d.payload.reason == "anti_passback"


# --- normalizer ------------------------------------------------------------------------------


def test_granted_hashes_the_credential_with_the_key() -> None:
    norm, _ = normalizer()
    [d] = norm.feed("event", frame(1), NOW)
    assert d.type == "access.granted" and d.severity == "info" and d.cls == "event"
    assert d.seq == 1 and d.time == NOW and d.raw_code == "cogp:0x0001"
    p = d.payload
    assert isinstance(p, AccessPayload)
    want = hmac.new(KEY.encode(), b"card:\x12\x34\x56\x78", hashlib.sha256).hexdigest()[:32]
    assert p.credential_hash == want
    assert "12345678" not in p.model_dump_json()
    assert (p.credential_type, p.direction, p.door_no, p.reader_no) == ("card", "in", 1, 1)


def test_leading_zero_variants_of_a_card_hash_alike() -> None:
    norm, _ = normalizer()
    [a] = norm.feed("event", frame(1, credential=b"\x00\x00\x12\x34"), NOW)
    [b] = norm.feed("event", frame(2, credential=b"\x12\x34"), NOW)
    assert isinstance(a.payload, AccessPayload) and isinstance(b.payload, AccessPayload)
    assert a.payload.credential_hash == b.payload.credential_hash is not None


@pytest.mark.parametrize(("byte", "reason"), [(k, v) for k, v in load_enumerations().reasons.items() if v])
def test_every_denial_reason(byte: int, reason: str) -> None:
    norm, _ = normalizer()
    [d] = norm.feed("event", frame(1, 0x0002, reason=byte), NOW)
    assert d.type == "access.denied" and d.severity == "minor"
    assert isinstance(d.payload, AccessPayload) and d.payload.reason == reason


def test_forced_open_is_raised_then_cleared_by_door_closed() -> None:
    norm, _ = normalizer()
    [raised] = norm.feed("event", frame(1, 0x0012, door=2), NOW)
    assert (raised.type, raised.cls, raised.severity, raised.state) == ("door.forced_open", "alarm", "major", "raised")
    assert norm.feed("event", frame(2, 0x0011, door=1), NOW)[0].type == "door.closed"  # other door: no clear
    closed, cleared = norm.feed("event", frame(3, 0x0011, door=2), NOW)
    assert closed.type == "door.closed"
    assert (cleared.type, cleared.state, cleared.alarm_id) == ("door.forced_open", "cleared", raised.alarm_id)


def test_tamper_raise_and_restore_share_an_alarm_id() -> None:
    norm, _ = normalizer()
    [a] = norm.feed("event", frame(1, 0x0030, door=0), NOW)
    [b] = norm.feed("event", frame(2, 0x0031, door=0), NOW)
    assert (a.type, a.state, b.state) == ("device.tamper", "raised", "cleared")
    assert a.alarm_id == b.alarm_id is not None


def test_duplicates_dropped_and_counted_late_records_accepted() -> None:
    norm, counters = normalizer()
    assert len(norm.feed("event", frame(1), NOW)) == 1
    assert norm.feed("event", frame(1), NOW) == []
    assert len(norm.feed("event", frame(4), NOW)) == 1
    assert norm.backfill_from() == 2
    assert counters.values["gaps"] == 1
    assert len(norm.feed("event", frame(3), NOW)) == 1  # out of order, fills the hole
    assert norm.feed("event", frame(3), NOW) == []
    assert norm.backfill_from() == 2
    assert counters.values["duplicates"] == 2 and counters.values["late"] == 1


def test_history_end_gives_up_on_records_the_device_no_longer_has() -> None:
    norm, counters = normalizer()
    norm.feed("event", frame(1), NOW)
    norm.feed("event", frame(10), NOW)
    norm.history_requested()
    norm.feed("history", frame(6, history=True), NOW)
    norm.feed("history", codec.encode_history_end(codec.HistoryEnd(5, 11, more=False)), NOW)
    assert norm.backfill_from() is None
    assert counters.values["lost"] == 7  # 2-5 no longer held, 7-9 never sent


def test_status_reports_what_is_missing_after_a_reconnect() -> None:
    norm, _ = normalizer()
    st_ = codec.Status(doors=2, open_mask=0, locked_mask=3, mode=0, flags=2, battery_pct=90, last_seq=5,
                       device_time=T, firmware=(1, 0, 0))
    [status] = norm.feed("status", codec.encode_status(st_), NOW)
    assert status.type == "gate.status" and status.cls == "status"
    assert norm.backfill_from() is None  # first contact: start from now
    assert norm.feed("status", codec.encode_status(st_), NOW) == []  # unchanged: nothing emitted
    norm.feed("status", codec.encode_status(dataclasses.replace(st_, last_seq=9)), NOW)
    assert norm.backfill_from() == 6


def test_counter_going_backwards_resets_tracking() -> None:
    norm, counters = normalizer()
    norm.feed("event", frame(100), NOW)
    norm.feed("status", codec.encode_status(codec.Status(1, 0, 1, 0, 2, 90, 3, T, (1, 0, 0))), NOW)
    assert counters.values["seq_reset"] == 1
    assert len(norm.feed("event", frame(4), NOW)) == 1


def test_clock_skew_beyond_bound_is_suspect_with_gateway_time() -> None:
    norm, counters = normalizer(max_clock_skew_s=60)
    [ok] = norm.feed("event", frame(1, device_time=T + 30), NOW)
    assert ok.quality.status == "valid" and ok.time == NOW + timedelta(seconds=30)
    [skewed] = norm.feed("event", frame(2, device_time=T + 3600), NOW)
    assert skewed.quality.status == "suspect" and skewed.quality.reasons == ("clock_skew",)
    assert skewed.time is None
    assert isinstance(skewed.payload, AccessPayload) and skewed.payload.device_time == NOW + timedelta(hours=1)
    [unset] = norm.feed("event", frame(3, device_time=0), NOW)
    assert unset.quality.reasons == ("clock_unset",)
    assert counters.values["clock_skew"] == 1


def test_history_records_are_corrected_by_the_status_clock_offset() -> None:
    norm, _ = normalizer(max_clock_skew_s=60)
    norm.feed("status", codec.encode_status(codec.Status(1, 0, 1, 0, 2, 90, 1, T + 7200, (1, 0, 0))), NOW)
    [d] = norm.feed("history", frame(2, history=True, device_time=T + 7200 - 600), NOW)
    assert d.quality.reasons == ("clock_skew",)
    assert d.time == NOW - timedelta(seconds=600)


def test_unknown_codes_and_out_of_range_fields() -> None:
    norm, counters = normalizer()
    [u] = norm.feed("event", frame(1, 0x0BAD), NOW)
    assert u.type == "device.unknown_event" and u.quality.status == "suspect" and u.raw_code == "cogp:0x0bad"
    [r] = norm.feed("event", frame(2, door=9), NOW)
    assert r.type == REJECTED_TYPE and r.quality.reasons == ("door_out_of_range",)
    [r2] = norm.feed("event", frame(3, direction=7), NOW)
    assert r2.quality.reasons == ("bad_direction",)
    assert counters.values["unknown_code"] == 1 and counters.values["rejected"] == 2


@given(st.lists(st.integers(1, 300), min_size=1, max_size=400))
def test_seq_tracker_accepts_each_number_once(seqs: list[int]) -> None:
    """Whatever order and repetition: each number at or after the first one is accepted exactly once."""
    t = SeqTracker(window=1000)
    accepted = [s for s in seqs if t.observe(s)[0] != "duplicate"]
    assert len(accepted) == len(set(accepted))
    assert set(accepted) == {s for s in seqs if s >= seqs[0]}
    assert t.missing == set(range(seqs[0], max(seqs) + 1)) - set(seqs)


def test_seq_tracker_memory_is_bounded() -> None:
    t = SeqTracker(window=16)
    t.observe(1)
    verdict, gap, overflow = t.observe(1_000_000)
    assert (verdict, gap) == ("new", 999_998)
    assert len(t.missing) == 16 and overflow == 999_998 - 16


# --- simulator model -------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["cogp", "hik"])
def test_model_is_deterministic_and_its_records_normalize(table: str) -> None:
    a = GateModel(seed=7, arrivals_per_min=120, table=table, start_time=T).advance(3600)
    b = GateModel(seed=7, arrivals_per_min=120, table=table, start_time=T).advance(3600)
    assert a == b and len(a) > 200
    norm, counters = normalizer(code_table=table, doors=1)
    types: set[str] = set()
    for r in a:
        for d in norm.feed("event", codec.encode_record(r), datetime.fromtimestamp(r.device_time, UTC)):
            assert d.quality.status == "valid", d
            types.add(d.type)
    assert {"access.granted", "access.denied", "door.opened", "door.closed"} <= types
    assert counters.values["duplicates"] == 0


def test_a_new_vendor_is_a_new_table_file(tmp_path: Path) -> None:
    table = tmp_path / "acme.yaml"
    table.write_text(
        "namespace: acme\n"
        "raw_code: 'acme:{code}'\n"
        "events:\n"
        "  - {code: 7, type: access.granted, credential_type: face}\n"
        "  - {code: 8, type: access.denied, severity: minor, reason: blocklist}\n"
        "  - {code: 9, type: door.forced_open, class: alarm, severity: major, state: raised, alarm: forced}\n",
        encoding="utf-8",
    )
    norm, _ = normalizer(code_table=str(table))
    granted, denied = norm.feed("event", frame(1, 7), NOW) + norm.feed("event", frame(2, 8), NOW)
    assert (granted.type, granted.raw_code) == ("access.granted", "acme:7")
    assert isinstance(granted.payload, AccessPayload) and granted.payload.credential_type == "face"
    assert isinstance(denied.payload, AccessPayload) and denied.payload.reason == "blocklist"


def test_bad_tables_fail_when_loaded(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("namespace: bad\nraw_code: 'x'\nevents:\n  - {code: 1, type: door.held_open, state: raised}\n",
                   encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}:4: events\[0\]: .*needs an `alarm` key"):
        load_table(str(bad))
