"""Supervision: a dead device never slows live ones; back-off; connectivity events.

Tests taking `clock` run twice: on a virtual clock (poll ticks and back-off take no time; the
device I/O is real) and once in real time, marked slow, so the fast suite keeps each behaviour
and the full suite still checks it against the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from pathlib import Path

import pytest

from gateway import supervisor
from gateway.backoff import BackoffConfig, backoff_delays
from gateway.config import parse_config
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import VirtualClock, base_config, eventually
from tests.servers import free_port

POLL_S = 0.2


@pytest.fixture(params=["virtual", pytest.param("real", marks=pytest.mark.slow)])
def clock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> supervisor.Clock:
    """The supervision clock for one run: virtual (no sleeping) or the real one."""
    chosen: supervisor.Clock = VirtualClock() if request.param == "virtual" else supervisor.LoopClock()
    monkeypatch.setattr(supervisor, "clock", chosen)
    return chosen


def recorder(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every back-off wait (then wait it on the supervision clock)."""
    waits: list[float] = []

    async def recording_sleep(delay: float) -> None:
        waits.append(delay)
        await supervisor.clock.sleep(delay)

    monkeypatch.setattr(supervisor, "backoff_sleep", recording_sleep)
    return waits


def lift(dev_id: str, port: int, unit: int = 1) -> dict[str, object]:
    return {"id": dev_id, "driver": "modbus_elevator", "port": port, "unit_id": unit, "poll_interval_s": POLL_S,
            "timeout_s": 0.5, "offline_after": 2, "backoff": {"initial_s": 0.2, "max_s": 1.0}}


def history(tmp_path: Path) -> list[tuple[str, str]]:
    from gateway.history import query

    return [(r.device, r.type) for r in query(tmp_path / "outbox.db")]


@pytest.mark.slow  # measures poll rates over a real 5 s window
async def test_one_dead_device_never_delays_twenty_live_ones(tmp_path: Path) -> None:
    live_port, dead_port = free_port(), free_port()
    live = ElevatorSimulator(port=live_port, elevators={i: ElevatorModel(seed=i) for i in range(1, 21)})
    dead = ElevatorSimulator(port=dead_port)
    devices = [lift(f"lift-{i}", live_port, i) for i in range(1, 21)] + [lift("lift-dead", dead_port)]
    cfg = parse_config(base_config(tmp_path, devices=devices))
    async with live, dead:
        await dead.inject("no_reply")  # the nastiest death: connects, then every request hangs
        async with Gateway(cfg) as gw:
            await asyncio.sleep(1.0)  # let every link come up
            before = {i: gw.counters.get(f"device.lift-{i}.polls") for i in range(1, 21)}
            window = 5.0
            await asyncio.sleep(window)
            expected = window / POLL_S
            rates = {i: gw.counters.get(f"device.lift-{i}.polls") - before[i] for i in range(1, 21)}
            assert all(n >= 0.8 * expected for n in rates.values()), rates
            assert gw.counters.get("device.lift-dead.polls") == 0
            await eventually(lambda: ("lift-dead", "device.offline") in history(tmp_path), timeout=5)
            await dead.clear("no_reply")
            await eventually(lambda: history(tmp_path).count(("lift-dead", "device.online")) >= 1
                             and gw.counters.get("device.lift-dead.polls") > 0, timeout=10)
    online = [t for d, t in history(tmp_path) if d == "lift-dead" and t.startswith("device.")]
    assert online == ["device.offline", "device.online"]


async def test_device_that_drops_its_link_comes_back(tmp_path: Path, clock: supervisor.Clock) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port)
    cfg = parse_config(base_config(tmp_path, devices=[lift("lift-1", port)]))
    async with sim, Gateway(cfg) as gw:
        await eventually(lambda: ("lift-1", "device.online") in history(tmp_path), timeout=5)
        await sim.inject("disconnect")
        await eventually(lambda: ("lift-1", "device.offline") in history(tmp_path), timeout=10)
        await sim.clear("disconnect")
        await eventually(lambda: history(tmp_path).count(("lift-1", "device.online")) == 2, timeout=10)
        assert gw.counters.get("device.lift-1.link_errors") >= 1


