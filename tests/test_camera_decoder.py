"""The camera decoder: raise/clear pairing, pulse holds, heartbeats, unknown codes, motion, skew, forget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from drivers.camera.config import CameraConfig
from drivers.camera.decoder import CameraDecoder
from simulators.camera.model import SimCamera, SimDetection
from simulators.camera.server import dahua_line, hik_alert

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
CAM = SimCamera("cam", "hikvision", channels=4)


def _cfg(**kw: Any) -> CameraConfig:
    return CameraConfig.model_validate({"id": "cam", "driver": "camera", "url": "http://127.0.0.1", "password": "x",
                                        "pulse_hold_s": 10, **kw})


def _hik(detection: str, state: str = "pulse", channel: int = 1, when: datetime = T0, **kw: Any) -> dict[str, Any]:
    det = SimDetection(seq=1, detection=detection, state=state, channel=channel, time=when, **kw)  # type: ignore[arg-type]
    return {"ctype": "application/xml", "body": hik_alert(CAM, det).decode(), "pictures": ["cam/p.jpg"]}


def _dahua(detection: str, state: str, channel: int = 1, when: datetime = T0, **kw: Any) -> dict[str, Any]:
    det = SimDetection(seq=1, detection=detection, state=state, channel=channel, time=when, **kw)  # type: ignore[arg-type]
    return {"body": dahua_line(CAM, det).decode(), "pictures": []}


def test_pulse_is_held_then_cleared_once_with_the_same_id() -> None:
    dec = CameraDecoder(_cfg())
    [raised] = dec.feed("isapi", _hik("fire"), T0)
    assert raised.state == "raised" and raised.type == "camera.fire_detected" and raised.payload.pulse is True
    assert dec.feed("isapi", _hik("fire"), T0 + timedelta(seconds=5)) == []  # repeat: hold extended, no new raise
    assert dec.feed("tick", {}, T0 + timedelta(seconds=14)) == []
    [cleared] = dec.feed("tick", {}, T0 + timedelta(seconds=15))
    assert cleared.state == "cleared" and cleared.alarm_id == raised.alarm_id
    assert cleared.time == T0 + timedelta(seconds=15) and cleared.payload.duration_s == 15.0
    assert dec.feed("tick", {}, T0 + timedelta(seconds=30)) == []


def test_isapi_inactive_clears_and_videoloss_heartbeat_is_liveness_only() -> None:
    dec = CameraDecoder(_cfg())
    assert dec.feed("isapi", {"body": hik_alert(CAM, None).decode()}, T0) == []  # heartbeat: nothing
    assert dec.book.heartbeats == 1
    [raised] = dec.feed("isapi", _hik("video_loss", channel=2), T0)
    assert raised.cls == "fault" and raised.type == "camera.video_loss"
    [cleared] = dec.feed("isapi", _hik("video_loss", state="stop", channel=2), T0 + timedelta(seconds=3))
    assert cleared.state == "cleared" and cleared.alarm_id == raised.alarm_id
    assert cleared.payload.snapshot_uri is None


def test_dahua_start_stays_open_until_stop() -> None:
    dec = CameraDecoder(_cfg())
    [raised] = dec.feed("dahua", _dahua("tamper", "start", channel=2), T0)
    assert raised.payload.pulse is False and raised.raw_code == "dahua:VideoBlind"
    assert dec.feed("tick", {}, T0 + timedelta(hours=1)) == []  # stateful: no auto-clear
    [cleared] = dec.feed("dahua", _dahua("tamper", "stop", channel=2), T0 + timedelta(hours=1))
    assert cleared.alarm_id == raised.alarm_id
    [pulse] = dec.feed("dahua", _dahua("ebike", "pulse", channel=1), T0)
    assert pulse.type == "camera.ebike_detected"


def test_unknown_code_is_kept_with_its_raw_code() -> None:
    dec = CameraDecoder(_cfg())
    [ev] = dec.feed("isapi", _hik("motion", code="faceSnapMatch"), T0)
    assert ev.type == "camera.event.unknown" and ev.raw_code == "isapi:faceSnapMatch"
    assert ev.payload.code == "isapi:faceSnapMatch" and ev.state == "momentary"


def test_config_codes_extend_the_vendor_table() -> None:
    dec = CameraDecoder(_cfg(codes={"faceSnapMatch": "intrusion"}))
    [ev] = dec.feed("isapi", _hik("motion", code="faceSnapMatch"), T0)
    assert ev.type == "camera.intrusion" and ev.state == "raised"


def test_motion_off_by_default_on_when_configured() -> None:
    assert CameraDecoder(_cfg()).feed("isapi", _hik("motion"), T0) == []
    [ev] = CameraDecoder(_cfg(motion=True)).feed("isapi", _hik("motion"), T0)
    assert (ev.type, ev.severity, ev.state) == ("camera.motion", "info", "momentary")


def test_clock_skew_uses_receipt_time_and_marks_suspect() -> None:
    dec = CameraDecoder(_cfg())
    [ev] = dec.feed("isapi", _hik("smoke", when=T0 - timedelta(hours=7)), T0)
    assert ev.time is None and ev.quality.status == "suspect" and "clock_skew" in ev.quality.reasons
    [ok] = dec.feed("isapi", _hik("fire", when=T0 - timedelta(seconds=2)), T0)
    assert ok.time == T0 - timedelta(seconds=2) and ok.quality.status == "valid"


def test_bad_input_is_a_counted_rejected_event() -> None:
    dec = CameraDecoder(_cfg())
    [bad] = dec.feed("isapi", {"body": "<EventNotificationAlert><eventType>"}, T0)
    assert bad.type == "camera.input_rejected" and bad.quality.status == "rejected"
    assert bad.quality.reasons == ("malformed_xml",)
    [refused] = dec.feed("reject", {"error": "bad_boundary", "detail": "x"}, T0)
    assert refused.quality.reasons == ("bad_boundary",) and dec.rejected == 2
    [odd] = dec.feed("nope", {}, T0)
    assert odd.quality.reasons == ("unknown_channel",)


def test_forget_reports_open_alarms_again_with_their_ids() -> None:
    dec = CameraDecoder(_cfg())
    [fire] = dec.feed("dahua", _dahua("fire", "start"), T0)  # committed
    [bike] = dec.feed("dahua", _dahua("ebike", "pulse", channel=2), T0)
    dec.forget()  # the commit of the e-bike raise failed
    [again] = dec.feed("dahua", _dahua("ebike", "pulse", channel=2), T0 + timedelta(seconds=1))
    assert (again.state, again.alarm_id) == ("raised", bike.alarm_id)  # re-sent, same id
    assert dec.feed("dahua", _dahua("ebike", "pulse", channel=2), T0 + timedelta(seconds=2)) == []
    [cleared] = dec.feed("dahua", _dahua("fire", "stop"), T0 + timedelta(seconds=3))
    assert (cleared.state, cleared.alarm_id) == ("cleared", fire.alarm_id)  # not left open for ever


def test_replay_gives_the_same_ids() -> None:
    first = CameraDecoder(_cfg()).feed("dahua", _dahua("fire", "start"), T0)[0]
    inputs = [("dahua", _dahua("fire", "start"), T0), ("isapi", _hik("ebike", channel=2), T0),
              ("tick", {}, T0 + timedelta(seconds=11)), ("dahua", _dahua("fire", "stop"), T0 + timedelta(seconds=12))]
    runs = []
    for _ in range(2):
        d = CameraDecoder(_cfg())
        runs.append([(e.type, e.state, e.alarm_id) for ch, raw, t in inputs for e in d.feed(ch, raw, t)])
    assert runs[0] == runs[1] and len(runs[0]) == 4
    assert first.alarm_id == runs[0][0][2]


def test_channel_location_override_and_where() -> None:
    cfg = _cfg(location={"building": "7", "unit": "2", "floor": "1", "zone": "lobby"}, where="lobby",
               channels={3: {"name": "car 3", "where": "elevator_car", "location": {"zone": "lift 3", "floor": None}}})
    dec = CameraDecoder(cfg)
    [car] = dec.feed("isapi", _hik("ebike", channel=3), T0)
    [lobby] = dec.feed("isapi", _hik("ebike", channel=1), T0)
    assert car.payload.where == "elevator_car" and car.payload.channel_name == "car 3"
    assert car.payload.location.zone == "lift 3" and car.payload.location.building == "7"
    assert lobby.payload.where == "lobby" and lobby.payload.location.zone == "lobby"
    assert car.payload.snapshot_uri is not None and car.payload.snapshot_uri.endswith("cam/p.jpg")
