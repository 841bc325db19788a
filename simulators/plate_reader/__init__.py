"""Simulated garage plate cameras that push reads to a gateway over real HTTP.

A seeded garage: a population of vehicles (blue, yellow, green small-NEV and yellow-green
large-NEV plates from several provinces) drives in past an entry camera and out past an exit
camera. Each camera speaks the Zhenshi JSON push (`--protocol zhenshi`, the default), Hikvision
ANPR (`hikvision`: XML alert in a multipart; `--hik-json` for the JSON alert) or Dahua ITSAPI
(`dahua`: JSON to <target>/lpr/<id>/NotificationInfo/TollgateInfo, so the gateway config gives
each Dahua camera `path: /lpr/<id>`), sends keep-alives as the vendor documents them (Zhenshi:
a multipart form), honours the barrier reply, and can misbehave on purpose:

    malformed_json  truncated body           gbk            whole body GBK-encoded
    base64          plate as base64 of GBK   invalid_plate  plate breaking GA 36 rules
    oversize_image  picture above the limit  wrong_auth     wrong token / signature / password
    burst           same read 5x at once     silent         camera stops talking for a while

With `--offline-buffer N`, a Zhenshi camera behaves as shipped when the server is unreachable:
it keeps up to N reads and, once the server answers again, re-sends them one at a time
(`isoffline: 1`), the next only after a reply with `ContinuePushOffline` for the last one.

Modules: `bodies` (vendor wire formats), `camera` (the HTTP client side), `isapi` (barrier
endpoint), `model` (the garage), `sim` (the cameras of one garage); this package's namespace
re-exports them, as the single module it replaced did.

Run: `courtyard simulate plate_reader --target http://127.0.0.1:8088 --fault malformed_json`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import aiohttp

from simulators.plate_reader.bodies import (
    DAHUA_CODES,
    HIK_CODES,
    LETTERS,
    PROVINCES,
    ZHENSHI_CODES,
    dahua_keepalive_body,
    dahua_plate_body,
    fake_jpeg,
    hikvision_heartbeat_body,
    hikvision_plate_body,
    hikvision_plate_json,
    invalid_plate,
    make_plate,
    multipart,
    zhenshi_gpio_body,
    zhenshi_heartbeat_body,
    zhenshi_heartbeat_fields,
    zhenshi_heartbeat_form,
    zhenshi_plate_body,
)
from simulators.plate_reader.camera import BufferingCamera, Camera, CameraAuth, PushResult, continues
from simulators.plate_reader.isapi import IsapiBarrierServer
from simulators.plate_reader.model import Garage, SimStats, Vehicle
from simulators.plate_reader.sim import DEFAULT_RATE, FAULTS, RESIDENTS, GarageSim

__all__ = [
    "DAHUA_CODES",
    "DEFAULT_RATE",
    "FAULTS",
    "HIK_CODES",
    "LETTERS",
    "PROVINCES",
    "RESIDENTS",
    "ZHENSHI_CODES",
    "BufferingCamera",
    "Camera",
    "CameraAuth",
    "Garage",
    "GarageSim",
    "IsapiBarrierServer",
    "PushResult",
    "SimStats",
    "Vehicle",
    "add_arguments",
    "continues",
    "dahua_keepalive_body",
    "dahua_plate_body",
    "fake_jpeg",
    "hikvision_heartbeat_body",
    "hikvision_plate_body",
    "hikvision_plate_json",
    "invalid_plate",
    "make_plate",
    "multipart",
    "parse_args",
    "serve",
    "zhenshi_gpio_body",
    "zhenshi_heartbeat_body",
    "zhenshi_heartbeat_fields",
    "zhenshi_heartbeat_form",
    "zhenshi_plate_body",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of `courtyard simulate plate_reader`."""
    parser.add_argument("--target", default="http://127.0.0.1:8088", help="gateway listener base URL")
    parser.add_argument(
        "--protocol",
        choices=("zhenshi", "hikvision", "dahua"),
        default="zhenshi",
        help="camera vendor: Zhenshi JSON, Hikvision ANPR, Dahua ITSAPI (to <target>/lpr/<id>/NotificationInfo/...)",
    )
    parser.add_argument(
        "--hik-json", action="store_true", help="Hikvision: send the JSON EventNotificationAlert variant"
    )
    parser.add_argument(
        "--offline-buffer",
        type=int,
        default=0,
        metavar="N",
        help="Zhenshi: keep up to N reads while the gateway is unreachable, re-send them (isoffline) when it is back",
    )
    parser.add_argument("--entry-id", default="lpr-entry", help="entry camera device id (posts to /lpr/<id>)")
    parser.add_argument("--exit-id", default="lpr-exit", help="exit camera device id (posts to /lpr/<id>)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--vehicles", type=int, default=60, help="vehicles in the community")
    parser.add_argument("--extra-plate", action="append", help="add this plate to passing traffic (repeatable)")
    parser.add_argument(
        "--resident",
        action="append",
        help=f"a resident's plate, allowlisted at the gateway (default: {' '.join(RESIDENTS)})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help=f"vehicle movements per minute (default {DEFAULT_RATE:g}: "
        f"a read every {60 / DEFAULT_RATE:g} s on average, so the garage looks alive)",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="time multiplier (10 = ten times faster)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many movements (0: never)")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="keep-alive period, seconds")
    parser.add_argument("--image-bytes", type=int, default=20_000, help="picture size per read (0: none)")
    parser.add_argument("--oversize-bytes", type=int, default=3 * 1024 * 1024)
    parser.add_argument("--token", help="token for X-Auth-Token auth")
    parser.add_argument("--hmac-secret", help="secret for HMAC-signed pushes")
    parser.add_argument("--basic", help="user:password for basic auth")
    parser.add_argument("--fault", action="append", choices=FAULTS, help="fault to inject (repeatable)")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="probability a movement carries a fault")
    parser.add_argument("--silent-s", type=float, default=60.0, help="how long the 'silent' fault lasts")
    parser.add_argument(
        "--isapi-port", type=int, help="serve ISAPI barrier control (digest auth) at http://127.0.0.1:PORT/<camera id>"
    )
    parser.add_argument("--isapi-user", default="admin:admin12345", help="user:password for the ISAPI barriers")


async def serve(args: argparse.Namespace) -> None:
    """Run the simulated garage until cancelled (or `--count` movements)."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await GarageSim(args, session).run()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse simulator arguments (for tests and `python -m simulators.plate_reader`)."""
    parser = argparse.ArgumentParser(prog="courtyard simulate plate_reader", description=(__doc__ or "").split("\n")[0])
    add_arguments(parser)
    return parser.parse_args(argv)
