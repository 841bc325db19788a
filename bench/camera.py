"""Benchmark: camera detection -> MQTT latency per protocol, and 300 cameras held open.

Everything runs as separate processes over loopback: a private mosquitto, the camera
simulator (`python -m simulators.camera`), and the gateway (`python -m gateway run`). This
process subscribes to MQTT and measures.

1. Latency, per protocol (ISAPI arming, ISAPI push, Dahua attach, and ONVIF when
   drivers/camera/onvif.py exists): the simulator raises detections at `--rate` per minute;
   each raised alarm's `time` is the camera's clock at the detection (same host clock), so
   receipt time minus event time is simulator -> gateway -> outbox -> MQTT -> subscriber.
   Pulse holds are short so that every detection is a new raise.
2. Scale: `--cameras` (default 300) cameras split across the protocols, all streams held
   open, idle apart from heartbeats; the gateway's CPU (share of one core), RSS and open
   descriptors are sampled over `--idle-seconds`.

    .venv/bin/python bench/camera.py [--rate 300] [--seconds 20] [--cameras 300] [--idle-seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import aiomqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulators.net import free_port  # noqa: E402
from tests.servers import Mosquitto, wait_port  # noqa: E402

PASSWORD = "bench-pass-1"
PUSH_PASSWORD = "bench-push-1"
HAS_ONVIF = find_spec("drivers.camera.onvif") is not None and find_spec("simulators.camera.onvif") is not None
BRAND = {"isapi": "hikvision", "isapi_push": "hikvision", "dahua": "dahua", "onvif": "onvif"}


def device(cam_id: str, protocol: str, sim_port: int, push_port: int, media: Path, **extra: Any) -> dict[str, Any]:
    """One gateway device entry reaching camera `cam_id` on the simulator."""
    dev: dict[str, Any] = {"id": cam_id, "driver": "camera", "protocol": protocol, "simulated": True,
                           "pulse_hold_s": 0.05, "heartbeat_timeout_s": 30, "media": {"path": str(media)}, **extra}
    if protocol == "isapi_push":
        dev |= {"listen_host": "127.0.0.1", "listen_port": push_port,
                "push_auth": {"mode": "digest", "username": "cam", "password": PUSH_PASSWORD},
                "push_rate_per_s": 1000, "push_burst": 2000, "push_rate_total_per_s": 1000}
    else:
        dev |= {"url": f"http://127.0.0.1:{sim_port}/{cam_id}", "password": PASSWORD}
    return dev


def start_sim(cameras: list[tuple[str, str]], port: int, rate: float, heartbeat: float,
              push_port: int | None) -> subprocess.Popen[bytes]:
    spec = ",".join(f"{cid}:{brand}:2" for cid, brand in cameras)
    argv = [sys.executable, "-m", "simulators.camera", "--port", str(port), "--rate", str(rate),
            "--heartbeat", str(heartbeat), "--password", PASSWORD, "--cameras", spec]
    if push_port:
        argv += ["--push", f"http://127.0.0.1:{push_port}", "--push-user", "cam", "--push-password", PUSH_PASSWORD,
                 "--push-digest"]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_gateway(tmp: Path, broker: Mosquitto, devices: list[dict[str, Any]]) -> subprocess.Popen[bytes]:
    cfg = {"site": "bench", "gateway_id": "gw-bench", "outbox": {"path": str(tmp / "outbox.db")},
           "mqtt": {"host": broker.host, "port": broker.port}, "devices": devices}
    path = tmp / "gateway.yaml"
    path.write_text(json.dumps(cfg))
    return subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def collect(broker: Mosquitto, seconds: float, until_online: int = 0) -> list[tuple[float, dict[str, Any]]]:
    """(receipt wall time, event) for every event on the camera topics, for `seconds` after `until_online`."""
    out: list[tuple[float, dict[str, Any]]] = []
    online: set[str] = set()
    reached = asyncio.Event()
    if not until_online:
        reached.set()

    async def run(client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            if "/event/" not in str(msg.topic):
                continue
            ev = json.loads(msg.payload if isinstance(msg.payload, bytes) else str(msg.payload))
            out.append((time.time(), ev))
            if ev["type"] == "device.online":
                online.add(ev["device"]["id"])
                if len(online) >= until_online:
                    reached.set()

    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe("courtyard/bench/camera/#", qos=1)
        task = asyncio.create_task(run(client))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reached.wait(), 180)
        await asyncio.sleep(seconds)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(protocol: str, args: argparse.Namespace, broker: Mosquitto) -> None:
    with tempfile.TemporaryDirectory(prefix="courtyard-bench-camera-") as tmp_name:
        tmp = Path(tmp_name)
        sim_port, push_port = free_port(), free_port() if protocol == "isapi_push" else 0
        cams = [(f"{protocol.replace('_', '-')}-{i}", BRAND[protocol]) for i in range(2)]
        sim = start_sim(cams, sim_port, args.rate, 5.0, push_port or None)
        wait_port(sim_port, 15)
        devices = [device(cid, protocol, sim_port, push_port, tmp / "media") for cid, _ in cams]
        gw = start_gateway(tmp, broker, devices)
        try:
            events = await collect(broker, args.seconds, until_online=len(cams))
        finally:
            stop(gw, sim)
    lat = [(t - datetime.fromisoformat(ev["time"]).timestamp()) * 1000 for t, ev in events
           if ev["state"] == "raised" and ev["quality"]["status"] == "valid" and ev["type"].startswith("camera.")]
    if not lat:
        print(f"{protocol:<11} no detections received")
        return
    print(f"{protocol:<11} n={len(lat):4d}  p50 {statistics.median(lat):6.1f} ms  p99 {pct(lat, 0.99):6.1f} ms  "
          f"max {max(lat):6.1f} ms")


def proc_stats(pid: int) -> tuple[float, int, int]:
    """(CPU seconds used, RSS bytes, open descriptors) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss, len(os.listdir(f"/proc/{pid}/fd"))


