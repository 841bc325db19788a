"""Sink behaviour against real servers: dead letters, Retry-After, MQTT TLS and retained topics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp import web

from gateway.config import InfluxConfig, parse_config
from gateway.history import dead_letters
from gateway.runtime import Gateway
from gateway.sinks.influx import InfluxSink, parse_retry_after
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import MqttCollector, base_config, eventually, fake_write_endpoint
from tests.servers import InfluxV1, Mosquitto, free_port


def lift(port: int, dev_id: str = "lift-1") -> dict[str, object]:
    return {"id": dev_id, "driver": "modbus_elevator", "port": port, "poll_interval_s": 0.2}


async def test_rejected_batch_goes_to_dead_letters(tmp_path: Path, influx_v1: InfluxV1) -> None:
    db = "dl_test"
    influx_v1.query_sync(f"CREATE DATABASE {db}")
    # Make `floor` a string field: the gateway's integer floors now conflict -> HTTP 400.
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(
        f"{influx_v1.url}/write?db={db}", data=b'elevator,site=test-site floor="ground"', method="POST"), timeout=5)
    port = free_port()
    cfg = parse_config(base_config(tmp_path, devices=[lift(port)],
                                   influx={"url": influx_v1.url, "api": "v1", "database": db}))
    async with ElevatorSimulator(port=port), Gateway(cfg) as gw:
        await eventually(lambda: gw.counters.get("influx.dead_lettered") > 0, timeout=10)
        backlog = await gw.outbox.backlog()
    assert backlog["influx"] == 0, "a rejected batch must not block the ones behind it"
    letters = dead_letters(tmp_path / "outbox.db")
    assert letters[0]["status"] == 400
    assert "conflict" in str(letters[0]["reason"])
    assert "elevator," in str(letters[0]["body"])
    # and the CLI shows them
    res = subprocess.run([sys.executable, "-m", "gateway", "dead-letters", "--db", str(tmp_path / "outbox.db")],
                         check=False, capture_output=True, text=True)
    assert res.returncode == 0 and "status=400" in res.stdout


async def test_retry_after_is_honoured() -> None:
    hits: list[float] = []
    loop = asyncio.get_running_loop()

    async def write(request: web.Request) -> web.Response:
        hits.append(loop.time())
        if len(hits) == 1:
            return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
        return web.Response(status=204)

    import tempfile

    from gateway.metrics import Counters
    from gateway.outbox import Outbox
    from tests.test_outbox import make_event

    async with fake_write_endpoint(write) as url:
        with tempfile.TemporaryDirectory() as d:
            sink = InfluxSink(InfluxConfig(url=url, api="v1", backoff_max_s=0.05), counters=Counters())
            async with Outbox(Path(d) / "o.db", sinks=["influx"]) as ob:
                await ob.append([make_event(1)])
                task = asyncio.create_task(sink.run(ob))
                await eventually(lambda: len(hits) >= 2, timeout=5)

                async def delivered() -> bool:  # the 204 is acknowledged after the server answered it
                    return (await ob.backlog())["influx"] == 0

                await eventually(delivered, timeout=5)
                task.cancel()
                await sink.stop()
                assert len(hits) == 2  # delivered once the server allowed it, not retried again
    # Back-off alone would have retried after ~0.05 s; the server asked for 1 s.
    assert hits[1] - hits[0] >= 0.95


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-days", "2", "-subj", f"/CN={ca}")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return {n: d / f"{n}.pem" for n in ("ca", "other-ca", "server")} | {"key": d / "server.key"}


@pytest.fixture
def tls_broker(tls_material: dict[str, Path]) -> Iterator[Mosquitto]:
    server = Mosquitto(tls={"ca": tls_material["ca"], "cert": tls_material["server"], "key": tls_material["key"]})
    server.start()
    yield server
    server.close()


@pytest.mark.slow
@pytest.mark.parametrize("trusted", [True, False])
async def test_mqtt_tls_verifies_the_server(tmp_path: Path, tls_broker: Mosquitto, tls_material: dict[str, Path],
                                            trusted: bool) -> None:
    port = free_port()
    ca = tls_material["ca" if trusted else "other-ca"]
    cfg = parse_config(base_config(tmp_path, devices=[lift(port)]) | {"mqtt": {
        "host": "127.0.0.1", "port": tls_broker.tls_port, "tls": {"ca": str(ca)}, "backoff_max_s": 0.5}})
    async with ElevatorSimulator(port=port), MqttCollector("127.0.0.1", tls_broker.port) as col, Gateway(cfg) as gw:
        if trusted:
            await col.wait_for(lambda c: any("/event/elevator.status" in t for t, _ in c.messages), timeout=10)
        else:
            await eventually(lambda: gw.counters.get("mqtt.disconnects") >= 2, timeout=10)
            assert not any("/event/" in t for t, _ in col.messages), "published to an unverified server"


@pytest.mark.slow
async def test_retained_topics_for_late_subscribers(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=1.0)})
    # Without the alarm book, a clear empties the retained alarm (with it, closing does: test_alarm_book.py).
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site="retained-site",
                                   devices=[lift(port) | {"thresholds": {"trapped_s": 0.5}}],
                                   alarms={"lifecycle": {"enabled": False}}))
    async with sim, Gateway(cfg) as gw:
        await asyncio.sleep(3)
        await sim.inject("trapped")
        await eventually(lambda: gw.counters.get("device.lift-1.events") > 3, timeout=5)
        await asyncio.sleep(3)
        assert await gw.drain(10)
        # A platform that connects now learns state, availability and the active alarm at once.
        got: dict[str, bytes] = {}
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.subscribe("courtyard/retained-site/#", qos=1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.5):
                    async for msg in client.messages:
                        got[str(msg.topic)] = msg.payload  # type: ignore[assignment]
        base = "courtyard/retained-site/elevator/lift-1"
        assert json.loads(got[f"{base}/state"])["parts"]["device"]["type"] == "elevator.status"
        assert json.loads(got[f"{base}/availability"])["type"] == "device.online"
        alarms = [json.loads(v) for t, v in got.items() if t.startswith(f"{base}/alarm/")]
        assert [a["type"] for a in alarms] == ["elevator.passenger_trapped"]
        assert json.loads(got["courtyard/retained-site/gateway/gw-test/status"])["status"] == "online"
        assert not any("/event/" in t for t in got), "events are not retained"
        await sim.clear("trapped")
        await eventually(lambda: gw.counters.get("device.lift-1.events") > 0, timeout=5)
        await asyncio.sleep(2)
        assert await gw.drain(10)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.subscribe(f"{base}/alarm/#", qos=1)
        leftover = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                async for msg in client.messages:
                    leftover.append(msg.topic)
        assert leftover == [], "a cleared alarm stays retained"
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.subscribe("courtyard/retained-site/gateway/#", qos=1)
        async with asyncio.timeout(3):
            async for msg in client.messages:
                assert json.loads(msg.payload)["status"] == "offline"  # type: ignore[arg-type]
                break


# --- partial writes: only the refused line is dead-lettered (issue 9.12) ----------------------


def _status_events(n: int, odd_one: int) -> list[Any]:
    """`n` elevator status events 1 ms apart; event `odd_one` alone carries `door_state`."""
    from datetime import UTC, datetime, timedelta

    from gateway.ids import uuid7
    from schemas.common import DeviceRef
    from schemas.elevator import ElevatorPayload
    from schemas.event import Event

    t0 = datetime.now(UTC).replace(microsecond=0)
    out = []
    for i in range(n):
        t = t0 + timedelta(milliseconds=i)
        out.append(Event.model_validate({
            "id": uuid7(), "time": t, "received": t, "site": "pw", "gateway": "gw",
            "device": DeviceRef(id="lift-pw", kind="elevator", driver="modbus_elevator"),
            "class": "status", "type": "elevator.status",
            "payload": ElevatorPayload(floor=i, door_state="open" if i == odd_one else None),
        }))
    return out


async def _deliver_all(tmp_path: Path, cfg: InfluxConfig, events: list[Any]) -> Any:
    from gateway.metrics import Counters
    from gateway.outbox import Outbox

    counters = Counters()
    sink = InfluxSink(cfg, counters=counters)
    async with Outbox(tmp_path / "o.db", sinks=["influx"], counters=counters) as ob:
        await ob.append(events)
        task = asyncio.create_task(sink.run(ob))
        try:
            await eventually(lambda: counters.get("influx.written") + counters.get("influx.dead_lettered")
                             >= len(events), timeout=20)
            assert (await ob.backlog())["influx"] == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await sink.stop()
    return counters


async def test_partial_write_dead_letters_only_the_refused_line(tmp_path: Path, influx_v1: InfluxV1) -> None:
    import urllib.request

    db = "partial_write"
    influx_v1.query_sync(f"CREATE DATABASE {db}")
    # door_state exists as a float: the one event that carries it (as a string) conflicts.
    urllib.request.urlopen(urllib.request.Request(
        f"{influx_v1.url}/write?db={db}", data=b"elevator,site=other door_state=1.5", method="POST"), timeout=5)
    events = _status_events(40, odd_one=23)
    cfg = InfluxConfig(url=influx_v1.url, api="v1", database=db, batch=40)
    counters = await _deliver_all(tmp_path, cfg, events)
    assert counters.get("influx.written") == 39
    rows = await asyncio.to_thread(
        lambda: influx_v1.query_sync(f"SELECT floor, event_id FROM {db}..elevator WHERE site = 'pw'"))
    assert sorted(r["floor"] for r in rows) == [i for i in range(40) if i != 23]
    [letter] = dead_letters(tmp_path / "o.db")
    assert letter["status"] == 400 and "conflict" in str(letter["reason"])
    assert letter["count"] == 1 and events[23].id in str(letter["body"])


async def test_victoria_metrics_takes_the_rest_of_a_batch_with_a_bad_line(tmp_path: Path, victoria: Any) -> None:
    """VictoriaMetrics (v2 API) answers 204 and drops the lines it cannot store: the rest arrives."""
    events = _status_events(40, odd_one=23)
    cfg = InfluxConfig(url=victoria.url, api="v2", database="courtyard", batch=40)
    counters = await _deliver_all(tmp_path, cfg, events)
    assert counters.get("influx.written") == 40

    async def floors() -> list[float]:
        series = await victoria.export('{__name__="elevator_floor", site="pw"}')
        return sorted(v for s in series for v in s["values"])

    got: list[float] = []
    for _ in range(100):  # VictoriaMetrics makes fresh samples searchable within a few seconds
        got = await floors()
        if len(got) >= 40:
            break
        await asyncio.sleep(0.2)
    assert got == list(range(40))
    assert dead_letters(tmp_path / "o.db") == []
