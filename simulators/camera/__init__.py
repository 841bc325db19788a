"""Simulated IP cameras of several brands on one port: Hikvision ISAPI, Dahua CGI, ONVIF.

Each camera answers under `/<id>/` (see `server.py`), with Digest auth (user `admin`,
password `--password`), and raises detections (fire, smoke, e-bike, intrusion, video loss,
tamper, motion) at `--rate` per minute across the site, with JPEG pictures. Faults
(`--fault`, repeatable; `--fault-camera` limits them to some cameras):

    cut_mid_part    stream closed in the middle of a part   malformed_xml  truncated alerts
    wrong_boundary  parts under an unannounced boundary      slow_drip      parts trickle out
    auth_failure    every credential refused                 clock_skew     camera clock 7 h off
    silent          stream open, nothing sent                pullpoint_expiry  ONVIF subscriptions die early

`--push URL` also POSTs every Hikvision detection (and a heartbeat) to a gateway listener,
as a camera set to HTTP listening does: `URL/camera/<id>`.

Run: `courtyard simulate camera --port 8090 --rate 12 --fault slow_drip`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Sequence

from simulators.camera.model import FAULTS, SimSite, default_cameras, parse_cameras
from simulators.camera.server import CameraServer

log = logging.getLogger("courtyard.sim.camera")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of `courtyard simulate camera`."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--rate", type=float, default=6.0, help="detections per minute across all cameras")
    parser.add_argument("--fault", action="append", choices=FAULTS, default=[], help="misbehave (repeatable)")
    parser.add_argument("--fault-camera", action="append", help="apply faults only to this camera (repeatable)")
    parser.add_argument("--cameras", help="id:brand[:channels],... (default: hik-lobby, hik-garage, "
                        "dahua-garage, onvif-lobby)")
    parser.add_argument("--password", default="sim-pass", help="password of every camera's admin account")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds between idle heartbeats")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--push", metavar="URL", help="also POST Hikvision alerts to URL/camera/<id>")
    parser.add_argument("--push-user", help="user for --push (Basic, or Digest with --push-digest)")
    parser.add_argument("--push-password", help="password for --push")
    parser.add_argument("--push-digest", action="store_true", help="--push with HTTP Digest instead of Basic")


def build_site(args: argparse.Namespace) -> SimSite:
    """The simulated site the arguments describe."""
    cameras = parse_cameras(args.cameras, args.password) if args.cameras else default_cameras(args.password)
    return SimSite(cameras, rate_per_min=args.rate, seed=args.seed, faults=args.fault,
                   fault_cameras=args.fault_camera)


async def serve(args: argparse.Namespace) -> None:
    """Serve the cameras until cancelled."""
    site = build_site(args)
    server = CameraServer(site, heartbeat_s=args.heartbeat)
    port = await server.start(args.host, args.port)
    log.info("camera simulator on %s:%d: %s", args.host, port, ", ".join(
        f"{c.id} ({c.brand})" for c in site.cameras.values()))
    print(f"camera simulator listening on http://{args.host}:{port}", flush=True)
    tasks = [asyncio.create_task(site.run())]
    if args.push:
        from simulators.camera.push import Pusher

        tasks.append(asyncio.create_task(Pusher(site, args.push, user=args.push_user,
                                                password=args.push_password, heartbeat_s=args.heartbeat,
                                                digest=args.push_digest).run()))
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.aclose()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse simulator arguments (tests, `python -m simulators.camera`)."""
    parser = argparse.ArgumentParser(prog="courtyard simulate camera", description=(__doc__ or "").split("\n")[0])
    add_arguments(parser)
    return parser.parse_args(argv)
