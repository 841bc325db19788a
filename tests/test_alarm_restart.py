"""Alarms across a gateway restart: a fault that still holds is confirmed (one alarm, one id, no
flap); one that went away is cleared; only this config's devices are touched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.history import query
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import MqttCollector, base_config, eventually
from tests.mqtt_support import retained
from tests.servers import Mosquitto, free_port
from tests.test_mqtt_retained import connected, lift

#: These tests are about raise/clear pairs across restarts; the alarm book's transitions on top of
#: them (and what they keep retained) are tested in test_alarm_book.py.
RAW: dict[str, Any] = {"lifecycle": {"enabled": False}}


def faults(db: Path, dev: str | None = None) -> list[dict[str, Any]]:
    return [e for e in (json.loads(r.body) for r in query(db, device=dev))
            if e["alarm_id"] and e["class"] != "connectivity"]


@pytest.mark.slow
async def test_a_fault_held_across_a_restart_is_confirmed_not_flapped(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    site = "grace-site"
    db = tmp_path / "outbox.db"
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site=site, alarms={"restart_grace_s": 3, **RAW},
                                   devices=[lift("lift-1", port, 1), lift("lift-2", port, 2)]))
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(), 2: ElevatorModel()})
    async with sim, MqttCollector(mosquitto.host, mosquitto.port, f"courtyard/{site}/#") as col:
        async with Gateway(cfg) as gw:
            await sim.inject("fault_code", 7, device_id=1)   # held across the restart
            await sim.inject("fault_code", 2, device_id=2)   # goes away while the gateway is down
            await eventually(lambda: len(faults(db)) == 2)
            assert await gw.drain(10)
        (held,) = faults(db, "lift-1")
        await sim.clear("fault_code", device_id=2)
        async with Gateway(cfg) as gw:
            await eventually(lambda: gw.counters.get("stale_alarms_cleared") == 1, timeout=10)
            assert gw.counters.get("stale_alarms_confirmed") == 1
            assert await gw.drain(10)
            got = await retained(mosquitto.host, mosquitto.port, f"courtyard/{site}/+/+/alarm/#")
            assert list(got) == [f"courtyard/{site}/elevator/lift-1/alarm/{held['alarm_id']}"]
            await sim.clear("fault_code", device_id=1)
            await eventually(lambda: len(faults(db, "lift-1")) == 2)
            assert await gw.drain(10)
        await col.wait_for(lambda c: sum(1 for e in c.events() if e["alarm_id"] and e["device"]["id"] == "lift-1"
                                         and e["class"] != "connectivity") == 2)
    lift1 = [(e["type"], e["state"], e["alarm_id"], e["quality"]["status"]) for e in faults(db, "lift-1")]
    assert lift1 == [("elevator.position_lost", "raised", held["alarm_id"], "valid"),
                     ("elevator.position_lost", "cleared", held["alarm_id"], "valid")], "one raise, one id, no flap"
    on_mqtt = [(e["state"], e["alarm_id"]) for e in col.events() if e["device"]["id"] == "lift-1"
               and e["type"] == "elevator.position_lost"]
    assert on_mqtt == [("raised", held["alarm_id"]), ("cleared", held["alarm_id"])]
    lift2 = faults(db, "lift-2")
    assert [(e["state"], e["quality"]["reasons"]) for e in lift2] == [
        ("raised", []), ("cleared", ["gateway_restarted"])]
    assert lift2[0]["alarm_id"] == lift2[1]["alarm_id"]


async def test_offline_device_back_online_clears_its_old_alarm_at_once(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "outbox.db"
    dev = lift("lift-1", port) | {"offline_after": 1, "backoff": {"initial_s": 0.1, "max_s": 0.2}}
    cfg = parse_config(base_config(tmp_path, devices=[dev], alarms={"restart_grace_s": 60, **RAW}))
    async with Gateway(cfg):  # nothing listens: the lift goes offline
        await eventually(lambda: any(json.loads(r.body)["type"] == "device.offline" for r in query(db)))
    async with ElevatorSimulator(port=port, elevators={1: ElevatorModel()}), Gateway(cfg):
        await eventually(lambda: any(json.loads(r.body)["type"] == "device.online" for r in query(db)))
    link = [(e["type"], e["state"], e["alarm_id"]) for e in (json.loads(r.body) for r in query(db))
            if e["class"] == "connectivity"]
    assert link[0][:2] == ("device.offline", "raised")
    assert link[1] == ("device.online", "cleared", link[0][2]), "online clears the offline alarm by its id"


async def test_restart_clears_only_this_configs_devices(tmp_path: Path) -> None:
    """Two configs on one data folder: starting one must not close the other's alarms."""
    port = free_port()
    db = tmp_path / "outbox.db"
    first = parse_config(base_config(tmp_path, devices=[lift("lift-a", port)], alarms={"restart_grace_s": 0, **RAW}))
    second = parse_config(base_config(tmp_path, devices=[lift("lift-b", port)], alarms={"restart_grace_s": 0, **RAW}))
    async with ElevatorSimulator(port=port, elevators={1: ElevatorModel()}) as sim:
        async with Gateway(first):
            await sim.inject("fault_code", 7)
            await eventually(lambda: len(faults(db, "lift-a")) == 1)
        await sim.clear("fault_code")
        async with Gateway(second) as gw:
            await eventually(lambda: any(json.loads(r.body)["device"]["id"] == "lift-b" for r in query(db)))
            assert gw.counters.get("stale_alarms_cleared") == 0
        assert [e["state"] for e in faults(db, "lift-a")] == ["raised"], "another config's alarm was closed"
        async with Gateway(first) as gw:  # its own gateway does close it
            await eventually(lambda: gw.counters.get("stale_alarms_cleared") == 1)
    assert [e["state"] for e in faults(db, "lift-a")] == ["raised", "cleared"]


