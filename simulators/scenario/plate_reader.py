"""Scenario adapter for garage plate cameras: simulated cameras push over real HTTP to the gateway.

The cameras are HTTP clients and the gateway is the server, so "starting the simulators"
means picking the gateway listener's loopback port, opening the cameras' HTTP session and
starting their heartbeats and background traffic; until the gateway listens, their pushes
fail quietly (a camera retries nothing: that is what real cameras do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import tempfile
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import aiohttp

from simulators.net import free_port
from simulators.plate_reader import (
    RESIDENTS,
    Camera,
    CameraAuth,
    PushResult,
    Vehicle,
    fake_jpeg,
    hikvision_heartbeat_body,
    hikvision_plate_body,
    invalid_plate,
    make_plate,
    zhenshi_gpio_body,
    zhenshi_heartbeat_form,
    zhenshi_plate_body,
)
from simulators.scenario.adapter import KindAdapter, UnknownAction
from simulators.scenario.model import ScenarioDevice

log = logging.getLogger("courtyard.scenario.plate_reader")

#: Faults that change what (or whether) a camera pushes, on while injected.
READ_FAULTS = frozenset({
    "malformed_json", "gbk_plate", "base64_plate", "invalid_plate", "oversized_image", "blocklisted",
})
#: All injectable faults.
FAULTS = READ_FAULTS | {"wrong_credentials", "silent", "barrier_stuck", "clock_skew"}
COLOURS = ("blue", "yellow", "green", "yellow_green")
DEFAULT_BLOCKLIST = ("粤B99999",)

Direction = Literal["entry", "exit"]


def _colour_of(plate: str) -> str:
    """The plate class a GA 36 plate belongs to (8 characters: new-energy)."""
    if len(plate) == 8:
        return "yellow_green" if plate[-1] in "DF" and plate[2:7].isdigit() else "green"
    return "blue"


@dataclass
class _Lane:
    """One simulated camera: its settings, its HTTP side and its injected faults."""

    dev: ScenarioDevice
    protocol: Literal["zhenshi", "hikvision"]
    direction: Direction
    token: str
    port: int
    rate_per_min: float
    heartbeat_s: float
    image_bytes: int
    max_image_bytes: int
    gate_input: int | None
    barrier_s: float
    allowlist: list[str]
    blocklist: list[str]
    background: random.Random
    scripted: random.Random
    faults: set[str] = field(default_factory=set)
    clock_offset_s: float = 0.0
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    camera: Camera | None = None
    seq: int = 0
    barrier_up: bool = False
    barrier_down_at: float = 0.0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class PlateReaderAdapter(KindAdapter):
    """Garage lanes, one simulated plate camera per scenario device, read by `http_plate_reader`.

    Settings (durations in scenario seconds, scaled by `speed`):

    - `protocol`: `zhenshi` (JSON push; the reply opens the barrier; default) or `hikvision`
      (ANPR multipart; direction travels on the wire).
    - `direction`: `entry` (default) or `exit`: the lane this camera watches.
    - `rate`: background cars per scenario minute at this lane (default 2; `0`: none, for quiet,
      deterministic incident scenarios).
    - `heartbeat_s`: camera keep-alive period (default 10); the driver takes the camera offline after
      `offline_after` (default 3) silent periods.
    - `allowlist` (default the simulator's residents), `blocklist` (default `["粤B99999"]`),
      `unknown` (`deny`, or `open`; default deny at entry, open at exit): the driver's edge lists.
    - `vehicles`: passing-traffic population (default 40), shared by every lane of the scenario.
    - `image_bytes` (default 4000; 0: no picture), `max_image_bytes` (driver limit, default 256 KiB;
      `oversized_image` sends twice that), `media_path` (default a folder per scenario under the
      system temp directory).
    - `gate_input`: GPIO input the (Zhenshi) camera reports the barrier on (default 1; `null`: none,
      which also disables `barrier_stuck`); `barrier_s`: how long the barrier stays up (default 4);
      `barrier_timeout_s`: driver's window for the barrier to come up (default 5).
    - `dedupe_s` (default 10), `min_confidence` (default 0.7), `listen_port` (default: one free
      loopback port shared by every camera of the scenario); `token`: the camera's auth token
      (default one drawn from the seed; `courtyard demo` sets a fresh secret per run).

    Actions:

    - do `car`: one vehicle at this lane. params: `plate` (else one is chosen: entering cars from
      outside, leaving cars from inside the garage), `direction` (`entry`|`exit`; default the lane's;
      on Zhenshi lanes the event's direction is the lane's, the wire has no such field), `colour`
      (blue|yellow|green|yellow_green: a new vehicle of that plate class), `confidence` (0-100).
    - do `burst`: `n` cars (default 5) one right after the other; `duplicate: true` instead sends
      one read `n` times at once (a camera's retry storm, which the driver de-duplicates).
    - inject/clear `malformed_json` (truncated body), `gbk_plate` (whole body GBK-encoded),
      `base64_plate` (plate as base64 of GBK), `invalid_plate` (breaks GA 36), `oversized_image`,
      `blocklisted` (the car carries a blocklisted plate): while injected, every read of the camera
      carries the fault; `inject` also sends `cars` reads at once (default 1; 0 only arms it), of
      `plate` when given.
      `gbk_plate` and `base64_plate` are Zhenshi encodings: Hikvision lanes send the read unchanged.
    - inject/clear `wrong_credentials`: every push and heartbeat carries a wrong token (the gateway
      answers 401 and counts it; heartbeats stop counting, so the camera goes offline); `cars` as above.
    - inject/clear `silent`: the camera stops pushing and heart-beating (device.offline after the
      driver's window); `clear` resumes at once (device.online).
    - inject/clear `clock_skew`: the camera's clock is off by `seconds` (default 3600; negative: behind).
      Reads carry that device time; beyond 24 h the driver uses receipt time and counts `lpr.clock_skew`.
      `cars` as above.
    - inject/clear `barrier_stuck` (needs `gate_input`): the barrier does not come up after an open,
      so the driver raises `lpr.barrier_stuck`; `inject` sends one resident's car (`cars`, default 1),
      `clear` reports the barrier up, which clears the alarm (same alarm_id).
    """

    kind = "plate_reader"

    def __init__(self, devices: list[ScenarioDevice], *, seed: int, speed: float, scenario: str) -> None:
        super().__init__(devices, seed=seed, speed=speed, scenario=scenario)
        self.lanes: dict[str, _Lane] = {}
        self.port = 0
        self.session: aiohttp.ClientSession | None = None
        self.inside: dict[str, Vehicle] = {}  # plate -> vehicle parked in the garage
        self.traffic: list[Vehicle] = []
        self.residents: list[Vehicle] = []
        # (device, plate sent, HTTP status), for tests and logs; bounded: the demo loops for hours
        self.results: deque[tuple[str, str, int]] = deque(maxlen=10_000)
        self._media = Path(tempfile.gettempdir()) / "courtyard-scenario" / scenario / "lpr-media"

    def actions(self) -> dict[str, set[str]]:
        return {"do": {"car", "burst"}, "inject": set(FAULTS), "clear": set(FAULTS)}

    # ------------------------------------------------------------ lifecycle

    def _lists(self, dev: ScenarioDevice) -> tuple[list[str], list[str]]:
        s = dev.settings
        blocklist = [str(p) for p in s.get("blocklist", DEFAULT_BLOCKLIST)]
        allowlist = [str(p) for p in s.get("allowlist", RESIDENTS) if str(p) not in blocklist]
        return allowlist, blocklist

    async def start(self) -> None:
        self.port = free_port()
        population = random.Random(self.rng.randrange(1 << 30))
        size = max(1, max((int(d.settings.get("vehicles", 40)) for d in self.devices), default=40))
        colours = population.choices(COLOURS, weights=[70, 8, 20, 2], k=size)
        self.traffic = [Vehicle(make_plate(population, c), c) for c in colours]
        residents = dict.fromkeys(p for d in self.devices for p in self._lists(d)[0])
        self.residents = [Vehicle(p, _colour_of(p)) for p in residents]
        for dev in self.devices:
            s = dev.settings
            allowlist, blocklist = self._lists(dev)
            direction = str(s.get("direction", "entry"))
            protocol = str(s.get("protocol", "zhenshi"))
            if direction not in ("entry", "exit") or protocol not in ("zhenshi", "hikvision"):
                raise ValueError(f"{dev.id}: direction must be entry|exit, protocol zhenshi|hikvision")
            gate_input = s.get("gate_input", 1)
            self.lanes[dev.id] = _Lane(
                dev=dev, protocol=cast(Literal["zhenshi", "hikvision"], protocol), direction=cast(Direction, direction),
                # A `token` setting (the demo's per-run secret) wins; the draw keeps the rng sequence.
                token=str(s.get("token", f"scn-{self.rng.getrandbits(64):016x}")),
                port=int(s.get("listen_port", self.port)),
                rate_per_min=float(s.get("rate", 2.0)), heartbeat_s=float(s.get("heartbeat_s", 10.0)),
                image_bytes=int(s.get("image_bytes", 4000)), max_image_bytes=int(s.get("max_image_bytes", 256 * 1024)),
                gate_input=int(gate_input) if gate_input is not None and protocol == "zhenshi" else None,
                barrier_s=float(s.get("barrier_s", 4.0)), allowlist=allowlist, blocklist=blocklist,
                background=random.Random(self.rng.randrange(1 << 30)),
                scripted=random.Random(self.rng.randrange(1 << 30)),
            )
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for lane in self.lanes.values():
            lane.camera = Camera(self.session, f"http://127.0.0.1:{lane.port}/lpr/{lane.dev.id}",
                                 CameraAuth(token=lane.token))
            self._spawn(lane, self._heartbeats(lane))
            if lane.rate_per_min > 0:
                self._spawn(lane, self._traffic(lane))

    async def stop(self) -> None:
        tasks = [t for lane in self.lanes.values() for t in lane.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            with contextlib.suppress(Exception):
                await self.session.close()
            self.session = None

    def device_configs(self) -> list[dict[str, Any]]:
        out = []
        for dev in self.devices:
            s, lane = dev.settings, self.lanes[dev.id]
            exit_lane = lane.direction == "exit"
            cfg: dict[str, Any] = {
                "id": dev.id, "driver": "http_plate_reader", "name": dev.name, "simulated": True,
                "location": dev.location.model_dump(exclude_none=True),
                "vendor": lane.protocol, "protocol": lane.protocol,
                "listen_host": "127.0.0.1", "listen_port": lane.port,
                "auth": {"mode": "token", "token": lane.token},
                "lane": str(s.get("lane", dev.id)),
                "heartbeat_interval_s": lane.heartbeat_s / self.speed,
                "offline_after": int(s.get("offline_after", 3)),
                "dedupe_s": float(s.get("dedupe_s", 10.0)) / self.speed,
                "min_confidence": float(s.get("min_confidence", 0.7)),
                "rate_limit_per_s": 20.0 * self.speed,
                "access": {
                    "allowlist": lane.allowlist, "blocklist": lane.blocklist,
                    "unknown": str(s.get("unknown", "open" if exit_lane else "deny")),
                },
                "media": {
                    "path": str(s.get("media_path", self._media)), "max_bytes": 64 * 1024 * 1024,
                    "max_image_bytes": lane.max_image_bytes,
                },
                "max_body_bytes": max(4 * 1024 * 1024, 4 * lane.max_image_bytes),
            }
            if lane.protocol == "zhenshi":  # Zhenshi lanes are configured entry or exit
                cfg["direction"] = lane.direction
            else:  # Hikvision reports motion: the simulated camera faces arriving cars
                cfg["forward_is"] = "entry"
            if lane.gate_input is not None:
                cfg["gate_input"] = lane.gate_input
                cfg["barrier_timeout_s"] = float(s.get("barrier_timeout_s", 5.0)) / self.speed
            out.append(cfg)
        return out

    # ------------------------------------------------------------ actions

    async def apply(self, device: ScenarioDevice, verb: str, action: str, params: dict[str, Any]) -> None:
        self.check(verb, action)
        lane = self.lanes[device.id]
        rng = lane.scripted
        if params.get("direction", "entry") not in ("entry", "exit"):
            raise ValueError(f"{device.id}: direction must be entry or exit, not {params['direction']!r}")
        if action == "barrier_stuck" and lane.gate_input is None:
            raise ValueError(f"{device.id}: barrier_stuck needs a Zhenshi lane with `gate_input`")
        if verb == "do" and action == "car":
            await self._car(lane, rng, plate=params.get("plate"), direction=params.get("direction"),
                            colour=params.get("colour", params.get("color")), confidence=params.get("confidence"))
        elif verb == "do":  # burst
            n = max(1, int(params.get("n", 5)))
            if params.get("duplicate"):
                await self._car(lane, rng, plate=params.get("plate"), copies=n)
            else:
                for _ in range(n):
                    await self._car(lane, rng, direction=params.get("direction"))
        elif verb == "inject":
            lane.faults.add(action)
            if action == "clock_skew":
                lane.clock_offset_s = float(params.get("seconds", 3600.0))
            cars = int(params.get("cars", 0 if action == "silent" else 1))
            for _ in range(cars):
                plate = params.get("plate")
                if plate is None and action == "barrier_stuck" and lane.allowlist:
                    plate = rng.choice(lane.allowlist)
                await self._car(lane, rng, plate=plate, direction=params.get("direction"))
        elif verb == "clear":
            lane.faults.discard(action)
            if action == "clock_skew":
                lane.clock_offset_s = 0.0
            if action == "silent":
                await self._heartbeat(lane)
            elif action == "barrier_stuck":
                await self._barrier_up(lane)
        else:
            raise UnknownAction(verb)

    # ------------------------------------------------------------ camera behaviour

    def _spawn(self, lane: _Lane, job: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(job)
        lane.tasks.add(task)
        task.add_done_callback(lane.tasks.discard)

    def _vehicle(self, lane: _Lane, rng: random.Random, direction: Direction, plate: str | None,
                 colour: str | None) -> Vehicle:
        """The car for one read: the plate asked for, a new one of a colour, or one chosen by the rng."""
        if plate is not None:
            plate = str(plate)
            known = self.inside.get(plate) or next((v for v in self.residents + self.traffic if v.plate == plate), None)
            return known or Vehicle(plate, str(colour) if colour else _colour_of(plate))
        if colour is not None:
            if colour not in COLOURS:
                raise ValueError(f"colour must be one of {', '.join(COLOURS)}")
            return Vehicle(make_plate(rng, str(colour)), str(colour))
        recent = set(lane.recent)  # not the cars just read here: each chosen car is a new read, not a duplicate
        if direction == "exit":
            parked = sorted(p for p in self.inside if p not in recent)  # sorted: the seed decides, not dict order
            if parked:
                return self.inside[rng.choice(parked)]
        outside = [v for v in self.residents + self.traffic if v.plate not in self.inside and v.plate not in recent]
        if self.residents and rng.random() < 0.5:
            residents = [v for v in self.residents if v.plate not in self.inside and v.plate not in recent]
            if residents:
                return rng.choice(residents)
        return rng.choice(outside or self.traffic)

    async def _car(
        self,
        lane: _Lane,
        rng: random.Random,
        *,
        plate: str | None = None,
        direction: str | None = None,
        colour: str | None = None,
        confidence: Any = None,
        copies: int = 1,
    ) -> None:
        """One vehicle arrives at the lane and the camera pushes its read (unless silent)."""
        if "silent" in lane.faults or lane.camera is None:
            log.info("%s: camera silent, car not reported", lane.dev.id)
            return
        way: Direction = "exit" if (direction or lane.direction) == "exit" else "entry"
        if plate is None and "blocklisted" in lane.faults and lane.blocklist:
            plate = rng.choice(lane.blocklist)
        vehicle = self._vehicle(lane, rng, way, plate, colour)
        lane.recent.append(vehicle.plate)
        text = invalid_plate(rng) if "invalid_plate" in lane.faults else vehicle.plate
        score = int(confidence) if confidence is not None else min(100, max(70, round(rng.gauss(93, 3))))
        lane.seq += 1
        size = 2 * lane.max_image_bytes if "oversized_image" in lane.faults else lane.image_bytes
        image = fake_jpeg(size, rng.randrange(1 << 30)) if size else None
        if lane.protocol == "hikvision":
            body, ctype = hikvision_plate_body(
                text, color=vehicle.color, confidence=score, seq=lane.seq,
                images=[("licensePlatePicture.jpg", image)] if image is not None else [],
                direction="reverse" if way == "exit" else "forward", when=time.time() + lane.clock_offset_s,
            )
        else:
            encoding = "gbk" if "gbk_plate" in lane.faults else "base64" if "base64_plate" in lane.faults else "utf8"
            body = zhenshi_plate_body(text, color=vehicle.color, confidence=score, plateid=lane.seq,
                                      serial=f"sim-{lane.dev.id}", image=image, license_encoding=encoding,
                                      when=time.time() + lane.clock_offset_s)
            ctype = "application/json"
        if "malformed_json" in lane.faults:
            body = body[: max(1, len(body) // 2)]
        wrong = "wrong_credentials" in lane.faults
        try:
            replies = await asyncio.gather(*(lane.camera.post(body, ctype, wrong_auth=wrong) for _ in range(copies)))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("%s: push of %s failed: %s", lane.dev.id, text, exc)
            return
        for reply in replies:
            self.results.append((lane.dev.id, text, reply.status))
        log.info("%s: %s %s -> %s", lane.dev.id, way, text, replies[0].status)
        if self._passes(lane, replies[0]):
            if way == "entry":
                self.inside[vehicle.plate] = vehicle
            else:
                self.inside.pop(vehicle.plate, None)
            await self._barrier_up(lane)

    def _passes(self, lane: _Lane, reply: PushResult) -> bool:
        """Did the barrier let the car through? Zhenshi: the reply says; Hikvision: any accepted read."""
        if reply.status != 200:
            return False
        return reply.opened if lane.protocol == "zhenshi" else True

    async def _barrier_up(self, lane: _Lane) -> None:
        """The barrier goes up (the camera reports it over GPIO) and comes down `barrier_s` after the last car."""
        if lane.gate_input is None or "barrier_stuck" in lane.faults:
            return
        lane.barrier_down_at = asyncio.get_running_loop().time() + lane.barrier_s / self.speed
        await self._gpio(lane, 1)
        if not lane.barrier_up:
            lane.barrier_up = True
            self._spawn(lane, self._barrier_down(lane))

    async def _barrier_down(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        while True:  # each car opening it meanwhile keeps it up longer
            wait = lane.barrier_down_at - loop.time()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        lane.barrier_up = False
        await self._gpio(lane, 0)

    async def _gpio(self, lane: _Lane, value: int) -> None:
        if lane.camera is None or lane.gate_input is None or "silent" in lane.faults:
            return
        body = zhenshi_gpio_body(lane.gate_input, value, serial=f"sim-{lane.dev.id}")
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            await lane.camera.post(body, wrong_auth="wrong_credentials" in lane.faults)

    async def _heartbeat(self, lane: _Lane) -> None:
        if lane.camera is None or "silent" in lane.faults:
            return
        if lane.protocol == "hikvision":
            body, ctype = hikvision_heartbeat_body()
        else:
            body, ctype = zhenshi_heartbeat_form(f"sim-{lane.dev.id}")  # the documented multipart form
        try:
            await lane.camera.post(body, ctype, wrong_auth="wrong_credentials" in lane.faults)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("%s: heartbeat failed: %s", lane.dev.id, exc)

    async def _heartbeats(self, lane: _Lane) -> None:
        while True:
            await self._heartbeat(lane)
            await asyncio.sleep(lane.heartbeat_s / self.speed)

    async def _traffic(self, lane: _Lane) -> None:
        """Cars arriving at random (Poisson) at `rate` per scenario minute."""
        rng = lane.background
        while True:
            await asyncio.sleep(rng.expovariate(lane.rate_per_min / 60.0) / self.speed)
            try:
                await self._car(lane, rng)
            except Exception:  # background traffic must never take the scenario down
                log.exception("%s: background car failed", lane.dev.id)
