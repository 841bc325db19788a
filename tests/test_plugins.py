"""Driver plugins that cannot work never take the gateway down (issue 9.18)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from gateway import registry
from gateway.config import check_config, load_config, parse_config
from gateway.driver import DeviceConfig, DriverSpec
from gateway.errors import ConfigError
from gateway.runtime import Gateway
from simulators.elevator import ElevatorSimulator
from tests.helpers import base_config, eventually
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


class ToasterConfig(DeviceConfig):
    driver: Literal["toaster"]
    host: str = "127.0.0.1"


TOASTER = DriverSpec(
    name="toaster", kind="toaster",  # type: ignore[arg-type]  # the point: a kind the schema does not know
    transport="tcp", shape="polling", config=ToasterConfig,
    factory="drivers.modbus_elevator.driver:ModbusElevatorDriver", summary="a plugin from the future",
)


@pytest.fixture
def toaster() -> Iterator[DriverSpec]:
    registry.register(TOASTER, "plugin toaster (acme_toaster:DRIVER)")
    try:
        yield TOASTER
    finally:
        registry.unregister("toaster")


def devices(port: int) -> list[dict[str, Any]]:
    return [
        {"id": "lift-1", "driver": "modbus_elevator", "port": port, "poll_interval_s": 0.2},
        {"id": "toast-1", "driver": "toaster"},
        {"id": "lift-2", "driver": "modbus_elevator", "port": port, "unit_id": 1, "poll_interval_s": 0.2},
    ]


async def test_unknown_device_kind_skips_that_device_only(tmp_path: Path, toaster: DriverSpec) -> None:
    port = free_port()
    cfg = parse_config(base_config(tmp_path, devices=devices(port)))
    async with ElevatorSimulator(port=port), Gateway(cfg) as gw:
        await eventually(lambda: gw.counters.get("device.lift-2.polls") > 3, timeout=5)
        assert gw.counters.get("device_build_failures") == 1
        assert sorted(gw.devices) == ["lift-1", "lift-2"]
    assert "toaster" in registry.problems()


def test_validate_names_the_unusable_plugin(tmp_path: Path, toaster: DriverSpec) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path, devices=devices(5020)), sort_keys=False))
    report = check_config(path)
    [problem] = report.errors
    assert problem.path == "devices[1].driver"
    assert problem.line is not None and path.read_text().splitlines()[problem.line - 1].strip().startswith("driver:")
    assert "acme_toaster:DRIVER" in problem.message and "'toaster'" in problem.message


def test_a_plugin_whose_config_is_unusable_is_named_when_used(tmp_path: Path) -> None:
    broken = DriverSpec(name="broken", kind="pa", transport="tcp", shape="push", config=dict,  # type: ignore[arg-type]
                        factory="x:Y", summary="config is not a model")
    registry.register(broken, "plugin broken (acme_broken:DRIVER)")
    try:
        assert "broken" not in registry.drivers()
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(base_config(tmp_path, devices=[{"id": "pa-1", "driver": "broken"}])))
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert "acme_broken:DRIVER" in str(info.value)
    finally:
        registry.unregister("broken")


def test_validate_cli_warns_when_an_elevator_map_lacks_occupied(tmp_path: Path) -> None:
    lean = tmp_path / "lean.yaml"
    lean.write_text(
        "name: lean\nnamespace: lean\nblocks: [{address: 0, count: 4}]\n"
        "fields:\n  floor: {address: 0, signed: true}\n  door_state: {address: 1, enum: {1: closed, 2: open}}\n"
    )
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"site: s1\nmqtt: {{enabled: false}}\ndevices:\n  - id: lift-1\n    driver: modbus_elevator\n"
                   f"    map: {lean}\n")
    res = subprocess.run([sys.executable, "-m", "gateway", "validate", "-c", str(cfg)],
                         check=False, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert f"warning: {cfg}:6: devices[0].map: register map" in res.stderr
    assert "trapped-passenger detection is off" in res.stderr
    shipped = subprocess.run([sys.executable, "-m", "gateway", "validate", "-c", str(ROOT / "examples/elevator.yaml")],
                             check=False, capture_output=True, text=True, cwd=ROOT)
    assert shipped.returncode == 0 and "warning" not in shipped.stderr, shipped.stderr
