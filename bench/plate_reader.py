"""Benchmark: plate pushes per second and push-to-reply latency through a real gateway.

The gateway runs as its own process (`python -m gateway run`) with four Zhenshi cameras on
one shared listener and the real SQLite outbox (MQTT and InfluxDB off, so the figure is the
gateway's own: decode, validate, decide, store the image, commit, reply). This process is
the cameras: an open-loop phase pushes at a fixed rate (default 200/s) and reports latency
percentiles; a closed-loop phase measures the maximum rate with N pushes in flight. A last
phase sends 300 unauthenticated 4 MiB uploads (wrong token, 50 at a time) and prints the
gateway's RSS before and after: the listener refuses them on their headers, so RSS must stay flat.

    .venv/bin/python bench/plate_reader.py [--rate 200] [--seconds 10] [--image-bytes 20000] [--uploads 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulators.plate_reader import Camera, CameraAuth, fake_jpeg, make_plate, zhenshi_plate_body  # noqa: E402

CAMERAS = ("cam-1", "cam-2", "cam-3", "cam-4")
TOKEN = "bench-token-123"


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp: Path, port: int) -> Path:
    """A gateway config with four cameras sharing one listener; local outbox only."""
    devices = [
        {
            "id": cam,
            "driver": "http_plate_reader",
            "listen_host": "127.0.0.1",
            "listen_port": port,
            "auth": {"mode": "token", "token": TOKEN},
            "dedupe_s": 0,
            "rate_limit_per_s": 10_000,
            "rate_burst": 10_000,
            "access": {"allowlist": ["京A12345"], "unknown": "deny"},
            "rate_limit_total_per_s": 10_000,
            "rate_total_burst": 10_000,
            "media": {"path": str(tmp / "media"), "max_bytes": 200_000_000},
            # This process plays four cameras from one address, far faster than cameras push.
            "listener": {"max_connections_per_source": 256, "max_requests_per_s": 100_000, "requests_burst": 100_000},
        }
        for cam in CAMERAS
    ]
    cfg = {
        "site": "bench",
        "gateway_id": "gw-bench",
        "outbox": {"path": str(tmp / "outbox.db")},
        "mqtt": {"enabled": False},
        "devices": devices,
    }
    path = tmp / "bench.yaml"
    path.write_text(json.dumps(cfg, ensure_ascii=False))  # JSON is YAML
    return path


async def wait_listening(port: int, timeout: float = 20) -> None:
    """Until the gateway's listener accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise TimeoutError("gateway did not start listening")


def bodies(n: int, image_bytes: int, seed: int = 1) -> list[bytes]:
    """Distinct plate pushes (so no de-duplication), each with its own picture."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        plate = make_plate(rng, rng.choice(["blue", "blue", "green", "yellow"]))
        image = fake_jpeg(image_bytes, i) if image_bytes else None
        out.append(zhenshi_plate_body(plate, confidence=rng.randint(70, 99), plateid=i, image=image))
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def open_loop(cams: list[Camera], payloads: list[bytes], rate: float, seconds: float) -> None:
    """Push at a fixed rate regardless of replies; report latency percentiles."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = int(rate * seconds)
    tasks = []

    async def one(i: int) -> None:
        result = await cams[i % len(cams)].post(payloads[i % len(payloads)])
        latencies.append(result.latency_s * 1000)
        statuses[result.status] = statuses.get(result.status, 0) + 1

    for i in range(total):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    print(f"open loop  : {total} pushes at {rate:g}/s target, achieved {total / elapsed:.0f}/s, statuses {statuses}")
    print(
        f"  latency ms: p50 {percentile(latencies, 50):.2f}  p90 {percentile(latencies, 90):.2f}  "
        f"p99 {percentile(latencies, 99):.2f}  max {max(latencies):.2f}  mean {statistics.fmean(latencies):.2f}"
    )


async def closed_loop(cams: list[Camera], payloads: list[bytes], in_flight: int, seconds: float) -> None:
    """As fast as the gateway answers, with `in_flight` pushes outstanding."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    done = 0
    latencies: list[float] = []

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while loop.time() < deadline:
            result = await cams[i % len(cams)].post(payloads[i % len(payloads)])
            latencies.append(result.latency_s * 1000)
            done += 1
            i += in_flight

    start = loop.time()
    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    elapsed = loop.time() - start
    print(
        f"closed loop: {in_flight} in flight, {done / elapsed:.0f} pushes/s, "
        f"p50 {percentile(latencies, 50):.2f} ms, p99 {percentile(latencies, 99):.2f} ms"
    )


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def unauthenticated_uploads(url: str, pid: int, count: int, size: int, in_flight: int = 50) -> None:
    """`count` uploads of `size` bytes with a wrong token; RSS of the gateway before and after."""
    before = rss_mb(pid)
    body = b"x" * size
    statuses: dict[int | str, int] = {}
    gate = asyncio.Semaphore(in_flight)
    peak = before

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal peak
        async with gate:
            try:
                async with session.post(url, data=body, headers={"X-Auth-Token": "wrong-token"}) as resp:
                    key: int | str = resp.status
                    await resp.read()
            except aiohttp.ClientError as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1
            peak = max(peak, rss_mb(pid))

    start = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:
        await asyncio.gather(*(one(session) for _ in range(count)))
    print(
        f"unauthenticated uploads: {count} x {size / 2**20:g} MiB, {in_flight} at a time, "
        f"{time.monotonic() - start:.1f} s, statuses {statuses}"
    )
    print(f"  gateway RSS MB: before {before:.0f}  peak {peak:.0f}  after {rss_mb(pid):.0f}")


async def main(args: argparse.Namespace) -> None:
    """Start the gateway, run both phases, stop the gateway (by its pid)."""
    tmp = Path(tempfile.mkdtemp(prefix="courtyard-bench-lpr-"))
    port = free_port()
    config = write_config(tmp, port)
    log = (tmp / "gateway.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--log-level",
        "warning",
        "run",
        "-c",
        str(config),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    try:
        await wait_listening(port)
        payloads = bodies(2000, args.image_bytes)
        print(
            f"gateway pid {proc.pid}; {len(CAMERAS)} cameras on one listener; body "
            f"{len(payloads[0])} bytes (image {args.image_bytes} bytes); outbox {tmp / 'outbox.db'}"
        )
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector) as session:
            cams = [Camera(session, f"http://127.0.0.1:{port}/lpr/{c}", CameraAuth(token=TOKEN)) for c in CAMERAS]
            await open_loop(cams, payloads, 50, 1)  # warm-up
            await open_loop(cams, payloads, args.rate, args.seconds)
            await closed_loop(cams, payloads, args.in_flight, args.seconds)
        if args.uploads:
            target = f"http://127.0.0.1:{port}/lpr/{CAMERAS[0]}"
            await unauthenticated_uploads(target, proc.pid, args.uploads, 4 << 20, args.upload_in_flight)
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--image-bytes", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--uploads", type=int, default=300, help="unauthenticated 4 MiB uploads (0: skip)")
    parser.add_argument("--upload-in-flight", type=int, default=50)
    asyncio.run(main(parser.parse_args()))