async def test_modbus_exception_is_a_miss_not_a_reconnect(tmp_path: Path, clock: supervisor.Clock) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port)
    cfg = parse_config(base_config(tmp_path, devices=[lift("lift-1", port)]))
    async with sim, Gateway(cfg) as gw:
        await eventually(lambda: gw.counters.get("device.lift-1.polls") > 2, timeout=5)
        await sim.inject("exception", 6)
        await eventually(lambda: gw.counters.get("device.lift-1.protocol_errors") >= 3, timeout=5)
        await eventually(lambda: ("lift-1", "device.offline") in history(tmp_path), timeout=5)
        assert gw.counters.get("device.lift-1.link_errors") == 0
        await sim.clear("exception")
        await eventually(lambda: history(tmp_path).count(("lift-1", "device.online")) == 2, timeout=5)


def test_backoff_is_capped_exponential_with_jitter() -> None:
    cfg = BackoffConfig(initial_s=0.5, max_s=8.0, factor=2.0, jitter=0.2)
    delays = backoff_delays(cfg, random.Random(7))
    got = [next(delays) for _ in range(10)]
    nominal = [0.5, 1, 2, 4, 8, 8, 8, 8, 8, 8]
    for d, n in zip(got, nominal, strict=True):
        assert 0.8 * n <= d <= 1.2 * n
    assert len({round(d, 6) for d in got[4:]}) > 1, "jitter spreads reconnects of many devices"


async def test_alarms_left_open_by_a_previous_run_are_cleared_on_start(tmp_path: Path) -> None:
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=1.0)})
    dev = lift("lift-1", port) | {"thresholds": {"trapped_s": 0.5}}
    cfg = parse_config(base_config(tmp_path, devices=[dev], alarms={"restart_grace_s": 0}))  # clear at once
    async with sim:
        async with Gateway(cfg):
            await sim.inject("trapped")
            await eventually(lambda: ("lift-1", "elevator.passenger_trapped") in history(tmp_path), timeout=20)
        await sim.clear("trapped")  # the condition ends while the gateway is down
        async with Gateway(cfg) as gw:
            await eventually(lambda: history(tmp_path).count(("lift-1", "elevator.passenger_trapped")) == 2,
                             timeout=5)
            assert gw.counters.get("stale_alarms_cleared") == 1
    from gateway.history import query

    trapped = [json.loads(r.body) for r in query(tmp_path / "outbox.db", type_glob="elevator.passenger_trapped")]
    assert [e["state"] for e in trapped] == ["raised", "cleared"]
    assert trapped[0]["alarm_id"] == trapped[1]["alarm_id"]
    assert trapped[1]["quality"] == {"status": "suspect", "reasons": ["gateway_restarted"]}
    async with Gateway(cfg) as gw:  # nothing left open: nothing cleared again
        assert gw.counters.get("stale_alarms_cleared") == 0


async def test_backoff_grows_when_a_device_accepts_but_never_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: supervisor.Clock
) -> None:
    """Connecting is not an answer: back-off resets only after a good read (issue 9.17)."""
    connections = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):  # swallow every request, answer none
                pass
        writer.close()

    waits = recorder(monkeypatch)
    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dev = {**lift("lift-silent", port), "timeout_s": 0.2,
           "backoff": {"initial_s": 0.2, "max_s": 5.0, "factor": 2.0, "jitter": 0.0}}
    cfg = parse_config(base_config(tmp_path, devices=[dev]))
    async with server, Gateway(cfg) as gw:
        await eventually(lambda: len(waits) >= 4, timeout=15)
        assert gw.counters.get("device.lift-silent.polls") == 0
    assert waits[:4] == pytest.approx([0.2, 0.4, 0.8, 1.6])
    assert 4 <= connections <= len(waits) + 1  # one connection per attempt, no hidden retries


