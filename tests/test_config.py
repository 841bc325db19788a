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


# --- hostile and malformed files (issue 9.7) --------------------------------------------------



@pytest.fixture(params=["libyaml", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with libyaml events and with PyYAML's pure-Python parser (the fallback)."""
    import yaml

    from gateway import yamlfile

    if request.param == "python":
        monkeypatch.setattr(yamlfile, "_Loader", yaml.SafeLoader)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("libyaml not available")
    return str(request.param)


def laughs(levels: int) -> str:
    out = ['site: s1\nx-l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n']
    out += [f"x-l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]\n" for k in range(1, levels + 1)]
    return "".join(out)


def test_billion_laughs_is_refused_with_a_line(parser: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(laughs(9), source="laughs.yaml")
    problem = info.value.problems[0]
    assert "too many alias expansions" in problem.message
    assert problem.line is not None and 2 < problem.line <= 11
    assert str(problem).startswith(f"laughs.yaml:{problem.line}: x-l")


def test_merge_key_bomb_is_refused(parser: str) -> None:
    text = ["site: s1\nx-m0: &m0 {a: 1, b: 2, c: 3}\n"]
    for k in range(1, 10):
        fields = ", ".join(f"k{k}_{j}: *m{k - 1}" for j in range(8))
        text.append(f"x-m{k}: &m{k} {{<<: *m{k - 1}, {fields}}}\n")
    with pytest.raises(ConfigError) as info:
        load_config_text("".join(text), source="merge.yaml")
    assert "too many alias expansions" in info.value.problems[0].message


def test_moderate_aliases_still_load(parser: str) -> None:
    cfg = load_config_text(laughs(3))  # 9**3 shared strings: well under the bound
    assert cfg.site == "s1"


def test_merge_key_precedence(parser: str) -> None:
    cfg = load_config_text(
        "x-a: &a {driver: modbus_elevator, port: 1502, poll_interval_s: 2}\n"
        "x-b: &b {port: 1600, timeout_s: 0.5, poll_interval_s: 3}\n"
        "site: s1\n"
        "devices:\n"
        "  - {<<: [*a, *b], id: lift-1, poll_interval_s: 5}\n"
    )
    dev = cfg.devices[0]
    # explicit keys win, then the earlier merge source
    assert (dev.port, dev.timeout_s, dev.poll_interval_s) == (1502, 0.5, 5.0)  # type: ignore[attr-defined]


def test_merged_device_errors_point_at_the_device(parser: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(
            "x-lift: &lift {driver: modbus_elevator, port: 99999}\n"  # 1
            "site: s1\n"                                               # 2
            "devices:\n"                                               # 3
            "  - id: lift-1\n"                                         # 4
            "    <<: *lift\n",                                         # 5
            source="m.yaml",
        )
    assert [(p.line, p.path) for p in info.value.problems] == [(5, "devices[0].port")]


def test_duplicate_keys_name_both_lines(parser: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(
            "site: s1\n"                        # 1
            "devices:\n"                        # 2
            "  - id: lift-1\n"                  # 3
            "    driver: modbus_elevator\n"     # 4
            "    port: 1502\n"                  # 5
            "    port: 1503\n",                 # 6
            source="dup.yaml",
        )
    [problem] = info.value.problems
    assert (problem.line, problem.path) == (6, "devices[0].port")
    assert "duplicate key 'port' (first at line 5)" in problem.message


@pytest.mark.parametrize("depth", [150, 5000])
def test_deep_nesting_is_an_error_with_a_line(parser: str, depth: int) -> None:
    text = "site: s1\ndevices:\n  - " + "[" * depth + "]" * depth + "\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="deep.yaml")
    problem = info.value.problems[0]
    assert problem.line == 3
    assert "nest" in problem.message


def test_self_referencing_alias_is_refused(parser: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("site: s1\nx-a: &a [1, *a]\n", source="loop.yaml")
    assert info.value.problems[0].line == 2


def test_several_documents_are_refused(parser: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("site: s1\n---\nsite: s2\n", source="two.yaml")
    assert "single YAML document" in info.value.problems[0].message


def test_validate_names_a_missing_variable_with_its_line(tmp_path: Path) -> None:
    import os

    cfg = tmp_path / "site.yaml"
    cfg.write_text(
        "site: s1\n"
        "mqtt:\n"
        "  username: gw\n"
        "  password: ${COURTYARD_TEST_UNSET_SECRET}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "COURTYARD_TEST_UNSET_SECRET"}
    res = subprocess.run([sys.executable, "-m", "gateway", "validate", "-c", str(cfg)],
                         check=False, capture_output=True, text=True, cwd=ROOT, env=env)
    assert res.returncode == 1
    assert (f"{cfg}:4: mqtt.password: environment variable COURTYARD_TEST_UNSET_SECRET is not set"
            in res.stderr), res.stderr
