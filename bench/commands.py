"""Benchmark: command request on MQTT -> device acted (simulator) -> result on MQTT, per kind;
and 1,000 commands queued across 100 devices through an outage of the gateway's broker link.

A real mosquitto (`set_tcp_nodelay true`) and the simulators run in this process. The elevator
gateway runs as `courtyard run` in a child process; the other kinds' gateway runs in this
process (the simulated BLE gate must share the gateway's process). Commands are sent one after
another; prints p50/p99 of request -> device acted, and request -> final result received.

The outage run: the link between gateway and broker is cut, then 1,000 commands are submitted
(the console/rules path) to 100 elevators (one simulator, slowed to 300 ms per Modbus request),
10 each, the last with a 1 s TTL so it expires queued; the link is restored once all have an
outcome. The requester, connected to the broker throughout, must get every result. Prints how many results came
through, lost, and executed after their TTL (from the simulator's own record).

    .venv/bin/python bench/commands.py [--count 200] [--only elevator,access_gate,pa,camera,plate_reader,outage]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from gateway.command_bus import CommandClient
from gateway.config import MqttConfig
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.servers import Mosquitto, free_port

SITE = "bench-cmd"


class TimedSimulator(ElevatorSimulator):
    """Notes when the controller acted on each request (and on which sequence number, when)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.acted: list[float] = []
        self.acted_seq: list[tuple[int, int, int]] = []  # (unit, seq, wall ns)

    async def _answer(self, dev_id: int, written: dict[int, int]) -> None:
        self.acted.append(time.perf_counter())
        mailbox = self.map.commands
        if mailbox is not None:
            self.acted_seq.append((dev_id, written[mailbox.seq], time.time_ns()))
        await super()._answer(dev_id, written)


class NodelayMosquitto(Mosquitto):
    """The test broker, with Nagle off on its side too (as docs/commands.md advises)."""

    def command(self) -> list[str]:
        cmd = super().command()
        conf = Path(cmd[-1])
        conf.write_text("set_tcp_nodelay true\n" + conf.read_text())
        return cmd


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def bench_elevator(broker: Mosquitto, count: int, nodelay: bool) -> None:
    port = free_port()
    sim = TimedSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=0)})
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"site": SITE, "gateway_id": "gw-bench", "outbox": {"path": f"{tmp}/outbox.db"},
               "mqtt": {"host": broker.host, "port": broker.port},
               "commands": {"allow": [{"requesters": ["mqtt:*"], "devices": ["*"], "commands": ["*"]}]},
               "devices": [{"id": "lift-1", "driver": "modbus_elevator", "port": port, "poll_interval_s": 1.0,
                            "timeout_s": 0.5, "highest_floor": 18}]}
        path = Path(tmp) / "gw.yaml"
        path.write_text(yaml.safe_dump(cfg))
        async with sim, CommandClient(MqttConfig(host=broker.host, port=broker.port), SITE) as client:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "--log-level", "warning", "run", "-c",
                                     str(path)], start_new_session=True)
            try:
                while True:  # until the gateway takes requests
                    cid = await client.send("elevator", "lift-1", "release_door")
                    try:
                        await client.wait(cid, timeout=1.0)
                        break
                    except TimeoutError:
                        continue
                sim.acted.clear()
                to_acted, to_result, states = [], [], {}
                for i in range(count):
                    name, args = ("hold_door", {"seconds": 30}) if i % 2 == 0 else ("release_door", {})
                    t0 = time.perf_counter()
                    cid = await client.send("elevator", "lift-1", name, args=args)
                    res = await client.wait(cid, timeout=10)
                    t1 = time.perf_counter()
                    states[res["state"]] = states.get(res["state"], 0) + 1
                    to_result.append((t1 - t0) * 1000)
                    if sim.acted:
                        to_acted.append((sim.acted[-1] - t0) * 1000)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
    report(f"elevator (Modbus TCP, gateway in a child process, broker set_tcp_nodelay {str(nodelay).lower()})",
           count, states, to_acted, to_result)


def report(title: str, count: int, states: dict[str, int], to_acted: list[float], to_result: list[float]) -> None:
    print(f"{title}: {count} sequential, outcomes {states}")
    for label, values in (("request -> device acted ", to_acted), ("request -> final result ", to_result)):
        if values:
            print(f"  {label}: p50 {statistics.median(values):6.1f} ms   p99 {pct(values, 99):6.1f} ms")


