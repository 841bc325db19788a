"""Golden cases: every `tests/cases/<driver>/<case>` decodes to its expected.jsonl (see tests/cases/README.md)."""

from __future__ import annotations

import importlib
import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from drivers import BUILTIN
from gateway.testing import CASES_DIR, REGEN_ENV, GoldenCase, case_from_recording, check_golden, golden_cases

CASES = golden_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case: GoldenCase) -> None:
    check_golden(case)


def test_every_builtin_driver_has_cases() -> None:
    """Normal traffic, bad input and at least one fault for each built-in driver."""
    for ref in BUILTIN:
        module, _, attr = ref.partition(":")
        name = getattr(importlib.import_module(module), attr).name
        have = {p.name for p in (CASES_DIR / name).iterdir() if p.is_dir()} if (CASES_DIR / name).is_dir() else set()
        assert "normal" in have and "bad_input" in have, f"{name}: {sorted(have)}"
        assert len(have) >= 3, f"{name} has no fault case: {sorted(have)}"


def test_a_changed_decoding_fails_its_case(tmp_path: Path) -> None:
    """The kit can fail: one altered expected event is reported with a diff."""
    src = CASES_DIR / "opcua_pa" / "normal"
    case = copy_case(src, tmp_path / "opcua_pa" / "normal")
    expected = case.expected()
    expected[-1]["severity"] = "critical"
    case.write_expected(expected)
    problems = case.check()
    assert problems and any('"severity": "critical"' in p for p in problems)


def copy_case(src: Path, dst: Path) -> GoldenCase:
    dst.mkdir(parents=True)
    for name in ("config.yaml", "input.jsonl", "expected.jsonl"):
        (dst / name).write_bytes((src / name).read_bytes())
    return GoldenCase(dst)


def test_new_case_from_a_recording(tmp_path: Path) -> None:
    """`new` keeps the chosen lines of one device and the header's config; `regen` then writes what it decodes to."""
    rec = tmp_path / "rec.jsonl"
    cfg = (CASES_DIR / "opcua_pa" / "normal" / "config.yaml").read_text()
    header = {"courtyard_recording": 1, "scenario": None, "config": yaml.safe_load(cfg)}
    lines = (CASES_DIR / "opcua_pa" / "normal" / "input.jsonl").read_text().splitlines()
    rec.write_text("\n".join([json.dumps(header), *lines]) + "\n")
    case = case_from_recording(rec, tmp_path / "c", lines=[2, 3])
    assert case.path.joinpath("input.jsonl").read_text().splitlines() == lines[:2]
    assert case.check(regen=True) == [] and case.expected() and case.check() == []


def test_regen_env_rewrites_expected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With COURTYARD_REGEN_GOLDEN=1 the test writes what the case decodes to instead of failing."""
    case = copy_case(CASES_DIR / "opcua_pa" / "bad_input", tmp_path / "opcua_pa" / "bad_input")
    right = case.expected()
    case.write_expected(right[:1])
    with pytest.raises(AssertionError):
        check_golden(case)
    monkeypatch.setenv(REGEN_ENV, "1")
    check_golden(case)
    assert case.expected() == right


#: Fault cases whose point is not a raise/clear pair: a momentary mode change, a deny decision,
#: a device clock that is ignored.
NOT_ALARMS = {"modbus_elevator/fire_mode", "http_plate_reader/blocklisted_plate", "http_plate_reader/clock_skew"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_shows_what_its_name_says(case: GoldenCase) -> None:
    """A guard against regenerating blindly: bad input is rejected with a reason; a fault is raised
    and cleared with one alarm_id; nothing is left open at the end of a case."""
    events = case.expected()
    raised = {e["alarm_id"] for e in events if e["state"] == "raised"}
    cleared = {e["alarm_id"] for e in events if e["state"] == "cleared"}
    assert raised <= cleared, f"left open: {raised - cleared}"
    kind = case.path.name
    if kind == "bad_input":
        rejected = [e for e in events if e["quality"]["status"] == "rejected"]
        assert rejected and all(e["quality"]["reasons"] for e in rejected)
        last_bad = datetime.fromisoformat(rejected[-1]["time"])
        after = [e for e in events if datetime.fromisoformat(e["time"]) > last_bad]
        assert any(e["quality"]["status"] == "valid" for e in after), "good input after bad input must still decode"
    elif kind != "normal" and case.name not in NOT_ALARMS:
        assert raised, "a fault case raises nothing"
