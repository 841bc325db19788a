"""The elevator driver's lean Modbus TCP read link, against the pymodbus simulator over real TCP."""

from __future__ import annotations

import asyncio

import pytest

from drivers.modbus_elevator.link import ModbusReadLink
from drivers.modbus_elevator.regmap import load_map
from gateway.errors import DeviceProtocolError, DeviceUnavailable
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.servers import free_port


def expected_words(sim: ElevatorSimulator, dev_id: int) -> list[int]:
    words = sim.encode(sim.elevators[dev_id])
    return [words[a] for a in range(16)]


async def test_reads_what_the_simulator_holds_for_each_unit() -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(seed=1), 2: ElevatorModel(seed=2, highest=30)})
    async with sim:
        await sim.inject("fire_mode", device_id=2)  # unit 2 differs from unit 1
        link = await ModbusReadLink.open("127.0.0.1", port, 1.0)
        try:
            for unit in (1, 2, 1):
                assert await link.read("holding", 0, 16, unit, 1.0) == expected_words(sim, unit)
        finally:
            link.close()
        assert not link.connected


async def test_an_exception_answer_is_a_protocol_error_and_keeps_the_link() -> None:
    port = free_port()
    async with ElevatorSimulator(port=port) as sim:
        link = await ModbusReadLink.open("127.0.0.1", port, 1.0)
        try:
            await sim.inject("exception", 6)
            with pytest.raises(DeviceProtocolError, match="exception code 6"):
                await link.read("holding", 0, 16, 1, 1.0)
            await sim.clear("exception")
            assert link.connected
            assert await link.read("holding", 0, 16, 1, 1.0) == expected_words(sim, 1)
        finally:
            link.close()


async def test_a_late_answer_is_dropped_and_the_next_read_gets_its_own() -> None:
    port = free_port()
    async with ElevatorSimulator(port=port) as sim:
        link = await ModbusReadLink.open("127.0.0.1", port, 1.0)
        try:
            await sim.inject("slow_reply", 0.3)
            with pytest.raises(DeviceUnavailable, match="no answer"):
                await link.read("holding", 0, 8, 1, 0.1)
            await sim.clear("slow_reply")
            await asyncio.sleep(0.5)  # the 8-register answer arrives with no read waiting
            # (Sent while that answer was pending, a request gets it under its own transaction
            # id from pymodbus' server; the supervisor closes a link after a timeout anyway.)
            assert await link.read("holding", 0, 16, 1, 1.0) == expected_words(sim, 1)
        finally:
            link.close()


async def test_no_server_and_a_dropped_link_are_unavailable() -> None:
    with pytest.raises(DeviceUnavailable, match="cannot connect"):
        await ModbusReadLink.open("127.0.0.1", free_port(), 1.0)
    port = free_port()
    async with ElevatorSimulator(port=port) as sim:
        link = await ModbusReadLink.open("127.0.0.1", port, 1.0)
        await sim.inject("disconnect")
        with pytest.raises(DeviceUnavailable):
            await link.read("holding", 0, 16, 1, 1.0)
        await sim.clear("disconnect")
        link.close()


def test_the_link_works_on_uvloop() -> None:
    """`courtyard run` uses uvloop when installed; its transports are not asyncio's classes."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[int]:
        port = free_port()
        async with ElevatorSimulator(port=port, regmap=load_map("gbt24476")) as sim:
            link = await ModbusReadLink.open("127.0.0.1", port, 1.0)
            try:
                got = await link.read("holding", 0, 16, 1, 1.0)
            finally:
                link.close()
            assert got == expected_words(sim, 1)
            return got

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert len(runner.run(main())) == 16