async def run_sequence(client: CommandClient, kind: str, device: str, plan: Callable[[int], tuple[str, dict[str, Any]]],
                       acted: list[float], count: int) -> tuple[dict[str, int], list[float], list[float]]:
    """Send `count` commands one after another; pair each with the device's act that followed it."""
    to_acted, to_result, states = [], [], {}
    for i in range(count):
        name, args = plan(i)
        before = len(acted)
        t0 = time.perf_counter()
        cid = await client.send(kind, device, name, args=args)
        res = await client.wait(cid, timeout=30)
        to_result.append((time.perf_counter() - t0) * 1000)
        states[res["state"]] = states.get(res["state"], 0) + 1
        if len(acted) > before:
            to_acted.append((acted[before] - t0) * 1000)
    return states, to_acted, to_result


def in_process_config(tmp: str, broker: Mosquitto, devices: list[dict[str, Any]]) -> Any:
    from gateway.config import parse_config

    return parse_config({
        "site": SITE, "gateway_id": "gw-bench", "outbox": {"path": f"{tmp}/outbox.db"},
        "mqtt": {"host": broker.host, "port": broker.port},
        "commands": {"allow": [{"requesters": ["mqtt:*"], "devices": ["*"], "commands": ["*"]}],
                     "answer_timeout_s": 10},
        "devices": devices})


async def until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("bench setup did not come up")
        await asyncio.sleep(0.05)


async def bench_access_gate(broker: Mosquitto, count: int) -> None:
    from gateway.runtime import Gateway
    from simulators.access_gate import backend as sim

    address = "C0:57:0A:BE:00:01"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = in_process_config(tmp, broker, [
            {"id": "gate-1", "driver": "ble_access_gate", "address": address, "backend": "simulated",
             "credential_key": "bench-credential-key-0123456", "simulation": {"arrivals_per_min": 0.001}}])
        async with Gateway(cfg) as gw, CommandClient(MqttConfig(host=broker.host, port=broker.port), SITE) as client:
            await until(lambda: sim.lookup(address) is not None and gw.devices["gate-1"].online
                        and gw.commands.bus.connected.is_set())
            periph = sim.lookup(address)
            assert periph is not None
            acted: list[float] = []
            act = periph.model.command

            def timed(cmd: Any) -> None:
                acted.append(time.perf_counter())
                act(cmd)
            periph.model.command = timed  # type: ignore[method-assign]
            plan = [("hold_open", {}), ("release", {}), ("open", {}), ("lock", {}), ("release", {})]
            states, to_acted, to_result = await run_sequence(client, "access_gate", "gate-1",
                                                             lambda i: plan[i % len(plan)], acted, count)
    report("access_gate (BLE COGP command characteristic, in-process bleak backend)", count, states, to_acted,
           to_result)


async def bench_pa(broker: Mosquitto, count: int) -> None:
    from gateway.runtime import Gateway
    from simulators.pa import PaSimulator

    async with PaSimulator(port=free_port(), tick_s=0) as pa:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = in_process_config(tmp, broker, [{"id": "pa-1", "driver": "opcua_pa", "url": pa.url}])
            async with Gateway(cfg) as gw, CommandClient(MqttConfig(host=broker.host, port=broker.port),
                                                         SITE) as client:
                await until(lambda: gw.devices["pa-1"].online and gw.commands.bus.connected.is_set())
                acted: list[float] = []
                act = pa.model.command

                def timed(name: str, args: dict[str, Any]) -> str:
                    acted.append(time.perf_counter())
                    return act(name, args)
                pa.model.command = timed  # type: ignore[method-assign]
                plan = [("set_volume", {"zone": "z1", "db": -20}), ("play", {"zones": "z2", "clip": "chime"}),
                        ("emergency_start", {"zones": "z3", "message": "drill"}), ("emergency_stop", {}),
                        ("set_volume", {"zone": "z1", "db": -10})]
                states, to_acted, to_result = await run_sequence(client, "pa", "pa-1", lambda i: plan[i % len(plan)],
                                                                 acted, count)
    report("pa (OPC UA method calls, asyncua simulator)", count, states, to_acted, to_result)


