"""Real ATT/GATT: bleak (through a bumble-central backend) <-> the simulated gate's GATT server.

Both ends run bumble's host stack over an in-process `LocalLink` virtual radio, so MTU
exchange, discovery, CCCD subscription, notifications, reads and write requests are real
protocol traffic; only the radio is virtual.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from drivers.ble_access_gate import codec
from drivers.ble_access_gate.config import BleAccessGateConfig
from drivers.ble_access_gate.driver import BleAccessGateDriver
from gateway.errors import DeviceUnavailable
from simulators.access_gate.bumble_link import BumbleBleakClient, BumbleRadio
from simulators.access_gate.model import GateModel
from simulators.access_gate.peripheral import SimulatedGatePeripheral
from simulators.access_gate.testing import CollectingContext
from tests.helpers import eventually

ADDRESS = "C0:57:0A:00:03:01"


@pytest.fixture
async def radio() -> AsyncIterator[tuple[BumbleRadio, SimulatedGatePeripheral]]:
    r = BumbleRadio()
    model = GateModel(seed=11, arrivals_per_min=120, start_time=datetime.now(UTC).timestamp())
    periph = SimulatedGatePeripheral(ADDRESS, model)
    await r.add_peripheral(periph)
    yield r, periph
    await r.aclose()


async def settle(ctx: CollectingContext) -> None:
    """Let notifications cross the virtual radio and the driver consume them."""
    idle, seen = 0, -1
    while idle < 20:
        await asyncio.sleep(0.001)
        idle = idle + 1 if len(ctx.recorded) == seen else 0
        seen = len(ctx.recorded)


async def test_driver_over_real_att_with_backfill_and_reconnect(
    radio: tuple[BumbleRadio, SimulatedGatePeripheral],
) -> None:
    _, periph = radio
    model = periph.model
    cfg = BleAccessGateConfig.model_validate({
        "id": "gate-bumble", "driver": "ble_access_gate", "address": ADDRESS, "backend": "bumble",
        "credential_key": "bumble-test-key-0123456789", "history_timeout_s": 2,
    })
    ctx = CollectingContext(cfg, clock=lambda: datetime.fromtimestamp(model.now, UTC))
    driver = BleAccessGateDriver(cfg, ctx)  # backend resolved from the config: real bumble ATT

    def seqs() -> list[int]:
        return sorted({d.seq for d in ctx.drafts if d.seq is not None and d.cls != "status"})

    task = asyncio.create_task(driver.run())
    await ctx.wait_for(lambda c: bool(c.online))
    assert ctx.types()[0] == "gate.status"  # ATT Read of the status characteristic

    for _ in range(6):  # notifications over ATT, one lost on the air -> history write + backfill
        periph.step(10)
        await settle(ctx)
    periph.faults.drop = 2
    for _ in range(6):
        periph.step(10)
        await settle(ctx)
    await ctx.wait_for(lambda c: seqs() == list(range(1, model.seq + 1)), timeout=10)
    assert ctx.counters.values["backfilled"] == 2
    assert ctx.counters.values["history_requests"] >= 1

    periph.disconnect_all()  # supervision timeout, as seen from the central
    with pytest.raises(DeviceUnavailable):
        await asyncio.wait_for(task, 10)
    model.advance(120)  # life goes on while the link is down

    task = asyncio.create_task(driver.run())
    await ctx.wait_for(lambda c: seqs() == list(range(1, model.seq + 1)), timeout=10)
    assert len(ctx.online) == 2
    assert all(d.quality.status == "valid" for d in ctx.drafts)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: not periph.centrals, timeout=5)  # the disconnect went over the air too
    assert periph.connections == 2


async def test_bleak_client_sees_the_profile_over_att(radio: tuple[BumbleRadio, SimulatedGatePeripheral]) -> None:
    from bleak import BleakClient

    async with BleakClient(ADDRESS, backend=BumbleBleakClient, timeout=5) as client:
        assert client.mtu_size == 185  # exchanged: records up to 35 bytes fit one notification
        chars = {c.uuid: c.properties for c in client.services.characteristics.values()}
        assert chars == {
            codec.EVENT_UUID: ["notify"],
            codec.STATUS_UUID: ["read", "notify"],
            codec.HISTORY_UUID: ["read", "write", "notify"],
            codec.COMMAND_UUID: ["write"],
        }
        cmd = codec.Command(op=codec.CMD_OPEN_ONCE, door=1, duration_s=3, request_id=7)
        got: asyncio.Queue[bytes] = asyncio.Queue()
        await client.start_notify(codec.EVENT_UUID, lambda _, data: got.put_nowait(bytes(data)))
        await client.write_gatt_char(codec.COMMAND_UUID, codec.encode_command(cmd), response=True)
        rec = codec.decode_record_frame(await asyncio.wait_for(got.get(), 5))
        assert isinstance(rec, codec.Record) and rec.code == 0x0070 and rec.credential == b"\x00\x07"
        status = codec.decode_status(bytes(await client.read_gatt_char(codec.STATUS_UUID)))
        assert status.locked_mask & 1 == 0  # unlocked by the command
