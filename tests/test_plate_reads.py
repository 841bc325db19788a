"""The plate camera's pure steps, without HTTP: grading a read (`reads.py`) and the memory of
recent reads (`dedupe.py`), each on its own."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from drivers.http_plate_reader.codec import Image, PlateObservation, vendor_maps
from drivers.http_plate_reader.config import HttpPlateReaderConfig
from drivers.http_plate_reader.dedupe import OFFLINE_DEDUPE_S, RecentReads, offline_key
from drivers.http_plate_reader.gate import Decision
from drivers.http_plate_reader.reads import MAX_CLOCK_SKEW, PlateRead, decode_read

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1) -> None:
        self.counts[name] += n


def _read(obs: PlateObservation, **extra: object) -> tuple[PlateRead, Tally]:
    cfg = HttpPlateReaderConfig.model_validate({"id": "cam", "driver": "http_plate_reader", **extra})
    tally = Tally()
    maps = vendor_maps()[cfg.protocol]
    return decode_read(obs, cfg, maps, cfg.confidence_scale or maps.confidence_scale, NOW, tally), tally


def test_a_clean_read_is_valid_and_keeps_the_device_clock() -> None:
    at = NOW - timedelta(seconds=2)
    read, tally = _read(PlateObservation("zhenshi", "沪AF12345", color_code=5, confidence=96, device_time=at))
    assert read.quality.status == "valid" and not read.rejected
    assert read.payload.plate == "沪AF12345" and read.payload.lane == "0"
    assert read.time == at and read.oversize is None
    assert not tally.counts


def test_a_skewed_clock_falls_back_to_receipt_time_and_is_counted() -> None:
    skewed = NOW - MAX_CLOCK_SKEW - timedelta(minutes=1)
    read, tally = _read(PlateObservation("zhenshi", "沪AF12345", device_time=skewed))
    assert read.time == NOW
    assert tally.counts["lpr.clock_skew"] == 1


def test_an_oversize_picture_rejects_the_read_and_names_its_size() -> None:
    big = Image("full", b"\xff" * 2048)
    read, _ = _read(PlateObservation("zhenshi", "沪AF12345", images=(big,)), media={"max_image_bytes": 1024})
    assert read.rejected and read.oversize == 2048
    assert "image_too_large" in read.quality.reasons


def test_an_invalid_plate_never_reaches_the_plate_field() -> None:
    read, _ = _read(PlateObservation("zhenshi", "ABC"))
    assert read.rejected and read.payload.plate is None


async def test_a_repeat_within_the_window_is_a_duplicate_until_its_commit_fails() -> None:
    recent = RecentReads(dedupe_s=10.0)
    key = ("沪AF12345", "0")
    assert recent.duplicate_of(key, 100.0) is None
    assert recent.remember(key, 100.0, Decision("open", "allowlist")) is None
    first = recent.duplicate_of(key, 105.0)
    assert first is not None and first.decision.opens and first.committed is not None
    first.suppressed += 1
    recent.not_committed(key, OSError("disk"))
    with pytest.raises(RuntimeError, match="not committed"):
        await asyncio.wait_for(first.committed, 1)
    assert recent.duplicate_of(key, 106.0) is None, "the camera's retry is a new read"
    assert recent.duplicate_of(key, 111.0) is None


def test_a_committed_read_releases_its_duplicates_and_counts_them_on_the_next_read() -> None:
    recent = RecentReads(dedupe_s=10.0)
    key = ("沪AF12345", "0")
    recent.remember(key, 0.0, Decision("deny", "unknown"))
    dup = recent.duplicate_of(key, 1.0)
    assert dup is not None
    dup.suppressed = 2
    recent.committed(key)
    assert dup.committed is None
    assert recent.duplicate_of(key, 10.5) is None
    assert recent.remember(key, 10.5, Decision("deny", "unknown")) == 2


def test_buffered_records_are_remembered_by_record_number_for_an_hour_even_without_dedupe() -> None:
    recent = RecentReads(dedupe_s=0.0)
    assert recent.duplicate_of(("x", "0"), 0.0) is None
    key = offline_key("sn-1", 42)
    assert key is not None and offline_key("sn-1", None) is None
    recent.remember(key, 0.0, Decision("deny", "unknown"))
    assert recent.duplicate_of(key, OFFLINE_DEDUPE_S - 1) is not None
    assert recent.duplicate_of(key, OFFLINE_DEDUPE_S + 1) is None
