"""The BLE gate driver against the simulated peripheral, through bleak's public client API.

The radio is the in-memory backend (`SimulatedBleakClient`); everything above it is the real
driver: bleak's `BleakClient`, notifications, the history write, reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bleak import BleakClient
from bleak.backends.client import BaseBleakClient

from drivers.ble_access_gate import DRIVER, codec
from drivers.ble_access_gate.config import BleAccessGateConfig
from drivers.ble_access_gate.driver import BleAccessGateDriver
from gateway import registry
from gateway.errors import DeviceUnavailable
from schemas.access import AccessPayload
from simulators.access_gate import backend as sim
from simulators.access_gate.backend import SimulatedBleakClient, SimulatedBleakScanner
from simulators.access_gate.model import GateModel
from simulators.access_gate.peripheral import SimulatedGatePeripheral
from simulators.access_gate.testing import CollectingContext

KEY = "driver-test-key-0123456789"
_addresses = itertools.count(1)


def make_config(address: str, **over: Any) -> BleAccessGateConfig:
    base: dict[str, Any] = {
        "id": "gate-east", "driver": "ble_access_gate", "address": address, "credential_key": KEY,
        "backend": "simulated", "heartbeat_s": 30, "history_timeout_s": 2,
    }
    model = registry.device_config_model("ble_access_gate")  # with the simulated backend's `simulation`
    config: BleAccessGateConfig = model.model_validate(base | over)
    return config


class Rig:
    """A registered peripheral, a driver wired to it, and helpers to run the driver."""

    def __init__(self, *, table: str = "cogp", rate: float = 120, **over: Any) -> None:
        self.address = f"C0:57:0A:00:01:{next(_addresses):02X}"
        self.model = GateModel(seed=5, arrivals_per_min=rate, table=table, start_time=datetime.now(UTC).timestamp())
        self.periph = sim.register(SimulatedGatePeripheral(self.address, self.model))
        self.config = make_config(self.address, code_table=table, **over)
        self.ctx = CollectingContext(self.config, clock=lambda: datetime.fromtimestamp(self.model.now, UTC))
        self.driver = BleAccessGateDriver(self.config, self.ctx, backend=SimulatedBleakClient)
        self.task: asyncio.Task[None] | None = None

    async def live(self, seconds: float) -> None:
        """Let the gate live `seconds` in 10 s steps, letting the driver catch up after each one
        (the test clock is the model's, so device and gateway time stay comparable)."""
        while seconds > 0:
            self.periph.step(min(10.0, seconds))
            seconds -= 10.0
            await self.settle()

    async def settle(self) -> None:
        """Yield until the driver has consumed everything delivered so far."""
        idle, seen = 0, -1
        while idle < 5:
            await asyncio.sleep(0)
            idle = idle + 1 if len(self.ctx.recorded) == seen else 0
            seen = len(self.ctx.recorded)

    async def connect(self) -> None:
        """Start `run()` and wait until it reported the link up."""
        before = len(self.ctx.online)
        self.task = asyncio.create_task(self.driver.run())
        await self.ctx.wait_for(lambda c: len(c.online) > before or self.task is None or self.task.done())
        if self.task.done():
            await self.task

    async def drop(self) -> BaseException | None:
        """Drop the link from the peripheral side; returns what `run()` raised."""
        self.periph.disconnect_all()
        return await self.finish()

    async def finish(self) -> BaseException | None:
        assert self.task is not None
        try:
            await asyncio.wait_for(self.task, 5)
        except BaseException as exc:
            return exc
        return None

    def seqs(self) -> list[int]:
        """Device sequence numbers emitted (one per record; alarm clears repeat theirs)."""
        return [d.seq for d in self.ctx.drafts if d.seq is not None and d.cls != "status"
                and not (d.state == "cleared" and d.type in ("door.forced_open", "door.held_open"))]

    def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        sim.unregister(self.periph)


@pytest.fixture
async def rig() -> AsyncIterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def factory(**kw: Any) -> Rig:
        r = Rig(**kw)
        made.append(r)
        return r

    yield factory
    for r in made:
        r.close()
        if r.task is not None:
            with contextlib.suppress(BaseException):
                await r.task


async def test_driver_spec_and_config() -> None:
    assert (DRIVER.name, DRIVER.kind, DRIVER.transport, DRIVER.shape) == (
        "ble_access_gate", "access_gate", "ble", "push")
    assert DRIVER.simulator == "access_gate"
    with pytest.raises(ValueError, match="address"):
        BleAccessGateConfig.model_validate({"id": "g", "driver": "ble_access_gate", "credential_key": KEY})
    with pytest.raises(ValueError, match="16 characters"):
        make_config("AA:BB:CC:DD:EE:FF", credential_key="short")
    assert "driver-test" not in repr(make_config("AA:BB:CC:DD:EE:FF"))  # the key never shows up in logs


async def test_events_flow_from_notifications(rig: Callable[..., Rig]) -> None:
    r = rig()
    await r.connect()
    assert r.ctx.online == [(True, None)]
    assert r.ctx.types()[0] == "gate.status"
    await r.live(600)
    await r.ctx.wait_for(lambda c: any(d.seq == r.model.seq for d in c.drafts))
    assert r.seqs() == list(range(1, r.model.seq + 1))
    granted = [d for d in r.ctx.drafts if d.type == "access.granted"]
    assert granted and all(isinstance(d.payload, AccessPayload) and d.payload.credential_hash for d in granted)
    assert all(d.quality.status == "valid" for d in r.ctx.drafts)
    assert {ch for ch, _ in r.ctx.recorded} >= {"status", "event"}
    assert isinstance(await r.drop(), DeviceUnavailable)


async def test_lost_notifications_are_backfilled_once(rig: Callable[..., Rig]) -> None:
    r = rig()
    await r.connect()
    await r.live(60)
    r.periph.faults.drop = 3
    await r.live(120)
    await r.ctx.wait_for(lambda c: sorted(r.seqs()) == list(range(1, r.model.seq + 1)))
    assert r.ctx.counters.values["history_requests"] >= 1
    assert r.ctx.counters.values["backfilled"] == 3
    assert r.ctx.counters.values["lost"] == 0
    assert r.ctx.counters.values["duplicates"] == 0


async def test_garbled_duplicated_and_reordered_records(rig: Callable[..., Rig]) -> None:
    r = rig()
    await r.connect()
    await r.live(30)
    r.periph.faults.garble = 2
    await r.live(100)
    r.periph.faults.duplicate = 3
    await r.live(100)
    r.periph.faults.reorder = 2
    await r.live(100)
    await r.ctx.wait_for(lambda c: sorted(r.seqs()) == list(range(1, r.model.seq + 1)))
    rejected = [d for d in r.ctx.drafts if d.quality.status == "rejected"]
    assert len(rejected) == 2 and all(d.quality.reasons == ("bad_crc",) for d in rejected)
    assert r.ctx.counters.values["rejected"] == 2
    assert r.ctx.counters.values["duplicates"] == 3
    assert r.ctx.counters.values["backfilled"] == 2  # the garbled ones, fetched again from history
    assert len(r.seqs()) == len(set(r.seqs()))  # every record exactly once


async def test_reconnect_backfills_what_happened_while_away(rig: Callable[..., Rig]) -> None:
    r = rig()
    await r.connect()
    await r.live(60)
    await r.ctx.wait_for(lambda c: r.model.seq in r.seqs())
    assert isinstance(await r.drop(), DeviceUnavailable)
    r.model.advance(300)  # the gate keeps working while the link is down
    assert r.model.seq > max(r.seqs())
    await r.connect()
    await r.ctx.wait_for(lambda c: sorted(r.seqs()) == list(range(1, r.model.seq + 1)))
    assert r.ctx.online == [(True, None), (True, None)]


async def test_clock_skew_marks_events_suspect(rig: Callable[..., Rig]) -> None:
    r = rig(max_clock_skew_s=60)
    r.model.clock_skew = 3600
    await r.connect()
    await r.live(120)
    await r.ctx.wait_for(lambda c: r.model.seq in r.seqs())
    records = [d for d in r.ctx.drafts if d.seq is not None and d.cls != "status"]
    assert records and all(d.quality.reasons == ("clock_skew",) for d in records)
    # Untrusted device time: the event is timed at its receipt (pinned per input), not by the device.
    for d in records:
        assert isinstance(d.payload, AccessPayload) and d.payload.device_time is not None and d.time is not None
        assert d.payload.device_time - d.time > timedelta(seconds=3000)
    assert r.ctx.counters.values["clock_skew"] == len({d.seq for d in records})


async def test_dead_battery_reports_then_refuses(rig: Callable[..., Rig]) -> None:
    r = rig()
    await r.connect()
    r.periph.die()
    exc = await r.finish()
    assert isinstance(exc, DeviceUnavailable)
    types = r.ctx.types()
    assert "device.ac_lost" in types and "device.battery_low" in types
    low = next(d for d in r.ctx.drafts if d.type == "device.battery_low")
    assert (low.cls, low.severity, low.state) == ("fault", "minor", "raised")
    with pytest.raises(DeviceUnavailable):
        await r.driver.run()
    r.periph.revive()
    await r.connect()
    r.periph.publish()
    await r.ctx.wait_for(lambda c: any(d.type == "device.battery_low" and d.state == "cleared" for d in c.drafts))
    cleared = next(d for d in r.ctx.drafts if d.type == "device.battery_low" and d.state == "cleared")
    assert cleared.alarm_id == low.alarm_id


async def test_unknown_address_is_device_unavailable() -> None:
    cfg = make_config("C0:57:0A:FF:FF:FF")
    driver = BleAccessGateDriver(cfg, CollectingContext(cfg), backend=SimulatedBleakClient)
    with pytest.raises(DeviceUnavailable, match="not found"):
        await driver.run()


async def test_hik_numbered_gate(rig: Callable[..., Rig]) -> None:
    r = rig(table="hik")
    await r.connect()
    await r.live(900)
    await r.ctx.wait_for(lambda c: r.model.seq in r.seqs())
    codes = {d.raw_code for d in r.ctx.drafts if d.raw_code}
    assert "hik:5/0x01" in codes or "hik:5/0x4b" in codes
    assert all(c.startswith("hik:") for c in codes)
    assert all(d.quality.status == "valid" for d in r.ctx.drafts)


async def test_replay_gives_the_same_events(rig: Callable[..., Rig]) -> None:
    r = rig()
    await r.connect()
    r.periph.faults.duplicate = 2
    await r.live(600)
    await r.ctx.wait_for(lambda c: r.model.seq in r.seqs())
    await r.drop()
    cfg = make_config(r.address)
    fresh = BleAccessGateDriver(cfg, CollectingContext(cfg), backend=SimulatedBleakClient)
    replayed = []
    for channel, data in r.ctx.recorded:
        replayed.extend(fresh.decoder.feed(channel, data, datetime.now(UTC)))
    assert [(d.type, d.seq, d.state) for d in replayed] == [(d.type, d.seq, d.state) for d in r.ctx.drafts]


async def test_scan_by_name_with_the_simulated_scanner(rig: Callable[..., Rig]) -> None:
    r = rig()
    cfg = make_config(r.address).model_copy(update={"address": None, "scan_name": r.periph.name})
    ctx = CollectingContext(cfg)
    driver = BleAccessGateDriver(cfg, ctx, backend=SimulatedBleakClient)
    driver._scanner = SimulatedBleakScanner
    task = asyncio.create_task(driver.run())
    await ctx.wait_for(lambda c: bool(c.online))
    assert r.periph.centrals
    r.periph.disconnect_all()
    with pytest.raises(DeviceUnavailable):
        await task


async def test_custom_client_factory_is_used(rig: Callable[..., Rig]) -> None:
    r = rig()
    built: list[str] = []

    def factory(target: Any, *, backend: type[BaseBleakClient] | None, **kw: Any) -> BleakClient:
        built.append(str(target))
        return BleakClient(target, backend=SimulatedBleakClient, **kw)

    driver = BleAccessGateDriver(r.config, r.ctx, client_factory=factory)
    task = asyncio.create_task(driver.run())
    await r.ctx.wait_for(lambda c: bool(c.online))
    assert built == [r.address]
    r.periph.disconnect_all()
    with pytest.raises(DeviceUnavailable):
        await task


async def test_history_that_never_answers_times_out_and_retries(rig: Callable[..., Rig]) -> None:
    r = rig(history_timeout_s=0.05)
    real_write = r.periph.write
    calls: list[bytes] = []

    def mute_history(central: Any, uuid: str, data: bytes) -> None:
        if uuid == codec.HISTORY_UUID:
            calls.append(data)
            if len(calls) == 1:
                return  # first request swallowed by a flaky peripheral
        real_write(central, uuid, data)

    r.periph.write = mute_history  # type: ignore[method-assign]
    await r.connect()
    await r.live(60)
    r.periph.faults.drop = 1
    await r.live(60)
    await r.ctx.wait_for(lambda c: sorted(r.seqs()) == list(range(1, r.model.seq + 1)))
    assert r.ctx.counters.values["history_timeout"] == 1 and len(calls) == 2


def _online_more_than(n: int, ctx: CollectingContext) -> bool:
    return len(ctx.online) > n


async def test_no_task_leak_after_1000_connect_disconnect_cycles(rig: Callable[..., Rig]) -> None:
    r = rig(rate=600)
    baseline = len(asyncio.all_tasks())
    for i in range(1000):
        r.task = asyncio.create_task(r.driver.run())
        await r.ctx.wait_for(functools.partial(_online_more_than, i))
        if i % 10 == 0:
            await r.live(5)  # some traffic (and gaps, history requests) on a fraction of the links
            r.periph.faults.drop = 1
            await r.live(5)
        exc = await r.drop()
        assert isinstance(exc, DeviceUnavailable), exc
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == baseline
    assert not r.periph.centrals
    assert r.periph.connections == 1000
    assert len(r.seqs()) == len(set(r.seqs()))


async def test_simulated_backend_spawns_its_own_gate() -> None:
    cfg = make_config("C0:57:0A:AA:00:01", simulation={"seed": 3, "arrivals_per_min": 3000, "speed": 20})
    ctx = CollectingContext(cfg)
    driver = DRIVER.build(cfg, ctx)
    assert isinstance(driver, BleAccessGateDriver)
    task = asyncio.create_task(driver.run())
    try:
        await ctx.wait_for(lambda c: sum(d.type == "access.granted" for d in c.drafts) >= 3, timeout=10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await ctx.aclose()
    assert sim.lookup("C0:57:0A:AA:00:01") is None
    assert isinstance(ctx.drafts[-1].payload, AccessPayload)
    assert codec.SERVICE_UUID.startswith("7c3e0001")


async def test_cli_simulator_runs_with_faults(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from simulators import access_gate as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--address", "C0:57:0A:CC:00:01", "--rate", "3000", "--duration", "0.6",
                              "--fault-every", "0.1", "--faults", "garble,duplicate,forced,tamper,disconnect"])
    await cli.serve(args)
    out = capsys.readouterr().out
    assert "access.granted" in out and "*** injecting" in out
    assert sim.lookup("C0:57:0A:CC:00:01") is None  # stopped and unregistered
