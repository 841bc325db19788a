"""Results produced while the gateway cannot reach its broker are kept and published, in order,
once it can: a real mosquitto, the gateway behind a cuttable TCP link, the requester direct."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.command_bus import CommandClient
from gateway.config import MqttConfig, parse_config
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from simulators.linkcut import LinkCut
from tests.helpers import base_config, eventually
from tests.servers import Mosquitto, free_port

SITE = "cmd-outage"


async def test_results_made_during_an_outage_arrive_after_it(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=0)})
    async with sim, LinkCut(mosquitto.host, mosquitto.port) as link:
        cfg = base_config(tmp_path, site=SITE, devices=[
            {"id": "lift-1", "driver": "modbus_elevator", "port": port, "poll_interval_s": 0.5, "timeout_s": 0.5,
             "highest_floor": 18}],
            commands={"allow": [{"requesters": ["mqtt:*"], "devices": ["*"], "commands": ["*"]}],
                      "answer_timeout_s": 30})
        cfg["mqtt"] = {"host": "127.0.0.1", "port": link.port, "backoff_max_s": 0.5}
        async with Gateway(parse_config(cfg)) as gw, \
                CommandClient(MqttConfig(host=mosquitto.host, port=mosquitto.port), SITE) as client:
            await eventually(gw.commands.bus.connected.is_set, 10)
            await sim.inject("no_ack")  # the controller takes the requests and answers only when told
            first = await client.send("elevator", "lift-1", "call", args={"floor": 3}, ttl_s=60)
            assert (await client.wait(first, final=False))["state"] == "accepted"
            await eventually(lambda: sim.command_requests == 1, 10)
            link.cut()  # the gateway loses its broker; the requester does not
            await eventually(lambda: not gw.commands.bus.connected.is_set(), 10)
            await sim.clear("no_ack")
            await sim.answer_late()  # the controller acts now: the outcome is made during the outage
            second = await gw.commands.submit("elevator", "lift-1", "call", {"id": "console-7", "args": {"floor": 5}},
                                              requester="mqtt:console")  # the one code path, broker or not
            await gw.commands.wait_idle()
            assert [r["state"] for r in client.results.get(first, [])] in (["accepted"], ["accepted", "sent"])
            assert "console-7" not in client.results and second.state == "accepted"
            held = gw.counters.snapshot()["commands.results_held"]
            assert held >= 4  # first: (sent,) succeeded; console-7: accepted, sent, succeeded
            link.restore()
            res = await client.wait(first, timeout=15)
            assert res["state"] == "succeeded"
            assert [r["state"] for r in await _all(client, "console-7")] == ["accepted", "sent", "succeeded"]
            snap = gw.counters.snapshot()
            assert snap["commands.results_flushed"] == held
            assert sim.commands == [(1, "call", 3, 0), (1, "call", 5, 0)]


async def _all(client: CommandClient, cid: str) -> list[dict[str, object]]:
    await client.wait(cid, timeout=15)
    await asyncio.sleep(0.2)  # every earlier state was flushed before the final one
    return client.results[cid]
