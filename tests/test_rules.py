"""Rule semantics on the fake clock (the engine `courtyard rules test` runs): confirm windows,
on_clear, modes, cooldown, tentative actions and their undo, targets, validation."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import registry
from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.rules import FakeClock, RuleEngine, command_id, dry_run, firing_id, load_rules
from gateway.yamlfile import load_model
from schemas.rule import Rule, RuleFile
from tests.rule_support import T0, event, infos

EXAMPLES = Path(__file__).parent.parent / "scenarios" / "rules"


def rule(**fields: Any) -> Rule:
    return Rule.model_validate(fields)


def shipped(name: str) -> list[Rule]:
    return load_model(RuleFile, EXAMPLES / f"{name}.yaml").rules


async def run(rules: list[Rule], events: list[Any]) -> list[dict[str, Any]]:
    lines: list[str] = []
    sender = await dry_run(rules, events, infos(), out=lines.append)
    return sender.sent


def sent(result: list[dict[str, Any]]) -> list[tuple[float, str, str]]:
    return [(s["at_s"], s["command"], s["device"]) for s in result]


FIRE = dict(severity="critical", channel=2)


async def test_garage_fire_confirmed_by_a_second_detection_acts_once_and_releases_on_clear() -> None:
    out = await run(shipped("garage_fire"), [
        event("cam-b1-bay", "camera.fire_detected", 0, state="raised", alarm_id="f", **FIRE),
        event("cam-b1-bay", "camera.smoke_detected", 3, state="raised", alarm_id="s", **FIRE),
        event("cam-b1-bay", "camera.fire_detected", 60, state="cleared", alarm_id="f", **FIRE),
        event("cam-b1-bay", "camera.smoke_detected", 70, state="cleared", alarm_id="s", **FIRE),
    ])
    assert sorted(sent(out)) == sorted([
        (3.0, "emergency_start", "pa-south"), (3.0, "return_to_floor", "lift-b4-1"),
        (3.0, "return_to_floor", "lift-b4-2"), (3.0, "hold_open", "gate-south"),
        (3.0, "open_barrier", "lpr-b1-in-1"),
        # on_clear waits for every alarm of the firing: the smoke clears last
        (70.0, "emergency_stop", "pa-south"), (70.0, "release_return", "lift-b4-1"),
        (70.0, "release_return", "lift-b4-2"), (70.0, "release", "gate-south")])
    assert all(s["requester"] == "rule:garage-fire" for s in out)
    assert next(s for s in out if s["command"] == "emergency_start")["args"] == {
        "zones": "all", "message": "fire_evacuation_garage"}


async def test_one_detection_alone_does_nothing_and_a_late_one_does_not_confirm() -> None:
    out = await run(shipped("garage_fire"), [
        event("cam-b1-bay", "camera.fire_detected", 0, state="raised", alarm_id="f", **FIRE),
        event("cam-b1-bay", "camera.fire_detected", 0.5, state="raised", alarm_id="f2", **FIRE),  # same source
        event("cam-b1-bay", "camera.smoke_detected", 61, state="raised", alarm_id="s", **FIRE),  # window over
    ])
    assert out == []


async def test_the_fire_panels_output_confirms() -> None:
    out = await run(shipped("garage_fire"), [
        event("lift-b4-1", "elevator.mode_changed", 0, mode_from="normal", mode_to="fire_return"),
        event("cam-b1-bay", "camera.fire_detected", 5, state="raised", alarm_id="f", **FIRE),
    ])
    assert {(c, d) for _, c, d in sent(out)} >= {("emergency_start", "pa-south"), ("return_to_floor", "lift-b4-1")}
    assert {s["at_s"] for s in out} == {5.0}


async def test_ebike_tentative_hold_is_kept_by_a_second_camera_and_released_when_it_left() -> None:
    out = await run(shipped("ebike_lift"), [
        event("cam-t7-lobby", "camera.ebike_detected", 0, state="raised", alarm_id="a", where="lobby"),
        event("cam-t7-car1", "camera.ebike_detected", 12, state="raised", alarm_id="b", where="elevator_car"),
        event("cam-t7-lobby", "camera.ebike_detected", 20, state="cleared", alarm_id="a", where="lobby"),
        event("cam-t7-car1", "camera.ebike_detected", 50, state="cleared", alarm_id="b", where="elevator_car"),
    ])
    # Only the lift of tower 7 unit 1 (same building and unit), the PA of building 7.
    assert sent(out) == [(0.0, "hold_door", "lift-t7-1"), (12.0, "play", "pa-t7"), (50.0, "release_door", "lift-t7-1")]


async def test_ebike_unconfirmed_is_undone_when_the_window_closes() -> None:
    out = await run(shipped("ebike_lift"), [
        event("cam-t7-lobby", "camera.ebike_detected", 0, state="raised", alarm_id="a", where="lobby"),
        event("lift-t8-1", "elevator.status", 10),  # unrelated traffic moves the clock
    ])
    assert sent(out) == [(0.0, "hold_door", "lift-t7-1"), (30.0, "release_door", "lift-t7-1")]


async def test_a_bicycle_in_a_corridor_is_not_an_ebike_in_a_lift() -> None:
    out = await run(shipped("ebike_lift"), [
        event("cam-t7-lobby", "camera.ebike_detected", 0, state="raised", alarm_id="a", where="corridor")])
    assert out == []


async def test_forced_gate_only_at_night() -> None:
    # T0 is 02:40 in Shanghai: night. 12 hours later it is day.
    rules = shipped("forced_gate_night")
    night = await run(rules, [event("gate-north", "door.forced_open", 0, state="raised", alarm_id="d", door_no=2)])
    day = await run(rules, [event("gate-north", "door.forced_open", 12 * 3600, state="raised", alarm_id="d",
                                  door_no=2)])
    assert [(c, d) for _, c, d in sent(night)] == [("lock", "gate-north")]  # no camera watches its zone here
    assert day == []


async def test_cooldown_keeps_a_rule_quiet_after_it_fired() -> None:
    r = rule(id="trap", when={"type": "elevator.passenger_trapped"}, cooldown_s="60s",
             do=[{"command": "release_door", "to": {"trigger": True}}])
    out = await run([r], [
        event("lift-b4-1", "elevator.passenger_trapped", 0, state="raised", alarm_id="a"),
        event("lift-b4-1", "elevator.passenger_trapped", 30, state="raised", alarm_id="b"),
        event("lift-b4-1", "elevator.passenger_trapped", 61, state="raised", alarm_id="c"),
    ])
    assert [s["at_s"] for s in out] == [0.0, 61.0]


class GatedSender:
    """Commands that finish only when the test says so (to hold a firing `running`)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.gate = asyncio.Event()

    async def send(self, kind: str, device: str, name: str, cid: str, args: dict[str, Any], ttl_s: float,
                   requester: str) -> tuple[str, str | None]:
        self.sent.append((name, cid))
        await self.gate.wait()
        return "succeeded", None


