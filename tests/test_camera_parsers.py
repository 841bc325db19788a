"""Camera parsers and the multipart splitter: exact on good input, counted rejections on bad.

Property tests (hypothesis) drive each parser with arbitrary input: only `CameraInputError`
may come out, and the splitter's memory stays bounded whatever the stream.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.camera.config import CameraConfig
from drivers.camera.dahua import parse_event
from drivers.camera.events import CameraInputError
from drivers.camera.isapi import parse_alert
from drivers.camera.multipart import MultipartSplitter, Part, Rejected, boundary_of
from simulators.camera.model import SimCamera, SimDetection
from simulators.camera.server import dahua_line, hik_alert, part

CFG = CameraConfig.model_validate({"id": "cam", "driver": "camera", "url": "http://127.0.0.1", "password": "x"})
CAM = SimCamera("cam", "hikvision", channels=4)


def _split(data: bytes, boundary: str = "boundary", chunk: int = 7, **kw: Any) -> list[Part | Rejected]:
    splitter = MultipartSplitter(boundary, **kw)
    out: list[Part | Rejected] = []
    for i in range(0, len(data), chunk):
        out += splitter.feed(data[i:i + chunk])
    return out


# --- multipart ----------------------------------------------------------------------------------


def test_boundary_of_header_forms() -> None:
    assert boundary_of("multipart/mixed; boundary=boundary") == "boundary"
    assert boundary_of('multipart/x-mixed-replace; boundary="myboundary"') == "myboundary"
    assert boundary_of("multipart/mixed; boundary=--abc") == "abc"
    assert boundary_of("multipart/mixed") is None


def test_parts_with_and_without_length() -> None:
    data = (part("application/xml", b"<a/>", "b") + b"--b\r\nContent-Type: text/plain\r\n\r\nno length\r\n"
            + part("image/jpeg", b"\xff\xd8--b\r\n\xff\xd9", "b") + b"--b--\r\n")
    items = _split(data, "b", chunk=3)
    assert [(i.content_type, i.body) for i in items if isinstance(i, Part)] == [
        ("application/xml", b"<a/>"), ("text/plain", b"no length"), ("image/jpeg", b"\xff\xd8--b\r\n\xff\xd9")]


def test_oversized_part_with_length_is_skipped_exactly_and_stream_goes_on() -> None:
    data = part("image/jpeg", b"x" * 5000, "b") + part("application/xml", b"<ok/>", "b")
    items = _split(data, "b", chunk=100, max_part_bytes=1000)
    assert isinstance(items[0], Rejected) and items[0].error == "part_too_large"
    assert isinstance(items[1], Part) and items[1].body == b"<ok/>"


def test_endless_part_without_length_is_bounded() -> None:
    splitter = MultipartSplitter("b", max_part_bytes=1000)
    out = splitter.feed(b"--b\r\nContent-Type: text/plain\r\n\r\n")
    for _ in range(2000):  # 2 MB of a part that never ends
        out += splitter.feed(b"z" * 1000)
        assert splitter.buffered < 3000
    assert [type(i) for i in out] == [Rejected]
    out = splitter.feed(b"\r\n" + part("text/plain", b"after", "b"))
    assert isinstance(out[-1], Part) and out[-1].body == b"after"


def test_wrong_boundary_is_a_typed_error() -> None:
    with pytest.raises(CameraInputError) as err:
        _split(part("application/xml", b"<a/>", "notboundary"), "boundary")
    assert err.value.error == "bad_boundary"


def test_bad_content_length_is_rejected_not_fatal() -> None:
    data = b"--b\r\nContent-Length: -5\r\n\r\njunk\r\n" + part("text/plain", b"next", "b")
    items = _split(data, "b")
    assert isinstance(items[0], Rejected) and items[0].error == "bad_content_length"
    assert isinstance(items[-1], Part) and items[-1].body == b"next"


@settings(max_examples=150, deadline=None)
@given(bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=6), chunk=st.integers(1, 64))
def test_property_any_chunking_gives_the_same_parts(bodies: list[bytes], chunk: int) -> None:
    data = b"".join(part("application/octet-stream", b, "bnd") for b in bodies)
    assert [i.body for i in _split(data, "bnd", chunk=chunk) if isinstance(i, Part)] == bodies


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4000), chunk=st.integers(1, 512))
def test_property_arbitrary_bytes_only_typed_errors_and_bounded_memory(data: bytes, chunk: int) -> None:
    splitter = MultipartSplitter("b", max_part_bytes=512, max_header_bytes=256)
    try:
        for i in range(0, len(data), chunk):
            splitter.feed(data[i:i + chunk])
            assert splitter.buffered <= 512 + 256 + chunk + 16
    except CameraInputError as exc:
        assert exc.error in {"bad_boundary", "header_too_large"}


# --- ISAPI ----------------------------------------------------------------------------------------


def _det(**kw: Any) -> SimDetection:
    base: dict[str, Any] = {"seq": 1, "detection": "ebike", "state": "pulse", "channel": 2, "region": "car",
                            "region_id": 3, "confidence": 88}
    return SimDetection(**{**base, **kw})


@pytest.mark.parametrize("as_json", [False, True])
def test_isapi_alert_xml_and_json(as_json: bool) -> None:
    body = hik_alert(CAM, _det(), as_json=as_json).decode()
    [sig] = parse_alert({"ctype": "application/json" if as_json else "application/xml", "body": body,
                         "pictures": ["cam/abc.jpg"]}, CFG)
    assert (sig.detection, sig.state, sig.channel, sig.region, sig.region_id) == ("ebike", "pulse", 2, "car", "3")
    assert sig.confidence == 0.88 and sig.code == "isapi:eBikeDetection" and sig.pictures == ("cam/abc.jpg",)
    assert sig.time is not None and sig.time.tzinfo is not None


def test_isapi_heartbeat_and_rules() -> None:
    [hb] = parse_alert({"body": hik_alert(CAM, None).decode()}, CFG)
    assert (hb.detection, hb.state) == ("video_loss", "stop")
    [line] = parse_alert({"body": hik_alert(CAM, _det(detection="intrusion", rule="line")).decode()}, CFG)
    assert (line.detection, line.rule) == ("intrusion", "line_crossing")
    [odd] = parse_alert({"body": hik_alert(CAM, _det(code="faceSnapMatch")).decode()}, CFG)
    assert (odd.detection, odd.code) == ("unknown", "isapi:faceSnapMatch")


@pytest.mark.parametrize("body, error", [
    ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
     "<EventNotificationAlert><eventType>&b;</eventType></EventNotificationAlert>", "malformed_xml"),
    ('<!DOCTYPE x SYSTEM "file:///etc/passwd"><EventNotificationAlert/>', "malformed_xml"),
    ("<EventNotificationAlert><eventType>VMD", "malformed_xml"),
    ("<ResponseStatus><statusCode>4</statusCode></ResponseStatus>", "not_an_alert"),
    ('{"eventType": ', "malformed_json"),
    ("[1, 2]", "not_an_alert"),
    ("", "empty_alert"),
])
def test_isapi_bad_alerts_are_typed(body: str, error: str) -> None:
    with pytest.raises(CameraInputError) as err:
        parse_alert({"body": body}, CFG)
    assert err.value.error == error


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(st.text(max_size=600), st.binary(max_size=600).map(lambda b: b.decode("latin-1"))),
       ctype=st.sampled_from(["application/xml", "application/json", ""]))
def test_property_isapi_arbitrary_text(body: str, ctype: str) -> None:
    try:
        sigs = parse_alert({"ctype": ctype, "body": body}, CFG)
    except CameraInputError:
        return
    assert all(s.code.startswith("isapi:") for s in sigs)


@settings(max_examples=200, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(["eventType", "eventState", "channelID", "dateTime", "confidence",
                                             "DetectionRegionList", "targetType"]),
                           st.one_of(st.none(), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=30),
                                     st.lists(st.dictionaries(st.text(max_size=8), st.text(max_size=8)), max_size=2))))
def test_property_isapi_json_fields_of_any_type(doc: dict[str, Any]) -> None:
    try:
        [sig] = parse_alert({"ctype": "application/json", "body": json.dumps(doc)}, CFG)
    except CameraInputError:
        return
    assert sig.confidence is None or 0 <= sig.confidence <= 1
    assert sig.channel is None or sig.channel >= 0


# --- Dahua ----------------------------------------------------------------------------------------


def test_dahua_lines() -> None:
    body = dahua_line(CAM, _det(detection="fire", state="start", channel=3, region="ramp")).decode()
    [sig] = parse_event({"body": body}, CFG)
    assert (sig.detection, sig.state, sig.channel, sig.region, sig.code) == ("fire", "start", 3, "ramp",
                                                                               "dahua:FireWarning")
    two = ("Code=VideoBlind;action=Stop;index=0\r\n"
           'Code=CrossRegionDetection;action=Pulse;index=1;data={\n "Object": {"ObjectType": "ElectricBicycle"}\n}')
    blind, bike = parse_event({"body": two}, CFG)
    assert (blind.detection, blind.state, blind.channel) == ("tamper", "stop", 1)
    assert (bike.detection, bike.state, bike.target) == ("ebike", "pulse", "ElectricBicycle")
    assert parse_event({"body": "Heartbeat"}, CFG) == []


@pytest.mark.parametrize("body, error", [
    ("Code=VideoLoss;action=Begin;index=0", "bad_action"),
    ("Code=VideoLoss;action=Start;index=x", "malformed_event"),
    ('Code=VideoLoss;action=Start;index=0;data={"UTC": ', "malformed_data"),
    ("garbage", "malformed_event"),
])
def test_dahua_bad_lines_are_typed(body: str, error: str) -> None:
    with pytest.raises(CameraInputError) as err:
        parse_event({"body": body}, CFG)
    assert err.value.error == error


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(st.text(max_size=400), st.builds(
    lambda c, a, i, d: f"Code={c};action={a};index={i};data={d}",
    st.text(max_size=20), st.sampled_from(["Start", "Stop", "Pulse", "x"]), st.text(max_size=5), st.text(max_size=60))))
def test_property_dahua_arbitrary_text(body: str) -> None:
    try:
        sigs = parse_event({"body": body}, CFG)
    except CameraInputError:
        return
    assert all(s.channel is not None and s.channel >= 1 for s in sigs)
