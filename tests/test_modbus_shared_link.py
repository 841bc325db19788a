"""`link: shared`: elevators behind one Modbus gateway share one TCP connection, each keeping its
own misses, back-off and online state (drivers/modbus_elevator/link.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from drivers.modbus_elevator.commands import ElevatorCommands
from gateway.config import parse_config
from gateway.history import query
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import base_config, eventually
from tests.servers import free_port

POLL_S = 0.2


def lift(unit: int, port: int, link: str = "shared") -> dict[str, Any]:
    return {"id": f"lift-{unit}", "driver": "modbus_elevator", "port": port, "unit_id": unit, "link": link,
            "poll_interval_s": POLL_S, "timeout_s": 0.3, "offline_after": 2,
            "backoff": {"initial_s": 0.2, "max_s": 0.5}}


def connections(sim: ElevatorSimulator) -> int:
    server = sim._server
    return len(server.active_connections) if server is not None else 0


def seen(tmp_path: Path, type_: str) -> set[str]:
    return {r.device for r in query(tmp_path / "outbox.db") if r.type == type_}


async def test_lifts_behind_one_gateway_share_one_connection(tmp_path: Path) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={i: ElevatorModel(seed=i) for i in range(1, 7)})
    cfg = parse_config(base_config(tmp_path, devices=[lift(i, port) for i in range(1, 7)]))
    async with sim, Gateway(cfg) as gw:
        await eventually(lambda: seen(tmp_path, "elevator.status") == {f"lift-{i}" for i in range(1, 7)}, timeout=10)
        await eventually(lambda: all(gw.counters.get(f"device.lift-{i}.polls") >= 5 for i in range(1, 7)), timeout=10)
        assert connections(sim) == 1


async def test_own_links_stay_the_default(tmp_path: Path) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={i: ElevatorModel(seed=i) for i in range(1, 4)})
    devices = [{k: v for k, v in lift(i, port).items() if k != "link"} for i in range(1, 4)]
    cfg = parse_config(base_config(tmp_path, devices=devices))
    async with sim, Gateway(cfg):
        await eventually(lambda: connections(sim) == 3, timeout=10)


async def test_a_unit_that_does_not_answer_is_that_lifts_miss_not_the_links(tmp_path: Path) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={i: ElevatorModel(seed=i) for i in range(1, 4)})
    devices = [lift(i, port) for i in range(1, 4)] + [lift(9, port)]  # no unit 9 behind this gateway
    cfg = parse_config(base_config(tmp_path, devices=devices))
    async with sim, Gateway(cfg) as gw:
        await eventually(lambda: "lift-9" in seen(tmp_path, "device.offline"), timeout=10)
        before = {i: gw.counters.get(f"device.lift-{i}.polls") for i in range(1, 4)}
        await asyncio.sleep(2.0)
        rates = {i: gw.counters.get(f"device.lift-{i}.polls") - before[i] for i in range(1, 4)}
        assert all(n >= 0.7 * 2.0 / POLL_S for n in rates.values()), rates
        assert connections(sim) == 1
        assert not seen(tmp_path, "device.offline") & {"lift-1", "lift-2", "lift-3"}


async def test_the_shared_link_comes_back_for_every_lift_after_the_gateway_drops_it(tmp_path: Path) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={i: ElevatorModel(seed=i) for i in range(1, 4)})
    cfg = parse_config(base_config(tmp_path, devices=[lift(i, port) for i in range(1, 4)]))
    lifts = {f"lift-{i}" for i in range(1, 4)}

    def count(type_: str) -> dict[str, int]:
        rows = [r.device for r in query(tmp_path / "outbox.db") if r.type == type_]
        return {d: rows.count(d) for d in lifts}

    async with sim, Gateway(cfg):
        await eventually(lambda: min(count("device.online").values()) == 1, timeout=10)
        await sim.inject("disconnect")
        await eventually(lambda: min(count("device.offline").values()) == 1, timeout=10)
        await sim.clear("disconnect")
        await eventually(lambda: min(count("device.online").values()) == 2, timeout=15)
        await eventually(lambda: connections(sim) == 1, timeout=5)


async def test_the_command_executor_uses_the_lifts_shared_link(tmp_path: Path) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(seed=1), 2: ElevatorModel(seed=2)})
    cfg = parse_config(base_config(tmp_path, devices=[lift(1, port), lift(2, port)]))
    async with sim, Gateway(cfg):
        await eventually(lambda: connections(sim) == 1, timeout=10)
        executor = ElevatorCommands(cfg.devices[0])  # type: ignore[arg-type]
        try:
            assert len(await executor._read(0, 4)) == 4
            assert connections(sim) == 1
            assert executor._shared is not None and executor._shared.users == 3  # two drivers and the executor
        finally:
            await executor.aclose()