class _TimedLog(list):  # type: ignore[type-arg]
    """A camera's relay log that notes when each switch happened."""

    def __init__(self, acted: list[float]) -> None:
        super().__init__()
        self.acted = acted

    def append(self, item: Any) -> None:
        self.acted.append(time.perf_counter())
        super().append(item)


async def bench_camera(broker: Mosquitto, count: int) -> None:
    from gateway.runtime import Gateway
    from simulators.camera.model import SimCamera, SimSite
    from simulators.camera.server import CameraServer

    acted: list[float] = []
    cam = SimCamera("hik-1", "hikvision", password="bench-pass")
    cam.relay_log = _TimedLog(acted)
    server = CameraServer(SimSite([cam], rate_per_min=0))
    port = await server.start("127.0.0.1", 0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = in_process_config(tmp, broker, [
                {"id": "hik-1", "driver": "camera", "protocol": "isapi", "url": f"http://127.0.0.1:{port}/hik-1",
                 "password": "bench-pass", "media": {"path": f"{tmp}/media"}}])
            async with Gateway(cfg) as gw, CommandClient(MqttConfig(host=broker.host, port=broker.port),
                                                         SITE) as client:
                await until(gw.commands.bus.connected.is_set)
                states, to_acted, to_result = await run_sequence(
                    client, "camera", "hik-1", lambda i: ("relay", {"output": 1, "state": ("on", "off")[i % 2]}),
                    acted, count)
    finally:
        await server.aclose()
    report("camera relay (ISAPI IO output trigger + status read-back, Digest)", count, states, to_acted, to_result)


async def bench_plate_reader(broker: Mosquitto, count: int) -> None:
    import aiohttp

    from gateway.runtime import Gateway
    from simulators.plate_reader import Camera, CameraAuth
    from simulators.plate_reader.camera import ZhenshiBarrierCamera

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = in_process_config(tmp, broker, [
            {"id": "lpr-1", "driver": "http_plate_reader", "vendor": "zhenshi", "listen_port": port, "gate_input": 1,
             "auth": {"mode": "token", "token": "bench-token-0123"}, "media": {"path": f"{tmp}/media"}}])
        async with aiohttp.ClientSession() as session, Gateway(cfg) as gw, \
                CommandClient(MqttConfig(host=broker.host, port=broker.port), SITE) as client:
            cam = ZhenshiBarrierCamera(Camera(session, f"http://127.0.0.1:{port}/lpr/lpr-1",
                                              CameraAuth(token="bench-token-0123")), gate_input=1, heartbeat_s=0.1)
            await until(gw.commands.bus.connected.is_set)
            task = asyncio.create_task(cam.run())
            try:
                states, to_acted, to_result = await run_sequence(
                    client, "plate_reader", "lpr-1", lambda i: ("open_barrier" if i % 2 == 0 else "close_barrier", {}),
                    cam.acted_at, count)
            finally:
                task.cancel()
    report("plate_reader (Zhenshi reply channel, heartbeat every 100 ms, barrier contact read back)", count, states,
           to_acted, to_result)


async def bench_outage(broker: Mosquitto, devices: int = 100, per_device: int = 10) -> None:
    from gateway.commands import list_journal
    from gateway.config import parse_config
    from gateway.runtime import Gateway
    from simulators.linkcut import LinkCut

    port = free_port()
    sim = TimedSimulator(port=port, elevators={u: ElevatorModel(call_rate_per_s=0) for u in range(1, devices + 1)})
    total = devices * per_device
    with tempfile.TemporaryDirectory() as tmp:
        async with sim, LinkCut(broker.host, broker.port) as link:
            cfg = parse_config({
                "site": SITE, "gateway_id": "gw-bench", "outbox": {"path": f"{tmp}/outbox.db"},
                "mqtt": {"host": "127.0.0.1", "port": link.port, "backoff_max_s": 0.5},
                "commands": {"allow": [{"requesters": ["mqtt:*"], "devices": ["*"], "commands": ["*"]}],
                             "answer_timeout_s": 10},
                "devices": [{"id": f"lift-{u:03d}", "driver": "modbus_elevator", "port": port, "unit_id": u,
                             "poll_interval_s": 5.0, "timeout_s": 2.0, "highest_floor": 18}
                            for u in range(1, devices + 1)]})
            async with Gateway(cfg) as gw, CommandClient(MqttConfig(host=broker.host, port=broker.port),
                                                         SITE) as client:
                await until(gw.commands.bus.connected.is_set)
                await until(lambda: all(gw.devices[f"lift-{u:03d}"].online for u in range(1, devices + 1)), 60)
                await sim.inject("slow_reply", 0.3)  # each Modbus request takes 300 ms: the queues fill
                link.cut()  # the broker is out of the gateway's reach; the requester still sees it
                await until(lambda: not gw.commands.bus.connected.is_set())
                cut_at = time.perf_counter()
                ids: dict[str, float] = {}
                for k in range(per_device):  # the console / rules path: the one code path, broker or not
                    for u in range(1, devices + 1):
                        ttl = 1.0 if k == per_device - 1 else 120.0
                        cid = f"outage-{u:03d}-{k}"
                        cmd = await gw.commands.submit("elevator", f"lift-{u:03d}", "call",
                                                       {"id": cid, "args": {"floor": 1 + k}, "ttl_s": ttl},
                                                       requester="mqtt:console")
                        assert cmd.state == "accepted", cmd
                        ids[cid] = ttl
                db = Path(tmp) / "outbox.db"
                open_at_start = sum(1 for r in list_journal(db, limit=10 * total) if r.state in ("accepted", "sent"))
                await gw.commands.wait_idle()
                held = gw.counters.get("commands.results_held")
                await asyncio.sleep(1.0)
                link.restore()
                restored = time.perf_counter()
                await until(lambda: all(any(r["final"] for r in client.results.get(c, [])) for c in ids), 120)
                delivered = time.perf_counter() - restored
                rows = {r.id: r for r in list_journal(db, limit=10 * total)}
                await sim.clear("slow_reply")
    finals = {c: next(r for r in client.results[c] if r["final"]) for c in ids}
    states: dict[str, int] = {}
    for res in finals.values():
        states[res["state"]] = states.get(res["state"], 0) + 1
    by_seq = {(int(r.device[5:]), (r.device_seq or 0) & 0xFFFF): r for r in rows.values()}
    late = [(u, q) for u, q, at in sim.acted_seq if (u, q) in by_seq and at > by_seq[(u, q)].expires_ns]
    expired_acted = [(u, q) for u, q, _ in sim.acted_seq if (u, q) in by_seq and by_seq[(u, q)].state == "expired"]
    lost = [c for c in ids if c not in finals or rows.get(c) is None or rows[c].state != finals[c]["state"]]
    print(f"outage: {total} commands across {devices} elevators ({per_device} each, the last with a 1 s TTL)"
          f" submitted while the gateway's broker link was cut ({open_at_start} queued or in progress after"
          f" submitting); link restored after {restored - cut_at:.1f} s, once every command had an outcome")
    print(f"  outcomes at the requester {states}; results held during the outage {held},"
          f" all final results received {delivered:.2f} s after the link came back")
    print(f"  lost: {len(lost)}   executed after their TTL: {len(late)}   expired yet acted on: {len(expired_acted)}"
          f"   device acts: {len(sim.acted_seq)}")


async def main(count: int, only: set[str]) -> None:
    nodelay = "--nagle" not in sys.argv
    broker = NodelayMosquitto() if nodelay else Mosquitto()
    broker.start()
    benches: dict[str, Callable[[], Awaitable[None]]] = {
        "elevator": lambda: bench_elevator(broker, count, nodelay),
        "access_gate": lambda: bench_access_gate(broker, count),
        "pa": lambda: bench_pa(broker, count),
        "camera": lambda: bench_camera(broker, count),
        "plate_reader": lambda: bench_plate_reader(broker, count),
        "outage": lambda: bench_outage(broker),
    }
    try:
        for name, run in benches.items():
            if name in only:
                await run()
    finally:
        broker.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--nagle", action="store_true", help="broker without set_tcp_nodelay (mosquitto's default)")
    ap.add_argument("--only", default="elevator,access_gate,pa,camera,plate_reader,outage")
    args = ap.parse_args()
    asyncio.run(main(args.count, set(args.only.split(","))))
