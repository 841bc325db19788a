"""Entry and exit cameras of one garage, driven by the model, pushing to a gateway."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time

import aiohttp

from simulators.plate_reader.bodies import (
    dahua_keepalive_body,
    dahua_plate_body,
    fake_jpeg,
    hikvision_heartbeat_body,
    hikvision_plate_body,
    hikvision_plate_json,
    invalid_plate,
    zhenshi_heartbeat_form,
    zhenshi_plate_body,
)
from simulators.plate_reader.camera import BufferingCamera, Camera, CameraAuth, reply_command
from simulators.plate_reader.isapi import IsapiBarrierServer
from simulators.plate_reader.model import Garage, SimStats, Vehicle

log = logging.getLogger("courtyard.sim.plate_reader")

FAULTS = (
    "malformed_json",
    "gbk",
    "base64",
    "invalid_plate",
    "oversize_image",
    "wrong_auth",
    "burst",
    "silent",
)
#: Residents of examples/plate_reader.yaml (its allowlist), so the example garage has traffic in and out.
RESIDENTS = ("京A12345", "沪AF12345", "粤BD54321")
#: Movements per minute by default: a read every 3 s on average, so a demo garage looks alive.
DEFAULT_RATE = 20.0


class GarageSim:
    """Entry and exit cameras of one garage, pushing to a gateway."""

    def __init__(self, args: argparse.Namespace, session: aiohttp.ClientSession) -> None:
        self.args = args
        self.garage = Garage.build(args.seed, args.vehicles, args.extra_plate or (), args.resident or RESIDENTS)
        self.rng = random.Random(args.seed + 1)
        base = args.target.rstrip("/")
        user, _, password = (args.basic or "").partition(":")
        auth = CameraAuth(
            token=args.token, hmac_secret=args.hmac_secret, basic=(user, password) if args.basic else None
        )
        self.entry = Camera(session, self._url(base, args.entry_id), auth)
        self.exit = Camera(session, self._url(base, args.exit_id), auth)
        self.buffers: dict[str, BufferingCamera] = {}
        if args.offline_buffer and args.protocol == "zhenshi":
            for camera in (self.entry, self.exit):
                self.buffers[camera.url] = BufferingCamera(camera, args.offline_buffer)
        self.stats = SimStats()
        self.silent_until = 0.0
        self.seq = 0
        self.waiting: dict[str, Vehicle] = {}
        self.isapi: IsapiBarrierServer | None = None

    def _url(self, base: str, camera_id: str) -> str:
        if self.args.protocol == "dahua":  # ITSAPI's fixed path, under the camera's own prefix
            return f"{base}/lpr/{camera_id}/NotificationInfo/TollgateInfo"
        return f"{base}/lpr/{camera_id}"

    def _body(
        self,
        vehicle: Vehicle,
        plate: str,
        *,
        encoding: str = "utf8",
        image: bytes | None = None,
        offline: bool = False,
    ) -> tuple[bytes, str]:
        confidence = self.garage.confidence()
        if self.args.protocol == "hikvision":
            images = [("licensePlatePicture.jpg", image)] if image is not None else []
            build = hikvision_plate_json if self.args.hik_json else hikvision_plate_body
            return build(
                plate,
                color=vehicle.color,
                confidence=confidence,
                seq=self.seq,
                images=images,
                direction="reverse" if vehicle.inside else "forward",
            )
        if self.args.protocol == "dahua":
            return dahua_plate_body(
                plate,
                color=vehicle.color,
                confidence=confidence,
                seq=self.seq,
                image=image,
                direction="Reverse" if vehicle.inside else "Obverse",
            )
        return zhenshi_plate_body(
            plate,
            color=vehicle.color,
            confidence=confidence,
            plateid=self.seq,
            license_encoding=encoding,
            image=image,
            offline=offline,
        ), "application/json"

    async def drive(self) -> None:
        """One vehicle movement, possibly with an injected fault."""
        vehicle = self.garage.next_move()
        camera = self.exit if vehicle.inside else self.entry
        fault = None
        if self.args.fault and self.rng.random() < self.args.fault_rate:
            fault = self.rng.choice(self.args.fault)
            self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1
        image = fake_jpeg(self.args.image_bytes, self.seq) if self.args.image_bytes else None
        plate = vehicle.plate
        if fault == "silent":
            self.silent_until = time.monotonic() + self.args.silent_s
            log.info("fault: cameras silent for %.0f s", self.args.silent_s)
            return
        if fault == "invalid_plate":
            plate = invalid_plate(self.rng)
        if fault == "oversize_image":
            image = fake_jpeg(self.args.oversize_bytes, self.seq)
        encoding = {"gbk": "gbk", "base64": "base64"}.get(fault or "", "utf8")
        self.seq += 1
        buffering = self.buffers.get(camera.url)
        if buffering is not None and fault is None:
            seq = self.seq

            def make(offline: bool) -> bytes:
                return self._body(vehicle, plate, image=image, offline=offline)[0]

            delivered = await buffering.push(seq, make)
            if delivered is not None:
                self.stats.count(delivered)
                if delivered.opened:
                    vehicle.inside = not vehicle.inside
            return
        body, ctype = self._body(vehicle, plate, encoding=encoding, image=image)
        if fault == "malformed_json":
            body = body[: max(1, len(body) // 2)]
        copies = 5 if fault == "burst" else 1
        results = await asyncio.gather(
            *(camera.post(body, ctype, wrong_auth=fault == "wrong_auth") for _ in range(copies)),
            return_exceptions=True,
        )
        passed = False
        for result in results:
            if isinstance(result, BaseException):
                log.warning("push failed: %s", result)
                continue
            self.stats.count(result, reply_decides=self.args.protocol == "zhenshi")
            log.info(
                "%s %s -> %s %s",
                camera.url.rsplit("/", 1)[-1],
                plate,
                result.status,
                result.body[:120].decode("utf-8", "replace"),
            )
            passed = passed or result.opened
        if self.isapi is not None:  # Hikvision: the barrier opens on an ISAPI command, not on the reply
            self.waiting[camera.url.rsplit("/", 1)[-1]] = vehicle
        elif passed or (self.args.protocol != "zhenshi" and results):
            vehicle.inside = not vehicle.inside

    def barrier_opened(self, camera_id: str) -> None:
        """The gateway opened a camera's barrier over ISAPI: the waiting vehicle drives through."""
        vehicle = self.waiting.pop(camera_id, None)
        if vehicle is not None:
            vehicle.inside = not vehicle.inside
            self.stats.opened += 1

    async def heartbeats(self) -> None:
        """Keep-alives from both cameras, unless they have gone silent."""
        while True:
            if time.monotonic() >= self.silent_until:
                for camera in (self.entry, self.exit):
                    url = camera.url
                    if self.args.protocol == "hikvision":
                        body, ctype = hikvision_heartbeat_body()
                    elif self.args.protocol == "dahua":
                        body, ctype = dahua_keepalive_body()
                        url = url.replace("/TollgateInfo", "/KeepAlive")
                    else:
                        body, ctype = zhenshi_heartbeat_form(f"sim-{url.rsplit('/', 1)[-1]}")
                    try:
                        beat = await Camera(camera.session, url, camera.auth).post(body, ctype)
                    except aiohttp.ClientError as exc:
                        log.warning("heartbeat failed: %s", exc)
                        continue
                    command = reply_command(beat)  # the reply channel: the camera acts on it
                    if command is not None:
                        log.info("%s: barrier command %s (%d)", url.rsplit("/", 1)[-1], *command)
                        if command[0] == "opendoor":
                            self.barrier_opened(url.rsplit("/", 1)[-1])
                    buffering = self.buffers.get(camera.url)
                    if buffering is not None and beat.status == 200 and buffering.buffer:
                        log.info("server back: %d buffered reads drained", await buffering.drain())
            await asyncio.sleep(self.args.heartbeat / self.args.speed)

    async def run(self) -> None:
        """Drive until `--count` reads were pushed (0: forever), heartbeating meanwhile."""
        if self.args.isapi_port is not None:
            user, _, password = self.args.isapi_user.partition(":")
            self.isapi = IsapiBarrierServer(user, password, self.barrier_opened)
            await self.isapi.start("127.0.0.1", self.args.isapi_port)
            log.info("ISAPI barriers at http://127.0.0.1:%d/<camera id>", self.isapi.port)
        beats = asyncio.create_task(self.heartbeats())
        try:
            done = 0
            while not self.args.count or done < self.args.count:
                delay = self.rng.expovariate(self.args.rate / 60.0) / self.args.speed
                await asyncio.sleep(delay)
                if time.monotonic() < self.silent_until:
                    continue
                try:
                    await self.drive()
                except aiohttp.ClientError as exc:
                    log.warning("push failed: %s", exc)
                done += 1
        finally:
            beats.cancel()
            if self.isapi is not None:
                await self.isapi.close()
            log.info("simulator stats: %s", self.stats)
