"""One name per device family: the kind names the simulator, its package and its scenario kind;
former names still work where users typed them; the v1 event contract keeps its own names."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from gateway import registry
from gateway.cli import main
from simulators import SIMULATOR_ALIASES
from simulators.net import free_port

ROOT = Path(__file__).resolve().parent.parent

#: The `courtyard.event/1` names (docs/drivers.md, "Names"): changed only by a v2 of the schema.
V1_PAYLOAD_KIND = {"elevator": "elevator", "access_gate": "access", "pa": "pa", "plate_reader": "lpr"}
BUILTIN = ("modbus_elevator", "ble_access_gate", "opcua_pa", "http_plate_reader")


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_simulator_package_and_scenario_kind_are_the_device_kind(name: str) -> None:
    spec = registry.get(name)
    assert spec.simulator == spec.kind
    assert spec.simulator_module == f"simulators.{spec.kind}"
    assert importlib.import_module(f"simulators.{spec.kind}").__path__, "a package, like the others"
    assert spec.kind in registry.scenario_adapters()
    assert name.endswith(f"_{spec.kind}"), "a driver is its kind with a transport prefix"


@pytest.mark.parametrize("name", BUILTIN)
def test_v1_payload_kinds_are_unchanged(name: str) -> None:
    spec = registry.get(name)
    assert spec.payload is not None
    assert spec.payload.model_fields["kind"].default == V1_PAYLOAD_KIND[spec.kind]


def _simulate_help(name: str, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["simulate", name, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr()
    return out.out, out.err


def test_simulate_pa_is_the_pa_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = _simulate_help("pa", capsys)
    assert out.startswith("usage: courtyard simulate pa ") and "--paging-rate" in out
    assert "deprecated" not in err


def test_simulate_broadcast_still_runs_the_pa_simulator_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = _simulate_help("broadcast", capsys)
    assert out.startswith("usage: courtyard simulate pa ") and "--paging-rate" in out
    assert "deprecated name, use `courtyard simulate pa`" in err


def test_simulate_help_lists_kinds_and_names_the_deprecated_alias(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for kind in V1_PAYLOAD_KIND:
        assert kind in out
    assert "broadcast: deprecated name of pa" in out
    assert SIMULATOR_ALIASES == {"broadcast": "pa"}


@pytest.mark.parametrize("name", ["pa", "broadcast"])
def test_both_names_serve_opc_ua(name: str) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "simulate", name, "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"listening on opc.tcp://127.0.0.1:{port}/" in line, line
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert ("deprecated name" in err) == (name == "broadcast")


def test_old_simulator_import_path_is_an_alias_not_a_copy() -> None:
    sys.modules.pop("simulators.broadcast", None)
    with pytest.warns(DeprecationWarning, match="simulators.pa"):
        old = importlib.import_module("simulators.broadcast")
    import simulators.pa.model
    import simulators.pa.server

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old_model = importlib.import_module("simulators.broadcast.model")
        old_server = importlib.import_module("simulators.broadcast.server")
    assert old_server is simulators.pa.server and old_model is simulators.pa.model
    assert old.BroadcastSimulator is old_server.PaSimulator is simulators.pa.server.PaSimulator


def test_plate_reader_simulator_is_a_package_with_its_old_import_path() -> None:
    pkg = importlib.import_module("simulators.plate_reader")
    assert pkg.__path__
    from simulators.plate_reader import Camera, GarageSim, IsapiBarrierServer, zhenshi_plate_body
    from simulators.plate_reader.camera import Camera as Cam
    from simulators.plate_reader.sim import GarageSim as Sim

    assert (Camera, GarageSim) == (Cam, Sim) and callable(zhenshi_plate_body) and isinstance(IsapiBarrierServer, type)
    out = subprocess.run([sys.executable, "-m", "simulators.plate_reader", "--help"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out.startswith("usage: courtyard simulate plate_reader")
