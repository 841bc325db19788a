"""Latency of an ONVIF camera detection: simulator -> PullPoint -> gateway -> MQTT receipt (p50/p99).

Runs the camera simulator (ONVIF cameras), the gateway (camera driver, `protocol: onvif`,
outbox, MQTT sink) and a subscriber in one process on loopback, against a throwaway mosquitto
started here and stopped by its pid. Each sample raises or clears a fire on a random camera
after a random pause, so detections land at random points of the long-poll PullMessages cycle.
Raises fetch a snapshot (GetSnapshotUri, then an HTTP GET with Digest) before they are
committed; `--no-snapshots` measures without.

    .venv/bin/python bench/camera_onvif.py [--count 200] [--cameras 4] [--no-snapshots]

`--idle N` instead holds N PullPoint subscriptions open on one gateway (the simulator in its
own process, no detections) and reports the gateway's CPU, RSS and open descriptors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt

from gateway.config import parse_config
from gateway.runtime import Gateway
from simulators.camera.model import SimCamera, SimSite
from simulators.camera.server import CameraServer

PASSWORD = "bench-pass"


async def run(count: int, cameras: int, snapshots: bool, pull_timeout_s: float, port: int) -> dict[str, list[float]]:
    site = SimSite([SimCamera(f"onvif-{i}", "onvif", channels=1, password=PASSWORD) for i in range(cameras)],
                   rate_per_min=0)
    server = CameraServer(site)
    sim_port = await server.start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-onvif-"))
    devices = [{"id": cam, "driver": "camera", "protocol": "onvif", "password": PASSWORD,
                "url": f"http://127.0.0.1:{sim_port}/{cam}", "fetch_snapshots": snapshots,
                "media": {"path": str(tmp / "media")}, "onvif": {"pull_timeout_s": pull_timeout_s}}
               for cam in site.cameras]
    cfg = parse_config({"site": "bench", "gateway_id": "gw-bench", "outbox": {"path": str(tmp / "outbox.db")},
                        "mqtt": {"host": "127.0.0.1", "port": port}, "devices": devices}, source="bench")
    arrivals: asyncio.Queue[tuple[str, str, float]] = asyncio.Queue()
    out: dict[str, list[float]] = {"raised": [], "cleared": []}
    services = server.onvif  # type: ignore[attr-defined]
    try:
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-onvif-sub") as sub:
            await sub.subscribe("courtyard/bench/camera/+/event/camera.fire_detected", qos=1)

            async def listen() -> None:
                async for msg in sub.messages:
                    body = json.loads(msg.payload if isinstance(msg.payload, bytes) else str(msg.payload))
                    arrivals.put_nowait((body["device"]["id"], body["state"], time.time()))

            listener = asyncio.create_task(listen())
            async with Gateway(cfg):
                deadline = time.monotonic() + 20
                while not all(c in services and services[c].subscriptions for c in site.cameras):
                    if time.monotonic() > deadline:
                        raise SystemExit("cameras did not subscribe")
                    await asyncio.sleep(0.05)
                burning: set[str] = set()
                for _ in range(count):
                    await asyncio.sleep(random.uniform(0.02, 0.3))
                    cam = random.choice(sorted(site.cameras))
                    stop = cam in burning
                    burning.symmetric_difference_update({cam})
                    det = site.detect(cam, "fire", state="stop" if stop else "start", channel=1, picture=False)
                    got_cam, got_state, t1 = await asyncio.wait_for(arrivals.get(), 15)
                    assert got_cam == cam, (got_cam, cam)
                    out[got_state].append((t1 - det.sent_at) * 1000)
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
    finally:
        await server.aclose()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


async def idle(cameras: int, seconds: float, pull_timeout_s: float) -> None:
    """N cameras subscribed and pulling, nothing happening: what the gateway costs at rest."""
    from simulators.net import free_port

    sim_port = free_port()
    spec = ",".join(f"onvif-{i}:onvif:1" for i in range(cameras))
    sim = subprocess.Popen([sys.executable, "-m", "simulators.camera", "--port", str(sim_port), "--rate", "0",
                            "--cameras", spec, "--password", PASSWORD],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           cwd=Path(__file__).resolve().parents[1])
    tmp = Path(tempfile.mkdtemp(prefix="bench-onvif-idle-"))
    try:
        await asyncio.sleep(1.5)
        devices = [{"id": f"onvif-{i}", "driver": "camera", "protocol": "onvif", "password": PASSWORD,
                    "url": f"http://127.0.0.1:{sim_port}/onvif-{i}", "media": {"path": str(tmp / "media")},
                    "onvif": {"pull_timeout_s": pull_timeout_s}} for i in range(cameras)]
        cfg = parse_config({"site": "bench", "gateway_id": "gw-bench", "outbox": {"path": str(tmp / "outbox.db")},
                            "mqtt": {"enabled": False}, "devices": devices}, source="bench")
        async with Gateway(cfg) as gw:
            deadline = time.monotonic() + 60
            while gw.counters.snapshot().get("events", 0) < cameras and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # one device.online each
            await asyncio.sleep(pull_timeout_s)  # settle into the pull cycle
            cpu0, t0 = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
            rss_mb = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            fds = len(os.listdir("/proc/self/fd"))
            subs = sum(v for k, v in gw.counters.snapshot().items() if k.endswith("camera.onvif.subscriptions"))
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{cameras} ONVIF cameras idle (PullMessages timeout {pull_timeout_s:g} s), {subs} subscriptions, "
              f"over {seconds:g} s: gateway CPU {cpu * 100:.1f} % of a core, RSS {rss_mb:.0f} MB "
              f"(peak {peak:.0f} MB), {fds} open descriptors")
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(name: str, ms: list[float]) -> None:
    if ms:
        print(f"{name:<44} n={len(ms):4d}  p50={pct(ms, 0.5):7.1f} ms  p99={pct(ms, 0.99):7.1f} ms  "
              f"max={max(ms):7.1f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--pull-timeout", type=float, default=10.0, help="PullMessages timeout (driver default)")
    parser.add_argument("--no-snapshots", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--idle", type=int, metavar="N", help="hold N cameras subscribed; report CPU, RSS, fds")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    random.seed(args.seed)
    logging.basicConfig(level=logging.ERROR)
    if args.idle:
        await idle(args.idle, args.idle_seconds, args.pull_timeout)
        return
    print(f"{args.cameras} ONVIF cameras, PullMessages timeout {args.pull_timeout:g} s, "
          f"{args.count} fire raises/clears")
    from bench.broadcast import mosquitto  # imported here: it loads asyncua, which --idle must not count

    with mosquitto() as port:
        result = await run(args.count, args.cameras, not args.no_snapshots, args.pull_timeout, port)
    snap = "no snapshot" if args.no_snapshots else "with snapshot fetch"
    report(f"detection -> MQTT, raised ({snap})", result["raised"])
    report("detection -> MQTT, cleared", result["cleared"])
    report("detection -> MQTT, all", result["raised"] + result["cleared"])


if __name__ == "__main__":
    asyncio.run(main())
