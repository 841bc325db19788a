"""The driver contract: module layering, the one ingest path, the one alarm tracker."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus_elevator.config import ModbusElevatorConfig
from drivers.modbus_elevator.decoder import ElevatorDecoder
from drivers.modbus_elevator.regmap import load_map
from gateway import registry
from gateway.alarms import AlarmTracker
from gateway.config import parse_config
from gateway.driver import EventDraft, PollingDriver
from gateway.errors import OutboxFull
from gateway.metrics import Counters
from gateway.recorder import JsonlRecorder
from gateway.replay import recording_header
from gateway.runtime import DeviceRuntime, EventFactory, device_ref
from schemas.elevator import ElevatorPayload
from schemas.event import Event
from tests.helpers import base_config


def test_sinks_do_not_import_the_supervisor() -> None:
    """Back-off lives in gateway.backoff, so sinks no longer close runtime -> sinks -> supervisor -> runtime."""
    code = ("import sys, gateway.sinks.mqtt, gateway.sinks.influx; "
            "print(sorted(m for m in ('gateway.supervisor', 'gateway.runtime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the one ingest path ----------------------------------------------------------------------

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


class Clock:
    """A controllable clock for the runtime."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return self.t


class Sink:
    """The commit: keeps events, or raises `OutboxFull` while `full`."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.full = False

    async def __call__(self, events: Sequence[Event]) -> None:
        if self.full:
            raise OutboxFull("outbox over budget", retry_after_s=1.0)
        self.events.extend(events)


def elevator_runtime(tmp_path: Path, **cfg: Any) -> tuple[DeviceRuntime, Sink, Clock, Path]:
    config = ModbusElevatorConfig(id="lift-1", driver="modbus_elevator", **cfg)
    factory = EventFactory(site="s", gateway="gw", device=device_ref(config, "elevator"), simulated=False,
                           scenario=None)
    sink, clock, rec = Sink(), Clock(), tmp_path / "rec.jsonl"
    recorder = JsonlRecorder(rec, {"courtyard_recording": 1})

    async def no_shared(key: str, factory: Any) -> Any:
        raise AssertionError("not used")

    rt = DeviceRuntime(config, factory, sink, counters=Counters(), shared=no_shared, recorder=recorder, clock=clock)
    rt.bind(ElevatorDecoder(config, rt))
    return rt, sink, clock, rec


def poll(values: dict[str, Any]) -> dict[str, Any]:
    """A raw poll (as `read()` returns it) holding `values`."""
    words = load_map("gbt24476").encode(values, set())
    return {"blocks": [[a, [w]] for a, w in sorted(words.items())]}


IDLE = {"floor": 3, "direction": "none", "car_running": False, "door_zone": True, "door_state": "closed",
        "occupied": False, "service_mode": "normal", "speed_mps": 0.0, "load_pct": 0, "fault_code": 0,
        "event_code": 0}
TRAPPED = dict(IDLE, occupied=True, door_zone=False, floor=5)


async def test_ingest_records_decodes_at_receipt_time_and_stamps_it(tmp_path: Path) -> None:
    rt, sink, _, rec = elevator_runtime(tmp_path)
    done = await rt.ingest("poll", poll(IDLE))
    assert done.received == T0 and [d.type for d in done.drafts] == ["elevator.status"]
    assert [(e.time, e.received) for e in sink.events] == [(T0, T0)]
    line = json.loads(rec.read_text().splitlines()[1])
    assert (line["t"], line["device"], line["channel"]) == (T0.isoformat(), "lift-1", "poll")


async def test_failed_commit_makes_the_decoder_report_the_alarm_again_with_its_id(tmp_path: Path) -> None:
    rt, sink, clock, _ = elevator_runtime(tmp_path, thresholds={"trapped_s": 10})
    await rt.ingest("poll", poll(TRAPPED))
    clock.t = T0 + timedelta(seconds=11)
    sink.full = True
    with pytest.raises(OutboxFull):
        await rt.ingest("poll", poll(TRAPPED))  # the raise of `passenger_trapped` is not committed
    sink.full = False
    clock.t = T0 + timedelta(seconds=12)
    await rt.ingest("poll", poll(TRAPPED))
    (raised,) = [e for e in sink.events if e.type == "elevator.passenger_trapped"]
    assert raised.state == "raised"
    clock.t = T0 + timedelta(seconds=13)
    await rt.ingest("poll", poll(IDLE))
    states = [(e.state, e.alarm_id) for e in sink.events if e.type == "elevator.passenger_trapped"]
    assert states == [("raised", raised.alarm_id), ("cleared", raised.alarm_id)]
    assert rt.counters.get("decoder_crashes") == 0


async def test_a_decoder_crash_is_counted_and_decodes_to_nothing(tmp_path: Path) -> None:
    rt, sink, _, _ = elevator_runtime(tmp_path)

    class Broken:
        def feed(self, channel: str, raw: Any, now: datetime) -> list[EventDraft]:
            raise RuntimeError("bug")

        def forget(self) -> None:
            pass

    rt.bind(Broken())
    assert (await rt.ingest("poll", poll(IDLE))).drafts == []
    assert rt.counters.get("decoder_crashes") == 1 and sink.events == []


async def test_the_older_polling_shape_still_decodes_through_ingest(tmp_path: Path) -> None:
    rt, sink, _, _ = elevator_runtime(tmp_path)

    class Old(PollingDriver):
        interval = 1.0

        async def connect(self) -> None: ...

        async def read(self) -> Any: ...

        async def close(self) -> None: ...

        def decode(self, raw: Any, now: datetime) -> list[EventDraft]:
            return [EventDraft(type="elevator.status", cls="status", payload=ElevatorPayload(floor=raw))]

    Old(rt.config, rt)
    await rt.ingest("poll", 7)
    assert [e.payload.floor for e in sink.events] == [7]  # type: ignore[union-attr]


def test_no_driver_has_a_replay_of_its_own() -> None:
    for spec in registry.drivers().values():
        assert isinstance(spec.factory, str) and spec.decoder is not None, spec.name
        module, _, name = spec.factory.partition(":")
        cls = getattr(importlib.import_module(module), name)
        assert not hasattr(cls, "replay"), spec.name


def test_replay_builds_decoders_only(tmp_path: Path) -> None:
    """`courtyard replay` of a PA recording never loads asyncua: it builds the decoder, not the transport."""
    cfg = parse_config(base_config(tmp_path, devices=[{"id": "pa-1", "driver": "opcua_pa", "url": "opc.tcp://x:1/"}]))
    rec = tmp_path / "pa.jsonl"
    recorder = JsonlRecorder(rec, recording_header(cfg, None))
    recorder.record("pa-1", "snapshot", {"values": {"line.l1.status": 0}}, T0)
    recorder.record("pa-1", "changes", {"changes": [["line.l1.status", 1, None]]}, T0 + timedelta(seconds=1))
    recorder.close()
    code = ("import asyncio, sys; from pathlib import Path; from gateway.replay import replay_events\n"
            "async def main():\n"
            f"    return [(e.type, e.state) async for e in replay_events(Path({str(rec)!r}))]\n"
            "print(asyncio.run(main()), 'asyncua' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[('pa.line_fault', 'raised')] False"


# --- the one alarm tracker --------------------------------------------------------------------

def _build(state: str, alarm_id: str, duration: float) -> EventDraft:
    return EventDraft(type="x.alarm", cls="alarm", state=state, alarm_id=alarm_id,  # type: ignore[arg-type]
                      payload=ElevatorPayload(duration_s=duration))


def test_tracker_window_raise_once_clear_once_deterministic_ids() -> None:
    a, b = AlarmTracker("dev"), AlarmTracker("dev")
    for t in (a, b):
        assert t.update("k", True, T0, 5, _build) == []
    (ra,) = a.update("k", True, T0 + timedelta(seconds=5), 5, _build)
    (rb,) = b.update("k", True, T0 + timedelta(seconds=5), 5, _build)
    assert ra.alarm_id == rb.alarm_id and ra.state == "raised"
    assert a.update("k", True, T0 + timedelta(seconds=6), 5, _build) == []
    (cl,) = a.update("k", False, T0 + timedelta(seconds=7), 5, _build)
    assert (cl.state, cl.alarm_id, cl.payload.duration_s) == ("cleared", ra.alarm_id, 7)  # type: ignore[attr-defined]


def test_tracker_forget_reports_open_alarms_again_with_the_same_id() -> None:
    t = AlarmTracker("dev")
    first = t.raise_("door", T0, "1")
    assert first is not None and t.raise_("door", T0 + timedelta(seconds=1), "2") is None
    t.forget()
    again = t.raise_("door", T0 + timedelta(seconds=2), "3")
    assert again is not None and again.alarm_id == first.alarm_id
    assert t.raise_("door", T0 + timedelta(seconds=3), "4") is None  # confirmed again: no third raise
    t.forget()
    gone = t.clear("door")
    assert gone is not None and gone.alarm_id == first.alarm_id and t.clear("door") is None


def test_tracker_reconcile_clears_what_a_snapshot_no_longer_shows() -> None:
    t = AlarmTracker("dev")
    for key in ("line:l1", "line:l2", "power"):
        t.raise_(key, T0)
    gone = t.reconcile({"line:l2"}, within=lambda k: k.startswith("line:"))
    assert [a.key for a in gone] == ["line:l1"] and set(t.open_alarms()) == {"line:l2", "power"}
