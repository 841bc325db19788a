"""Vendor wire formats: Zhenshi JSON and Hikvision ANPR multipart (pure decoders)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.http_plate_reader.codec import (
    MAPS_FILE,
    Heartbeat,
    IoTrigger,
    PlateObservation,
    PushRejected,
    decode_hikvision,
    decode_zhenshi,
    parse_maps,
    split_multipart,
    vendor_maps,
    zhenshi_reply,
)
from simulators.plate_reader import (
    fake_jpeg,
    hikvision_heartbeat_body,
    hikvision_plate_body,
    multipart,
    zhenshi_gpio_body,
    zhenshi_heartbeat_body,
    zhenshi_plate_body,
)


def test_zhenshi_plate_read() -> None:
    image = fake_jpeg(500)
    body = zhenshi_plate_body(
        "粤BD12345", color="green", confidence=97, plateid=42, channel=1, image=image, when=1_700_000_000.25
    )
    obs = decode_zhenshi(body)
    assert isinstance(obs, PlateObservation)
    assert obs.license == "粤BD12345"
    assert (obs.color_code, obs.type_code, obs.confidence, obs.seq, obs.lane) == (5, 19, 97, 42, "1")
    assert obs.device_time == datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)
    assert obs.images[0].data == image
    assert obs.is_offline is False


def test_zhenshi_gbk_body_decoded() -> None:
    obs = decode_zhenshi(zhenshi_plate_body("浙A88888", license_encoding="gbk"))
    assert isinstance(obs, PlateObservation)
    assert obs.license == "浙A88888"
    assert "body_gbk" in obs.notes


def test_zhenshi_heartbeat_and_gpio() -> None:
    assert isinstance(decode_zhenshi(zhenshi_heartbeat_body("sn-1")), Heartbeat)
    trigger = decode_zhenshi(zhenshi_gpio_body(1, 1))
    assert isinstance(trigger, IoTrigger)
    assert (trigger.source, trigger.value) == (1, 1)


def test_zhenshi_reply_format() -> None:
    assert zhenshi_reply(True) == {"Response_AlarmInfoPlate": {"info": "ok"}}
    assert zhenshi_reply(False) == {"Response_AlarmInfoPlate": {"info": "no"}}


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b'{"AlarmInfoPlate": {', 400, "malformed_json"),
        (b"[1, 2]", 400, "bad_payload"),
        (b'{"Something": 1}', 422, "unknown_message"),
        (b'{"AlarmInfoPlate": {"result": {}}}', 422, "bad_payload"),
        (b'{"AlarmInfoPlate": {"result": {"PlateResult": {"confidence": 9}}}}', 422, "bad_payload"),
        (b"\xff\xfe\xfa\x00", 400, "bad_encoding"),
        (b"[" * 100_000, 400, "malformed_json"),
        (b'{"AlarmInfoPlate": ' + b"9" * 5000 + b"}", 400, "malformed_json"),
    ],
)
def test_zhenshi_malformed_rejected_with_reason(body: bytes, status: int, error: str) -> None:
    with pytest.raises(PushRejected) as info:
        decode_zhenshi(body)
    assert (info.value.status, info.value.error) == (status, error)
    assert info.value.reason


def test_hikvision_multipart_plate_read() -> None:
    pictures = [("licensePlatePicture.jpg", fake_jpeg(300, 1)), ("detectionPicture.jpg", fake_jpeg(900, 2))]
    body, ctype = hikvision_plate_body("沪AF12345", color="green", confidence=91, seq=7, lane=2, images=pictures)
    obs = decode_hikvision(body, ctype)
    assert isinstance(obs, PlateObservation)
    assert (obs.license, obs.color_code, obs.type_code, obs.confidence) == ("沪AF12345", "green", "newEnergy", "91")
    assert (obs.seq, obs.lane, obs.direction_code) == (7, "2", "forward")
    assert [i.name for i in obs.images] == ["licensePlatePicture", "detectionPicture"]
    assert obs.images[1].data == pictures[1][1]
    assert obs.device_time is not None


def test_hikvision_heartbeat() -> None:
    body, ctype = hikvision_heartbeat_body()
    assert isinstance(decode_hikvision(body, ctype), Heartbeat)


@pytest.mark.parametrize(
    ("body", "ctype", "error"),
    [
        (b"<EventNotificationAlert><eventType>ANPR", "application/xml", "malformed_xml"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><x/>', "application/xml", "bad_xml"),
        (b"<Other/>", "application/xml", "unknown_message"),
        (
            b"<EventNotificationAlert><eventType>ANPR</eventType></EventNotificationAlert>",
            "application/xml",
            "unknown_message",
        ),
        (b"--b\r\n\r\nx\r\n--b--", "multipart/form-data", "bad_multipart"),
        (
            b'--b\r\nContent-Disposition: form-data; name="anpr.xml"\r\n\r\n<x/>\r\n--b',
            "multipart/form-data; boundary=b",
            "bad_multipart",
        ),
    ],
)
def test_hikvision_malformed_rejected(body: bytes, ctype: str, error: str) -> None:
    with pytest.raises(PushRejected) as info:
        decode_hikvision(body, ctype)
    assert info.value.error == error


def test_hikvision_non_jpeg_part_rejected() -> None:
    xml, _ = hikvision_plate_body("京A12345")
    body, ctype = multipart(
        [
            ("anpr.xml", "application/xml", split_multipart(xml, _)[0].data),
            ("detectionPicture.jpg", "image/jpeg", b"GIF89a"),
        ]
    )
    with pytest.raises(PushRejected, match="not a JPEG"):
        decode_hikvision(body, ctype)


def test_vendor_maps_are_data() -> None:
    zhenshi, hik = vendor_maps()["zhenshi"], vendor_maps()["hikvision"]
    assert zhenshi.color(5) == "green" and zhenshi.color("6") == "yellow_green" and zhenshi.color(99) == "unknown"
    assert zhenshi.plate_type(19) == "nev_small" and zhenshi.plate_type(11, "v1") == "nev_small"
    assert hik.color("YellowGreen") == "yellow_green" and hik.color("White") == "white"
    assert hik.direction("forward") == "forward"  # motion, not entry/exit: the lane's forward_is decides
    assert zhenshi.confidence_scale == "percent"


def test_vendor_map_errors_name_the_entry() -> None:
    doc = yaml.safe_load(MAPS_FILE.read_text(encoding="utf-8"))
    doc["zhenshi"]["colors"][7] = "purple"
    with pytest.raises(ValueError, match=r"zhenshi\.colors\.7"):
        parse_maps(doc, MAPS_FILE.parent)


# ------------------------------------------------------------------ properties


@pytest.mark.parametrize("number", ["\u00b2", "\u0661\u0662", "9" * 5000, "-", "--0", " 7 ", "1e3", "0x10"])
def test_numeric_fields_survive_odd_digits(number: str) -> None:
    doc = {
        "AlarmInfoPlate": {
            "channel": number,
            "result": {
                "PlateResult": {
                    "license": "京A12345",
                    "plateid": number,
                    "confidence": number,
                    "isoffline": number,
                    "timeStamp": {"Timeval": {"sec": number, "usec": number}},
                }
            },
        }
    }
    obs = decode_zhenshi(json.dumps(doc).encode())
    assert isinstance(obs, PlateObservation)
    assert obs.seq in (None, 7)
    body, ctype = hikvision_plate_body("京A12345", seq=0)
    obs2 = decode_hikvision(body.replace(b"<activePostCount>0<", f"<activePostCount>{number}<".encode()), ctype)
    assert isinstance(obs2, PlateObservation)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
ODD_DIGITS = "0123456789-. \u00b2\u0661"  # plus superscript two and an Arabic-Indic digit
numbers_as_text = st.text(alphabet=ODD_DIGITS, max_size=6)
plate_results = st.fixed_dictionaries(
    {"license": json_values},
    optional={
        k: json_values | numbers_as_text
        for k in (
            "colorType",
            "type",
            "confidence",
            "plateid",
            "isoffline",
            "timeStamp",
            "imageFile",
            "is_fake_plate",
            "direction",
        )
    },
)
zhenshi_docs = st.one_of(
    json_values,
    st.builds(
        lambda r, ch, sn: {"AlarmInfoPlate": {"channel": ch, "serialno": sn, "result": {"PlateResult": r}}},
        plate_results,
        json_values,
        json_values,
    ),
    st.builds(lambda r: {"AlarmGioIn": {"result": {"TriggerResult": r}}}, json_values),
)


@given(zhenshi_docs)
@settings(max_examples=300)
def test_zhenshi_decoder_never_crashes(doc: object) -> None:
    try:
        obs = decode_zhenshi(json.dumps(doc).encode())
    except PushRejected as rejected:
        assert 400 <= rejected.status < 500 and rejected.reason
    else:
        assert isinstance(obs, PlateObservation | Heartbeat | IoTrigger)


@given(
    st.binary(max_size=2000),
    st.sampled_from(["application/json", "application/xml", "multipart/form-data; boundary=b", "multipart/mixed", ""]),
)
@settings(max_examples=300)
def test_no_body_crashes_either_decoder(body: bytes, ctype: str) -> None:
    for vendor in ("zhenshi", "hikvision"):
        try:
            if vendor == "zhenshi":
                decode_zhenshi(body)
            else:
                decode_hikvision(body, ctype)
        except PushRejected as rejected:
            assert 400 <= rejected.status < 500


@given(
    st.lists(
        st.tuples(
            st.text(max_size=10),
            st.sampled_from(["application/xml", "image/jpeg", "text/plain"]),
            st.binary(max_size=200),
        ),
        max_size=5,
    ),
    st.text(max_size=60),
)
@settings(max_examples=200)
def test_hikvision_multipart_fuzz(parts: list[tuple[str, str, bytes]], xml_text: str) -> None:
    body, ctype = multipart([("anpr.xml", "application/xml", xml_text.encode()), *parts])
    try:
        decode_hikvision(body, ctype)
    except PushRejected as rejected:
        assert 400 <= rejected.status < 500
