"""Latency of an ONVIF camera detection: simulator -> PullPoint -> gateway -> MQTT receipt (p50/p99).

Runs the camera simulator (ONVIF cameras), the gateway (camera driver, `protocol: onvif`,
outbox, MQTT sink) and a subscriber in one process on loopback, against a throwaway mosquitto
started here and stopped by its pid. Each sample raises or clears a fire on a random camera
after a random pause, so detections land at random points of the long-poll PullMessages cycle.
Raises fetch a snapshot (GetSnapshotUri, then an HTTP GET with Digest) before they are
committed; `--no-snapshots` measures without.

    .venv/bin/python bench/camera_onvif.py [--count 200] [--cameras 4] [--no-snapshots]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt

from bench.broadcast import mosquitto, pct
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
    args = parser.parse_args()
    random.seed(args.seed)
    logging.basicConfig(level=logging.ERROR)
    print(f"{args.cameras} ONVIF cameras, PullMessages timeout {args.pull_timeout:g} s, "
          f"{args.count} fire raises/clears")
    with mosquitto() as port:
        result = await run(args.count, args.cameras, not args.no_snapshots, args.pull_timeout, port)
    snap = "no snapshot" if args.no_snapshots else "with snapshot fetch"
    report(f"detection -> MQTT, raised ({snap})", result["raised"])
    report("detection -> MQTT, cleared", result["cleared"])
    report("detection -> MQTT, all", result["raised"] + result["cleared"])


if __name__ == "__main__":
    asyncio.run(main())
