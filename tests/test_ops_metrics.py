"""The ops server against real simulators and a real mosquitto: /metrics says what happened, /readyz tracks sinks."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.history import query
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import MqttCollector, base_config, eventually
from tests.servers import Mosquitto, free_port, wait_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def lift(dev_id: str, port: int, unit: int = 1) -> dict[str, Any]:
    return {"id": dev_id, "driver": "modbus_elevator", "port": port, "unit_id": unit, "poll_interval_s": 0.2,
            "timeout_s": 0.3, "simulated": True, "offline_after": 2, "thresholds": {"trapped_s": 0.5},
            "backoff": {"initial_s": 0.1, "max_s": 0.5}}


def camera(port: int) -> dict[str, Any]:
    return {"id": "lpr-1", "driver": "http_plate_reader", "listen_host": "127.0.0.1", "listen_port": port,
            "vendor": "zhenshi", "direction": "entry", "lane": "in", "simulated": True,
            "auth": {"mode": "token", "token": "camera-token-1"}}


async def scrape(port: int, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


async def get(port: int, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r:
        return r.status, await r.json(content_type=None)


def outbox_lanes(tmp_path: Path) -> Counter[int]:
    return Counter(0 if r.cls in ("alarm", "fault", "connectivity", "command") else 1
                   for r in query(tmp_path / "outbox.db"))


async def test_metrics_match_what_happened(tmp_path: Path, own_broker: Mosquitto) -> None:
    sim_port, cam_port = free_port(), free_port()
    dead_port = free_port()  # nothing listens: that lift goes offline
    sim = ElevatorSimulator(port=sim_port, elevators={1: ElevatorModel(call_rate_per_s=0.0, seed=1)})
    cfg = parse_config(base_config(
        tmp_path, mqtt=own_broker, site="ops-site",
        devices=[lift("lift-a", sim_port), lift("lift-dead", dead_port), camera(cam_port)],
        ops={"port": 0, "outage_budget_s": 1.0},
    ))
    async with sim, MqttCollector(own_broker.host, own_broker.port, "courtyard/ops-site/#") as col, \
            Gateway(cfg) as gw:
            assert gw.ops_server is not None
            port = gw.ops_server.port
            await sim.inject("trapped", device_id=1)
            await col.wait_for(lambda c: any(e["type"] == "elevator.passenger_trapped" for e in c.events()), 15)
            await eventually(lambda: gw.devices["lift-dead"].online is False, 10)
            # Two pushes the camera listener refuses before any endpoint sees them (unknown path),
            # and three the camera's endpoint refuses (wrong token).
            await asyncio.to_thread(wait_port, cam_port)  # the camera's listener starts with its driver
            async with aiohttp.ClientSession() as http:
                for _ in range(2):
                    async with http.post(f"http://127.0.0.1:{cam_port}/nowhere", data=b"x") as r:
                        assert r.status >= 400
                for _ in range(3):
                    async with http.post(f"http://127.0.0.1:{cam_port}/lpr/lpr-1", data=b"{}",
                                         headers={"X-Auth-Token": "not-the-token"}) as r:
                        assert r.status == 401
            assert await gw.drain(10)

            async def settled() -> Samples | None:
                s = await scrape(port)
                lanes = outbox_lanes(tmp_path)
                same = all(value(s, "courtyard_events_accepted_total", lane=str(n)) == lanes[n] for n in (0, 1))
                delivered = all(value(s, "courtyard_events_published_total", sink="mqtt", lane=str(n)) == lanes[n]
                                for n in (0, 1))
                return s if same and delivered and value(s, "courtyard_backlog_events", sink="mqtt") == 0 else None

            s = await eventually(settled, 15, 0.3)
            lanes = outbox_lanes(tmp_path)
            assert lanes[0] >= 3 and lanes[1] >= 1  # online, offline, trapped raise; a status
            # Every event published on MQTT was counted, and only those.
            await col.wait_for(lambda c: len(c.events()) >= sum(lanes.values()), 10)
            assert len({e["id"] for e in col.events()}) == sum(lanes.values())
            assert value(s, "courtyard_device_online", device="lift-a", driver="modbus_elevator") == 1
            assert value(s, "courtyard_device_online", device="lift-dead", driver="modbus_elevator") == 0
            assert value(s, "courtyard_devices", state="offline") == 1
            assert value(s, "courtyard_device_misses_total", device="lift-dead") >= 2
            assert value(s, "courtyard_sink_up", sink="mqtt") == 1
            assert value(s, "courtyard_dead_letters_total", sink="mqtt") == 0
            assert value(s, "courtyard_events_dropped_total") == 0
            listener = f"127.0.0.1:{cam_port}"
            refusals = {k[1]: v for k, v in s.items() if k[0] == "courtyard_http_listener_refusals_total"}
            assert sum(refusals.values()) == 2 and all(dict(lbl)["listener"] == listener for lbl in refusals)
            pushes = {dict(k[1])["reason"]: v for k, v in s.items()
                      if k[0] == "courtyard_push_refusals_total" and dict(k[1])["device"] == "lpr-1"}
            assert sum(pushes.values()) == 3, pushes
            assert value(s, "courtyard_device_counter_total", device="lift-a", name="polls") >= 1
            # The poll histogram counts answered polls of the live lift, none of the dead one.
            before = gw.counters.get("device.lift-a.polls")
            s = await scrape(port)
            after = gw.counters.get("device.lift-a.polls")
            assert before <= value(s, "courtyard_poll_duration_seconds_count", device="lift-a") <= after
            assert value(s, "courtyard_poll_duration_seconds_count", device="lift-dead") == 0
            assert value(s, "courtyard_poll_duration_seconds_bucket", device="lift-a", le="+Inf") >= before
            assert value(s, "courtyard_info", version=__import__("gateway").__version__, site="ops-site",
                         gateway="gw-test") == 1

            assert (await get(port, "/healthz"))[0] == 200
            status, body = await get(port, "/readyz")
            assert status == 200 and body["ready"] is True, body

            # Broker gone: not ready once the outage outlasts the budget; events pile up in the backlog.
            own_broker.stop()
            await eventually(lambda: gw.sinks[0].down_since is not None, 10)
            await sim.clear("trapped")
            s2 = await eventually(
                lambda: _ready_false(port), 10, 0.2)
            assert s2["checks"]["sink:mqtt"]["ok"] is False and s2["checks"]["outbox"]["ok"] is True
            s = await eventually(lambda: _with_backlog(port), 10, 0.2)
            assert value(s, "courtyard_sink_up", sink="mqtt") == 0
            own_broker.start()
            await eventually(lambda: _ready_true(port), 20, 0.2)


async def _ready_false(port: int) -> Any:
    status, body = await get(port, "/readyz")
    return body if status == 503 and body["ready"] is False else None


async def _ready_true(port: int) -> bool:
    status, _ = await get(port, "/readyz")
    return status == 200


async def _with_backlog(port: int) -> Samples | None:
    s = await scrape(port)
    return s if value(s, "courtyard_backlog_events", sink="mqtt") >= 1 else None


def test_network_bind_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ops\.token"):
        parse_config(base_config(tmp_path, ops={"host": "0.0.0.0", "port": 9100}))
    cfg = parse_config(base_config(tmp_path, ops={"host": "0.0.0.0", "port": 9100, "token": "s3cret-ops-token"}))
    assert cfg.ops.token is not None
    # Unset port (an empty `${OPS_PORT:-}`) means no server.
    assert parse_config(base_config(tmp_path, ops={"port": ""})).ops.port is None


async def test_token_checked_and_slow_clients_dropped(tmp_path: Path) -> None:
    token = "ops-token-abcdef"
    cfg = parse_config(base_config(tmp_path, ops={"host": "0.0.0.0", "port": 0, "token": token,
                                                  "header_timeout_s": 0.5, "max_connections": 4}))
    async with Gateway(cfg) as gw:
        assert gw.ops_server is not None
        port = gw.ops_server.port
        status, _ = await get(port, "/metrics")
        assert status == 401
        status, _ = await get(port, "/healthz", token="wrong-token-000")
        assert status == 401
        s = await scrape(port, token)
        assert value(s, "courtyard_ops_refusals_total", reason="unauthorized") == 2
        # A connection that never sends a request head is closed after header_timeout_s.
        loop = asyncio.get_running_loop()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setblocking(False)
            data = await asyncio.wait_for(loop.sock_recv(sock, 100), 5)
            assert data == b""
        # Past the connection cap: a canned 503, the process stays fine.
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        try:
            await asyncio.sleep(0.2)
            refused = 0
            for sk in socks:
                sk.settimeout(2)
                try:
                    if sk.recv(100).startswith(b"HTTP/1.1 503"):
                        refused += 1
                except TimeoutError:
                    pass
            assert refused >= 2
        finally:
            for sk in socks:
                sk.close()
        s = await scrape(port, token)
        assert value(s, "courtyard_ops_refusals_total", reason="header_timeout") >= 1
        assert value(s, "courtyard_ops_refusals_total", reason="connections_per_source") + value(
            s, "courtyard_ops_refusals_total", reason="connections_total") >= 2


@pytest.mark.parametrize("example", sorted(p.name for p in (Path(__file__).parent.parent / "examples").glob("*.yaml")))
def test_examples_serve_ops_only_when_ops_port_is_set(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import load_config

    path = Path(__file__).parent.parent / "examples" / example
    for name in ("ACCESS_HASH_KEY", "LPR_TOKEN", "LPR_HMAC_SECRET", "LPR_PASSWORD", "LPR_CAMERA_PASSWORD",
                 "CAMERA_PASSWORD"):
        monkeypatch.setenv(name, "k" * 32)
    monkeypatch.delenv("OPS_PORT", raising=False)
    assert load_config(path).ops.port is None
    monkeypatch.setenv("OPS_PORT", "9123")
    ops = load_config(path).ops
    assert (ops.host, ops.port) == ("127.0.0.1", 9123)
