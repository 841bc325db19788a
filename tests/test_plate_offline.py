"""Zhenshi offline re-push end to end: simulated camera -> gateway HTTP listener -> outbox.

The camera keeps the reads it could not deliver while the gateway is down and, once the
gateway answers again, re-sends them one at a time, the next only after a reply carrying
`ContinuePushOffline` for the last. Every buffered read must reach the outbox exactly once,
also when the camera sends a record twice (as it does when a live read interrupts the drain).
Also the Dahua simulator mode, end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter, deque
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.config import parse_config
from gateway.history import query
from gateway.runtime import Gateway
from simulators.plate_reader import (
    BufferingCamera,
    Camera,
    GarageSim,
    PushResult,
    parse_args,
    zhenshi_heartbeat_form,
    zhenshi_plate_body,
)
from tests.helpers import base_config, eventually
from tests.servers import free_port

RESIDENT = "京A12345"


def camera_config(tmp_path: Path, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": "lpr-in",
        "driver": "http_plate_reader",
        "protocol": "zhenshi",
        "vendor": "zhenshi",
        "listen_host": "127.0.0.1",
        "listen_port": port,
        "direction": "entry",
        "media": {"path": str(tmp_path / "media")},
        "access": {"allowlist": [RESIDENT]},
        **extra,
    }


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def plates_read(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in query(tmp_path / "outbox.db", type_glob="lpr.plate_read")]


PLATES = ["苏E10001", "苏E10002", "苏E10003", "苏E10004", "苏E10005", "苏E10006", "苏E10007"]


async def test_buffered_reads_drain_exactly_once_after_the_gateway_comes_back(tmp_path: Path) -> None:
    port = free_port()
    cfg = parse_config(base_config(tmp_path, devices=[camera_config(tmp_path, port)]))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        camera = BufferingCamera(Camera(session, f"http://127.0.0.1:{port}/lpr/lpr-in"), capacity=50, resend_every=2)
        plateid = 100

        async def drive(plate: str) -> PushResult | None:
            nonlocal plateid
            plateid += 1
            now = plateid

            def make(offline: bool) -> bytes:
                return zhenshi_plate_body(plate, plateid=now, offline=offline)

            return await camera.push(now, make)

        async with Gateway(cfg) as gw:  # up: a live read opens for the resident
            await eventually(lambda: _listening(port), timeout=10)
            live = await drive(RESIDENT)
            assert live is not None and live.opened and live.json()["Response_AlarmInfoPlate"]["plateid"] == 101
            assert await gw.drain(5)
        # down: nothing answers, the camera keeps the reads
        for plate in PLATES[:4]:
            assert await drive(plate) is None
        assert [r.plateid for r in camera.buffer] == [102, 103, 104, 105]

        async with Gateway(cfg) as gw:  # up again: a heartbeat, then the camera drains
            await eventually(lambda: _listening(port), timeout=10)
            body, ctype = zhenshi_heartbeat_form("sn-1")
            assert (await camera.camera.post(body, ctype)).status == 200
            assert await camera.drain() == 4
            assert await gw.drain(5)
        assert camera.buffer == deque() and camera.resent >= 2  # some records went twice

        for plate in PLATES[4:]:  # down once more, then a live read triggers the drain
            assert await drive(plate) is None
        async with Gateway(cfg) as gw:
            await eventually(lambda: _listening(port), timeout=10)
            after = await drive(RESIDENT)
            assert after is not None and after.opened
            assert await gw.drain(5)
        assert not camera.buffer

    reads = plates_read(tmp_path)
    offline = [r for r in reads if r["payload"]["is_offline_replay"]]
    assert sorted(r["payload"]["plate"] for r in offline) == sorted(PLATES)
    assert Counter(r["seq"] for r in offline) == Counter(range(102, 109))  # each buffered read exactly once
    assert camera.delivered == list(range(102, 109))
    assert [r["payload"]["plate"] for r in reads if not r["payload"]["is_offline_replay"]] == [RESIDENT, RESIDENT]
    decisions = [json.loads(r.body) for r in query(tmp_path / "outbox.db", type_glob="lpr.gate_decision")]
    assert len(decisions) == 2  # buffered reads never decide a barrier after the fact
    rejected = [json.loads(r.body) for r in query(tmp_path / "outbox.db", type_glob="lpr.push_rejected")]
    assert rejected == []


async def test_camera_stops_draining_without_continue() -> None:
    """The simulated camera behaves as documented: no ContinuePushOffline, no next record."""
    seen: list[int] = []

    async def old_gateway(request: web.Request) -> web.Response:  # answers as before: info only
        doc = await request.json()
        seen.append(doc["AlarmInfoPlate"]["result"]["PlateResult"]["plateid"])
        return web.json_response({"Response_AlarmInfoPlate": {"info": "no"}})

    app = web.Application()
    app.router.add_post("/lpr/x", old_gateway)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            camera = BufferingCamera(Camera(session, f"http://127.0.0.1:{port}/lpr/x"), capacity=10)
            for n in (1, 2, 3):
                camera.keep(n, zhenshi_plate_body(PLATES[n], plateid=n, offline=True))
            assert await camera.drain() == 0
    finally:
        await runner.cleanup()
    assert seen == [1] and len(camera.buffer) == 3


async def test_buffer_drops_oldest_beyond_capacity() -> None:
    async with aiohttp.ClientSession() as session:
        camera = BufferingCamera(Camera(session, "http://127.0.0.1:9/lpr/x"), capacity=2)
        for n in (1, 2, 3):
            camera.keep(n, b"{}")
    assert [r.plateid for r in camera.buffer] == [2, 3] and camera.dropped == 1


def sim_args(port: int, protocol: str, **extra: Any) -> argparse.Namespace:
    args = parse_args(
        [
            "--target",
            f"http://127.0.0.1:{port}",
            "--protocol",
            protocol,
            "--count",
            "12",
            "--speed",
            "50",
            "--heartbeat",
            "0.5",
            "--image-bytes",
            "2000",
            "--resident",
            RESIDENT,
        ]
    )
    for key, value in extra.items():
        setattr(args, key, value)
    return args


async def test_dahua_simulator_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    common = {
        "driver": "http_plate_reader",
        "protocol": "dahua",
        "vendor": "dahua",
        "listen_host": "127.0.0.1",
        "listen_port": port,
        "forward_is": "entry",
        "media": {"path": str(tmp_path / "media")},
        "access": {"allowlist": [RESIDENT]},
    }
    devices = [
        {**common, "id": "lpr-entry", "path": "/lpr/lpr-entry"},
        {**common, "id": "lpr-exit", "path": "/lpr/lpr-exit"},
    ]
    cfg = parse_config(base_config(tmp_path, devices=devices))
    async with Gateway(cfg) as gw, aiohttp.ClientSession() as session:
        await eventually(lambda: _listening(port), timeout=10)
        sim = GarageSim(sim_args(port, "dahua"), session)
        await sim.run()
        assert await gw.drain(5)
        counters = gw.counters.snapshot()
    assert sim.stats.by_status == {200: 12}
    reads = plates_read(tmp_path)
    assert len(reads) >= 10  # de-duplication may fold a resident's quick return
    assert {r["device"]["id"] for r in reads} <= {"lpr-entry", "lpr-exit"}
    assert all(r["quality"]["status"] != "rejected" for r in reads)
    assert {r["payload"]["direction"] for r in reads} <= {"entry", "exit"}
    assert all(r["payload"]["image_uri"] for r in reads)
    assert sum(n for k, n in counters.items() if k.endswith(".lpr.heartbeats")) >= 2
    assert not any(".lpr.rejected" in k for k in counters)


async def test_heartbeat_forms_keep_a_camera_online_and_are_never_events(tmp_path: Path) -> None:
    port = free_port()
    cfg = parse_config(base_config(tmp_path, devices=[camera_config(tmp_path, port, heartbeat_interval_s=1.0)]))
    async with Gateway(cfg) as gw, aiohttp.ClientSession() as session:
        await eventually(lambda: _listening(port), timeout=10)
        camera = Camera(session, f"http://127.0.0.1:{port}/lpr/lpr-in")
        for _ in range(5):  # alternate the documented forms, faster than the heartbeat period
            for urlencoded in (False, True):
                body, ctype = zhenshi_heartbeat_form("sn-1", urlencoded=urlencoded)
                beat = await camera.post(body, ctype)
                assert beat.status == 200, beat.body
            await asyncio.sleep(0.1)
        assert await gw.drain(5)
    events = [json.loads(r.body) for r in query(tmp_path / "outbox.db", device="lpr-in")]
    assert [e["type"] for e in events] == ["device.online"]  # liveness only: no lpr.* event at all


async def test_simulator_offline_buffer_mode_drains_when_the_gateway_is_back(tmp_path: Path) -> None:
    port = free_port()
    devices = [
        camera_config(tmp_path, port, id="lpr-entry"),
        camera_config(tmp_path, port, id="lpr-exit", direction="exit"),
    ]
    cfg = parse_config(base_config(tmp_path, devices=devices))
    async with aiohttp.ClientSession() as session:
        sim = GarageSim(sim_args(port, "zhenshi", offline_buffer=20, count=8), session)
        await sim.run()  # no gateway: every read stays in its camera's buffer
        buffered = sum(len(b.buffer) for b in sim.buffers.values())
        assert buffered == 8 and sim.stats.pushes == 0
        async with Gateway(cfg) as gw:
            await eventually(lambda: _listening(port), timeout=10)
            sim.args.count = 2  # live reads (and heartbeats) reach the gateway: the buffers drain
            await sim.run()
            for buffering in sim.buffers.values():
                await buffering.drain()  # a camera that got no live read drains on its next heartbeat
            assert await gw.drain(5)
    assert all(not b.buffer for b in sim.buffers.values())
    offline = [r for r in plates_read(tmp_path) if r["payload"]["is_offline_replay"]]
    assert sorted(r["seq"] for r in offline) == list(range(1, 9))  # each buffered read exactly once


async def test_a_camera_posting_the_moment_the_port_opens_finds_its_path(tmp_path: Path) -> None:
    """No 404 window at start-up: a camera may take a 404 as "drop this record"."""
    port = free_port()
    devices = [camera_config(tmp_path, port, id="lpr-a"), camera_config(tmp_path, port, id="lpr-b")]
    cfg = parse_config(base_config(tmp_path, devices=devices))
    firsts: dict[str, int] = {}
    kept = tmp_path / "media" / "2026" / "11"  # a media folder that takes a while to scan at start
    kept.mkdir(parents=True)
    for n in range(3000):
        (kept / f"{n}.jpg").write_bytes(b"x")

    async def knock(session: aiohttp.ClientSession, device: str) -> None:
        camera = Camera(session, f"http://127.0.0.1:{port}/lpr/{device}")
        body, ctype = zhenshi_heartbeat_form(f"sn-{device}")
        while True:
            try:
                firsts[device] = (await camera.post(body, ctype)).status
                return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.001)

    for _ in range(3):  # the window, where there was one, was a thread hop wide
        firsts.clear()
        async with aiohttp.ClientSession() as session:
            knocking = [asyncio.create_task(knock(session, d)) for d in ("lpr-a", "lpr-b")]
            async with Gateway(cfg):
                await asyncio.wait_for(asyncio.gather(*knocking), 10)
        assert firsts == {"lpr-a": 200, "lpr-b": 200}