async def scale(args: argparse.Namespace, broker: Mosquitto) -> None:
    protocols = ["isapi", "dahua", *(["onvif"] if HAS_ONVIF else [])]
    cams = [(f"c{i:03d}-{protocols[i % len(protocols)]}", BRAND[protocols[i % len(protocols)]])
            for i in range(args.cameras)]
    with tempfile.TemporaryDirectory(prefix="courtyard-bench-camera-") as tmp_name:
        tmp = Path(tmp_name)
        sim_port = free_port()
        sim = start_sim(cams, sim_port, 0, 10.0, None)
        wait_port(sim_port, 30)
        devices = [device(cid, cid.split("-", 1)[1], sim_port, 0, tmp / "media", backoff={"initial_s": 1, "max_s": 5})
                   for cid, _ in cams]
        gw = start_gateway(tmp, broker, devices)
        try:
            start = time.monotonic()
            events = await collect(broker, 0.1, until_online=len(cams))
            online = {ev["device"]["id"] for _, ev in events if ev["type"] == "device.online"}
            ready_s = time.monotonic() - start
            await asyncio.sleep(3)  # let start-up work settle
            cpu0, _, _ = proc_stats(gw.pid)
            t0 = time.monotonic()
            await asyncio.sleep(args.idle_seconds)
            cpu1, rss, fds = proc_stats(gw.pid)
            share = (cpu1 - cpu0) / (time.monotonic() - t0)
        finally:
            stop(gw, sim)
    print(f"{args.cameras} cameras ({', '.join(protocols)}): {len(online)} online after {ready_s:.1f} s; idle over "
          f"{args.idle_seconds:.0f} s: CPU {share:.3f} core, RSS {rss / 2**20:.0f} MiB, {fds} descriptors")


async def main(args: argparse.Namespace) -> None:
    broker = Mosquitto()
    broker.start()
    try:
        if not args.skip_latency:
            for protocol in ["isapi", "isapi_push", "dahua", *(["onvif"] if HAS_ONVIF else [])]:
                await latency(protocol, args, broker)
        if args.cameras:
            await scale(args, broker)
    finally:
        broker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rate", type=float, default=300, help="detections per minute (latency phase)")
    parser.add_argument("--seconds", type=float, default=20, help="latency phase length per protocol")
    parser.add_argument("--cameras", type=int, default=300, help="cameras for the scale phase (0: skip)")
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--skip-latency", action="store_true")
    asyncio.run(main(parser.parse_args()))
