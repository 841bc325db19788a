"""Plate cameras as shipped: colour-prefixed plates, Zhenshi type tables by firmware, offline
re-push replies, documented heartbeats, Hikvision JSON alerts and lane direction, Dahua ITSAPI.

These run the driver's decoding (`PlateDecoder.process`) on bodies shaped as the vendors
document them; the HTTP and outbox paths are covered in test_plate_fixtures / test_plate_offline.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from drivers.http_plate_reader.codec import (
    Heartbeat,
    PlateObservation,
    PushRejected,
    decode,
    decode_dahua,
    decode_zhenshi,
    parse_type_tables,
    vendor_maps,
)
from drivers.http_plate_reader.config import HttpPlateReaderConfig
from drivers.http_plate_reader.decoder import Outcome, PlateDecoder
from drivers.http_plate_reader.plates import check_plate, split_color_prefix
from gateway.metrics import Counters
from schemas.lpr import LprPayload
from simulators.plate_reader import (
    dahua_keepalive_body,
    dahua_plate_body,
    hikvision_plate_body,
    hikvision_plate_json,
    zhenshi_heartbeat_form,
    zhenshi_plate_body,
)

PREFIXES = {"蓝": "blue", "黄": "yellow", "绿": "green", "白": "white", "黑": "black", "黄绿": "yellow_green"}
SEPARATORS = ("", "-", " ", "·")
#: A plate valid for each colour (NEV plates for the green ones, a police plate for white).
PLATE_FOR = {
    "blue": "苏A8HK52",
    "yellow": "粤B12345",
    "green": "沪AF12345",
    "white": "京A1234警",
    "black": "粤Z9065澳",
    "yellow_green": "粤B12345D",
}


class _Ctx:
    """The little of a DeviceContext that `process` touches."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.log = logging.getLogger("test.plate_vendors")


def driver(protocol: str = "zhenshi", **extra: Any) -> PlateDecoder:
    config = HttpPlateReaderConfig.model_validate(
        {"id": f"cam-{protocol}", "driver": "http_plate_reader", "protocol": protocol, **extra}
    )
    return PlateDecoder(config, _Ctx())  # type: ignore[arg-type]


def run(drv: PlateDecoder, body: bytes, ctype: str = "application/json", path: str | None = None) -> Outcome:
    now = datetime.now(UTC)
    return drv.process(ctype, body, now, now.timestamp(), path or drv.cfg.url_paths[0])


def read_of(outcome: Outcome) -> LprPayload:
    reads = [d for d in outcome.drafts if d.type == "lpr.plate_read"]
    assert len(reads) == 1, [d.type for d in outcome.drafts]
    assert isinstance(reads[0].payload, LprPayload)
    return reads[0].payload


def vendor_body(vendor: str, plate: str, color: str | None) -> tuple[bytes, str]:
    """A read of `plate` as each vendor sends it; `color` None: the camera's colour field says unknown."""
    if vendor == "zhenshi":
        return zhenshi_plate_body(plate, color=color or "none"), "application/json"
    if vendor == "hikvision":
        return hikvision_plate_body(plate, color=color or "none")
    if vendor == "hikvision_json":
        return hikvision_plate_json(plate, color=color or "none", bare=True)
    return dahua_plate_body(plate, color=color or "none")


# ------------------------------------------------------------------ 1. colour-prefixed plates


@pytest.mark.parametrize("separator", SEPARATORS)
@pytest.mark.parametrize("prefix", sorted(PREFIXES))
def test_colour_prefix_is_stripped_and_kept(prefix: str, separator: str) -> None:
    colour = PREFIXES[prefix]
    plate = PLATE_FOR[colour]
    check = check_plate(f"{prefix}{separator}{plate}")
    assert (check.plate, check.status, check.color) == (plate, "valid", colour)
    assert check.plate_raw == f"{prefix}{separator}{plate}"  # the camera's spelling is kept as sent


def test_province_that_is_also_a_colour_word_is_not_stripped() -> None:
    assert split_color_prefix("黑A12345") == (None, "黑A12345")  # Heilongjiang, not a black plate
    assert check_plate("黑A12345").plate == "黑A12345"
    assert check_plate("黑黑A12345").plate == "黑A12345" and check_plate("黑黑A12345").color == "black"


