"""Configuration: interpolation, validation errors with file, line and path, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config, load_config_text
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
site: ${TEST_SITE:-tower-a}
mqtt:
  host: ${TEST_MQTT_HOST:-127.0.0.1}
  port: ${TEST_MQTT_PORT:-1883}
  username: ${TEST_MQTT_USER:-}
devices:
  - id: lift-1
    driver: modbus_elevator
    port: ${TEST_LIFT_PORT:-5020}
"""


def test_defaults_apply_when_env_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TEST_SITE", "TEST_MQTT_HOST", "TEST_MQTT_PORT", "TEST_MQTT_USER", "TEST_LIFT_PORT"):
        monkeypatch.delenv(name, raising=False)
    cfg = load_config_text(GOOD)
    assert cfg.site == "tower-a"
    assert cfg.mqtt.port == 1883
    assert cfg.mqtt.username is None
    assert cfg.devices[0].port == 5020  # type: ignore[attr-defined]


def test_env_values_are_typed_like_literals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MQTT_PORT", "18831")
    monkeypatch.setenv("TEST_SITE", "tower-b")
    cfg = load_config_text(GOOD)
    assert cfg.mqtt.port == 18831
    assert cfg.site == "tower-b"


def test_errors_name_file_line_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    bad = tmp_path / "site.yaml"
    bad.write_text(
        "site: s1\n"                        # 1
        "mqtt:\n"                           # 2
        "  port: 99999\n"                   # 3
        "devices:\n"                        # 4
        "  - id: lift-1\n"                  # 5
        "    driver: modbus_elevator\n"     # 6
        "    port: ${NOT_SET_ANYWHERE}\n"   # 7
        "    thresholds:\n"                 # 8
        "      trapped_s: -5\n"             # 9
        "  - id: gate-1\n"                  # 10
        "    driver: no_such_driver\n"      # 11
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    found = {(p.line, p.path) for p in info.value.problems}
    assert (3, "mqtt.port") in found
    assert (7, "devices[0].port") in found
    assert (9, "devices[0].thresholds.trapped_s") in found
    assert (11, "devices[1].driver") in found
    assert all(p.file == str(bad) for p in info.value.problems)
    assert f"{bad}:9: devices[0].thresholds.trapped_s:" in str(info.value)


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("site: s1\ndevices:\n  - id: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.problems[0].line is not None


def test_unknown_top_level_key_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("site: s1\nmqqt: {}\n", source="x.yaml")
    assert info.value.problems[0].path == "mqqt"
    assert info.value.problems[0].line == 2


def test_validate_cli_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "gateway", "validate", "-c", str(ROOT / "examples/elevator.yaml")],
                        check=False, capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: s1\nmqtt:\n  port: nope\n")
    res = subprocess.run([sys.executable, "-m", "gateway", "validate", "-c", str(bad)],
                         check=False, capture_output=True, text=True)
    assert res.returncode == 1
    assert f"{bad}:3: mqtt.port:" in res.stderr


def test_anchors_and_merge_keys_share_device_settings() -> None:
    cfg = load_config_text(
        "x-lift: &lift {driver: modbus_elevator, port: 1502, poll_interval_s: 2}\n"
        "site: s1\n"
        "devices:\n"
        "  - {<<: *lift, id: lift-1}\n"
        "  - {<<: *lift, id: lift-2, port: 1503}\n"
    )
    assert [(d.id, d.port, d.poll_interval_s) for d in cfg.devices] == [  # type: ignore[attr-defined]
        ("lift-1", 1502, 2.0), ("lift-2", 1503, 2.0)]


def test_unconstructible_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("site: !!python/object:os.system x\n", source="evil.yaml")
    assert info.value.problems[0].file == "evil.yaml"


@pytest.mark.parametrize("secret", ["123456", "on", "null", "0x1F", "1_000", "~"])
def test_secrets_from_the_environment_are_never_retyped(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("TEST_SECRET", secret)
    cfg = load_config_text("site: s1\nmqtt:\n  username: gw\n  password: ${TEST_SECRET}\n")
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == secret
