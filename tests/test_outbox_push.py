"""`overflow: block` seen by a plate camera over real HTTP: 503 + Retry-After, never a hung push."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drivers.http_plate_reader import HttpPlateReaderConfig
from drivers.http_plate_reader.driver import HttpPlateReader
from gateway.metrics import Counters
from gateway.outbox import Outbox
from gateway.runtime import DeviceRuntime, EventFactory, device_ref
from simulators.plate_reader import zhenshi_plate_body
from tests.test_outbox import make_event

PLATE = "京A12345"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_plate_push_gets_503_with_retry_after_when_blocked(tmp_path: Path) -> None:
    port = free_port()
    cfg = HttpPlateReaderConfig.model_validate({
        "id": "cam-in", "driver": "http_plate_reader", "listen_host": "127.0.0.1", "listen_port": port,
        "lane": "in-1", "direction": "entry", "access": {"allowlist": [PLATE]},
        "media": {"path": str(tmp_path / "media")},
    })
    ob = Outbox(tmp_path / "o.db", sinks=["mqtt"], max_events=100, overflow="block")
    await ob.open()
    shared: dict[str, Any] = {}

    async def get_shared(key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        if key not in shared:
            shared[key] = await factory()
        return shared[key]

    counters = Counters()
    factory = EventFactory(site="s", gateway="g", device=device_ref(cfg, "plate_reader"), simulated=False,
                           scenario=None)
    ctx = DeviceRuntime(cfg, factory, ob.append, counters=counters, shared=get_shared)
    driver = HttpPlateReader(cfg, ctx)
    task = asyncio.create_task(driver.run())
    try:
        await ob.append([make_event(i) for i in range(100)])  # the budget, all undelivered (broker down)
        for _ in range(200):
            listener = shared.get(f"http_plate_reader:127.0.0.1:{port}")
            if listener is not None and cfg.url_path in listener.paths:
                break
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}{cfg.url_path}"
        body = zhenshi_plate_body(PLATE, confidence=97)
        # The old code held the push until the camera gave up; this timeout is its stand-in.
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 503
                assert int(resp.headers["Retry-After"]) >= 1
                assert (await resp.json())["error"] == "outbox_full"
            assert counters.get("lpr.outbox_full") == 1
            stored = await ob.fetch("mqtt", 1000)
            assert not any("lpr.gate_decision" in r.body for r in stored)  # no barrier decision was recorded
            # the platform comes back, history is delivered: the camera's retry goes through
            await ob.ack("mqtt", stored)
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 200
                assert (await resp.json()) == {"Response_AlarmInfoPlate": {"info": "ok", "plateid": 1}}
        assert any("lpr.gate_decision" in r.body for r in await ob.fetch("mqtt", 1000))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for obj in shared.values():
            await obj.aclose()
        await ob.close()