@pytest.mark.parametrize("vendor", ["zhenshi", "hikvision", "hikvision_json", "dahua"])
@pytest.mark.parametrize("prefix", sorted(PREFIXES))
def test_every_vendor_mapping_accepts_colour_prefixed_plates(vendor: str, prefix: str) -> None:
    colour = PREFIXES[prefix]
    plate = PLATE_FOR[colour]
    protocol = "hikvision" if vendor.startswith("hikvision") else vendor
    drv = driver(protocol, access={"allowlist": [plate]})
    body, ctype = vendor_body(vendor, f"{prefix}-{plate}", None)
    outcome = run(drv, body, ctype)
    p = read_of(outcome)
    assert outcome.reply.status == 200
    assert (p.plate, p.plate_color) == (plate, colour)
    read = next(d for d in outcome.drafts if d.type == "lpr.plate_read")
    assert read.quality.status == "valid", read.quality.reasons
    decision = next(d for d in outcome.drafts if d.type == "lpr.gate_decision")
    assert isinstance(decision.payload, LprPayload) and decision.payload.decision == "open"  # the resident gets in


def test_vendor_colour_code_wins_over_the_prefix() -> None:
    drv = driver("hikvision")
    body, ctype = hikvision_plate_body("蓝苏A8HK52", color="blue")
    assert read_of(run(drv, body, ctype)).plate_color == "blue"


# ------------------------------------------------------------------ 2. Zhenshi plate types by firmware


@pytest.mark.parametrize(
    ("table", "code", "expected"),
    [
        (None, 10, "embassy"),
        (None, 11, "hong_kong"),
        (None, 13, "learner"),
        (None, 14, "macau"),
        (None, 19, "nev_small"),
        (None, 20, "nev_large"),
        (None, 21, "emergency"),
        (None, 22, "consulate"),
        ("v2", 19, "nev_small"),
        ("v1", 11, "nev_small"),
        ("v1", 12, "nev_large"),
        ("v1", 13, "embassy"),
        ("v1", 19, "unknown"),
        (None, 99, "unknown"),
    ],
)
def test_zhenshi_type_tables(table: str | None, code: int, expected: str) -> None:
    extra = {"type_table": table} if table else {}
    drv = driver("zhenshi", **extra)
    body = json.loads(zhenshi_plate_body("京A12345"))
    body["AlarmInfoPlate"]["result"]["PlateResult"]["type"] = code
    outcome = run(drv, json.dumps(body, ensure_ascii=False).encode())
    read = next(d for d in outcome.drafts if d.type == "lpr.plate_read")
    assert read_of(outcome).plate_type == expected
    assert read.raw_code == f"zhenshi:type/{code}"  # the camera's own code is kept


def test_type_table_config_is_checked() -> None:
    with pytest.raises(ValueError, match="type_table 'v9' unknown; tables: v1, v2"):
        HttpPlateReaderConfig.model_validate(
            {"id": "cam", "driver": "http_plate_reader", "protocol": "zhenshi", "type_table": "v9"}
        )
    assert sorted(vendor_maps()["zhenshi"].type_tables) == ["v1", "v2"]


def test_type_table_file_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="default 'v3' is not one of the tables"):
        parse_type_tables({"default": "v3", "tables": {"v1": {1: "blue"}}}, "zhenshi_types.yaml")
    with pytest.raises(ValueError, match="non-empty `tables`"):
        parse_type_tables({"default": "v1"}, "zhenshi_types.yaml")


# ------------------------------------------------------------------ 3. replies echo plateid, offline continues


def test_online_reply_echoes_plateid() -> None:
    drv = driver("zhenshi", access={"allowlist": ["京A12345"]})
    outcome = run(drv, zhenshi_plate_body("京A12345", plateid=4711))
    assert json.loads(outcome.reply.body) == {"Response_AlarmInfoPlate": {"info": "ok", "plateid": 4711}}
    denied = run(drv, zhenshi_plate_body("粤B99999", plateid=4712))
    assert json.loads(denied.reply.body) == {"Response_AlarmInfoPlate": {"info": "no", "plateid": 4712}}


