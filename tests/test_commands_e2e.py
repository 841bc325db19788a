"""Commands end to end: requester on a real mosquitto -> gateway -> elevator simulator -> results.

Every bad input of the contract gets a clear result with a reason, is counted, and leaves the
gateway taking the next command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.command_bus import CommandClient
from gateway.commands import list_journal
from gateway.config import MqttConfig, parse_config
from gateway.runtime import Gateway
from schemas.export import COMMAND_RESULT_SCHEMA_PATH
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import MqttCollector, base_config, eventually
from tests.servers import Mosquitto, free_port

SITE = "cmd-site"
ALLOW_ALL = {"allow": [{"requesters": ["mqtt:*"], "devices": ["lift-1"], "commands": ["*"]}],
             "answer_timeout_s": 1.5, "resume_timeout_s": 1.0}


def config(tmp_path: Path, mosquitto: Mosquitto, port: int, commands: dict[str, Any] | None = None) -> Any:
    return parse_config(base_config(tmp_path, mqtt=mosquitto, site=SITE, commands=commands or ALLOW_ALL, devices=[
        {"id": "lift-1", "driver": "modbus_elevator", "port": port, "poll_interval_s": 0.2, "timeout_s": 0.5,
         "highest_floor": 18, "simulated": True}]))


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, mosquitto: Mosquitto, commands: dict[str, Any] | None = None) -> AsyncIterator[
        tuple[ElevatorSimulator, Gateway, CommandClient]]:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=0)})
    cfg = config(tmp_path, mosquitto, port, commands)
    async with sim, Gateway(cfg) as gw, CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port),
                                                      SITE) as client:
        await asyncio.wait_for(gw.commands.bus.connected.wait(), 10)  # subscribed
        yield sim, gw, client


async def ask(client: CommandClient, name: str, args: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    cid = await client.send("elevator", "lift-1", name, args=args, **kw)
    return await client.wait(cid, timeout=10)


async def test_call_succeeds_confirmed_by_read_back(tmp_path: Path, mosquitto: Mosquitto) -> None:
    schema = json.loads(COMMAND_RESULT_SCHEMA_PATH.read_text())
    async with MqttCollector(mosquitto.host, mosquitto.port, f"courtyard/{SITE}/#") as col, \
            rig(tmp_path, mosquitto) as (sim, _gw, client):
        res = await ask(client, "call", {"floor": 5}, requested_by="duty-room")
        assert res["state"] == "succeeded", res
        assert sim.commands == [(1, "call", 5, 0)]  # the controller acted, once
        states = [r["state"] for r in client.results[res["id"]]]
        assert states == ["accepted", "sent", "succeeded"]
        for r in client.results[res["id"]]:
            jsonschema.validate(r, schema)
        await col.wait_for(lambda c: sum(1 for e in c.events() if e["type"] == "command.call") >= 3)
        events = [e for e in col.events() if e["type"] == "command.call"]
        assert [e["payload"]["command_state"] for e in events] == ["accepted", "sent", "succeeded"]
        assert {e["class"] for e in events} == {"command"}
        assert events[-1]["payload"]["latency_ms"] >= 0
        # the car goes there
        await eventually(lambda: sim.elevators[1].floor == 5, 15)
    rows = list_journal(tmp_path / "outbox.db")
    assert [(r.id, r.state, r.requester) for r in rows] == [(res["id"], "succeeded", "mqtt:duty-room")]


async def test_every_elevator_command(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (sim, _gw, client):
        car = sim.elevators[1]
        assert (await ask(client, "hold_door", {"seconds": 2}))["state"] == "succeeded"
        assert car.hold_until is not None
        assert (await ask(client, "release_door"))["state"] == "succeeded"
        assert car.hold_until is None
        assert (await ask(client, "hold_door", {"seconds": 1}))["state"] == "succeeded"
        await eventually(lambda: car.hold_until is None, 10)  # auto-release
        assert (await ask(client, "return_to_floor", {"floor": -2}))["state"] == "succeeded"
        await eventually(lambda: car.floor == -2 and car.phase == "open", 20)
        assert (await ask(client, "release_return"))["state"] == "succeeded"
        assert car.recall is None


async def test_bad_requests_are_rejected_with_a_reason(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (sim, gw, client):
        cases: list[tuple[str, str, str, dict[str, Any], bytes | None, str]] = [
            ("elevator", "lift-nope", "call", {"floor": 3}, None, "unknown_device"),
            ("access_gate", "lift-1", "call", {"floor": 3}, None, "unknown_device"),  # wrong kind
            ("elevator", "lift-1", "fly", {}, None, "unknown_command"),
            ("elevator", "lift-1", "call", {}, None, "missing_arg:floor"),
            ("elevator", "lift-1", "call", {"floor": "three"}, None, "bad_arg:floor"),
            ("elevator", "lift-1", "call", {"floor": 99}, None, "bad_arg:floor:out_of_range"),
            ("elevator", "lift-1", "call", {"floor": 3, "speed": 9}, None, "unexpected_args:speed"),
            ("elevator", "lift-1", "call", {}, b"{not json", "bad_json"),
            ("elevator", "lift-1", "call", {}, b"[1, 2]", "bad_request:not_an_object"),
            ("elevator", "lift-1", "call", {}, json.dumps({"id": "x1", "args": {"floor": 2}, "ttl_s": -1}).encode(),
             "bad_request:ttl_s"),
            ("elevator", "lift-1", "call", {}, json.dumps({"id": "x2", "args": {"floor": 2},
                                                            "pad": "x" * 5000}).encode(), "too_large"),
        ]
        for kind, device, name, args, raw, reason in cases:
            cid = await client.send(kind, device, name, args=args, raw=raw)
            res = await client.wait(cid, timeout=10)
            assert res["state"] == "rejected" and res["reason"].startswith(reason), (name, args, raw, res)
            assert res["final"] is True
        assert sim.command_requests == 0  # nothing reached the controller
        assert gw.counters.snapshot()["commands.rejected"] == len(cases)
        assert gw.devices["lift-1"].online is True  # polling went on undisturbed
        # and the gateway still takes a good one
        assert (await ask(client, "call", {"floor": 2}))["state"] == "succeeded"


async def test_not_allowed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rules = {"allow": [{"requesters": ["mqtt:duty-*"], "devices": ["lift-1"], "commands": ["call"]}]}
    async with rig(tmp_path, mosquitto, rules) as (sim, _gw, client):
        assert (await ask(client, "hold_door", {"seconds": 5}, requested_by="duty-1"))["reason"] == \
            "not_allowed:mqtt:duty-1"
        assert (await ask(client, "call", {"floor": 3}, requested_by="tenant"))["reason"] == "not_allowed:mqtt:tenant"
        assert (await ask(client, "call", {"floor": 3}))["state"] == "rejected"  # anonymous
        assert (await ask(client, "call", {"floor": 3}, requested_by="duty-1"))["state"] == "succeeded"
        assert [c[1] for c in sim.commands] == ["call"]


async def test_duplicate_ids(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (sim, gw, client):
        cid = await client.send("elevator", "lift-1", "call", args={"floor": 4})
        first = await client.wait(cid)
        assert first["state"] == "succeeded"
        client.results.clear()
        # the same request again: the existing result, not a second call
        await client.send("elevator", "lift-1", "call", args={"floor": 4}, cid=cid)
        again = await client.wait(cid)
        assert (again["state"], again["time"]) == ("succeeded", first["time"])
        client.results.clear()
        # the id reused for another request: rejected, the original untouched
        await client.send("elevator", "lift-1", "call", args={"floor": 9}, cid=cid)
        clash = await client.wait(cid)
        assert (clash["state"], clash["reason"]) == ("rejected", "duplicate_id")
        assert sim.commands == [(1, "call", 4, 0)]
        assert gw.counters.snapshot()["commands.repeats"] == 1
    assert [r.state for r in list_journal(tmp_path / "outbox.db")] == ["succeeded"]


async def test_device_refuses_offline_or_silent(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (sim, gw, client):
        await sim.inject("inspection")
        res = await ask(client, "call", {"floor": 3})
        assert (res["state"], res["reason"]) == ("failed", "refused:inspection")
        await sim.clear("inspection")
        await sim.inject("fire_mode")
        assert (await ask(client, "hold_door", {"seconds": 5}))["reason"] == "refused:fire_service"
        await sim.clear("fire_mode")
        await sim.inject("no_ack")  # takes the request, never answers
        res = await ask(client, "call", {"floor": 3})
        assert (res["state"], res["reason"]) == ("failed", "device_timeout")
        await sim.clear("no_ack")
        await sim.inject("disconnect")
        res = await ask(client, "call", {"floor": 3})
        assert res["state"] == "failed" and res["reason"].startswith("device_unavailable"), res
        await sim.clear("disconnect")
        assert (await ask(client, "call", {"floor": 3}))["state"] == "succeeded"
        snap = gw.counters.snapshot()
        assert (snap["commands.failed"], snap["commands.succeeded"]) == (4, 1)


async def test_expired_before_send_is_never_executed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (sim, gw, _client):
        svc = gw.commands
        async with svc._device_lock("lift-1"):  # the elevator busy with another command past this one's TTL
            cmd = await svc.submit("elevator", "lift-1", "call", {"id": "late-1", "args": {"floor": 3}, "ttl_s": 0.05},
                                   requester="mqtt:test")
            assert cmd.state == "accepted"
            await asyncio.sleep(0.2)
        await svc.wait_idle()
        (row,) = list_journal(tmp_path / "outbox.db", device="lift-1")
        assert (row.state, row.reason) == ("expired", "ttl_elapsed_before_send")
        assert sim.command_requests == 0


async def test_a_command_waiting_behind_another_expires_unsent(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path, mosquitto) as (sim, _gw, client):
        await sim.inject("no_ack")  # the first command holds the elevator until its answer times out (1.5 s)
        first = await client.send("elevator", "lift-1", "call", args={"floor": 3})
        second = await client.send("elevator", "lift-1", "call", args={"floor": 4}, ttl_s=0.5)
        assert (await client.wait(first))["reason"] == "device_timeout"
        res = await client.wait(second)
        assert (res["state"], res["reason"]) == ("expired", "ttl_elapsed_before_send")
        assert sim.command_requests == 1  # the second never reached the controller


async def test_response_topic_and_correlation(tmp_path: Path, mosquitto: Mosquitto) -> None:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    async with rig(tmp_path, mosquitto) as (_sim, gw, _client), \
            MqttCollector(mosquitto.host, mosquitto.port, "replies/#") as replies, \
            MqttCollector(mosquitto.host, mosquitto.port, f"courtyard/{SITE}/elevator/lift-1/state") as state:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            for n, target in enumerate(("replies/duty-1", f"courtyard/{SITE}/elevator/lift-1/state")):
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.ResponseTopic = target
                props.CorrelationData = f"corr-{n}".encode()
                await c.publish(f"courtyard/{SITE}/elevator/lift-1/cmd/call",
                                json.dumps({"id": f"rt-{n}", "args": {"floor": 2}}), qos=1, properties=props)
        await replies.wait_for(lambda c: any(json.loads(p)["final"] for _, p in c.messages))
        assert {json.loads(p)["id"] for _, p in replies.messages} == {"rt-0"}
        await gw.commands.wait_idle()
        await asyncio.sleep(0.5)
        # a response topic inside the site's prefix (here a device's state) is never published to
        assert all(b"rt-1" not in p for _, p in state.messages)
        assert gw.counters.snapshot()["commands.response_topics_refused"] == 1


async def test_a_gateway_sharing_its_site_leaves_other_devices_alone(tmp_path: Path, mosquitto: Mosquitto) -> None:
    shared = {**ALLOW_ALL, "reject_unknown_devices": False}
    async with rig(tmp_path, mosquitto, shared) as (_sim, gw, client):
        cid = await client.send("elevator", "lift-of-gw-2", "call", args={"floor": 3})
        with pytest.raises(TimeoutError):
            await client.wait(cid, final=False, timeout=1.5)
        assert gw.counters.snapshot()["commands.ignored_other_device"] == 1
        assert (await ask(client, "call", {"floor": 3}))["state"] == "succeeded"  # its own lift: as ever