@pytest.mark.slow
async def test_unconfirmed_alarm_is_cleared_when_grace_ends_even_after_reconnects(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A retained alarm waiting for confirmation is kept by the reconciliation, then emptied at the end."""
    port = free_port()
    site = "grace-end-site"
    db = tmp_path / "outbox.db"
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site=site, devices=[lift("lift-1", port)],
                                   alarms={"restart_grace_s": 2, **RAW}))
    async with ElevatorSimulator(port=port, elevators={1: ElevatorModel()}) as sim:
        async with Gateway(cfg) as gw:
            await sim.inject("fault_code", 7)
            await eventually(lambda: len(faults(db)) == 1)
            assert await gw.drain(10)
        await sim.clear("fault_code")
        async with Gateway(cfg) as gw:
            await connected(gw)
            topic = f"courtyard/{site}/+/+/alarm/#"
            assert len(await retained(mosquitto.host, mosquitto.port, topic)) == 1, "kept while it may be confirmed"
            await eventually(lambda: gw.counters.get("stale_alarms_cleared") == 1, timeout=10)
            assert await gw.drain(10)
            assert await retained(mosquitto.host, mosquitto.port, topic) == {}


def _pa_fault(alarm_id: str, amp: str, fault: str, state: str = "raised") -> Any:
    from datetime import UTC, datetime

    from schemas.common import DeviceRef
    from schemas.event import Event
    from schemas.pa import PaPayload

    now = datetime.now(UTC)
    return Event.model_validate({
        "id": alarm_id + "-ev", "time": now, "received": now, "site": "s", "gateway": "g",
        "device": DeviceRef(id="pa-1", kind="pa", driver="opcua_pa"), "class": "fault", "type": "pa.amp_fault",
        "severity": "major", "state": state, "alarm_id": alarm_id, "payload": PaPayload(amplifier=amp, fault=fault),
    })


def test_confirmation_matches_type_and_sub_entity_only() -> None:
    from gateway.alarms import RestartConfirmation

    confirm = RestartConfirmation([_pa_fault("old-a1-heat", "a1", "overheat"),
                                   _pa_fault("old-a2-heat", "a2", "overheat")])
    out = confirm.admit([_pa_fault("new-a1-load", "a1", "overload"),   # another condition of a1: a new alarm
                         _pa_fault("new-a1-heat", "a1", "overheat")])  # the same condition: confirmed, dropped
    assert [e.alarm_id for e in out] == ["new-a1-load"]
    cleared = confirm.admit([_pa_fault("new-a1-heat", "a1", "overheat", state="cleared")])
    assert [(e.alarm_id, e.state) for e in cleared] == [("old-a1-heat", "cleared")]
    assert [e.alarm_id for e in confirm.expire()] == ["old-a2-heat"]
    late = confirm.admit([_pa_fault("new-a2-heat", "a2", "overheat")])  # after the window: a new alarm
    assert [e.alarm_id for e in late] == ["new-a2-heat"]
