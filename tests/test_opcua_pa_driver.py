"""The OPC UA PA driver against the PA simulator over real OPC UA on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client

from drivers.opcua_pa.config import OpcUaPaConfig
from drivers.opcua_pa.driver import OpcUaPaDriver
from gateway.driver import EventDraft
from gateway.errors import DeviceUnavailable
from gateway.testing import IngestingContext
from simulators.pa import PaSimulator
from tests.helpers import eventually
from tests.servers import free_port


class FakeCounters:
    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n


class FakeContext(IngestingContext):
    """Collects what the driver emits; stands in for the runtime."""

    def __init__(self, config: OpcUaPaConfig) -> None:
        self.config = config
        self.log = logging.getLogger("test.opcua_pa")
        self.counters = FakeCounters()
        self.events: list[EventDraft] = []
        self.online: list[bool] = []
        self.recorded: list[tuple[str, Any]] = []

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        self.events.extend(drafts)

    async def set_online(self, online: bool, *, reason: str | None = None, misses: int = 0) -> None:
        self.online.append(online)

    recording = True

    def record(self, channel: str, data: Any) -> None:
        self.recorded.append((channel, data))

    async def shared(self, key: str, factory: Callable[[], Any]) -> Any:
        return await factory()

    def find(self, typ: str, state: str | None = None) -> list[EventDraft]:
        return [e for e in self.events if e.type == typ and (state is None or e.state == state)]


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[PaSimulator]:
    async with PaSimulator(port=free_port(), tick_s=0) as s:
        yield s


def make_driver(url: str, mapname: str = "courtyard_sim", **kw: Any) -> tuple[OpcUaPaDriver, FakeContext]:
    cfg = OpcUaPaConfig.model_validate({"id": "pa-1", "driver": "opcua_pa", "url": url, "map": mapname,
                                        "watchdog_s": 0.3, "request_timeout_s": 2.0, **kw})
    ctx = FakeContext(cfg)
    return OpcUaPaDriver(cfg, ctx), ctx


@contextlib.asynccontextmanager
async def supervised(driver: OpcUaPaDriver) -> AsyncIterator[list[str]]:
    """Run the driver like the supervisor does: restart after DeviceUnavailable (short back-off)."""
    losses: list[str] = []

    async def loop() -> None:
        while True:
            try:
                await driver.run()
            except DeviceUnavailable as exc:
                losses.append(str(exc))
            await asyncio.sleep(0.1)

    task = asyncio.create_task(loop())
    try:
        yield losses
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_snapshot_then_live_faults(sim: PaSimulator) -> None:
    driver, ctx = make_driver(sim.url)
    async with supervised(driver):
        await eventually(lambda: ctx.online == [True], timeout=10)
        assert {e.payload.zone for e in ctx.find("pa.zone_state")} == {"z1", "z2", "z3", "z4"}  # type: ignore[attr-defined]
        await sim.set_line_fault("l2", "earth")
        await sim.start_emergency(["z1", "z2"], "evac-3", source="fire_linkage")
        (eb,) = await eventually(lambda: ctx.find("pa.emergency_broadcast", "raised"))
        assert eb.payload.emergency_source == "fire_linkage" and eb.payload.zones == ("z1", "z2")
        (lf,) = ctx.find("pa.line_fault", "raised")
        assert (lf.payload.line, lf.payload.zone, lf.payload.fault) == ("l2", "z2", "earth")  # type: ignore[attr-defined]
        await eventually(lambda: any(e.payload.zone == "z1" and e.payload.zone_state == "emergency"  # type: ignore[attr-defined]
                                     for e in ctx.find("pa.zone_state")))
        assert not await sim.set_volume("z1", -30)  # refused during the emergency broadcast
        await sim.set_line_fault("l2", None)
        await sim.stop_emergency()
        await eventually(lambda: ctx.find("pa.emergency_broadcast", "cleared"))
        (lc,) = await eventually(lambda: ctx.find("pa.line_fault", "cleared"))
        assert lc.alarm_id == lf.alarm_id
        assert ctx.find("pa.emergency_broadcast", "cleared")[0].alarm_id == eb.alarm_id
        assert {c for c, _ in ctx.recorded} == {"snapshot", "changes"}


async def test_amp_overheat_spare_and_power(sim: PaSimulator) -> None:
    driver, ctx = make_driver(sim.url)
    async with supervised(driver):
        await eventually(lambda: ctx.online)
        await sim.overheat("a2")
        await sim.mains_loss()
        await sim.set_battery(20)
        await eventually(lambda: ctx.find("pa.battery_low", "raised"))
        (af,) = ctx.find("pa.amp_fault", "raised")
        assert af.payload.fault == "overheat" and af.payload.temperature_c >= 85  # type: ignore[attr-defined]
        (sp,) = ctx.find("pa.spare_amp_switched")
        assert (sp.severity, sp.state, sp.payload.spare) == ("minor", "momentary", "a-spare")  # type: ignore[attr-defined]
        assert ctx.find("pa.mains_fault", "raised")[0].severity == "major"
        await sim.write_raw("zone.z3.volume", 6.0)
        await sim.write_raw("amp.a1.temperature", 180.0)
        await eventually(lambda: ctx.find("pa.volume") and ctx.find("pa.volume")[-1].quality.status == "suspect")
        await eventually(lambda: ctx.find("pa.amp_status")[-1].quality.reasons == ("temperature_out_of_range",))


async def test_second_vendor_map_over_the_wire() -> None:
    """The HarborVox map (browse paths, numeric ids, fail-safe contacts) works with the same driver."""
    async with PaSimulator(port=free_port(), tick_s=0, nodemap="harborvox_hv2400") as hv:
        driver, ctx = make_driver(hv.url, "harborvox_hv2400")
        async with supervised(driver):
            await eventually(lambda: ctx.online)
            assert not ctx.find("pa.mains_fault")  # "MainsPresent" reads true: no fault
            await hv.set_line_fault("carpark-a", "speaker_damaged")
            await hv.mains_loss()
            (lf,) = await eventually(lambda: ctx.find("pa.line_fault", "raised"))
            assert (lf.payload.line, lf.payload.fault) == ("carpark-a", "speaker_damaged")
            assert lf.raw_code == "hvx:line.carpark-a.speaker_damaged=True"
            await eventually(lambda: ctx.find("pa.mains_fault", "raised"))
            await hv.set_volume("lobby", -35.5)
            await eventually(lambda: any(e.payload.volume_db == -35.5 for e in ctx.find("pa.volume")))  # type: ignore[attr-defined]


async def test_restart_reconciles_faults_changed_while_away(sim: PaSimulator) -> None:
    driver, ctx = make_driver(sim.url)
    async with supervised(driver) as losses:
        await eventually(lambda: ctx.online)
        await sim.set_line_fault("l1", "short")
        await sim.mains_loss()
        await eventually(lambda: len(driver.decoder.normalizer.active_alarms()) == 2)
        mark = len(ctx.events)

        async def while_down() -> None:
            await sim.set_line_fault("l1", None)   # cleared while the gateway could not see it
            await sim.set_line_fault("l4", "open")  # raised while away
            await sim.overheat("a1")

        await sim.restart(down_s=0.3, while_down=while_down)
        await eventually(lambda: len(ctx.online) >= 2 and driver.connects >= 2, timeout=10)
        await eventually(lambda: ctx.find("pa.amp_fault", "raised"))
        assert losses, "the link loss must surface as DeviceUnavailable"
        after = [(e.type, e.state, getattr(e.payload, "line", None))
                 for e in ctx.events[mark:] if e.state != "momentary"]
        assert ("pa.line_fault", "cleared", "l1") in after and ("pa.line_fault", "raised", "l4") in after
        assert after.count(("pa.line_fault", "cleared", "l1")) == 1
        assert ("pa.mains_fault", "raised", None) not in after  # still active: not raised twice
        clears = {e.alarm_id for e in ctx.find("pa.line_fault", "cleared")}
        assert clears == {e.alarm_id for e in ctx.find("pa.line_fault", "raised") if e.payload.line == "l1"}  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_session_drop_and_slow_server(sim: PaSimulator) -> None:
    driver, ctx = make_driver(sim.url)
    async with supervised(driver) as losses:
        await eventually(lambda: ctx.online)
        sim.drop_sessions()
        await eventually(lambda: driver.connects >= 2, timeout=10)
        await sim.set_line_fault("l3", "open")
        await eventually(lambda: ctx.find("pa.line_fault", "raised"))
        n = len(losses)
        sim.set_response_delay(1.0)  # slower than the keep-alive probe allows
        await eventually(lambda: len(losses) > n, timeout=10)
        sim.set_response_delay(0.0)
        await sim.set_line_fault("l3", None)
        await eventually(lambda: ctx.find("pa.line_fault", "cleared"), timeout=10)


async def test_unreachable_server_raises_device_unavailable() -> None:
    driver, _ = make_driver(f"opc.tcp://127.0.0.1:{free_port()}/")
    with pytest.raises(DeviceUnavailable):
        await driver.run()


async def test_any_opcua_client_can_drive_the_simulator(sim: PaSimulator) -> None:
    async with Client(sim.url) as client:
        idx = await client.get_namespace_index(sim.map.namespace)
        pa = await client.nodes.objects.get_child(f"{idx}:PA")
        await pa.call_method(f"{idx}:StartEmergencyBroadcast", ua.Variant("z3,z4", ua.VariantType.String),
                             ua.Variant("evac-9", ua.VariantType.String))
        state = client.get_node(f"ns={idx};s=Zone.z3.State")
        assert await state.read_value() == 3  # emergency
        ok = await pa.call_method(f"{idx}:SetVolume", ua.Variant("z1", ua.VariantType.String),
                                  ua.Variant(-12.0, ua.VariantType.Double))
        assert ok is True and await client.get_node(f"ns={idx};s=Zone.z1.Volume").read_value() == -12.0
        sim_obj = await pa.get_child(f"{idx}:Simulation")
        await sim_obj.call_method(f"{idx}:SetLineFault", ua.Variant("l2", ua.VariantType.String),
                                  ua.Variant("short", ua.VariantType.String))
        assert await client.get_node(f"ns={idx};s=Line.l2.Status").read_value() == 1
        await pa.call_method(f"{idx}:StopEmergencyBroadcast")
        assert sim.model.emergency.active is False


def test_replay_matches_live_decoding() -> None:
    driver, _ = make_driver("opc.tcp://127.0.0.1:1/")
    twin, _ = make_driver("opc.tcp://127.0.0.1:1/")
    snap = {"values": {"line.l1.status": 0, "power.mains_fault": False}}
    change = {"changes": [["line.l1.status", 3], ["power.mains_fault", True]]}
    now = datetime.now(UTC)
    first = driver.decoder.feed("snapshot", snap, now) + driver.decoder.feed("changes", change, now)
    second = twin.decoder.feed("snapshot", snap, now) + twin.decoder.feed("changes", change, now)
    assert [(e.type, e.state, e.payload) for e in first] == [(e.type, e.state, e.payload) for e in second]
    assert [(e.type, e.state) for e in first] == [("pa.line_fault", "raised"), ("pa.mains_fault", "raised")]
