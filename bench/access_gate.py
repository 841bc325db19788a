"""Benchmark the BLE gate path: decode+normalize, the driver over the in-memory radio, and the gateway.

Run: `.venv/bin/python bench/access_gate.py [--records N]`. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drivers.ble_access_gate import codec
from drivers.ble_access_gate.config import BleAccessGateConfig
from drivers.ble_access_gate.driver import BleAccessGateDriver
from drivers.ble_access_gate.normalize import Normalizer
from simulators.access_gate import backend as sim
from simulators.access_gate.backend import SimulatedBleakClient
from simulators.access_gate.model import GateModel
from simulators.access_gate.peripheral import SimulatedGatePeripheral
from simulators.access_gate.testing import CollectingContext, CountingCounters

KEY = "bench-credential-key-0123456789"


def config(address: str = "C0:57:0A:BE:00:01", **over: Any) -> BleAccessGateConfig:
    return BleAccessGateConfig.model_validate({
        "id": "gate-bench", "driver": "ble_access_gate", "address": address, "credential_key": KEY,
        "backend": "simulated", **over,
    })


def frames(n: int) -> tuple[list[bytes], float]:
    model = GateModel(seed=9, arrivals_per_min=600, start_time=time.time())
    out: list[bytes] = []
    while len(out) < n:
        out.extend(codec.encode_record(r) for r in model.advance(60))
    return out[:n], model.now


def bench_codec(n: int) -> None:
    data, _ = frames(n)
    t0 = time.perf_counter()
    for f in data:
        codec.decode_record_frame(f)
    t1 = time.perf_counter()
    norm = Normalizer(config(), CountingCounters())
    now = datetime.now(UTC)
    drafts = 0
    for f in data:
        drafts += len(norm.feed("event", f, now))
    t2 = time.perf_counter()
    print(f"decode only            : {n / (t1 - t0):>10,.0f} records/s")
    print(f"decode + normalize     : {n / (t2 - t1):>10,.0f} records/s ({drafts} drafts, HMAC + pydantic payloads)")


async def bench_driver(n: int) -> None:
    """Notifications through BleakClient -> driver queue -> normalizer -> (collecting) context."""
    model = GateModel(seed=9, arrivals_per_min=600, start_time=time.time())
    periph = sim.register(SimulatedGatePeripheral("C0:57:0A:BE:00:02", model))
    cfg = config("C0:57:0A:BE:00:02", max_clock_skew_s=10_000_000)
    ctx = CollectingContext(cfg)
    driver = BleAccessGateDriver(cfg, ctx, backend=SimulatedBleakClient)
    task = asyncio.create_task(driver.run())
    await ctx.wait_for(lambda c: bool(c.online))
    t0 = time.perf_counter()
    while model.seq < n:
        periph.step(30)
        await asyncio.sleep(0)
    await ctx.wait_for(lambda c: any(d.seq == model.seq for d in c.drafts), timeout=120)
    dt = time.perf_counter() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    sim.unregister(periph)
    print(f"driver (in-memory BLE) : {model.seq / dt:>10,.0f} notifications/s end to end into the context")


async def bench_bumble(n: int) -> None:
    """The driver over real ATT/GATT (bumble virtual radio): notification cost of the full BLE stack."""
    from simulators.access_gate.bumble_link import BumbleBleakClient, BumbleRadio

    radio = BumbleRadio()
    model = GateModel(seed=9, arrivals_per_min=600, start_time=time.time())
    periph = SimulatedGatePeripheral("C0:57:0A:BE:00:04", model)
    await radio.add_peripheral(periph)
    cfg = config("C0:57:0A:BE:00:04", max_clock_skew_s=10_000_000, backend="bumble")
    ctx = CollectingContext(cfg)
    driver = BleAccessGateDriver(cfg, ctx, backend=BumbleBleakClient)
    t_connect = time.perf_counter()
    task = asyncio.create_task(driver.run())
    await ctx.wait_for(lambda c: bool(c.online))
    t0 = time.perf_counter()
    while model.seq < n:
        periph.step(30)
        await asyncio.sleep(0)
    await ctx.wait_for(lambda c: any(d.seq == model.seq for d in c.drafts), timeout=120)
    dt = time.perf_counter() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await radio.aclose()
    print(f"driver (bumble ATT)    : {model.seq / dt:>10,.0f} notifications/s; connect+discover+subscribe "
          f"{(t0 - t_connect) * 1000:.0f} ms")


async def bench_gateway(n: int) -> None:
    """The full pipeline without brokers: driver -> runtime -> SQLite outbox (local history only)."""
    try:
        from gateway.config import parse_config
        from gateway.runtime import Gateway
    except ImportError:
        print("gateway runtime      : not available")
        return
    with tempfile.TemporaryDirectory() as tmp:
        address = "C0:57:0A:BE:00:03"
        model = GateModel(seed=9, arrivals_per_min=600, start_time=time.time())
        periph = sim.register(SimulatedGatePeripheral(address, model))
        dev = {"id": "gate-bench", "driver": "ble_access_gate", "address": address, "credential_key": KEY,
               "backend": "simulated", "max_clock_skew_s": 10_000_000}
        cfg = parse_config({"site": "bench", "gateway_id": "gw-bench",
                            "outbox": {"path": str(Path(tmp) / "outbox.db"), "synchronous": "normal"},
                            "mqtt": {"enabled": False}, "devices": [dev]})
        async with Gateway(cfg) as gw:
            await _until(lambda: bool(periph.centrals), 10)
            base = gw.counters.get("device.gate-bench.events")
            t0 = time.perf_counter()
            while model.seq < n:
                periph.step(30)
                await asyncio.sleep(0)
            await _until(lambda: gw.counters.get("device.gate-bench.events") - base >= model.seq, 120)
            dt = time.perf_counter() - t0
            events = gw.counters.get("device.gate-bench.events") - base
        sim.unregister(periph)
        print(f"gateway (to outbox)    : {model.seq / dt:>10,.0f} notifications/s ({events} events committed)")


async def _until(predicate: Callable[[], bool], timeout: float) -> None:
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    bench_codec(args.records)
    asyncio.run(bench_driver(args.records))
    asyncio.run(bench_bumble(min(args.records, 5000)))
    asyncio.run(bench_gateway(args.records // 2))


if __name__ == "__main__":
    main()
