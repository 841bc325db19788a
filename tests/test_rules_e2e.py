"""Rules acting on real devices: the elevator simulator (two cars behind one Modbus server), the
gateway's command journal and mosquitto; a broker outage during a firing, a SIGKILL mid-firing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.commands import list_journal
from gateway.config import parse_config
from gateway.rules import list_firings
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.gateway_process import kill, start, stop
from tests.helpers import MqttCollector, base_config, eventually
from tests.servers import Mosquitto, free_port

pytestmark = pytest.mark.slow
SITE = "rules-site"

PANIC = {
    "id": "panic", "when": {"type": "elevator.alarm_button", "devices": "lift-1"},
    "do": [{"command": "hold_door", "to": {"devices": "lift-2"}, "args": {"seconds": 300}, "timeout_s": 60}],
    "on_clear": [{"command": "release_door", "to": {"devices": "lift-2"}}],
}


def config(tmp_path: Path, mqtt: Any, port: int, rules: list[dict[str, Any]], *,
           allow: bool = True, grace: float = 0) -> dict[str, Any]:
    lift = {"driver": "modbus_elevator", "port": port, "poll_interval_s": 0.2, "timeout_s": 0.2, "highest_floor": 18}
    return base_config(
        tmp_path, mqtt=mqtt, site=SITE,
        devices=[{**lift, "id": "lift-1", "unit_id": 1}, {**lift, "id": "lift-2", "unit_id": 2}],
        alarms={"restart_grace_s": grace, "lifecycle": {"allow": [{"requesters": ["cli:*"]}]}},
        commands={"allow": [{"requesters": ["rule:*"], "devices": ["*"], "commands": ["*"]}] if allow else [],
                  "answer_timeout_s": 60, "resume_timeout_s": 3},
        rules=rules)


def two_cars(port: int) -> ElevatorSimulator:
    return ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=0),
                                                   2: ElevatorModel(call_rate_per_s=0)})


def held(sim: ElevatorSimulator, unit: int) -> bool:
    return sim.elevators[unit].hold_until is not None


def events(db: Path, prefix: str = "") -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    try:
        return [json.loads(r[0]) for r in conn.execute("SELECT body FROM events WHERE type LIKE ? ORDER BY seq",
                                                       (prefix + "%",))]
    finally:
        conn.close()


async def test_a_trigger_acts_on_another_device_and_on_clear_releases(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    async with two_cars(port) as sim:
        cfg = parse_config(config(tmp_path, mosquitto, port, [PANIC]))
        async with Gateway(cfg) as gw:
            await sim.inject("alarm_button", device_id=1)
            await eventually(lambda: held(sim, 2), 20)
            await eventually(lambda: [f["state"] for f in list_firings(tmp_path / "outbox.db")] == ["completed"], 20)
            (alarm,) = gw.alarm_book.active()
            await gw.alarm_book.operate(alarm.alarm_id, "ack", user="li", requester="cli:li")
            await sim.clear("alarm_button", device_id=1)
            await eventually(lambda: not held(sim, 2), 20)
            await gw.rules.wait_idle()
            await gw.drain(5)
        assert not held(sim, 1)  # only the car the rule names
        async with Gateway(cfg) as gw:  # a restart finds nothing to resume or redo
            await asyncio.sleep(1.0)
            await gw.rules.wait_idle()
            assert gw.counters.get("rules.resumed") == 0
    db = tmp_path / "outbox.db"
    rule_events = [(e["type"], e["payload"]["phase"], e["device"]["id"]) for e in events(db, "rule.")]
    assert rule_events == [("rule.fired", "confirmed", "lift-1"), ("rule.completed", "confirmed", "lift-1"),
                           ("rule.completed", "clear", "lift-1")]
    trigger = next(e for e in events(db, "elevator.alarm_button") if e["state"] == "raised")
    assert events(db, "rule.fired")[0]["payload"]["triggers"] == [trigger["id"]]
    journal = list_journal(db)
    assert [(c.name, c.device, c.state, c.requester) for c in journal] == [
        ("hold_door", "lift-2", "succeeded", "rule:panic"), ("release_door", "lift-2", "succeeded", "rule:panic")]
    (firing,) = list_firings(db)
    assert (firing["state"], firing["phase"], firing["acked_by"]) == ("completed", "done", "li")
    assert firing["latency_ms"] is not None
    assert [(r["phase"], r["command"], r["state"]) for r in firing["results"]] == [
        ("do", "hold_door", "succeeded"), ("clear", "release_door", "succeeded")]
    assert {r["command_id"] for r in firing["results"]} == {c.id for c in journal}


async def test_a_rule_the_allowlist_does_not_cover_fails_visibly(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    async with two_cars(port) as sim:
        async with Gateway(parse_config(config(tmp_path, mosquitto, port, [PANIC], allow=False))) as gw:
            await sim.inject("alarm_button", device_id=1)
            await eventually(lambda: any(e["type"] == "rule.failed" for e in events(tmp_path / "outbox.db", "rule.")),
                             10)
            await gw.rules.wait_idle()
        assert not held(sim, 2)
        assert sim.command_requests == 0
    failed = events(tmp_path / "outbox.db", "rule.failed")[0]["payload"]
    assert failed["reason"] == "actions_failed"
    assert failed["actions"][0]["state"] == "rejected"
    assert failed["actions"][0]["reason"] == "not_allowed:rule:panic"


async def test_a_tentative_hold_is_undone_when_nothing_confirms(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rule = {
        "id": "ebike", "when": {"type": "elevator.alarm_button", "devices": "lift-1"},
        "confirm": {"count": 2, "distinct": ["device"], "within_s": 1.5},
        "do": [{"command": "hold_door", "to": {"devices": "lift-2"}, "args": {"seconds": 300}, "tentative": True},
               {"command": "call", "to": {"devices": "lift-2"}, "args": {"floor": 1}}],
        "undo": [{"command": "release_door", "to": {"devices": "lift-2"}}],
    }
    port = free_port()
    async with two_cars(port) as sim, Gateway(parse_config(config(tmp_path, mosquitto, port, [rule]))) as gw:
        await sim.inject("alarm_button", device_id=1)
        await eventually(lambda: held(sim, 2), 20)
        await eventually(lambda: not held(sim, 2), 10)  # released by the undo after 1.5 s
        await gw.rules.wait_idle()
    names = [c.name for c in list_journal(tmp_path / "outbox.db")]
    assert names == ["hold_door", "release_door"]  # the confirmed-only `call` never went out
    assert events(tmp_path / "outbox.db", "rule.failed")[0]["payload"]["reason"] == "not_confirmed"


async def test_the_rule_acts_while_the_broker_is_down(tmp_path: Path, own_broker: Mosquitto) -> None:
    port = free_port()
    async with two_cars(port) as sim, Gateway(parse_config(config(tmp_path, own_broker, port, [PANIC]))) as gw:
        await eventually(gw.commands.bus.connected.is_set, 20)
        own_broker.stop()
        await sim.inject("alarm_button", device_id=1)
        await eventually(lambda: held(sim, 2), 10)  # no broker needed to act
        await eventually(lambda: [f["state"] for f in list_firings(tmp_path / "outbox.db")] == ["completed"], 20)
        backlog = await gw.outbox.backlog()
        assert backlog["mqtt"] > 0
        own_broker.start()
        async with MqttCollector(own_broker.host, own_broker.port, f"courtyard/{SITE}/#") as col:
            await col.wait_for(lambda c: any(t.endswith("/event/rule.completed") for t, _ in c.messages), 30)


# --- SIGKILL mid-firing (the gateway in its own process) ----------------------------------------------


def firing_state(db: Path) -> list[tuple[str, str]]:
    return [(f["state"], f["phase"]) for f in list_firings(db)] if db.exists() else []


async def test_sigkill_mid_firing_neither_loses_nor_doubles_an_action(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rule = {**PANIC, "do": [*PANIC["do"], {"command": "call", "to": {"devices": "lift-2"}, "args": {"floor": 7}}]}
    port = free_port()
    db = tmp_path / "outbox.db"
    path = tmp_path / "gw.yaml"
    # With a grace, the restarted driver's raise confirms the alarm: the firing is not cleared.
    path.write_text(yaml.safe_dump(config(tmp_path, mosquitto, port, [rule], grace=20)))
    async with two_cars(port) as sim:
        await sim.inject("no_ack")  # the controller takes requests and answers only when told
        proc = start(path)
        try:
            await sim.inject("alarm_button", device_id=1)
            await eventually(lambda: firing_state(db) == [("running", "confirmed")], 20)
            await eventually(lambda: sim.command_requests >= 1, 15)
            await eventually(lambda: any(c.state == "sent" for c in list_journal(db)), 20)
            kill(proc)
        finally:
            stop(proc)
        assert firing_state(db) == [("running", "confirmed")]  # journaled, unfinished
        before = sim.command_requests
        await sim.answer_late()  # the controller did act on what it took, after the gateway died
        await sim.clear("no_ack")
        proc = start(path)
        try:
            await eventually(lambda: firing_state(db) == [("completed", "confirmed")], 30)
        finally:
            stop(proc)
    journal = list_journal(db)
    assert sorted((c.name, c.state) for c in journal) == [("call", "succeeded"), ("hold_door", "succeeded")]
    # Each action reached the controller exactly once: what was sent before the kill was resolved
    # by read-back, what was not was sent after the restart, once.
    assert sim.command_requests == 2
    assert before == 1  # the kill came between the two: one sent before it, one after the restart
    assert held(sim, 2)
    fired = [e for e in events(db, "rule.") if e["type"] == "rule.fired"]
    assert len({e["payload"]["firing_id"] for e in fired}) == 1


async def test_a_trigger_committed_just_before_a_crash_fires_at_the_next_start(tmp_path: Path,
                                                                             mosquitto: Mosquitto) -> None:
    """The trigger is in the outbox but no firing was journaled (as after a kill right after the
    commit): the next start's catch-up fires it, once; the start after that does not again."""
    port = free_port()
    db = tmp_path / "outbox.db"
    async with two_cars(port) as sim:
        without = parse_config(config(tmp_path, mosquitto, port, [], grace=30))
        async with Gateway(without):
            await sim.inject("alarm_button", device_id=1)
            await eventually(lambda: any(e["state"] == "raised" for e in events(db, "elevator.alarm_button")), 20)
        with_rule = parse_config(config(tmp_path, mosquitto, port, [PANIC], grace=30))
        for _ in range(2):
            async with Gateway(with_rule) as gw:
                await eventually(lambda: held(sim, 2), 20)
                await asyncio.sleep(0.5)
                await gw.rules.wait_idle()
    assert [f["state"] for f in list_firings(db)] == ["completed"]
    assert [c.name for c in list_journal(db)] == ["hold_door"]


