"""Elevator register maps and normalizer: decoding, validation, alarms; no input crashes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus_elevator.config import ModbusElevatorConfig
from drivers.modbus_elevator.driver import words_from_raw
from drivers.modbus_elevator.normalizer import ElevatorNormalizer
from drivers.modbus_elevator.regmap import load_map, shipped_maps
from gateway.driver import EventDraft

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
IDLE = {"floor": 3, "direction": "none", "car_running": False, "door_zone": True, "door_state": "closed",
        "occupied": False, "service_mode": "normal", "speed_mps": 0.0, "load_pct": 0, "fault_code": 0,
        "event_code": 0}


def normalizer(map_name: str = "gbt24476", **cfg: Any) -> ElevatorNormalizer:
    config = ModbusElevatorConfig(id="lift-1", driver="modbus_elevator", map=map_name, **cfg)
    return ElevatorNormalizer(config, load_map(map_name))


def feed(n: ElevatorNormalizer, values: dict[str, Any], t: datetime, bits: frozenset[str] = frozenset()) -> list[
        EventDraft]:
    return n.process(n.map.encode(values, set(bits)), t)


@pytest.mark.parametrize("name", shipped_maps())
def test_encode_decode_round_trip(name: str) -> None:
    m = load_map(name)
    values = dict(IDLE, floor=-2, direction="up", car_running=True, speed_mps=1.5, occupied=True, door_zone=False)
    decoded, _, problems = m.decode(m.encode(values))
    assert problems == []
    for key, value in decoded.items():
        if key in values:
            assert value == values[key], key


def test_vendor_map_fault_code_times_100_and_bits() -> None:
    m = load_map("monarch_vendor")
    words = m.encode(dict(IDLE, fault_code=41), {"elevator.passenger_trapped"})
    assert words[51211] == 4100
    assert words[51238] == 0b10
    n = normalizer("monarch_vendor")
    drafts = n.process(words, T0)
    faults = {d.type: d for d in drafts if d.cls in ("fault", "alarm")}
    assert faults["elevator.safety_circuit_open"].raw_code == "monarch:41"
    assert faults["elevator.passenger_trapped"].raw_code == "monarch:bit51238.1"
    words[51211] = 4150  # not a multiple of 100: the sample is refused, not guessed
    drafts = n.process(words, T0 + timedelta(seconds=1))
    assert drafts[0].quality.status == "rejected"
    assert "fault_code_not_integral:4150" in drafts[0].quality.reasons


def test_status_on_change_and_periodically() -> None:
    n = normalizer(status_interval_s=60)
    assert [d.type for d in feed(n, IDLE, T0)] == ["elevator.status"]
    assert feed(n, IDLE, T0 + timedelta(seconds=1)) == []
    moved = feed(n, dict(IDLE, floor=4), T0 + timedelta(seconds=2))
    assert [d.payload.floor for d in moved] == [4]  # type: ignore[attr-defined]
    assert feed(n, dict(IDLE, floor=4), T0 + timedelta(seconds=30)) == []
    assert len(feed(n, dict(IDLE, floor=4), T0 + timedelta(seconds=63))) == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"floor": 40}, "floor_out_of_range:40"),
        ({"floor": 0}, "floor_out_of_range:0"),
        ({"speed_mps": 12.0}, "speed_implausible:12.0"),
    ],
)
def test_impossible_values_are_rejected_with_reasons(change: dict[str, Any], reason: str) -> None:
    n = normalizer(lowest_floor=-2, highest_floor=30)
    drafts = feed(n, dict(IDLE, **change), T0)
    assert len(drafts) == 1
    assert drafts[0].quality.status == "rejected"
    assert reason in drafts[0].quality.reasons


def test_out_of_range_enum_is_rejected() -> None:
    n = normalizer()
    words = n.map.encode(IDLE)
    words[2] = 7  # direction register
    drafts = n.process(words, T0)
    assert drafts[0].quality.status == "rejected"
    assert "direction_out_of_range:7" in drafts[0].quality.reasons
    assert drafts[0].payload.raw["direction"] == 7  # type: ignore[attr-defined]
    assert n.process(words, T0 + timedelta(seconds=1)) == [], "a stuck bad register is not re-sent every poll"


def test_suspect_cross_field_checks() -> None:
    n = normalizer()
    drafts = feed(n, dict(IDLE, direction="up"), T0)
    assert drafts[0].quality.status == "suspect"
    assert "direction_while_stopped" in drafts[0].quality.reasons
    jump = feed(n, dict(IDLE, floor=25), T0 + timedelta(seconds=1))
    assert any(r.startswith("implausible_floor_jump") for r in jump[0].quality.reasons)


def test_trapped_raises_after_window_and_clears_with_same_alarm_id() -> None:
    n = normalizer(thresholds={"trapped_s": 20})
    stuck = dict(IDLE, occupied=True, door_zone=False, floor=5)
    feed(n, stuck, T0)
    assert not [d for d in feed(n, stuck, T0 + timedelta(seconds=19)) if d.cls == "alarm"]
    raised = [d for d in feed(n, stuck, T0 + timedelta(seconds=21)) if d.cls == "alarm"]
    assert len(raised) == 1
    assert raised[0].type == "elevator.passenger_trapped"
    assert raised[0].payload.trap == "between_floors"  # type: ignore[attr-defined]
    assert raised[0].payload.duration_s == 21  # type: ignore[attr-defined]
    assert not [d for d in feed(n, stuck, T0 + timedelta(seconds=30)) if d.cls == "alarm"], "raised only once"
    cleared = [d for d in feed(n, dict(stuck, door_state="open"), T0 + timedelta(seconds=40)) if d.cls == "alarm"]
    assert [(d.state, d.alarm_id) for d in cleared] == [("cleared", raised[0].alarm_id)]


def test_fault_codes_mapped_unknown_kept_and_cleared() -> None:
    n = normalizer()
    d1 = [d for d in feed(n, dict(IDLE, fault_code=4), T0) if d.cls == "fault"]
    assert [(d.type, d.raw_code, d.state) for d in d1] == [("elevator.stopped_outside_door_zone", "gbt24476:4",
                                                            "raised")]
    d2 = [d for d in feed(n, dict(IDLE, fault_code=77), T0 + timedelta(seconds=1)) if d.cls == "fault"]
    assert {(d.type, d.state) for d in d2} == {("elevator.stopped_outside_door_zone", "cleared"),
                                               ("elevator.fault.unknown", "raised")}
    assert next(d for d in d2 if d.state == "cleared").alarm_id == d1[0].alarm_id
    assert next(d for d in d2 if d.state == "raised").raw_code == "gbt24476:77"


def test_overspeed_and_door_open_while_running() -> None:
    n = normalizer(rated_speed_mps=1.0, thresholds={"overspeed_ratio": 1.2, "door_open_running_s": 0})
    moving = dict(IDLE, car_running=True, direction="up", door_zone=False, speed_mps=1.5, door_state="open")
    types = {d.type: d for d in feed(n, moving, T0) if d.cls == "fault"}
    assert types["elevator.overspeed"].payload.ratio == 1.5  # type: ignore[attr-defined]
    assert "elevator.door_open_while_running" in types


def test_mode_change_event() -> None:
    n = normalizer()
    feed(n, IDLE, T0)
    drafts = feed(n, dict(IDLE, service_mode="fire_return"), T0 + timedelta(seconds=1))
    mode = next(d for d in drafts if d.type == "elevator.mode_changed")
    assert (mode.payload.mode_from, mode.payload.mode_to, mode.severity) == (  # type: ignore[attr-defined]
        "normal", "fire_return", "major")


@pytest.mark.parametrize("map_name", shipped_maps())
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_no_register_content_crashes_the_codec(map_name: str, data: st.DataObject) -> None:
    n = normalizer(map_name)
    m = n.map
    t = T0
    for _ in range(3):
        words = {a: data.draw(st.integers(0, 0xFFFF)) for b in m.blocks for a in range(b.address, b.address + b.count)}
        t += timedelta(seconds=data.draw(st.floats(0, 120)))
        for d in n.process(words, t):
            assert d.type.startswith("elevator.")
            assert d.quality.status in ("valid", "suspect", "rejected")


@given(raw=st.recursive(st.none() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)))
def test_malformed_recordings_are_refused_cleanly(raw: Any) -> None:
    try:
        words = words_from_raw(raw)
    except ValueError:
        return
    assert all(isinstance(a, int) and 0 <= w <= 0xFFFF for a, w in words.items())


# --- every shipped map speaks every simulator state (issue 10.15) -----------------------------


def _round_trips(name: str, values: dict[str, Any]) -> None:
    regmap = load_map(name)
    decoded, _, problems = regmap.decode(regmap.encode(values))
    assert problems == [], (name, values)
    for field_name, value in values.items():
        if field_name not in regmap.fields:
            continue  # the map does not carry it (e.g. no event code in the vendor block)
        if field_name == "speed_mps":
            assert decoded[field_name] == pytest.approx(value, abs=regmap.fields["speed_mps"].scale)
        else:
            assert decoded[field_name] == value, (name, field_name)


@pytest.mark.parametrize("name", shipped_maps())
def test_every_map_encodes_every_simulator_enum_value(name: str) -> None:
    from simulators.elevator import DIRECTIONS, DOOR_STATES, SERVICE_MODES

    for door in DOOR_STATES:
        for direction in DIRECTIONS:
            for mode in SERVICE_MODES:
                for flag in (False, True):
                    _round_trips(name, {**IDLE, "door_state": door, "direction": direction, "service_mode": mode,
                                        "car_running": flag, "door_zone": not flag, "occupied": flag})


@pytest.mark.parametrize("name", shipped_maps())
def test_every_map_round_trips_simulated_runs(name: str) -> None:
    from simulators.elevator import DOOR_STATES, ElevatorModel

    seen: set[str] = set()
    for faults in ({}, {"fire_mode": True}, {"trapped": True}, {"overspeed": True}, {"door_open_running": True},
                   {"alarm_button": True, "fault_code": 4}):
        model = ElevatorModel(seed=7, call_rate_per_s=0.5, faults=dict(faults))
        if "fire_mode" in faults:
            model.service_mode = "fire_return"
        for _ in range(3000):  # 300 simulated seconds
            model.step(0.1)
            values = model.values()
            seen.add(values["door_state"])
            _round_trips(name, values)
    assert seen == set(DOOR_STATES)


def test_encoding_a_value_the_map_lacks_is_an_error() -> None:
    regmap = load_map("monarch_vendor")
    with pytest.raises(ValueError, match="service_mode='earthquake' has no code"):
        regmap.encode({**IDLE, "service_mode": "earthquake"})
    with pytest.raises(ValueError, match="does not fit"):
        load_map("gbt24476").encode({**IDLE, "load_pct": 70000})


# --- map authoring: errors point at the map file's line (issue 10.20) --------------------------

BAD_MAP = (
    "name: bad\n"                                        # 1
    "namespace: bad\n"                                   # 2
    "blocks: [{address: 0, count: 4}]\n"                 # 3
    "fields:\n"                                          # 4
    "  floor: {address: 0, signed: true}\n"              # 5
    "  door_state: {address: 1, mask: 0}\n"              # 6
    "fault_codes:\n"                                     # 7
    "  4: {severity: major}\n"                           # 8
)


def test_map_errors_carry_the_map_files_lines(tmp_path: Path) -> None:
    from gateway.errors import ConfigError

    path = tmp_path / "bad.yaml"
    path.write_text(BAD_MAP)
    with pytest.raises(ConfigError) as info:
        load_map(str(path))
    found = {(p.line, p.path) for p in info.value.problems}
    assert (6, "fields.door_state.mask") in found
    assert (8, "fault_codes[4].type") in found
    assert all(p.file == str(path) for p in info.value.problems)


def test_config_names_the_map_line_behind_a_device_error(tmp_path: Path) -> None:
    from gateway.config import load_config_text
    from gateway.errors import ConfigError

    path = tmp_path / "bad.yaml"
    path.write_text(BAD_MAP.replace("mask: 0", "mask: 1").split("fault_codes")[0]
                    + "  occupied: {address: 9, enum: {0: false, 1: true}}\n")  # outside every block
    with pytest.raises(ConfigError) as info:
        load_config_text(f"site: s1\ndevices:\n  - id: lift-1\n    driver: modbus_elevator\n    map: {path}\n",
                         source="site.yaml")
    [problem] = info.value.problems
    assert (problem.line, problem.path) == (5, "devices[0].map")
    assert f"{path}:1: <root>: Value error, addresses [9] are not inside any block" in problem.message


def test_duplicate_key_in_a_map_names_both_lines(tmp_path: Path) -> None:
    from gateway.errors import ConfigError

    path = tmp_path / "dup.yaml"
    path.write_text(BAD_MAP.replace("mask: 0", "mask: 1").split("fault_codes")[0] + "  floor: {address: 2}\n")
    with pytest.raises(ConfigError) as info:
        load_map(str(path))
    assert str(info.value.problems[0]) == f"{path}:7: fields.floor: duplicate key 'floor' (first at line 5)"
