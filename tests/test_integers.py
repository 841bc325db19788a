"""Integers from devices are bounded to int64 at the schema (issue 9.12)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.driver import EventDraft
from gateway.history import dead_letters
from gateway.runtime import EventFactory, Gateway
from schemas.common import INT64_MAX, INT64_MIN, DeviceRef
from schemas.elevator import ElevatorPayload
from schemas.event import Event
from simulators.plate_reader import Camera, CameraAuth, zhenshi_gpio_body, zhenshi_plate_body
from tests.helpers import base_config, eventually
from tests.servers import InfluxV1, free_port

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def factory() -> EventFactory:
    return EventFactory(site="s", gateway="gw", device=DeviceRef(id="lpr-1", kind="plate_reader", driver="x"),
                        simulated=False, scenario=None)


@pytest.mark.parametrize("seq", [2**70, INT64_MAX + 1, INT64_MIN - 1])
def test_a_sequence_number_outside_int64_rejects_the_event(seq: int) -> None:
    draft = EventDraft(type="elevator.status", cls="status", payload=ElevatorPayload(floor=3), seq=seq)
    event = factory().build(draft, NOW)
    assert event.seq is None
    assert event.quality.status == "rejected" and event.quality.reasons == ("seq_out_of_range",)
    assert event.payload.floor == 3  # type: ignore[union-attr]


@pytest.mark.parametrize("seq", [INT64_MAX, INT64_MIN, 0])
def test_int64_limits_themselves_are_valid(seq: int) -> None:
    event = factory().build(EventDraft(type="elevator.status", cls="status", payload=ElevatorPayload(), seq=seq), NOW)
    assert (event.seq, event.quality.status) == (seq, "valid")


def test_payload_integers_outside_int64_are_dropped_and_rejected() -> None:
    event = Event.model_validate({
        "id": "x", "time": NOW, "received": NOW, "site": "s", "gateway": "gw",
        "device": {"id": "lift-1", "kind": "elevator", "driver": "modbus_elevator"},
        "class": "status", "type": "elevator.status",
        "quality": {"status": "suspect", "reasons": ["direction_while_stopped"]},
        "payload": {"kind": "elevator", "floor": 2**64, "fault_code": 4, "raw": {"floor": -(2**80), "load_pct": 8}},
    })
    assert event.payload.floor is None and event.payload.fault_code == 4  # type: ignore[union-attr]
    assert event.payload.raw == {"load_pct": 8}  # type: ignore[union-attr]
    assert event.quality.status == "rejected"
    assert event.quality.reasons == ("direction_while_stopped", "floor_out_of_range", "raw.floor_out_of_range")


def _integers(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        if node.get("type") == "integer":
            out.append((path, node))
        for key, value in node.items():
            out += _integers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _integers(value, f"{path}[{i}]")
    return out


def test_every_integer_in_the_event_schema_is_bounded() -> None:
    schema = json.loads((ROOT / "schemas/event.schema.json").read_text())
    found = _integers(schema)
    assert found, "the walk must find the integer fields"
    unbounded = [path for path, node in found
                 if node.get("maximum", INT64_MAX + 1) > INT64_MAX or node.get("minimum", INT64_MIN - 1) < INT64_MIN]
    assert unbounded == []


async def test_a_huge_plateid_is_a_rejected_event_not_a_failed_write(tmp_path: Path, influx_v1: InfluxV1) -> None:
    """The field case: `plateid: 2**70` made InfluxDB refuse the batch it was in."""
    db = "huge_plateid"
    await influx_v1.query(f"CREATE DATABASE {db}")
    port = free_port()
    camera = {"id": "lpr-1", "driver": "http_plate_reader", "listen_host": "127.0.0.1", "listen_port": port,
              "auth": {"mode": "token", "token": "int64-token"}, "media": {"path": str(tmp_path / "media")},
              "access": {"allowlist": ["京A12345", "沪AF12345"]}}
    cfg = parse_config(base_config(tmp_path, devices=[camera],
                                   influx={"url": influx_v1.url, "api": "v1", "database": db}))
    async with Gateway(cfg) as gw, aiohttp.ClientSession() as session:
        cam = Camera(session, f"http://127.0.0.1:{port}/lpr/lpr-1", CameraAuth(token="int64-token"))
        await eventually(lambda: _posts(cam, zhenshi_plate_body("京A12345", plateid=7)), timeout=10)
        huge = await cam.post(zhenshi_plate_body("沪AF12345", plateid=2**70))
        assert huge.status == 200 and huge.opened  # the resident still gets in
        gpio = await cam.post(zhenshi_gpio_body(source=2**70, value=2**70))
        assert gpio.status < 500
        assert await gw.drain(15)
    from gateway.history import query

    events = [Event.model_validate_json(r.body) for r in query(tmp_path / "outbox.db")]
    reads = [e for e in events if e.type == "lpr.plate_read"]
    assert [(e.seq, e.quality.status) for e in reads] == [(7, "valid"), (None, "rejected")]
    [io] = [e for e in events if e.type == "lpr.io_trigger"]
    assert io.quality.status == "rejected" and io.payload.io_value is None  # type: ignore[union-attr]
    assert dead_letters(tmp_path / "outbox.db") == []
    rows = await influx_v1.query(f"SELECT * FROM {db}..plate_reader WHERE type = 'lpr.plate_read'")
    assert len(rows) == 2


async def _posts(cam: Camera, body: bytes) -> bool:
    try:
        return (await cam.post(body)).status == 200
    except aiohttp.ClientError:
        return False


@pytest.mark.parametrize(("floor", "raw", "reasons"), [
    (3, None, ()),  # the fast path: plain in-range values
    (True, None, ()),  # a bool is not an integer here
    (INT64_MAX, {"floor": INT64_MIN}, ()),  # in range, inside a container too
    (2**63, None, ("floor_out_of_range",)),
    (3, {"floor": 2**64}, ("raw.floor_out_of_range",)),  # one level down: the full check runs
])
def test_the_quick_scan_and_the_full_check_agree(floor: Any, raw: Any, reasons: tuple[str, ...]) -> None:
    """Events with nothing to fix skip the full check; anything else still gets it."""
    payload: dict[str, Any] = {"kind": "elevator", "floor": floor} | ({"raw": raw} if raw is not None else {})
    event = Event.model_validate({
        "id": "x", "time": NOW, "received": NOW, "site": "s", "gateway": "gw",
        "device": {"id": "lift-1", "kind": "elevator", "driver": "modbus_elevator"},
        "class": "status", "type": "elevator.status", "payload": payload,
    })
    assert event.quality.reasons == reasons
    assert event.quality.status == ("rejected" if reasons else "valid")