@pytest.mark.parametrize(("mode", "expected"), [("single", 1), ("queued", 2), ("restart", 2)])
async def test_modes_while_a_firing_runs(mode: str, expected: int) -> None:
    r = rule(id="m", when={"type": "elevator.alarm_button"}, mode=mode, per="rule",
             do=[{"command": "hold_door", "to": {"devices": "lift-b4-2"}, "args": {"seconds": 5}}])
    clock = FakeClock(T0)
    sender = GatedSender()
    emitted: list[Any] = []

    async def emit(ev: Any) -> None:
        emitted.append(ev)

    engine = RuleEngine([r], infos(), sender, emit=emit, now=clock.now, scheduler=clock, site="s", gateway="g",
                        event_model=registry.event_model())
    await engine.handle(event("lift-b4-1", "elevator.alarm_button", 0, state="raised", alarm_id="a"))
    await asyncio.sleep(0.01)
    await engine.handle(event("lift-b4-1", "elevator.alarm_button", 1, state="raised", alarm_id="b"))
    await asyncio.sleep(0.01)
    sender.gate.set()
    await engine.idle()
    assert len(sender.sent) == expected
    assert len({cid for _, cid in sender.sent}) == expected
    kinds = [(e.type, e.payload.reason) for e in emitted if e.type != "rule.fired"]
    if mode == "restart":
        assert ("rule.failed", "restarted") in kinds
    else:
        assert kinds == [("rule.completed", None)] * expected


async def test_ids_are_derived_from_the_trigger() -> None:
    assert firing_id("r", "ev-1") == firing_id("r", "ev-1") != firing_id("r", "ev-2")
    f = firing_id("r", "ev-1")
    assert command_id(f, "do", 0, "lift-1") == command_id(f, "do", 0, "lift-1") != command_id(f, "do", 1, "lift-1")
    r = rule(id="t", when={"type": "elevator.alarm_button"}, do=[{"command": "hold_door", "to": {"trigger": True},
                                                                  "args": {"seconds": 5}}])
    ev = event("lift-b4-1", "elevator.alarm_button", 0, state="raised", alarm_id="a")
    first, second = await run([r], [ev]), await run([r], [ev])
    assert first[0]["id"] == second[0]["id"] == command_id(firing_id("t", ev.id), "do", 0, "lift-b4-1")


def test_bad_rules_are_reported_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: ok-rule\n    when: {type: x.y}\n    do:\n      - command: Hold Door\n"
                   "        to: {trigger: true}\n")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"site": "s", "rule_files": [str(bad)], "mqtt": {"enabled": False}}))
    with pytest.raises(ConfigError) as info:
        load_rules(load_config(cfg))
    text = str(info.value)
    assert f"{bad}:5" in text and "rules[0].do[0].command" in text


