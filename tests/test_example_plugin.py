"""The example plugin (examples/plugin): a new device kind installs with pip and works end to end.

In a fresh venv (over this one's packages), `pip install --no-deps --no-build-isolation
examples/plugin`, then, from that venv: `courtyard drivers` lists it, `courtyard validate`
accepts a config using it, the gateway runs it against its simulator and its events validate
against `courtyard schema`, and the kit's golden cases pass for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import jsonschema
import pytest

import drivers
from gateway import registry
from gateway.config import parse_config
from gateway.testing import golden_cases
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("plugin") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    # --system-site-packages reaches the base interpreter's packages, not this venv's (where
    # courtyard and its dependencies live): a .pth file adds them, as an installed courtyard would.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # addsitedir, not a bare path: courtyard is an editable install, itself found through a .pth there.
    parent = sysconfig.get_paths()["purelib"]
    Path(purelib, "courtyard-parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", str(PLUGIN)], check=True, cwd=tmp_path_factory.getbasetemp())
    return python


def courtyard(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COURTYARD_DISABLE_PLUGIN_AUTOLOAD"}
    # From outside the checkout, so the plugin is imported from the venv, not found by path.
    return subprocess.run([str(python), "-m", "gateway", *args], check=False, capture_output=True, text=True, cwd=cwd,
                          env=env)


@pytest.mark.slow
def test_plugin_is_listed_and_validates(plugin_python: Path, tmp_path: Path) -> None:
    out = courtyard(plugin_python, "drivers", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    line = next(row for row in out.stdout.splitlines() if row.startswith("modbus_water_pump"))
    assert line.split()[:5] == ["modbus_water_pump", "water_pump", "modbus_tcp", "polling", "water_pump"]
    cfg = tmp_path / "pump.yaml"
    cfg.write_text(f"site: s\noutbox: {{path: {tmp_path}/outbox.db}}\ndevices:\n"
                   "  - {id: pump-1, driver: modbus_water_pump, port: 5030, dry_run_s: 0.3}\n")
    out = courtyard(plugin_python, "validate", "-c", str(cfg), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: s\ndevices:\n  - {id: pump-1, driver: modbus_water_pump, dry_run_s: -1}\n")
    out = courtyard(plugin_python, "validate", "-c", str(bad), cwd=tmp_path)
    assert out.returncode != 0 and "dry_run_s" in out.stdout + out.stderr


@pytest.mark.slow
def test_plugin_runs_against_its_simulator(plugin_python: Path, tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "pump.yaml"
    cfg.write_text(f"site: s\noutbox: {{path: {tmp_path}/outbox.db}}\nmqtt: {{host: ''}}\ndevices:\n"
                   f"  - {{id: pump-1, driver: modbus_water_pump, port: {port}, poll_interval_s: 0.1,"
                   " timeout_s: 0.5, dry_run_s: 0.3}\n")
    run = subprocess.run([str(plugin_python), str(PLUGIN / "tests" / "run_against_simulator.py"), str(cfg), str(port)],
                         check=False, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    schema = json.loads(courtyard(plugin_python, "schema", cwd=tmp_path).stdout)
    for event in events:
        jsonschema.validate(event, schema)
    types = [(e["type"], e["state"]) for e in events]
    assert ("device.online", "momentary") in types
    assert ("water_pump.dry_run", "raised") in types and ("water_pump.dry_run", "cleared") in types
    raised = next(e for e in events if e["type"] == "water_pump.dry_run" and e["state"] == "raised")
    cleared = next(e for e in events if e["type"] == "water_pump.dry_run" and e["state"] == "cleared")
    assert raised["alarm_id"] == cleared["alarm_id"] and raised["device"]["kind"] == "water_pump"


@pytest.mark.slow
def test_plugin_passes_the_kit(plugin_python: Path, tmp_path: Path) -> None:
    out = subprocess.run([str(plugin_python), "-m", "gateway.testing", "check", str(PLUGIN / "tests" / "cases")],
                         check=False, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 case(s), 0 failed" in out.stdout


def test_a_new_builtin_kind_is_one_line_of_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same package listed in `drivers.BUILTIN` instead of an entry point: one line, and the
    kind, its payload, config, simulator and scenario adapter are all there (docs/drivers.md)."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.setattr(registry, "BUILTIN", (*drivers.BUILTIN, "courtyard_pump:DRIVER"))
    monkeypatch.setenv(registry.DISABLE_AUTOLOAD_ENV, "1")
    registry.drivers.cache_clear()
    registry._model_changed()
    try:
        assert registry.problems() == {}
        assert "water_pump" in registry.device_kinds()
        assert registry.simulators()["water_pump"] == "courtyard_pump.simulator"
        assert registry.scenario_adapters()["water_pump"] == "courtyard_pump.scenario:PumpAdapter"
        parse_config({"site": "s", "devices": [{"id": "p1", "driver": "modbus_water_pump"}]})
        schema = json.dumps(registry.event_model().model_json_schema())
        assert "PumpPayload" in schema
        cases = golden_cases(PLUGIN / "tests" / "cases")
        assert len(cases) == 4 and all(case.check() == [] for case in cases)
    finally:
        monkeypatch.undo()
        registry.drivers.cache_clear()
        registry._model_changed()


@pytest.mark.slow
def test_plugin_simulator_serves_through_the_cli(plugin_python: Path, tmp_path: Path) -> None:
    """`courtyard simulate water_pump` finds the plugin's simulator through the registry."""
    port = free_port()
    proc = subprocess.Popen([str(plugin_python), "-m", "gateway", "simulate", "water_pump", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"water pump simulator on 127.0.0.1:{port}" in line, proc.stderr.read() if proc.poll() else line
    finally:
        proc.terminate()
        proc.wait(timeout=10)
