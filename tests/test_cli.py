"""The `courtyard` command: run until a signal, local history, schema, drivers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from schemas.export import EVENT_SCHEMA_PATH
from tests.helpers import MqttCollector
from tests.servers import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[1]


def courtyard(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], check=False, capture_output=True, text=True,
                          cwd=ROOT, **kw)  # type: ignore[call-overload]


@pytest.mark.slow
async def test_run_example_until_sigterm_then_history(tmp_path: Path, mosquitto: Mosquitto) -> None:
    lift_port = free_port()
    env = os.environ | {"MQTT_PORT": str(mosquitto.port), "ELEVATOR_PORT": str(lift_port),
                        "COURTYARD_DATA": str(tmp_path), "SITE": "cli-site"}
    sim = subprocess.Popen([sys.executable, "-m", "gateway", "simulate", "elevator", "--port", str(lift_port),
                            "--call-rate", "1"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert sim.stdout is not None
    assert "elevator simulator" in sim.stdout.readline()
    async with MqttCollector(mosquitto.host, mosquitto.port, "courtyard/cli-site/#") as col:
        gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", "examples/elevator.yaml"], cwd=ROOT,
                              env=env, stderr=subprocess.PIPE, text=True)
        try:
            await col.wait_for(lambda c: len(c.events()) >= 3, timeout=20)
        finally:
            gw.send_signal(signal.SIGTERM)
            _, err = gw.communicate(timeout=20)
            sim.send_signal(signal.SIGINT)
            sim.wait(10)
        assert gw.returncode == 0, err
        assert "stopped" in err
        assert "started: 1 device," in err
        assert "{'" not in err, "counters are not printed as a Python dict"
        assert re.search(r"counters:\n(  \S+ +\d+\n)*  outbox\.accepted +\d+\n", err), "one counter a line"
        await col.wait_for(lambda c: any(t.endswith("/gateway/gw-1/status") and b'"offline"' in p
                                         for t, p in c.messages), timeout=5)
        published = {e["id"]: e for e in col.events()}

    res = courtyard("events", "--db", str(tmp_path / "outbox.db"), "--json")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) >= 3
    schema = json.loads(EVENT_SCHEMA_PATH.read_text())
    for line in lines:
        ev = json.loads(line)
        jsonschema.validate(ev, schema)
        # "exactly as published": every event the gateway delivered before stopping is byte-identical
        if ev["id"] in published:
            assert ev == published[ev["id"]]
    assert set(published) <= {json.loads(x)["id"] for x in lines}, "published events missing from history"

    filtered = courtyard("events", "--db", str(tmp_path / "outbox.db"), "--json", "--type", "device.*",
                         "--device", "lift-b1-1", "--since", "10m")
    assert [json.loads(x)["type"] for x in filtered.stdout.splitlines()] == ["device.online"]
    table = courtyard("events", "--db", str(tmp_path / "outbox.db"), "--limit", "2",
                      env=os.environ | {"TZ": "Asia/Shanghai"})
    assert table.returncode == 0 and "elevator" in table.stdout
    # local time with its offset, so a line read elsewhere is unambiguous
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\+0800  ", table.stdout), table.stdout
    assert table.stderr.strip() == "2 events"
    one = courtyard("events", "--db", str(tmp_path / "outbox.db"), "--limit", "1")
    assert one.stderr.strip() == "1 event"
    bad = courtyard("events", "--db", str(tmp_path / "outbox.db"), "--since", "yesterday")
    assert bad.returncode == 1 and "bad duration" in bad.stderr


def test_schema_command_prints_the_committed_schema() -> None:
    res = courtyard("schema")
    assert res.returncode == 0
    assert json.loads(res.stdout) == json.loads(EVENT_SCHEMA_PATH.read_text())
    cfg = courtyard("schema", "--config")
    assert json.loads(cfg.stdout)["title"] == "Courtyard gateway configuration"


def test_drivers_command_lists_name_kind_transport() -> None:
    res = courtyard("drivers", "--json")
    rows = {json.loads(x)["name"]: json.loads(x) for x in res.stdout.splitlines()}
    assert rows["modbus_elevator"]["kind"] == "elevator"
    assert rows["modbus_elevator"]["transport"] == "modbus_tcp"
    text = courtyard("drivers").stdout
    assert "modbus_elevator" in text and "TRANSPORT" in text


@pytest.mark.slow
def test_standalone_simulator_is_a_real_modbus_server() -> None:
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "gateway", "simulate", "elevator", "--port", str(port),
                            "--fault", "fault_code=4", "--map", "monarch_vendor"], cwd=ROOT,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert sim.stdout is not None
        sim.stdout.readline()
        from pymodbus.client import ModbusTcpClient

        deadline = time.monotonic() + 5
        with ModbusTcpClient("127.0.0.1", port=port, timeout=1) as client:
            rr = client.read_holding_registers(51211, count=1, device_id=1)
            while rr.isError() and time.monotonic() < deadline:
                rr = client.read_holding_registers(51211, count=1, device_id=1)
            assert rr.registers == [400]  # E4 x100 in the vendor map's fault word
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(10)
    bad = courtyard("simulate", "elevator", "--fault", "meteor")
    assert bad.returncode != 0 and "unknown fault" in bad.stderr


def test_validate_counts_devices_in_words() -> None:
    one = courtyard("validate", "-c", "examples/pa.yaml")
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == "examples/pa.yaml: OK (1 device, site demo-community)"