@pytest.mark.parametrize(("fields", "message"), [
    ({"do": [{"command": "x", "to": {}}]}, "a target needs"),
    ({"do": [{"command": "x", "to": {"trigger": True}, "tentative": True}]}, "tentative actions need `confirm`"),
    ({"when": {"type": "a.b", "hours": "25:00-06:00"}}, "hours"),
    ({"cooldown_s": "ten minutes"}, "bad duration"),
])
def test_rule_validation(fields: dict[str, Any], message: str) -> None:
    base = {"id": "r", "when": {"type": "a.b"}, "do": [{"command": "x", "to": {"trigger": True}}]}
    with pytest.raises(ValueError, match=message):
        rule(**{**base, **fields})


def test_inline_rules_in_the_config_are_validated_with_lines(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("site: s\nmqtt: {enabled: false}\nrules:\n  - id: r\n    when: {type: a.b}\n    do: []\n")
    with pytest.raises(ConfigError, match=r"gw.yaml:6: rules\[0\]\.do"):
        load_config(cfg)


def test_cli_rules_test_prints_what_would_be_sent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.jsonl"
    evs = [event("cam-b1-bay", "camera.fire_detected", 0, state="raised", alarm_id="f", **FIRE),
           event("cam-b1-bay", "camera.smoke_detected", 2, state="raised", alarm_id="s", **FIRE)]
    events.write_text("".join(e.to_json() + "\n" for e in evs) + "not json\n")
    code = main(["rules", "test", str(EXAMPLES / "garage_fire.yaml"), "--events", str(events), "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    # Without a config the targets are the devices the events name: only the camera itself.
    assert "rule.fired" in out and "garage-fire (confirmed)" in out
    assert f"{events}:3: not an event" in err
    assert "0 command(s) would have been sent" in err


def test_cli_rules_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({
        "site": "s", "mqtt": {"enabled": False},
        "devices": [{"id": "pa-1", "driver": "opcua_pa", "url": "opc.tcp://127.0.0.1:4840",
                     "tags": ["fire-evacuation"]}]}))
    code = main(["rules", "check", str(EXAMPLES / "garage_fire.yaml"), "-c", str(cfg)])
    out = capsys.readouterr().out
    assert code == 1
    assert "emergency_start -> pa-1: not allowed by commands.allow (rule:garage-fire)" in out


def test_datetime_hours_wrap_midnight() -> None:
    from schemas.rule import EventMatch

    m = EventMatch.model_validate({"hours": "22:00-06:00", "timezone": "UTC"})
    assert m.in_hours(datetime.fromisoformat("2026-01-01T23:30:00+00:00"))
    assert m.in_hours(datetime.fromisoformat("2026-01-01T05:59:00+00:00"))
    assert not m.in_hours(datetime.fromisoformat("2026-01-01T06:00:00+00:00"))


async def test_a_detection_that_came_and_went_confirms_but_on_clear_waits_only_for_open_ones() -> None:
    r = shipped("garage_fire")[0].model_copy(update={"cooldown_s": 0.0})
    fire = [event("cam-b1-bay", "camera.fire_detected", 0, state="raised", alarm_id="f1", **FIRE),
            event("cam-b1-bay", "camera.smoke_detected", 2, state="raised", alarm_id="s1", **FIRE),
            event("cam-b1-bay", "camera.fire_detected", 10, state="cleared", alarm_id="f1", **FIRE),
            event("cam-b1-bay", "camera.smoke_detected", 10, state="cleared", alarm_id="s1", **FIRE),
            # again, within the first pair's window: the new firing must not wait for f1/s1
            event("cam-b1-bay", "camera.fire_detected", 20, state="raised", alarm_id="f2", **FIRE),
            event("cam-b1-bay", "camera.smoke_detected", 21, state="raised", alarm_id="s2", **FIRE),
            event("cam-b1-bay", "camera.fire_detected", 30, state="cleared", alarm_id="f2", **FIRE),
            event("cam-b1-bay", "camera.smoke_detected", 30, state="cleared", alarm_id="s2", **FIRE)]
    out = await run([r], fire)
    stops = [s["at_s"] for s in out if s["command"] == "emergency_stop"]
    assert stops == [10.0, 30.0]


@pytest.mark.slow
def test_cli_rules_test_on_a_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = Path(__file__).parent.parent / "scenarios" / "ebike_fire_garage.yaml"
    code = main(["--log-level", "error", "rules", "test", str(EXAMPLES / "garage_fire.yaml"), "--scenario",
                 str(scenario), "--speed", "10", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    sent = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {(s["command"], s["device"]) for s in sent} == {
        ("emergency_start", "pa-south"), ("return_to_floor", "lift-b4-1"), ("return_to_floor", "lift-b4-2"),
        ("hold_open", "gate-garage-lobby"), ("hold_open", "gate-south"), ("emergency_stop", "pa-south"),
        ("release_return", "lift-b4-1"), ("release_return", "lift-b4-2"), ("release", "gate-garage-lobby"),
        ("release", "gate-south")}
    assert "10 command(s) would have been sent" in err
