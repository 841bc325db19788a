"""Slow and idle HTTP clients against a real gateway process with a low descriptor limit.

The gateway runs as its own process under `ulimit -n 256` with 10 Modbus elevators, an
MQTT sink and a plate camera on the push listener. This process then holds far more idle
connections to the listener than its cap (and than the gateway has descriptors), from 50
source addresses, while the camera keeps pushing and the elevators are made to reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from simulators.elevator import ElevatorModel, ElevatorSimulator
from simulators.plate_reader import zhenshi_heartbeat_body
from tests.helpers import MqttCollector, base_config
from tests.servers import Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "flood-test-token"
NOFILE = 256
LIFTS = range(1, 11)


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def _config(tmp_path: Path, mosquitto: Mosquitto, lift_port: int, cam_port: int) -> Path:
    lifts: list[dict[str, Any]] = [
        {"id": f"lift-{i}", "driver": "modbus_elevator", "port": lift_port, "unit_id": i, "poll_interval_s": 0.2,
         "timeout_s": 0.5, "offline_after": 2, "backoff": {"initial_s": 0.2, "max_s": 1.0}}
        for i in LIFTS
    ]
    camera = {
        "id": "cam", "driver": "http_plate_reader", "listen_host": "127.0.0.1", "listen_port": cam_port,
        "auth": {"mode": "token", "token": TOKEN}, "heartbeat_interval_s": 60,
        "media": {"path": str(tmp_path / "media")},
        # A configured cap far above what the descriptors allow: the listener must lower it itself.
        "listener": {"max_connections": 100_000, "max_connections_per_source": 8, "reserve_fds": 96,
                     "header_timeout_s": 3},
    }
    path = tmp_path / "flood.json"
    path.write_text(json.dumps(base_config(tmp_path, mqtt=mosquitto, devices=[*lifts, camera], site="flood")))
    return path


async def _hold_idle(port: int, source: str, stop: asyncio.Event, stats: Counter[str]) -> None:
    """One idle connection from `source`, reopened whenever the gateway closes it."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(0.2)
            continue
        stats["opened"] += 1
        try:
            got = await reader.read(100)  # sends nothing: waits until the gateway gives up on it
            stats["refused_503" if got.startswith(b"HTTP/1.1 503") else "closed_by_gateway"] += 1
        except ConnectionError:
            stats["closed_by_gateway"] += 1
        finally:
            writer.close()
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_idle_flood_over_the_cap_leaves_camera_and_elevators_working(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    lift_port, cam_port = free_port(), free_port()
    sim = ElevatorSimulator(port=lift_port, elevators={i: ElevatorModel(seed=i, call_rate_per_s=1.0) for i in LIFTS})
    config = _config(tmp_path, mosquitto, lift_port, cam_port)
    log_path = tmp_path / "gateway.log"
    async with sim, MqttCollector(mosquitto.host, mosquitto.port, "courtyard/flood/#") as mqtt:
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "run", "-c", str(config), cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=_low_nofile,
            )
        try:
            def online(c: MqttCollector) -> set[str]:
                return {e["device"]["id"] for e in c.events() if e["type"] == "device.online"}

            await mqtt.wait_for(lambda c: {f"lift-{i}" for i in LIFTS} <= online(c), timeout=30)
            stop = asyncio.Event()
            stats: Counter[str] = Counter()
            sources = [f"127.0.0.{i}" for i in range(2, 52)]
            holders = [asyncio.create_task(_hold_idle(cam_port, s, stop, stats)) for s in sources for _ in range(8)]
            await asyncio.sleep(2)  # 400 idle connections asked for; the gateway has 256 descriptors in all
            attack_started = len(mqtt.messages)

            statuses: Counter[int | str] = Counter()
            last: list[int | str] = []

            async def camera_pushes(seconds: float) -> None:
                connector = aiohttp.TCPConnector(force_close=True)  # a new connection per push, as cameras do
                async with aiohttp.ClientSession(connector=connector) as session:
                    deadline = time.monotonic() + seconds
                    while time.monotonic() < deadline:
                        try:
                            async with session.post(
                                f"http://127.0.0.1:{cam_port}/lpr/cam", data=zhenshi_heartbeat_body(),
                                headers={"X-Auth-Token": TOKEN}, timeout=aiohttp.ClientTimeout(total=5),
                            ) as resp:
                                outcome: int | str = resp.status
                        except (aiohttp.ClientError, TimeoutError) as exc:
                            outcome = type(exc).__name__
                        statuses[outcome] += 1
                        last.append(outcome)
                        await asyncio.sleep(0.25)

            pushing = asyncio.create_task(camera_pushes(10))
            await asyncio.sleep(2)
            await sim.inject("disconnect")  # every elevator link drops and must be re-opened mid-flood
            await asyncio.sleep(1.5)
            reconnect_from = len(mqtt.messages)
            await sim.clear("disconnect")
            await pushing

            def back_online(c: MqttCollector) -> set[str]:
                fresh = [json.loads(p) for t, p in c.messages[reconnect_from:] if "/event/" in t]
                return {e["device"]["id"] for e in fresh if e["type"] == "device.online"}

            await mqtt.wait_for(lambda c: {f"lift-{i}" for i in LIFTS} <= back_online(c), timeout=20)
            stop.set()
            for task in holders:
                task.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    during = [json.loads(p) for t, p in mqtt.messages[attack_started:] if "/event/" in t]
    lifts_with_events = {e["device"]["id"] for e in during if e["device"]["id"].startswith("lift-")}
    assert lifts_with_events == {f"lift-{i}" for i in LIFTS}
    assert statuses[200] >= 0.9 * sum(statuses.values()), statuses
    assert last[-4:] == [200, 200, 200, 200], statuses
    assert stats["closed_by_gateway"] + stats["refused_503"] > 100, stats  # the flood was really turned away
    text = log_path.read_text(errors="replace")
    assert f"descriptor limit {NOFILE}" in text  # the cap was lowered to fit the descriptors
    # Under ~2,000 new connections a second, asyncio's accept batches can still briefly touch the limit:
    # if so, it is one summary line a minute, never a line per failure.
    assert text.count("Too many open files") <= 1, text[-3000:]
    assert len(text) < 100_000  # refusals are summarised, not logged one by one


