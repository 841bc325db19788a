"""`courtyard demo`: the headless smoke run, broker hygiene, secrets and the live view's text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.demo import (
    DemoView,
    DeviceRow,
    event_detail,
    find_broker,
    generate_secrets,
    is_notable,
    render,
)
from gateway.history import query
from schemas.access import AccessPayload
from schemas.common import ConnectivityPayload, DeviceRef, Quality
from schemas.elevator import ElevatorPayload
from schemas.event import Event
from schemas.lpr import LprPayload
from schemas.pa import PaPayload
from tests.helpers import MqttCollector
from tests.servers import Mosquitto

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"elevator": "modbus_elevator", "access_gate": "ble_access_gate", "pa": "opcua_pa",
         "plate_reader": "http_plate_reader"}


async def retained(host: str, port: int, topic_filter: str) -> dict[str, bytes]:
    """What a fresh subscriber gets as retained (non-empty) messages under `topic_filter`."""
    out: dict[str, bytes] = {}
    async with aiomqtt.Client(host, port, identifier=f"retained-probe-{time.monotonic_ns()}") as client:
        await client.subscribe(topic_filter, qos=1)
        messages = aiter(client.messages)
        while True:
            try:
                msg = await asyncio.wait_for(anext(messages), 1.0)
            except TimeoutError:
                return out
            if not msg.retain:  # mosquitto sends the retained set on subscribe, before any live message
                return out
            if msg.payload:
                out[str(msg.topic)] = bytes(msg.payload) if not isinstance(msg.payload, bytes) else msg.payload


@pytest.mark.slow
async def test_demo_headless_for_30_seconds(tmp_path: Path, mosquitto: Mosquitto) -> None:
    env = os.environ | {"MQTT_HOST": mosquitto.host, "MQTT_PORT": str(mosquitto.port)}
    async with MqttCollector(mosquitto.host, mosquitto.port, "courtyard/jinxiu-garden/#") as col:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "demo", "--headless", "--data", str(tmp_path), "--console-port", "0",
            cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        await asyncio.sleep(30)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        text = out.decode()
        first = text.splitlines()[:3]
        assert f"{mosquitto.host}:{mosquitto.port}" in first[0], "the first line names the broker"
        assert any("mosquitto_sub" in line for line in first), "the demo says how to subscribe"
        assert re.search(r"duty console at http://127\.0\.0\.1:\d+/ \(user operator, password \S+;", text), \
            "the demo says where its console is and how to log in"
        assert "stopped cleanly" in text
        accepted = [json.loads(r.body) for r in query(tmp_path / "outbox.db")]
        ids = {e["id"] for e in accepted}
        await col.wait_for(lambda c: ids <= {e["id"] for e in c.events()}, timeout=20)

    kinds = {e["device"]["kind"] for e in accepted if e["class"] != "connectivity"}
    assert kinds == {"elevator", "access_gate", "pa", "plate_reader", "camera"}
    states: dict[str, set[str]] = {}
    for e in accepted:
        if e["alarm_id"] and e["class"] in ("alarm", "fault"):
            states.setdefault(e["alarm_id"], set()).add(e["state"])
    # (momentary: the alarm book's transitions of the same alarm)
    assert any({"raised", "cleared"} <= s for s in states.values()), "an alarm was raised and cleared"
    # The e-bike wheeled towards tower 3's lifts at 20 s: the rule holds that car's doors at once.
    assert any(e["type"] == "rule.fired" and e["payload"]["rule"] == "ebike-lift" for e in accepted)
    assert any(e["type"] == "command.hold_door" and e["device"]["id"] == "lift-b3-1"
               and e["payload"]["command_state"] == "succeeded" for e in accepted)
    # the live log printed what the platform receives
    assert "courtyard/jinxiu-garden/elevator/lift-b2-1/event/elevator.alarm_button [raised]" in text
    # the broker was not ours: the demo left nothing retained there
    assert await retained(mosquitto.host, mosquitto.port, "courtyard/jinxiu-garden/#") == {}
    # and the history is there afterwards
    res = subprocess.run([sys.executable, "-m", "gateway", "events", "--db", str(tmp_path / "outbox.db"),
                          "--type", "pa.*", "--json"], check=False, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip()


@pytest.fixture
def fresh_broker() -> Iterator[Mosquitto]:
    server = Mosquitto()
    server.start()
    yield server
    server.close()


@pytest.mark.slow
async def test_demo_on_a_foreign_broker_leaves_no_retained_topics_after_ctrl_c(
        tmp_path: Path, fresh_broker: Mosquitto) -> None:
    """MQTT_PORT alone is honoured; Ctrl-C mid-alarm; a fresh subscriber then sees nothing retained.

    Also the non-terminal fallback: no `--headless`, stdout is a pipe, so the output is the plain log.
    """
    host, port = fresh_broker.host, fresh_broker.port
    async with aiomqtt.Client(host, port) as client:  # an earlier demo's leftover, and someone else's topic
        await client.publish("courtyard/jinxiu-garden/elevator/lift-b1-1/alarm/stale", b"{}", qos=1, retain=True)
        await client.publish("courtyard/other-site/gateway/gw-9/status", b"online", qos=1, retain=True)
    env = {k: v for k, v in os.environ.items() if k != "MQTT_HOST"} | {"MQTT_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo", "--data", str(tmp_path), "--console-port", "0", cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(40):
            while "elevator.alarm_button [raised]" not in (lines[-1] if lines else ""):
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo ended early"
                lines.append(line.rstrip("\n"))
        during: dict[str, bytes] = {}
        # The button's alarm lasts 8 s; on a loaded machine its raise and clear can reach the broker
        # together. Later alarms of the loop (a forced door, a line short, a trapped passenger for
        # 40 s from 32 s) keep one retained within this window.
        deadline = time.monotonic() + 45
        while not any("/alarm/" in t for t in during) and time.monotonic() < deadline:
            during = await retained(host, port, "courtyard/#")
        assert any("/alarm/" in t for t in during), f"an alarm is retained while the demo runs: {sorted(during)}"
        assert "courtyard/jinxiu-garden/elevator/lift-b1-1/alarm/stale" not in during, "cleared at start"
    finally:
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    text = "\n".join(lines) + "\n" + rest.decode()
    assert f"127.0.0.1:{port} (from MQTT_PORT)" in lines[0]
    assert "\x1b[" not in text and "Active alarms" not in text, "a pipe gets the plain log, not the live view"
    assert "cleared" in text and "retained topic" in text
    after = await retained(host, port, "courtyard/#")
    assert after == {"courtyard/other-site/gateway/gw-9/status": b"online"}, "only the demo's site is swept"


def test_broker_choice_never_falls_back_to_a_public_port() -> None:
    only_port = find_broker({"MQTT_PORT": "1999"})
    assert (only_port.host, only_port.port, only_port.external) == ("127.0.0.1", 1999, True)
    only_host = find_broker({"MQTT_HOST": "broker.example"})
    assert (only_host.host, only_host.port, only_host.external) == ("broker.example", 1883, True)
    with pytest.raises(ValueError, match="MQTT_PORT"):
        find_broker({"MQTT_PORT": "eighteen"})
    private = find_broker({})
    try:
        assert private.owned and not private.external and private.port != 1883
        assert private.host == "127.0.0.1" and "private mosquitto" in private.origin
    finally:
        private.close()
    assert private.proc is None


async def test_demo_secrets_are_fresh_and_reach_the_cameras() -> None:
    from gateway.demo import community_scenario
    from simulators.scenario.model import load_scenario
    from simulators.scenario.plate_reader import PlateReaderAdapter

    first, second = load_scenario(community_scenario()), load_scenario(community_scenario())
    a, b = generate_secrets(first), generate_secrets(second)
    assert len(a) == 10 and not set(a) & set(b) and all(len(s) >= 32 for s in a)
    lanes = [d for d in first.devices if d.kind == "plate_reader"]
    adapter = PlateReaderAdapter(lanes, seed=first.seed, speed=100.0, scenario=first.scenario)
    await adapter.start()
    try:
        tokens = {c["id"]: c["auth"]["token"] for c in adapter.device_configs()}
    finally:
        await adapter.stop()
    assert tokens == {d.id: d.settings["token"] for d in lanes}
    gates = [d for d in first.devices if d.kind == "access_gate"]
    assert all(d.settings["credential_key"] in a for d in gates)


# --- the live view's words ------------------------------------------------------------------

NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)


def ev(device: str, kind: str, cls: str, typ: str, payload: Any, *, state: str = "momentary",
       alarm_id: str | None = None, severity: str = "info", quality: Quality | None = None) -> Event:
    fields: dict[str, Any] = {
        "id": f"id-{typ}-{state}", "time": NOW, "received": NOW, "site": "s", "gateway": "g",
        "device": DeviceRef(id=device, kind=kind, driver=KINDS[kind]), "class": cls, "type": typ,
        "severity": severity, "state": state, "alarm_id": alarm_id, "payload": payload,
    }
    if quality:
        fields["quality"] = quality
    return Event.model_validate(fields)


def row_after(*events: Event) -> DeviceRow:
    row = DeviceRow(events[0].device.kind)
    for e in events:
        row.update(e)
    return row


def test_elevator_row_reads_floor_direction_doors() -> None:
    status = ElevatorPayload(floor=12, direction="down", door_state="closed", occupied=True,
                             service_mode="inspection", car_running=True)
    row = row_after(ev("lift-1", "elevator", "status", "elevator.status", status))
    assert row.text() == "floor 12, going down, doors closed; occupied; inspection"
    trapped = ev("lift-1", "elevator", "alarm", "elevator.passenger_trapped", ElevatorPayload(floor=12),
                 state="raised", alarm_id="a1", severity="critical")
    row.update(trapped)
    assert row.text().startswith("ALARM passenger trapped; floor 12")
    row.update(ev("lift-1", "elevator", "alarm", "elevator.passenger_trapped", ElevatorPayload(floor=12),
                  state="cleared", alarm_id="a1", severity="critical"))
    assert not row.text().startswith("ALARM")


def test_gate_row_says_doors_open_and_last_passage() -> None:
    status = AccessPayload(open_doors=(2,), mode="normal", on_battery=False)
    row = row_after(ev("gate-1", "access_gate", "status", "gate.status", status))
    assert row.text() == "doors open: 2"
    assert "(2,)" not in row.text() and "open_doors" not in row.text()
    row.update(ev("gate-1", "access_gate", "status", "gate.status", AccessPayload(open_doors=())))
    row.update(ev("gate-1", "access_gate", "event", "access.denied",
                  AccessPayload(door_no=1, direction="in", credential_type="card", reason="no_permission"),
                  severity="minor"))
    local = f"{NOW.astimezone():%H:%M:%S}"
    assert row.text() == f"doors closed; last pass {local} denied (door 1, in, card, no permission)"


def test_pa_row_lists_zone_sources_and_faults() -> None:
    row = row_after(
        ev("pa-1", "pa", "status", "pa.zone_state", PaPayload(zone="z1", zone_name="Lobby", zone_state="background",
                                                               source="music")),
        ev("pa-1", "pa", "status", "pa.source", PaPayload(zone="z2", zone_name="Garage", zone_state="paging",
                                                           source="mic")),
        ev("pa-1", "pa", "fault", "pa.line_fault", PaPayload(zone="z2", zone_name="Garage", line="l2", fault="short"),
           state="raised", alarm_id="f1", severity="major"),
    )
    assert row.text() == "ALARM line fault (Garage, line l2, short); Lobby: background (music); Garage: paging (mic)"


def test_plate_row_shows_last_plate_and_decision() -> None:
    row = row_after(
        ev("lpr-1", "plate_reader", "event", "lpr.plate_read", LprPayload(plate="粤B99999", direction="entry")),
        ev("lpr-1", "plate_reader", "event", "lpr.gate_decision",
           LprPayload(plate="粤B99999", decision="deny", reason="blocklist"), severity="major"),
        ev("lpr-1", "plate_reader", "status", "lpr.gate_state", LprPayload(gate_state="down")),
    )
    local = f"{NOW.astimezone():%H:%M:%S}"
    assert row.text() == f"last {local} 粤B99999 entry -> denied (blocklist); barrier down"


def test_link_and_rejected_samples() -> None:
    row = row_after(ev("lift-1", "elevator", "connectivity", "device.offline",
                       ConnectivityPayload(online=False, reason="timeout")))
    assert row.link == "offline"
    bad = ev("lift-1", "elevator", "status", "elevator.status", ElevatorPayload(raw={"door": 9}),
             quality=Quality(status="rejected", reasons=("door_state_out_of_range:9",)))
    row.update(bad)
    assert row.text() == "", "a rejected sample does not become the device's state"
    assert event_detail(bad) == "rejected: door_state_out_of_range:9"


def test_recent_panel_holds_alarms_not_status() -> None:
    view = DemoView("courtyard", "s")
    status = ev("lift-1", "elevator", "status", "elevator.status", ElevatorPayload(floor=1))
    alarm = ev("lift-1", "elevator", "alarm", "elevator.alarm_button", ElevatorPayload(floor=1),
               state="raised", alarm_id="a", severity="critical")
    lines = view.add([status] * 50 + [alarm] + [status] * 50)
    assert len(lines) == 101, "headless still logs every event"
    assert list(view.recent) == [alarm] and not is_notable(status)


@pytest.mark.parametrize(("width", "height"), [(60, 20), (100, 30), (200, 80)])
def test_live_view_fits_the_terminal(width: int, height: int) -> None:
    from rich.console import Console

    from gateway.demo import Broker

    view = DemoView("courtyard", "jinxiu-garden")
    for i in range(24):
        view.add([ev(f"lift-{i:02d}", "elevator", "status", "elevator.status",
                     ElevatorPayload(floor=i, direction="up", door_state="closed"))])
    for i in range(200):
        view.add([ev("gate-1", "access_gate", "alarm", "door.forced_open", AccessPayload(door_no=1),
                     state="raised" if i % 2 == 0 else "cleared", alarm_id=f"x{i // 2}", severity="major")])
    broker = Broker("127.0.0.1", 41234, origin="a private mosquitto on 127.0.0.1:41234, stopped on exit")
    console = Console(width=width, height=height, file=open(os.devnull, "w"), force_terminal=True)  # noqa: SIM115
    with contextlib.closing(console.file):
        out = console.render_lines(render(view, broker, Path("/tmp/x/outbox.db"), width=width, height=height),
                                   console.options, pad=False)
    assert len(out) <= height, f"{len(out)} lines for a {height}-line terminal"
    assert all(sum(len(seg.text) for seg in line) <= width for line in out)
    text = "\n".join("".join(seg.text for seg in line) for line in out)
    assert "forced open" in text, "the recent panel shows the alarms"
    if height >= 80:
        assert "lift-23" in text and "more" not in text.split("Active alarms")[0]
    else:
        assert "more" in text, "a short terminal says devices were left out"


@pytest.mark.slow
def test_demo_with_its_own_broker_exits_without_asyncio_complaints_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM to the whole process group (systemd, `timeout`, a terminal's Ctrl-C does the same with
    SIGINT): the private broker, in its own session, outlives it; the gateway stops cleanly."""
    env = {k: v for k, v in os.environ.items() if k not in ("MQTT_HOST", "MQTT_PORT")}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--headless", "--data", str(tmp_path),
                             "--console-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        time.sleep(10)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "stopped cleanly" in out
    assert "never retrieved" not in err and "Traceback" not in err, err[-2000:]
    assert " ERROR " not in err, err[-2000:]  # the broker outlives the group signal: no broken pipes