async def test_confirmation_by_a_second_device_then_cooldown(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rule = {
        "id": "two-buttons", "when": {"type": "elevator.alarm_button"},
        "confirm": {"count": 2, "distinct": ["device"], "within_s": 2},
        "do": [{"command": "hold_door", "to": {"devices": "lift-2"}, "args": {"seconds": 300}}],
        "per": "rule", "cooldown_s": 60,
    }
    port = free_port()
    db = tmp_path / "outbox.db"
    async with two_cars(port) as sim, Gateway(parse_config(config(tmp_path, mosquitto, port, [rule]))) as gw:
        await sim.inject("alarm_button", device_id=1)  # one source alone: the window closes unconfirmed
        await eventually(lambda: gw.counters.get("rules.unconfirmed") == 1, 20)
        assert sim.command_requests == 0
        await sim.clear("alarm_button", device_id=1)
        await asyncio.sleep(0.5)
        await sim.inject("alarm_button", device_id=1)
        await sim.inject("alarm_button", device_id=2)  # a second device within 2 s: confirmed
        await eventually(lambda: held(sim, 2), 20)
        await sim.clear("alarm_button")
        await asyncio.sleep(0.5)
        await sim.inject("alarm_button", device_id=1)  # within the cooldown: ignored
        await eventually(lambda: gw.counters.get("rules.cooldown_skips") >= 1, 20)
        await gw.rules.wait_idle()
    assert [c.name for c in list_journal(db)] == ["hold_door"]
    assert [e["payload"]["phase"] for e in events(db, "rule.fired")] == ["confirmed"]