_EXHAUSTED = """
import asyncio, logging, os, sys
from drivers.http_plate_reader.listener import PushListener
from drivers.http_plate_reader.listener_config import ListenerSettings

async def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    listener = await PushListener("127.0.0.1", 0, ListenerSettings(reserve_fds=0)).start()
    print(listener.port, flush=True)
    hog = []
    try:
        while True:
            hog.append(os.open("/dev/null", os.O_RDONLY))  # every descriptor taken, as by a leak elsewhere
    except OSError:
        pass
    await asyncio.sleep(float(sys.argv[1]))
    for fd in hog:
        os.close(fd)
    print("accept_errors", listener.counters["accept_errors"], flush=True)
    await listener.aclose()

asyncio.run(main())
"""


@pytest.mark.slow
async def test_accept_errors_are_summarised_not_logged_per_attempt() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _EXHAUSTED, "4", cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=_low_nofile,
    )
    assert proc.stdout is not None
    port = int(await asyncio.wait_for(proc.stdout.readline(), 20))
    writers = []
    for _ in range(20):  # queued in the backlog; every accept attempt fails with EMFILE
        with contextlib.suppress(OSError):
            writers.append((await asyncio.open_connection("127.0.0.1", port))[1])
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    for w in writers:
        w.close()
    errors = int(out.decode().split("accept_errors")[1])
    lines = [line for line in err.decode().splitlines() if "accept" in line]
    assert errors >= 2  # asyncio retried accept about once a second for 4 s, failing each time...
    assert len(lines) == 1 and "Too many open files" in lines[0], err.decode()[-2000:]  # ...and one line says so
