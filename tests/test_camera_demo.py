"""The demo's camera rows: where it was seen, in the duty staff's words."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.demo import DemoView, DeviceRow, event_detail
from schemas.camera import CameraPayload
from schemas.common import DeviceRef, Location
from schemas.event import Event

NOW = datetime(2026, 11, 29, 18, 40, tzinfo=UTC)


def _ev(type_: str, payload: CameraPayload, *, state: str = "raised", alarm_id: str | None = "a1") -> Event:
    return Event.model_validate({
        "id": f"id-{type_}-{state}", "time": NOW, "received": NOW, "site": "s", "gateway": "g",
        "device": DeviceRef(id="cam-b1-bay", kind="camera", driver="camera"), "class": "alarm", "type": type_,
        "severity": "critical", "state": state, "alarm_id": alarm_id, "payload": payload,
    })


SMOKE = CameraPayload(detection="smoke", channel=2, channel_name="charging bay", confidence=0.82,
                      location=Location(garage="B1", floor="B1", zone="column 14"), where="garage")


def test_camera_alarm_says_where() -> None:
    raised = _ev("camera.smoke_detected", SMOKE)
    assert event_detail(raised) == "B1 garage, column 14, charging bay, 82%"
    row = DeviceRow("camera")
    row.update(raised)
    local = f"{NOW.astimezone():%H:%M:%S}"
    assert row.text() == (f"ALARM smoke detected (B1 garage, column 14, charging bay, 82%); "
                          f"last {local} smoke detected (B1 garage, column 14, charging bay, 82%)")
    row.update(_ev("camera.smoke_detected", SMOKE, state="cleared"))
    assert not row.alarms and row.text().startswith(f"last {local} smoke detected")


def test_camera_ebike_in_lift_car_and_view_alarm_table() -> None:
    bike = CameraPayload(detection="ebike", channel=2, channel_name="lift car 1", where="elevator_car",
                         location=Location(building="3", unit="1", zone="lift car 1"))
    assert event_detail(_ev("camera.ebike_detected", bike)) == "building 3, unit 1, lift car 1, elevator car"
    view = DemoView("courtyard", "s")
    view.add([_ev("camera.ebike_detected", bike, alarm_id="b1")])
    assert list(view.alarms) == ["b1"] and DeviceRow("camera").text() == "watching"