def test_offline_record_reply_says_continue_and_a_resent_record_is_kept_once() -> None:
    drv = driver("zhenshi", access={"allowlist": ["京A12345"]})
    first = run(drv, zhenshi_plate_body("京A12345", plateid=123, offline=True))
    reply = json.loads(first.reply.body)["Response_AlarmInfoPlate"]
    assert reply["ContinuePushOffline"] == {"plateid": 123, "continue": 1}
    assert reply["plateid"] == 123 and reply["info"] == "no"  # a buffered read never opens the barrier now
    assert [d.type for d in first.drafts] == ["lpr.plate_read"]
    assert read_of(first).is_offline_replay is True
    drv.committed(first)
    again = run(drv, zhenshi_plate_body("京A12345", plateid=123, offline=True))
    assert again.duplicate and again.drafts == []
    assert json.loads(again.reply.body)["Response_AlarmInfoPlate"]["ContinuePushOffline"]["plateid"] == 123
    other = run(drv, zhenshi_plate_body("京A12345", plateid=124, offline=True))
    assert not other.duplicate and len(other.drafts) == 1  # the same plate in another record is another read


# ------------------------------------------------------------------ 4. heartbeats as documented


@pytest.mark.parametrize("urlencoded", [False, True])
def test_zhenshi_heartbeat_forms_are_liveness_only(urlencoded: bool) -> None:
    body, ctype = zhenshi_heartbeat_form("d85b1269-8f942256", urlencoded=urlencoded)
    observation = decode_zhenshi(body, ctype)
    assert observation == Heartbeat("zhenshi", "d85b1269-8f942256")
    ctx = _Ctx()
    drv = PlateDecoder(driver("zhenshi").cfg, ctx)  # type: ignore[arg-type]
    outcome = run(drv, body, ctype)
    assert outcome.reply.status == 200 and outcome.drafts == [] and outcome.alive
    assert ctx.counters.snapshot().get("lpr.heartbeats") == 1
    assert not any(k.startswith("lpr.rejected") for k in ctx.counters.snapshot())


def test_urlencoded_heartbeat_without_content_type() -> None:
    body, _ = zhenshi_heartbeat_form("sn-1", urlencoded=True)
    assert decode_zhenshi(body, "text/plain") == Heartbeat("zhenshi", "sn-1")


def test_a_form_that_is_no_heartbeat_is_a_clear_4xx() -> None:
    with pytest.raises(PushRejected) as refused:
        decode_zhenshi(b"foo=1&bar=2", "application/x-www-form-urlencoded")
    assert refused.value.status == 422 and "not a heartbeat" in refused.value.reason


# ------------------------------------------------------------------ 5. Hikvision JSON alerts, lane direction


@pytest.mark.parametrize("bare", [True, False])
def test_hikvision_json_alert(bare: bool) -> None:
    pictures = [("licensePlatePicture.jpg", b"\xff\xd8pic\xff\xd9")]
    body, ctype = hikvision_plate_json(
        "沪AF12345", color="green", confidence=96, seq=7, lane=2, images=pictures, bare=bare
    )
    obs = decode("hikvision", body, ctype)
    assert isinstance(obs, PlateObservation)
    assert (obs.license, obs.color_code, obs.type_code, obs.lane, obs.seq) == (
        "沪AF12345",
        "green",
        "newEnergy",
        "2",
        7,
    )
    assert len(obs.images) == (0 if bare else 1)


@pytest.mark.parametrize(
    ("forward_is", "motion", "expected"),
    [
        ("entry", "forward", "entry"),
        ("entry", "reverse", "exit"),
        ("exit", "forward", "exit"),
        ("exit", "reverse", "entry"),
        (None, "forward", "unknown"),
    ],
)
@pytest.mark.parametrize("protocol", ["hikvision", "dahua"])
def test_direction_follows_the_lanes_forward_is(
    protocol: str, forward_is: str | None, motion: str, expected: str
) -> None:
    drv = driver(protocol, **({"forward_is": forward_is} if forward_is else {}))
    if protocol == "hikvision":
        body, ctype = hikvision_plate_body("京A12345", direction=motion)
    else:
        body, ctype = dahua_plate_body("京A12345", direction="Obverse" if motion == "forward" else "Reverse")
    assert read_of(run(drv, body, ctype)).direction == expected


