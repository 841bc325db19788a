"""BLE transport for COGP gates: connect, subscribe, hand notifications to `ctx.ingest`, backfill holes.

One `run()` is one BLE connection. Any link failure becomes `DeviceUnavailable` so the
supervisor reconnects with back-off; the decoder (sequence state, open alarms) lives on the
driver instance and survives reconnects, which is what makes reconnect backfill possible.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Protocol

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import BaseBleakScanner
from bleak.exc import BleakError

from drivers.ble_access_gate import codec
from drivers.ble_access_gate.config import BleAccessGateConfig
from drivers.ble_access_gate.decoder import GateDecoder
from drivers.ble_access_gate.normalize import Channel
from gateway import registry
from gateway.driver import DeviceContext, PushDriver
from gateway.errors import DeviceUnavailable

#: Errors that mean "the radio link is gone or never came up" on any bleak backend.
LINK_ERRORS: tuple[type[BaseException], ...] = (BleakError, OSError, TimeoutError, EOFError)
QUEUE_LIMIT = 10_000
BATCH_LIMIT = 256  # notifications committed together when they arrive in a burst


class ClientFactory(Protocol):
    """Builds a `BleakClient`; tests and simulators pass their own backend through it."""

    def __call__(
        self,
        target: BLEDevice | str,
        *,
        backend: type[BaseBleakClient] | None,
        disconnected_callback: Callable[[BleakClient], None],
        timeout: float,
        **kwargs: Any,
    ) -> BleakClient: ...


def default_client_factory(
    target: BLEDevice | str,
    *,
    backend: type[BaseBleakClient] | None,
    disconnected_callback: Callable[[BleakClient], None],
    timeout: float,
    **kwargs: Any,
) -> BleakClient:
    """The plain bleak client; `backend=None` selects the platform backend (BlueZ, WinRT, ...)."""
    return BleakClient(
        target, disconnected_callback=disconnected_callback, timeout=timeout, backend=backend, **kwargs
    )


class GateBackend(Protocol):
    """A registered non-radio backend (`gateway.registry.backend("ble_access_gate", name)`)."""

    client: type[BaseBleakClient]
    scanner: type[BaseBleakScanner] | None
    in_process: bool

    async def start(self, config: BleAccessGateConfig) -> Any:
        """Start the device in this process (for `in_process` backends); closed by the runtime."""
        ...


def resolve_backend(name: str) -> tuple[type[BaseBleakClient] | None, type[BaseBleakScanner] | None]:
    """Map the config's `backend` to (client class, scanner class); None means bleak's default."""
    if name == "native":
        return None, None
    if ":" not in name:
        found: GateBackend = registry.backend("ble_access_gate", name)
        return found.client, found.scanner
    module, _, attr = name.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    if not (isinstance(obj, type) and issubclass(obj, BaseBleakClient)):
        raise TypeError(f"{name} is not a BaseBleakClient subclass")
    return obj, None


class BleAccessGateDriver(PushDriver):
    """Push driver for one gate speaking the Courtyard Open Gate Profile."""

    config: BleAccessGateConfig

    def __init__(
        self,
        config: BleAccessGateConfig,
        ctx: DeviceContext,
        *,
        client_factory: ClientFactory = default_client_factory,
        backend: type[BaseBleakClient] | None = None,
    ) -> None:
        super().__init__(config, ctx)
        self.config = config
        self.decoder = self.gate = GateDecoder(config, ctx)
        self._factory = client_factory
        self._backend, self._scanner = (backend, None) if backend else resolve_backend(config.backend)
        self._in_process: GateBackend | None = None
        if backend is None and config.backend != "native" and ":" not in config.backend:
            named: GateBackend = registry.backend("ble_access_gate", config.backend)
            self._in_process = named if named.in_process else None

    # --- public -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve one connection until it drops (then raise `DeviceUnavailable`) or we are cancelled."""
        cfg = self.config
        queue: asyncio.Queue[tuple[Channel | None, bytes]] = asyncio.Queue(QUEUE_LIMIT)

        def on_disconnect(_: BleakClient) -> None:
            with suppress(asyncio.QueueFull):
                queue.put_nowait((None, b""))

        def subscriber(channel: Channel) -> Callable[[BleakGATTCharacteristic, bytearray], None]:
            def deliver(_: BleakGATTCharacteristic, data: bytearray) -> None:
                try:
                    queue.put_nowait((channel, bytes(data)))
                except asyncio.QueueFull:  # the gap it leaves is backfilled later
                    self.ctx.counters.inc("overflow")

            return deliver

        if self._in_process is not None:  # e.g. `backend: simulated`: the gate runs in this process
            await self.ctx.shared(f"ble_access_gate.{cfg.backend}:{cfg.target}", self._start_in_process)
        target = await self._locate()
        client = self._factory(
            target,
            backend=self._backend,
            disconnected_callback=on_disconnect,
            timeout=cfg.connect_timeout_s,
        )
        try:
            try:
                async with asyncio.timeout(cfg.connect_timeout_s):
                    await client.connect()
                    await client.start_notify(codec.EVENT_UUID, subscriber("event"))
                    await client.start_notify(codec.HISTORY_UUID, subscriber("history"))
                    await client.start_notify(codec.STATUS_UUID, subscriber("status"))
                    status = await client.read_gatt_char(codec.STATUS_UUID)
            except LINK_ERRORS as exc:
                raise DeviceUnavailable(f"connect {cfg.target}: {exc or type(exc).__name__}") from exc
            mtu = _mtu(client)
            self.ctx.log.info("connected to %s (mtu %s)", cfg.target, mtu)
            if isinstance(mtu, int) and mtu - 3 < codec.RECORD_MAX_LEN:
                self.ctx.log.warning("ATT MTU %d: records with long credential ids will be truncated", mtu)
            await self._handle("status", bytes(status))
            await self.ctx.set_online(True)
            try:
                await self._serve(client, queue)
            except LINK_ERRORS as exc:
                raise DeviceUnavailable(f"link to {cfg.target} lost: {exc or type(exc).__name__}") from exc
        finally:
            self.gate.normalizer.history_abandoned()
            await _disconnect(client)

    # --- internals ----------------------------------------------------------------------------

    async def _start_in_process(self) -> Any:
        assert self._in_process is not None
        return await self._in_process.start(self.config)

    async def _locate(self) -> BLEDevice | str:
        cfg = self.config
        if cfg.address or not cfg.scan_name:
            return cfg.target
        if self._backend is not None and self._scanner is None:
            return cfg.scan_name  # custom backend without a scanner: it resolves names itself
        try:
            kwargs: dict[str, Any] = {} if self._scanner is None else {"backend": self._scanner}
            device = await BleakScanner.find_device_by_name(
                cfg.scan_name, timeout=cfg.connect_timeout_s, **kwargs
            )
        except LINK_ERRORS as exc:
            raise DeviceUnavailable(f"scan for {cfg.scan_name!r}: {exc}") from exc
        if device is None:
            raise DeviceUnavailable(f"no device advertising {cfg.scan_name!r}")
        return device

    async def _serve(self, client: BleakClient, queue: asyncio.Queue[tuple[Channel | None, bytes]]) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        history_deadline: float | None = None
        next_heartbeat = loop.time() + cfg.heartbeat_s
        while True:
            await self._maybe_backfill(client)
            if self.gate.normalizer.history_pending and history_deadline is None:
                history_deadline = loop.time() + cfg.history_timeout_s
            elif not self.gate.normalizer.history_pending:
                history_deadline = None
            wake = next_heartbeat if history_deadline is None else min(next_heartbeat, history_deadline)
            try:
                async with asyncio.timeout(max(0.0, wake - loop.time())):
                    channel, data = await queue.get()
            except TimeoutError:
                now = loop.time()
                if history_deadline is not None and now >= history_deadline:
                    self.ctx.counters.inc("history_timeout")
                    self.gate.normalizer.history_abandoned()
                    history_deadline = None
                if now >= next_heartbeat:
                    async with asyncio.timeout(cfg.connect_timeout_s):
                        status = await client.read_gatt_char(codec.STATUS_UUID)
                    next_heartbeat = now + cfg.heartbeat_s
                    await self._handle("status", bytes(status))
                continue
            # Take whatever else is already queued: one outbox commit per burst, not per record.
            batch = [(channel, data)]
            while len(batch) < BATCH_LIMIT and not queue.empty() and batch[-1][0] is not None:
                batch.append(queue.get_nowait())
            await self._handle_batch(batch)

    async def _handle(self, channel: Channel, data: bytes) -> None:
        await self._handle_batch([(channel, data)])

    async def _handle_batch(self, batch: list[tuple[Channel | None, bytes]]) -> None:
        """Ingest a burst in arrival order with one commit; a drop marker ends the link."""
        inputs: list[tuple[str, Any]] = []
        lost = False
        for channel, data in batch:
            if channel is None:  # queued after the notifications that preceded the drop
                lost = True
                break
            inputs.append((channel, data.hex()))
        if inputs:
            await self.ctx.ingest_many(inputs)
        if lost:
            raise DeviceUnavailable(f"{self.config.target} disconnected")

    async def _maybe_backfill(self, client: BleakClient) -> None:
        start = self.gate.normalizer.backfill_from()
        if start is None or self.gate.normalizer.history_pending:
            return
        self.gate.normalizer.history_requested()
        self.ctx.counters.inc("history_requests")
        count = min(self.config.history_batch, self.gate.normalizer.backfill_span())
        request = codec.encode_history_request(start, count)
        async with asyncio.timeout(self.config.connect_timeout_s):
            await client.write_gatt_char(codec.HISTORY_UUID, request, response=True)


def _mtu(client: BleakClient) -> int | str:
    try:
        return client.mtu_size
    except Exception:  # some backends only know it after an exchange
        return "?"


async def _disconnect(client: BleakClient) -> None:
    """Disconnect without letting a dying link raise out of `finally`."""
    with suppress(Exception):
        async with asyncio.timeout(5):
            await client.disconnect()
