"""Events for rule tests: committed-looking events of named devices at given times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gateway import registry
from gateway.ids import uuid7
from gateway.rules import DeviceInfo
from schemas.event import Event

T0 = datetime(2026, 3, 1, 18, 40, tzinfo=UTC)  # 02:40 in Shanghai

DEVICES: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
    "cam-b1-bay": ("camera", {"garage": "B1", "floor": "B1"}, ()),
    "cam-b1-ramp": ("camera", {"garage": "B1", "floor": "B1"}, ()),
    "cam-t7-lobby": ("camera", {"building": "7", "unit": "1", "floor": "1", "zone": "lobby"}, ()),
    "cam-t7-car1": ("camera", {"building": "7", "unit": "1", "zone": "lift car 1"}, ()),
    "lift-b4-1": ("elevator", {"building": "4", "unit": "1"}, ("fire-recall",)),
    "lift-b4-2": ("elevator", {"building": "4", "unit": "2"}, ("fire-recall",)),
    "lift-t7-1": ("elevator", {"building": "7", "unit": "1"}, ()),
    "lift-t8-1": ("elevator", {"building": "8", "unit": "1"}, ()),
    "pa-south": ("pa", {"zone": "south"}, ("fire-evacuation",)),
    "pa-t7": ("pa", {"building": "7"}, ("ebike-warning",)),
    "gate-south": ("access_gate", {"zone": "south-entrance"}, ("escape-route",)),
    "gate-north": ("access_gate", {"zone": "north-entrance"}, ()),
    "lpr-b1-in-1": ("plate_reader", {"garage": "B1"}, ()),
}
DRIVERS = {"camera": "camera", "elevator": "modbus_elevator", "pa": "opcua_pa", "access_gate": "ble_access_gate",
           "plate_reader": "http_plate_reader"}


def infos() -> list[DeviceInfo]:
    """Every test device as a rule target."""
    return [DeviceInfo(d, k, loc, frozenset(tags)) for d, (k, loc, tags) in DEVICES.items()]


def event(device: str, type_: str, at_s: float, *, state: str = "momentary", alarm_id: str | None = None,
          cls: str | None = None, severity: str = "major", **payload: Any) -> Event:
    """One event of a test device, `at_s` seconds after T0."""
    kind, loc, _ = DEVICES[device]
    when = T0 + timedelta(seconds=at_s)
    body: dict[str, Any] = {"kind": kind if kind != "access_gate" else "access", **payload}
    if kind == "camera":
        body.setdefault("detection", type_.split(".")[1].split("_", maxsplit=1)[0])
    if kind == "elevator":
        body = {"kind": "elevator", **payload}
    if kind == "plate_reader":
        body = {"kind": "lpr", **payload}
    ev: Event = registry.event_model().model_validate({
        "id": uuid7(), "time": when, "received": when, "site": "s", "gateway": "gw",
        "device": {"id": device, "kind": kind, "driver": DRIVERS[kind], "location": loc},
        "class": cls or ("alarm" if alarm_id else "event"), "type": type_, "severity": severity, "state": state,
        "alarm_id": alarm_id, "payload": body})
    return ev
