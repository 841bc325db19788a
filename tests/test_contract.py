"""The driver contract: module layering, the one ingest path, the one alarm tracker."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from drivers.modbus_elevator.config import ModbusElevatorConfig
from drivers.modbus_elevator.decoder import ElevatorDecoder
from drivers.modbus_elevator.regmap import load_map
from gateway import registry
from gateway.alarms import AlarmTracker
from gateway.config import parse_config
from gateway.driver import EventDraft, PollingDriver
from gateway.errors import OutboxError, OutboxFull
from gateway.metrics import Counters
from gateway.recorder import JsonlRecorder
from gateway.replay import recording_header
from gateway.runtime import DeviceRuntime, EventFactory, device_ref
from schemas.elevator import ElevatorPayload
from schemas.event import Event
from schemas.export import EVENT_SCHEMA_PATH
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
    """The commit: keeps events, or raises `failure` while it is set."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.failure: Exception | None = None

    async def __call__(self, events: Sequence[Event], *, wait_s: float | None = None) -> None:
        if self.failure is not None:
            raise self.failure
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
    sink.failure = OutboxError("commit failed: disk I/O error")
    with pytest.raises(OutboxError):
        await rt.ingest("poll", poll(TRAPPED))  # the raise of `passenger_trapped` is not committed
    sink.failure = None
    clock.t = T0 + timedelta(seconds=12)
    await rt.ingest("poll", poll(TRAPPED))
    (raised,) = [e for e in sink.events if e.type == "elevator.passenger_trapped"]
    assert raised.state == "raised"
    clock.t = T0 + timedelta(seconds=13)
    await rt.ingest("poll", poll(IDLE))
    states = [(e.state, e.alarm_id) for e in sink.events if e.type == "elevator.passenger_trapped"]
    assert states == [("raised", raised.alarm_id), ("cleared", raised.alarm_id)]
    assert rt.counters.get("decoder_crashes") == 0


async def test_outbox_full_refuses_status_only_so_the_decoder_keeps_its_state(tmp_path: Path) -> None:
    rt, sink, clock, _ = elevator_runtime(tmp_path)
    sink.failure = OutboxFull("outbox over budget", retry_after_s=1.0)
    with pytest.raises(OutboxFull):
        await rt.ingest("poll", poll(IDLE), wait_s=0.5)
    sink.failure = None
    clock.t = T0 + timedelta(seconds=1)
    assert (await rt.ingest("poll", poll(IDLE))).drafts == []  # not forgotten: unchanged status is not re-sent


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


# --- the open event model ---------------------------------------------------------------------

def test_builtin_specs_pass_the_plugin_checks_and_give_the_published_envelope() -> None:
    specs = registry.drivers()
    for name, spec in specs.items():
        others = {n: s for n, s in specs.items() if n != name}
        assert registry.check_spec(spec, others) == [], name
    assert registry.event_model() is Event  # the built-ins: exactly the published schema
    assert set(registry.device_kinds()) == {"elevator", "access_gate", "pa", "plate_reader", "camera"}
    assert set(registry.scenario_adapters()) == set(registry.device_kinds())


PLUGIN = '''
from typing import Literal
from gateway.driver import DeviceConfig, DriverSpec
from schemas.common import Frozen


class SmokePayload(Frozen):
    kind: Literal["smoke"] = "smoke"
    obscuration_pct: float | None = None


class SmokeConfig(DeviceConfig):
    driver: Literal["modbus_smoke"]


DRIVER = DriverSpec(name="modbus_smoke", kind="smoke_detector", payload=SmokePayload, transport="modbus_tcp",
                    shape="polling", config=SmokeConfig, factory="smokeplug:Nope", summary="smoke detectors",
                    simulator="smoke", simulator_module="smokeplug", scenario_adapter="smokeplug:SmokeAdapter")


class NoKind(Frozen):
    obscuration_pct: float | None = None


class BadConfig(DeviceConfig):
    driver: Literal["bad_smoke"]


BAD = DriverSpec(name="bad_smoke", kind="elevator", payload=NoKind, transport="x", shape="polling",
                 config=BadConfig, factory="smokeplug:Nope", summary="unusable")
'''