def test_configured_direction_still_wins() -> None:
    drv = driver("hikvision", direction="exit", forward_is="entry")
    body, ctype = hikvision_plate_body("京A12345", direction="forward")
    assert read_of(run(drv, body, ctype)).direction == "exit"


# ------------------------------------------------------------------ 6. Dahua ITSAPI


def test_dahua_tollgate_and_keepalive() -> None:
    drv = driver("dahua", access={"allowlist": ["浙A12345"]}, forward_is="entry")
    assert drv.cfg.url_paths == ("/NotificationInfo/TollgateInfo", "/NotificationInfo/KeepAlive")
    body, ctype = dahua_plate_body("浙A12345", color="blue", confidence=92, seq=5, image=b"\xff\xd8x\xff\xd9")
    outcome = run(drv, body, ctype, "/NotificationInfo/TollgateInfo")
    p = read_of(outcome)
    assert (p.plate, p.plate_color, p.plate_type, p.confidence, p.direction) == (
        "浙A12345",
        "blue",
        "blue",
        0.92,
        "entry",
    )
    assert json.loads(outcome.reply.body) == {"Result": True, "Message": "OK"}
    assert len(outcome.images) == 1
    body, ctype = dahua_keepalive_body()
    beat = run(drv, body, ctype, "/NotificationInfo/KeepAlive")
    assert beat.drafts == [] and beat.reply.status == 200
    assert decode_dahua(b"", "/NotificationInfo/KeepAlive") == Heartbeat("dahua")


def test_dahua_paths_under_a_prefix() -> None:
    drv = driver("dahua", path="/garage/b1/")
    assert drv.cfg.url_paths == ("/garage/b1/NotificationInfo/TollgateInfo", "/garage/b1/NotificationInfo/KeepAlive")


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b'{"Picture": {}}', 422, "bad_payload"),
        (b'{"Picture": {"Plate": {"PlateColor": "Blue"}}}', 422, "bad_payload"),
        (b"[1]", 400, "bad_payload"),
        (b'{"Picture": ', 400, "malformed_json"),
    ],
)
def test_dahua_refusals_are_4xx_with_a_reason(body: bytes, status: int, error: str) -> None:
    outcome = run(driver("dahua"), body, "application/json", "/NotificationInfo/TollgateInfo")
    assert outcome.reply.status == status
    reply = json.loads(outcome.reply.body)
    assert reply["error"] == error and reply["reason"]


def test_oversize_offline_record_is_refused_but_does_not_block_the_drain() -> None:
    drv = driver("zhenshi", media={"max_image_bytes": 100})
    outcome = run(drv, zhenshi_plate_body("京A12345", plateid=77, offline=True, image=b"\xff\xd8" + bytes(200)))
    assert outcome.reply.status == 413
    reply = json.loads(outcome.reply.body)
    assert reply["error"] == "image_too_large" and reply["reason"]
    assert reply["Response_AlarmInfoPlate"]["ContinuePushOffline"] == {"plateid": 77, "continue": 1}
    read = next(d for d in outcome.drafts if d.type == "lpr.plate_read")
    assert read.quality.status == "rejected" and "image_too_large" in read.quality.reasons


def test_form_detection_ignores_a_byte_order_mark() -> None:
    body = "\ufeff".encode() + zhenshi_plate_body("京A12345", plateid=5)
    obs = decode_zhenshi(body, "text/plain")
    assert isinstance(obs, PlateObservation) and obs.seq == 5


def test_dahua_replay_uses_the_recorded_path() -> None:
    import base64

    drv = driver("dahua", forward_is="entry")
    now = datetime.now(UTC)
    body, ctype = dahua_plate_body("浙A12345", seq=3)
    read = {
        "content_type": ctype,
        "body_b64": base64.b64encode(body).decode(),
        "path": "/NotificationInfo/TollgateInfo",
    }
    assert [d.type for d in drv.feed("push", read, now)] == ["lpr.plate_read", "lpr.gate_decision"]
    beat_body, beat_type = dahua_keepalive_body()
    beat = {
        "content_type": beat_type,
        "body_b64": base64.b64encode(beat_body).decode(),
        "path": "/NotificationInfo/KeepAlive",
    }
    assert drv.feed("push", beat, now) == []