async def test_backoff_starts_afresh_after_a_good_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: supervisor.Clock
) -> None:
    waits = recorder(monkeypatch)
    port = free_port()
    sim = ElevatorSimulator(port=port)
    dev = {**lift("lift-1", port), "backoff": {"initial_s": 0.2, "max_s": 5.0, "factor": 2.0, "jitter": 0.0}}
    cfg = parse_config(base_config(tmp_path, devices=[dev]))
    async with sim, Gateway(cfg) as gw:
        await eventually(lambda: gw.counters.get("device.lift-1.polls") > 2, timeout=5)
        await sim.inject("no_reply")
        await eventually(lambda: len(waits) >= 2, timeout=10)
        await sim.clear("no_reply")
        polls = gw.counters.get("device.lift-1.polls")
        await eventually(lambda: gw.counters.get("device.lift-1.polls") > polls + 2, timeout=10)
        await sim.inject("no_reply")
        before = len(waits)
        await eventually(lambda: len(waits) > before, timeout=10)
    assert waits[0] == pytest.approx(0.2) and waits[1] == pytest.approx(0.4)
    assert waits[before] == pytest.approx(0.2)  # answered in between: from the start again


async def test_stop_cancels_again_a_device_task_that_swallowed_its_cancellation(tmp_path: Path) -> None:
    """A protocol library can turn a cancellation into a link error; stop() must still end."""
    cfg = parse_config(base_config(tmp_path))
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed >= 3:
                    raise

    gw = Gateway(cfg)
    await gw.start()
    task = asyncio.create_task(stubborn(), name="device-stubborn")
    gw._tasks.append(task)
    await asyncio.sleep(0)
    await asyncio.wait_for(gw.stop(), 30)  # one cancel only would wait here forever
    assert task.done() and swallowed == 3


def test_poll_slots_grow_with_the_devices_sharing_an_interval() -> None:
    assert supervisor.poll_slots(1.0, 1) == 1
    assert supervisor.poll_slots(1.0, 10) == 1  # a few lifts share one commit and one MQTT batch
    assert supervisor.poll_slots(1.0, 100) == 5
    assert supervisor.poll_slots(1.0, 1000) == 20  # and a thousand are spread over 50 ms slots
    assert supervisor.poll_slots(1.0, 5000) == 20
    assert supervisor.poll_slots(0.2, 1000) == 4
    assert supervisor.poll_slots(0.01, 1000) == 1


def test_phases_of_a_slot_plan_are_the_slots_and_spread_evenly() -> None:
    ids = [f"lift-{i}" for i in range(1000)]
    phases = [supervisor._phased(100.0, 1.0, d, 1000) % 1.0 for d in ids]
    slots = sorted({round(p, 6) for p in phases})
    assert slots == [round(k * 0.05, 6) for k in range(20)]
    counts = [sum(1 for p in phases if round(p, 6) == s) for s in slots]
    assert min(counts) >= 30 and max(counts) <= 75, counts  # crc32 spreads ids about evenly (50 each)
    few = {round(supervisor._phased(100.0, 1.0, d, 10) % 1.0, 6) for d in ids[:10]}
    assert few == {0.0}  # ten lifts: one slot


async def test_gateway_sizes_poll_slots_by_the_devices_polling_at_each_interval(tmp_path: Path) -> None:
    port = free_port()
    devices = [lift(f"lift-{i}", port, i) for i in range(1, 46)]
    devices += [{**lift("slow-1", port, 46), "poll_interval_s": 1.0}]
    cfg = parse_config(base_config(tmp_path, devices=devices))
    sim = ElevatorSimulator(port=port, elevators={i: ElevatorModel(seed=i) for i in range(1, 47)})
    async with sim, Gateway(cfg) as gw:
        assert {gw.devices[f"lift-{i}"].poll_peers for i in range(1, 46)} == {45}
        assert gw.devices["slow-1"].poll_peers == 1