def install_fake_plugin(root: Path) -> dict[str, str]:
    """A plugin package with two `courtyard.drivers` entry points, found on PYTHONPATH like an installed one."""
    (root / "smokeplug.py").write_text(PLUGIN)
    dist = root / "smokeplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: smokeplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[courtyard.drivers]\nmodbus_smoke = smokeplug:DRIVER\nbad_smoke = smokeplug:BAD\n")
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop(registry.DISABLE_AUTOLOAD_ENV, None)
    return env


def courtyard(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env,
                          check=False)


@pytest.mark.slow
def test_a_plugin_adds_a_kind_with_its_payload_and_an_unusable_one_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    env = install_fake_plugin(tmp_path / "site")
    simulate = courtyard(env, "simulate", "--help")
    assert "smoke" in simulate.stdout  # its simulator is listed like a built-in one
    adapters = subprocess.run([sys.executable, "-c", "from simulators.scenario import ADAPTERS; print(ADAPTERS)"],
                              capture_output=True, text=True, env=env, check=True).stdout
    assert "'smoke_detector': 'smokeplug:SmokeAdapter'" in adapters  # and its scenario adapter
    listed = courtyard(env, "drivers")
    assert "modbus_smoke" in listed.stdout and "smoke_detector" in listed.stdout
    assert "bad_smoke" in listed.stderr and "NoKind has no `kind" in listed.stderr
    assert "kind 'elevator' is modbus_elevator's" in listed.stderr

    schema = json.loads(courtyard(env, "schema").stdout)
    event = {"schema": "courtyard.event/1", "id": "01890a5d-ac96-774b-bcce-b302099a8057",
             "time": "2026-11-26T08:00:00Z", "received": "2026-11-26T08:00:00Z", "site": "s", "gateway": "gw",
             "device": {"id": "smoke-1", "kind": "smoke_detector", "driver": "modbus_smoke"},
             "class": "alarm", "type": "smoke.detected", "payload": {"kind": "smoke", "obscuration_pct": 4.5}}
    jsonschema.validate(event, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(event, json.loads(EVENT_SCHEMA_PATH.read_text()))  # not in the built-in schema

    cfg = tmp_path / "gw.yaml"
    head = f"site: s\noutbox: {{path: {tmp_path / 'o.db'}}}\nmqtt: {{enabled: false}}\ndevices:\n"
    cfg.write_text(head + "  - {id: smoke-1, driver: modbus_smoke}\n")
    checked = courtyard(env, "validate", "-c", str(cfg))
    assert checked.returncode == 0, checked.stderr  # the usable plugin's device validates
    assert "warning: driver plugin bad_smoke is unusable" in checked.stderr  # named, though no device uses it
    cfg.write_text(head + "  - {id: smoke-1, driver: modbus_smoke}\n  - {id: bad-1, driver: bad_smoke}\n")
    checked = courtyard(env, "validate", "-c", str(cfg))
    assert checked.returncode == 1 and "devices[1].driver: driver 'bad_smoke' is unusable" in checked.stderr


# --- simulators out of drivers ------------------------------------------------------------------

def test_no_driver_module_imports_simulators() -> None:
    offenders = []
    for path in Path("drivers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path}: {n}" for n in names if n == "simulators" or n.startswith("simulators.")]
    assert offenders == []


def test_the_simulated_ble_backend_comes_from_the_registry() -> None:
    from drivers.ble_access_gate.config import BleAccessGateConfig
    from drivers.ble_access_gate.driver import resolve_backend

    assert set(registry.backends("ble_access_gate")) >= {"simulated", "bumble"}
    client, scanner = resolve_backend("simulated")
    assert client is not None and client.__module__ == "simulators.access_gate.backend" and scanner is not None
    base = {"id": "g", "driver": "ble_access_gate", "address": "AA:BB:CC:DD:EE:FF", "credential_key": "k" * 16}
    with pytest.raises(ValueError, match="native, bumble, simulated, module:Class"):
        BleAccessGateConfig.model_validate(base | {"backend": "radio"})
    # The simulated gate's settings are the simulators' registration, not the production model's ...
    assert "simulation" not in BleAccessGateConfig.model_fields
    with pytest.raises(ValueError, match="simulation"):
        BleAccessGateConfig.model_validate(base | {"backend": "simulated", "simulation": {"seed": 3}})
    # ... yet a gateway config (built by the registry) still takes them.
    cfg = parse_config(base_config(Path("/tmp"), devices=[base | {"backend": "simulated", "simulation": {"seed": 3}}]))
    assert cfg.devices[0].simulation.seed == 3  # type: ignore[attr-defined]
