"""Scale-out on a clustered broker: two gateways (device shards) on a 3-node NATS Server cluster with MQTT.

Gateway A runs in this process on node 1, gateway B as a `courtyard run` process on node 2, the
platform subscribes on node 3. Node 1 is stopped mid-stream: A fails over to the next URL of
`mqtt.urls`, and every event A accepted reaches the platform. Retained state and alarms are read
back from another node; killing B makes the cluster publish its last will to the platform.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from gateway.config import parse_config
from gateway.history import query
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import MqttCollector, eventually
from tests.servers import NatsCluster, free_port

SITE = "fleet"


@pytest.fixture(scope="module")
def nats_cluster() -> Iterator[NatsCluster]:
    cluster = NatsCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def lift(n: int, port: int) -> dict[str, Any]:
    return {"id": f"lift-{n}", "driver": "modbus_elevator", "port": port, "unit_id": n, "poll_interval_s": 0.2,
            "timeout_s": 0.5, "simulated": True, "thresholds": {"trapped_s": 0.5}}


def gateway_config(tmp: Path, gateway_id: str, urls: list[str], devices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"site": SITE, "gateway_id": gateway_id,
            "outbox": {"path": str(tmp / gateway_id / "outbox.db"), "synchronous": "normal"},
            "mqtt": {"urls": ",".join(urls), "keepalive_s": 5, "backoff_max_s": 1.0, "type_separator": "_"},
            "alarms": {"restart_grace_s": 0}, "status_interval_s": 2, "devices": devices}


async def retained(port: int, topic_filter: str, wait_s: float = 2.0) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"reader-{time.time_ns()}") as client:
        await client.subscribe(topic_filter, qos=1)
        try:
            async with asyncio.timeout(wait_s):
                async for msg in client.messages:
                    if msg.retain and isinstance(msg.payload, bytes):
                        got[str(msg.topic)] = msg.payload
        except TimeoutError:
            pass
    return got


async def test_two_gateways_fail_over_across_the_cluster(tmp_path: Path, nats_cluster: NatsCluster) -> None:
    n1, n2, n3 = nats_cluster.nodes
    url = {n.server_name: f"mqtt://127.0.0.1:{n.mqtt_port}" for n in nats_cluster.nodes}
    sim_port = free_port()
    sim = ElevatorSimulator(port=sim_port, elevators={
        i: ElevatorModel(call_rate_per_s=2.0, seed=i) for i in (1, 2, 3, 4)})
    cfg_a = parse_config(gateway_config(tmp_path, "gw-a", [url["n1"], url["n2"], url["n3"]],
                                        [lift(1, sim_port), lift(2, sim_port)]))
    b_path = tmp_path / "gw-b.yaml"
    b_path.write_text(yaml.safe_dump(gateway_config(tmp_path, "gw-b", [url["n2"], url["n3"], url["n1"]],
                                                    [lift(3, sim_port), lift(4, sim_port)])))
    async with sim, MqttCollector("127.0.0.1", n3.mqtt_port, f"courtyard/{SITE}/#") as platform:
        proc_b = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "-c", str(b_path), env=dict(os.environ),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            async with Gateway(cfg_a) as gw_a:
                sink = gw_a.sinks[0]
                await eventually(sink.connected.is_set, 30)
                assert sink.broker == ("127.0.0.1", n1.mqtt_port)

                def devices_seen() -> set[str]:
                    return {e["device"]["id"] for e in platform.events()}

                await platform.wait_for(lambda _: devices_seen() >= {"lift-1", "lift-2", "lift-3", "lift-4"}, 40)
                await sim.inject("trapped", device_id=1)
                await sim.inject("trapped", device_id=3)
                trapped = "elevator.passenger_trapped"
                await platform.wait_for(lambda c: {e["device"]["id"] for e in c.events() if e["type"] == trapped}
                                        >= {"lift-1", "lift-3"}, 20)

                # Node 1, which gateway A is connected to, goes away mid-stream.
                stopped = time.monotonic()
                n1.stop()
                await eventually(lambda: not sink.connected.is_set(), 10, 0.02)
                lost_s = time.monotonic() - stopped
                await eventually(sink.connected.is_set, 30, 0.02)
                failover_s = time.monotonic() - stopped
                # the next URL, or the one after it if that node refused while JetStream elected leaders
                assert sink.broker in {("127.0.0.1", n2.mqtt_port), ("127.0.0.1", n3.mqtt_port)}
                print(f"\nfailover: link loss seen after {lost_s:.2f} s; publishing through node 2"
                      f" {failover_s:.2f} s after node 1 stopped")
                await sim.clear("trapped", device_id=1)
                await asyncio.sleep(2)
                assert await gw_a.drain(30)
                accepted = {json.loads(r.body)["id"] for r in query(tmp_path / "gw-a" / "outbox.db")}

                def missing() -> set[str]:
                    return accepted - {e["id"] for e in platform.events()}

                await platform.wait_for(lambda _: not missing(), 30)
                print(f"gateway A: {len(accepted)} events accepted, all received on node 3")

                # Retained state and alarms, read from node 2 (written through nodes 1 and 2).
                kept = await retained(n2.mqtt_port, f"courtyard/{SITE}/#")
                states = {t for t in kept if t.endswith("/state")}
                assert {f"courtyard/{SITE}/elevator/lift-{i}/state" for i in (1, 2, 3, 4)} <= states
                alarms: dict[str, set[str | None]] = {}
                for t, body in kept.items():
                    if "/alarm/" in t and body:  # the raise, or its latest lifecycle transition
                        doc = json.loads(body)
                        alarms.setdefault(t.split("/")[3], set()).add(doc["payload"].get("lifecycle_state", "raised"))
                assert alarms.get("lift-3") and not alarms["lift-3"] & {"cleared_unacked", "closed"}
                # lift-1's alarm cleared after the failover: it waits for a person's acknowledgement
                assert alarms.get("lift-1") == {"cleared_unacked"}
                status = {t.split("/")[3]: json.loads(b)["status"] for t, b in kept.items() if t.endswith("/status")}
                assert status == {"gw-a": "online", "gw-b": "online"}

                # Gateway B dies without a goodbye: the cluster hands its last will to the platform on node 3.
                assert proc_b.returncode is None
                proc_b.send_signal(signal.SIGKILL)
                await proc_b.wait()
                await platform.wait_for(lambda c: any(
                    t == f"courtyard/{SITE}/gateway/gw-b/status" and json.loads(p)["status"] == "offline"
                    for t, p in c.messages), 30)
        finally:
            if proc_b.returncode is None:
                proc_b.send_signal(signal.SIGKILL)
                await proc_b.wait()
            n1.start()  # leave the module's cluster whole


def test_broker_urls_in_config(tmp_path: Path) -> None:
    from gateway.config import load_config_text
    from gateway.errors import ConfigError

    base = "site: s\noutbox: {path: %s}\n" % (tmp_path / "o.db")
    cfg = load_config_text(base + "mqtt: {urls: 'mqtt://a:1884, b, mqtts://c'}\n")
    assert cfg.mqtt.brokers() == [("a", 1884), ("b", 1883), ("c", 8883)]
    cfg = load_config_text(base + "mqtt: {urls: '', host: h, port: 1999}\n")  # `urls: ${MQTT_URLS:-}` unset
    assert cfg.mqtt.brokers() == [("h", 1999)]
    with pytest.raises(ConfigError, match=r"<config>:4: mqtt\.urls: .*expected mqtt://host:port"):
        load_config_text(base + "mqtt:\n  urls: [http://x:80]\n")
