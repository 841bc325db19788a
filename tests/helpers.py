"""Test helpers: configs, an MQTT collector and waiting utilities."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
from aiohttp import web

from simulators.net import free_port

#: Payload kinds of events the running gateway derives itself (alarm book, rules): a replay
#: reproduces what drivers decoded, so comparisons with a replay leave these out.
GATEWAY_DERIVED = frozenset({"alarm_lifecycle", "rule"})


def decoded(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events drivers decoded (what a replay of their inputs gives again)."""
    return [e for e in events if e["payload"].get("kind") not in GATEWAY_DERIVED]


def base_config(
    tmp_path: Path,
    *,
    mqtt: Any = None,
    influx: dict[str, Any] | None = None,
    devices: list[dict[str, Any]] | None = None,
    site: str = "test-site",
    **extra: Any,
) -> dict[str, Any]:
    """A gateway config dict: MQTT sink iff `mqtt` (a server with host/port) is given."""
    cfg: dict[str, Any] = {
        "site": site,
        "gateway_id": "gw-test",
        "outbox": {"path": str(tmp_path / "outbox.db"), "synchronous": "normal"},
        "mqtt": {"host": mqtt.host, "port": mqtt.port} if mqtt is not None else {"enabled": False},
        "devices": devices or [],
        **extra,
    }
    if influx is not None:
        cfg["influx"] = influx
    return cfg


class MqttCollector:
    """Subscribes (QoS 1) and keeps every message received, in order."""

    def __init__(self, host: str, port: int, topic: str = "courtyard/#") -> None:
        self.host, self.port, self.topic = host, port, topic
        self.messages: list[tuple[str, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> MqttCollector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, clean_session=False,
                                          identifier=f"collector-{id(self)}") as client:
                    await client.subscribe(self.topic, qos=1)
                    self._ready.set()
                    async for msg in client.messages:
                        payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
                        self.messages.append((str(msg.topic), payload))
                        self._changed.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def events(self) -> list[dict[str, Any]]:
        """Decoded event messages (event topics only), in arrival order."""
        return [json.loads(p) for t, p in self.messages if "/event/" in t]

    async def wait_for(self, predicate: Callable[[MqttCollector], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate(self)` is true; raise TimeoutError with a summary otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met; {len(self.messages)} messages received")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1) -> Any:
    """Retry `check` (sync or async) until it returns truthy; return that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s (last: {last!r})")


@contextlib.asynccontextmanager
async def fake_write_endpoint(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A loopback HTTP server answering POST /write with `handler` (to script a database's answers).

    Yields its base URL.
    """
    app = web.Application()
    app.router.add_post("/write", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class VirtualClock:
    """A supervision clock (`gateway.supervisor.clock`) whose sleeps return at once.

    Each sleep advances virtual time by its delay and is recorded, then yields to the loop once:
    poll ticks and back-off cost no wall-clock time, while device I/O stays real.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += max(0.0, delay)
        await asyncio.sleep(0)
