"""Decoding one plate observation into a read: payload, quality and event time (pure, no state).

This is the part of a push that depends only on the observation and the camera's settings;
de-duplication (`dedupe.py`) and the barrier decision (`gate.py`) come after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from drivers.http_plate_reader.codec import PlateObservation, VendorMap, resolve_direction, token
from drivers.http_plate_reader.config import HttpPlateReaderConfig
from drivers.http_plate_reader.plates import ConfidenceScale, PlateCheck, check_plate, rescale_confidence
from gateway.driver import Counters
from schemas.common import Quality, QualityStatus
from schemas.lpr import LprPayload

#: Decoding steps worth counting but not worth lowering a read's quality.
INFO_REASONS = frozenset({"decoded_gbk", "decoded_base64", "repaired_latin1_gbk", "repaired_utf8_gbk", "body_gbk"})
#: Device clocks further off than this are ignored (gateway receipt time is used instead).
MAX_CLOCK_SKEW = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class PlateRead:
    """One observation, decoded: what `lpr.plate_read` says before any decision is taken."""

    check: PlateCheck
    payload: LprPayload
    quality: Quality
    time: datetime  # the device's clock when usable, else receipt time
    raw_code: str | None
    oversize: int | None = None  # bytes of the biggest image over the limit, if any

    @property
    def rejected(self) -> bool:
        """True when the read cannot be trusted at all (never matched, never de-duplicated)."""
        return self.quality.status == "rejected"


def decode_read(
    obs: PlateObservation, cfg: HttpPlateReaderConfig, maps: VendorMap, scale: ConfidenceScale, now: datetime,
    counters: Counters,
) -> PlateRead:
    """Check the plate, rescale the confidence, resolve lane and heading, and grade the read."""
    check = check_plate(obs.license, color=maps.color(obs.color_code))
    confidence, conf_reasons = rescale_confidence(obs.confidence, scale)
    reasons = [*obs.notes, *check.reasons, *conf_reasons]
    if confidence is not None and confidence < cfg.min_confidence:
        reasons.append("low_confidence")
    if obs.is_fake:
        reasons.append("fake_plate_flag")
    for reason in reasons:
        if reason in INFO_REASONS:
            counters.inc(f"lpr.{reason}")
    doubts = [r for r in reasons if r not in INFO_REASONS]
    status: QualityStatus = "rejected" if check.status == "rejected" else ("suspect" if doubts else "valid")
    oversize = [len(img.data) for img in obs.images if len(img.data) > cfg.media.max_image_bytes]
    if oversize:
        status, doubts = "rejected", [*doubts, "image_too_large"]
    heading = cfg.direction or resolve_direction(maps.direction(obs.direction_code), cfg.forward_is)
    payload = LprPayload(
        plate=check.plate if check.status != "rejected" else None,  # never an invalid plate in `plate`
        plate_raw=check.plate_raw,
        plate_color=check.color,  # the vendor's colour code, else a colour word in front of the plate
        plate_type=maps.plate_type(obs.type_code, cfg.type_table),
        plate_class=check.plate_class,
        confidence=confidence,
        direction=heading or "unknown",
        lane=cfg.lane or obs.lane or "0",
        is_offline_replay=obs.is_offline,
        is_fake_plate=obs.is_fake,
    )
    quality = Quality(status=status, reasons=tuple(dict.fromkeys(doubts))) if status != "valid" else Quality()
    type_code = token(obs.type_code)
    raw_code = f"{obs.vendor}:type/{type_code}" if type_code is not None else None
    return PlateRead(check, payload, quality, _event_time(obs, now, counters), raw_code, max(oversize, default=None))


def _event_time(obs: PlateObservation, now: datetime, counters: Counters) -> datetime:
    """The device's clock unless it is far off; without it, the read happened when it was received."""
    device_time = obs.device_time
    if device_time is not None and abs(device_time - now) > MAX_CLOCK_SKEW and not obs.is_offline:
        counters.inc("lpr.clock_skew")
        device_time = None
    return device_time or now
