"""The alarm lifecycle against a real elevator simulator and mosquitto: states, latching,
shelving, escalation, operations (API, MQTT with hostile input, CLI), journal, restart."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from gateway.alarm_book import AlarmOpRejected, AlarmView
from gateway.cli import main
from gateway.config import parse_config
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import base_config, eventually
from tests.mqtt_support import retained
from tests.servers import Mosquitto, free_port

pytestmark = pytest.mark.slow
SITE = "book-site"
ALLOW = [{"requesters": ["mqtt:duty-*", "cli:*", "console:*"], "devices": ["*"], "ops": ["*"]},
         {"requesters": ["mqtt:trainee"], "ops": ["ack"]}]


def config(tmp_path: Path, mosquitto: Mosquitto, port: int, grace: float = 0, **lifecycle: Any) -> dict[str, Any]:
    return base_config(
        tmp_path, mqtt=mosquitto, site=SITE,
        devices=[{"id": "lift-1", "driver": "modbus_elevator", "port": port, "poll_interval_s": 0.2,
                  "timeout_s": 0.2, "highest_floor": 18}],
        alarms={"restart_grace_s": grace, "lifecycle": {"allow": ALLOW, **lifecycle}})


@asynccontextmanager
async def running(tmp_path: Path, mosquitto: Mosquitto, sim: ElevatorSimulator,
                  grace: float = 0, **lifecycle: Any) -> AsyncIterator[Gateway]:
    cfg = parse_config(config(tmp_path, mosquitto, sim.port, grace, **lifecycle))
    async with Gateway(cfg) as gw:
        yield gw


async def raised(gw: Gateway) -> AlarmView:
    async def one() -> AlarmView | None:
        views = gw.alarm_book.active()
        return views[0] if views else None
    view: AlarmView = await eventually(one, 20)
    return view


async def retained_alarm(mosquitto: Mosquitto, alarm_id: str) -> dict[str, Any] | None:
    got = await retained(mosquitto.host, mosquitto.port, f"courtyard/{SITE}/+/+/alarm/{alarm_id}")
    return next(iter(got.values()), None)


async def retained_type(mosquitto: Mosquitto, alarm_id: str, expected: str | None, timeout: float = 10) -> None:
    async def check() -> bool:
        body = await retained_alarm(mosquitto, alarm_id)
        return (body["type"] if body else None) == expected
    await eventually(check, timeout, interval=0.2)


def sim(port: int) -> ElevatorSimulator:
    return ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=0)})


async def test_ack_then_clear_closes_and_the_retained_topic_follows(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with sim(free_port()) as s, running(tmp_path, mosquitto, s) as gw:
        seen: list[AlarmView] = []
        unsubscribe = gw.alarm_book.subscribe(seen.append)
        await s.inject("alarm_button")
        view = await raised(gw)
        assert (view.type, view.state, view.severity, view.latched) == (
            "elevator.alarm_button", "active_unacked", "critical", False)
        await retained_type(mosquitto, view.alarm_id, "elevator.alarm_button")
        acked = await gw.alarm_book.operate(view.alarm_id, "ack", user="li", requester="console:li", comment="seen")
        assert (acked.state, acked.acked_by, acked.comment) == ("active_acked", "li", "seen")
        await retained_type(mosquitto, view.alarm_id, "alarm.acked")
        body = await retained_alarm(mosquitto, view.alarm_id)
        assert body is not None and body["payload"]["lifecycle_state"] == "active_acked"
        assert body["class"] == "alarm" and body["device"]["id"] == "lift-1"
        await s.clear("alarm_button")
        await eventually(lambda: gw.alarm_book.get(view.alarm_id).state == "closed", 20)
        await retained_type(mosquitto, view.alarm_id, None)  # emptied only now
        assert gw.alarm_book.active() == []
        unsubscribe()
        assert [v.state for v in seen] == ["active_unacked", "active_acked", "closed"]


async def test_cleared_unacked_stays_until_acked(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with sim(free_port()) as s, running(tmp_path, mosquitto, s) as gw:
        await s.inject("alarm_button")
        view = await raised(gw)
        await s.clear("alarm_button")
        await eventually(lambda: gw.alarm_book.get(view.alarm_id).state == "cleared_unacked", 20)
        await retained_type(mosquitto, view.alarm_id, "alarm.cleared")  # not emptied by the clear
        assert gw.alarm_book.get(view.alarm_id).cleared_at is not None
        done = await gw.alarm_book.operate(view.alarm_id, "ack", user="li", requester="cli:li")
        assert done.state == "closed"
        await retained_type(mosquitto, view.alarm_id, None)
        with pytest.raises(AlarmOpRejected, match="closed"):
            await gw.alarm_book.operate(view.alarm_id, "ack", user="li", requester="cli:li")


async def test_a_latched_alarm_stays_active_until_reset(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with sim(free_port()) as s, running(tmp_path, mosquitto, s, latch=["elevator.alarm_*"]) as gw:
        await s.inject("alarm_button")
        view = await raised(gw)
        assert view.latched
        with pytest.raises(AlarmOpRejected, match="still_active"):
            await gw.alarm_book.operate(view.alarm_id, "reset", user="li", requester="cli:li")
        await gw.alarm_book.operate(view.alarm_id, "ack", user="li", requester="cli:li")
        await s.clear("alarm_button")
        await eventually(lambda: gw.alarm_book.get(view.alarm_id).cleared_at is not None, 20)
        await gw.alarm_book.wait_idle()
        held = gw.alarm_book.get(view.alarm_id)
        assert (held.state, held.latched) == ("active_acked", True)  # acked and cleared, yet held
        await retained_type(mosquitto, view.alarm_id, "alarm.cleared")
        done = await gw.alarm_book.operate(view.alarm_id, "reset", user="wang", requester="cli:wang",
                                           comment="panel reset")
        assert (done.state, done.latched) == ("closed", False)
        await retained_type(mosquitto, view.alarm_id, None)


async def test_shelving_escalation_and_rejections(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with sim(free_port()) as s, running(tmp_path, mosquitto, s, escalate_after_s={"critical": 1.0}) as gw:
        book = gw.alarm_book
        await s.inject("alarm_button")
        view = await raised(gw)
        aid = view.alarm_id
        soon = datetime.now(UTC) + timedelta(seconds=0.6)
        for kwargs, reason in [
            ({"alarm_id": "nope", "op": "ack", "requester": "cli:li"}, "unknown_alarm"),
            ({"alarm_id": aid, "op": "ack", "requester": "mqtt:visitor"}, "not_allowed:mqtt:visitor"),
            ({"alarm_id": aid, "op": "shelve", "requester": "mqtt:trainee"}, "not_allowed:mqtt:trainee"),
            ({"alarm_id": aid, "op": "shelve", "requester": "cli:li"}, "until_required"),
            ({"alarm_id": aid, "op": "shelve", "requester": "cli:li", "until": soon}, "reason_required"),
            ({"alarm_id": aid, "op": "shelve", "requester": "cli:li", "comment": "x",
              "until": datetime.now(UTC) + timedelta(days=3)}, "until_too_far"),
            ({"alarm_id": aid, "op": "unshelve", "requester": "cli:li"}, "not_shelved"),
            ({"alarm_id": aid, "op": "reset", "requester": "cli:li"}, "not_latched"),
            ({"alarm_id": aid, "op": "explode", "requester": "cli:li"}, "unknown_op"),
        ]:
            with pytest.raises(AlarmOpRejected) as info:
                await book.operate(user="li", **kwargs)
            assert info.value.reason.startswith(reason)
        shelved = await book.operate(aid, "shelve", user="li", requester="cli:li", comment="technician on site",
                                     until=soon)
        assert shelved.shelved_until == soon and shelved.shelve_reason == "technician on site"
        await eventually(lambda: book.get(aid).shelved_until is None, 5)  # the shelving ended by itself
        await eventually(lambda: book.get(aid).escalated, 5)  # then, still unacked: escalated, once
        await asyncio.sleep(1.2)
        await gw.drain(5)
    types = _types(tmp_path)
    assert types.count("alarm.shelved") == 1 and types.count("alarm.unshelved") == 1
    assert types.count("alarm.escalated") == 1
    assert types.index("alarm.unshelved") < types.index("alarm.escalated")
    ops = _ops(tmp_path)
    assert ("shelve", "ok", None) in ops and ("ack", "rejected", "not_allowed") in ops
    # Refusals about this alarm are journaled; made-up alarm ids and ops are only counted.
    assert sum(1 for o in ops if o[1] == "rejected") == 7


async def test_state_survives_a_restart(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with sim(free_port()) as s:
        async with running(tmp_path, mosquitto, s) as gw:
            await s.inject("alarm_button")
            view = await raised(gw)
            await gw.alarm_book.operate(view.alarm_id, "ack", user="li", requester="cli:li", comment="on my way")
        # The driver raises it again within the grace: the previous run's alarm, kept, acked.
        async with running(tmp_path, mosquitto, s, grace=10) as gw:
            await eventually(lambda: gw.counters.get("stale_alarms_confirmed") == 1, 20)
            again = gw.alarm_book.get(view.alarm_id)
            assert again is not None
            assert (again.state, again.acked_by, again.comment) == ("active_acked", "li", "on my way")
            await s.clear("alarm_button")
            await eventually(lambda: gw.alarm_book.get(view.alarm_id).state == "closed", 20)
        # Gone while the gateway was down: the next start clears it, and it was acked: closed.
        await s.inject("alarm_button")
        async with running(tmp_path, mosquitto, s) as gw:
            second = await raised(gw)
            await gw.alarm_book.operate(second.alarm_id, "ack", user="li", requester="cli:li")
        await s.clear("alarm_button")
        async with running(tmp_path, mosquitto, s) as gw:
            await gw.alarm_book.wait_idle()
            assert gw.alarm_book.active() == []
            assert gw.alarm_book.get(second.alarm_id).state == "closed"


async def test_mqtt_operations_with_hostile_input(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with sim(free_port()) as s, running(tmp_path, mosquitto, s) as gw:
        await s.inject("alarm_button")
        view = await raised(gw)
        aid = view.alarm_id
        base = f"courtyard/{SITE}/alarm"
        results: dict[str, dict[str, Any]] = {}
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.subscribe(f"{base}/+/cmd/+/result", qos=1)
            await eventually(gw.commands.bus.connected.is_set, 20)

            async def send(tag: str, alarm: str, op: str, body: bytes) -> None:
                await client.publish(f"{base}/{alarm}/cmd/{op}", body, qos=1)
                async with asyncio.timeout(10):
                    async for msg in client.messages:
                        results[tag] = json.loads(msg.payload)  # type: ignore[arg-type]
                        return

            await send("garbage", aid, "ack", b"\xff{not json")
            await send("list", aid, "ack", b"[1,2]")
            await send("big", aid, "ack", json.dumps({"user": "duty-li", "comment": "x" * 5000}).encode())
            await send("nouser", aid, "ack", b"{}")
            await send("baduser", aid, "ack", json.dumps({"user": "../../etc"}).encode())
            await send("unknown", "no-such-alarm", "ack", json.dumps({"user": "duty-li"}).encode())
            await send("badop", aid, "explode", json.dumps({"user": "duty-li"}).encode())
            await send("visitor", aid, "ack", json.dumps({"user": "visitor"}).encode())
            await send("shelve-bad-until", aid, "shelve", json.dumps(
                {"user": "duty-li", "comment": "x", "until": "tomorrow"}).encode())
            await send("ok", aid, "ack", json.dumps({"id": "op-1", "user": "duty-li", "comment": "on it"}).encode())
    reasons = {tag: r["reason"] for tag, r in results.items()}
    assert reasons["garbage"] == "bad_json"
    assert reasons["list"] == "bad_request:not_an_object"
    assert reasons["big"].startswith("too_large:")
    assert reasons["nouser"] == "bad_request:user:missing"
    assert reasons["baduser"].startswith("bad_request:user:")
    assert reasons["unknown"] == "unknown_alarm"
    assert reasons["badop"] == "unknown_op"
    assert reasons["visitor"] == "not_allowed:mqtt:visitor"
    assert reasons["shelve-bad-until"].startswith("bad_request:until")
    assert results["ok"] == {**results["ok"], "id": "op-1", "ok": True, "state": "active_acked", "reason": None}
    assert gw.counters.get("alarms.ops_rejected") == 9
    assert gw.alarm_book.get(aid).acked_by == "duty-li"


async def test_cli_lists_and_acks(tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    async with sim(free_port()) as s:
        data = config(tmp_path, mosquitto, s.port)
        path = tmp_path / "gw.yaml"
        path.write_text(yaml.safe_dump(data))
        async with Gateway(parse_config(data)) as gw:
            await s.inject("alarm_button")
            view = await raised(gw)
            await eventually(gw.commands.bus.connected.is_set, 20)
            assert await asyncio.to_thread(main, ["alarms", "-c", str(path)]) == 0
            listed = capsys.readouterr().out
            assert view.alarm_id in listed and "active_unacked" in listed and "elevator.alarm_button" in listed
            code = await asyncio.to_thread(main, ["ack", view.alarm_id, "-c", str(path), "--user", "visitor"])
            assert code == 1 and "rejected: not_allowed:mqtt:visitor" in capsys.readouterr().out
            code = await asyncio.to_thread(main, ["ack", view.alarm_id, "-c", str(path), "--user", "duty-wang",
                                                  "-m", "called maintenance"])
            assert code == 0 and "ok: active_acked" in capsys.readouterr().out
            assert gw.alarm_book.get(view.alarm_id).comment == "called maintenance"
            assert await asyncio.to_thread(main, ["alarms", "-c", str(path), "--json"]) == 0
            doc = json.loads(capsys.readouterr().out.splitlines()[0])
            assert (doc["state"], doc["acked_by"]) == ("active_acked", "duty-wang")


def _types(tmp_path: Path) -> list[str]:
    db = sqlite3.connect(tmp_path / "outbox.db")
    try:
        return [r[0] for r in db.execute("SELECT type FROM events ORDER BY seq")]
    finally:
        db.close()


def _ops(tmp_path: Path) -> list[tuple[str, str, str | None]]:
    db = sqlite3.connect(tmp_path / "outbox.db")
    try:
        return [(r[0], r[1], (r[2] or "").split(":")[0] or None)
                for r in db.execute("SELECT op, outcome, reason FROM alarm_ops ORDER BY id")]
    finally:
        db.close()
