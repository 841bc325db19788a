"""The simulated cameras: who they are, what they detect, and how they misbehave.

Protocol framing lives in `server.py` (ISAPI, Dahua) and `onvif.py` (ONVIF); this module only
knows cameras, detections and faults, so every protocol shows the same site.
"""

from __future__ import annotations

import asyncio
import random
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from time import time as wall_clock
from typing import Literal

Brand = Literal["hikvision", "dahua", "onvif"]
BRANDS: tuple[str, ...] = ("hikvision", "dahua", "onvif")
SimState = Literal["start", "stop", "pulse"]

FAULTS = (
    "cut_mid_part",      # close the event stream in the middle of a part
    "malformed_xml",     # every few alerts: a truncated XML / broken Dahua line
    "wrong_boundary",    # parts delimited by a boundary the header does not announce
    "slow_drip",         # write each part a few bytes at a time
    "auth_failure",      # refuse every credential (Digest and WS-UsernameToken)
    "clock_skew",        # the camera's clock runs hours off
    "silent",            # stream stays open but nothing, not even heartbeats, comes
    "pullpoint_expiry",  # ONVIF: subscriptions expire early (simulators/camera/onvif.py)
)

#: Detections raised at random, with their weight.
DETECTION_MIX: tuple[tuple[str, int], ...] = (
    ("fire", 2), ("smoke", 2), ("ebike", 4), ("intrusion", 4), ("video_loss", 1), ("tamper", 1), ("motion", 3),
)
#: Detections that a camera reports as a start and, later, a stop (the rest are pulses).
STATEFUL = frozenset({"video_loss", "tamper", "fire", "smoke"})
SKEW = timedelta(hours=-7)


@dataclass(frozen=True, slots=True)
class SimDetection:
    """One detection as the camera saw it; each protocol renders it its own way."""

    seq: int
    detection: str
    state: SimState
    channel: int
    region: str | None = None
    region_id: int | None = None
    confidence: int | None = None  # percent
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    picture: bytes | None = None
    rule: str | None = None  # intrusion flavour: field, line, entrance
    code: str | None = None  # an explicit vendor code (overrides the detection's)
    sent_at: float = field(default_factory=wall_clock)  # wall clock at generation (benches)


@dataclass
class SimCamera:
    """One camera (or analytics box) on the shared port, under `/<id>/`."""

    id: str
    brand: Brand
    channels: int = 2
    username: str = "admin"
    password: str = "sim-pass"
    faults: set[str] = field(default_factory=set)
    subscribers: set[asyncio.Queue[SimDetection | None]] = field(default_factory=set)
    json_alerts: bool = False  # Hikvision: JSON EventNotificationAlert instead of XML
    published: int = 0
    dropped: int = 0
    #: Alarm (relay) outputs, 1-based: True = energized. Set by the IO commands the server takes.
    outputs: dict[int, bool] = field(default_factory=lambda: {1: False, 2: False})
    relay_log: list[tuple[int, bool]] = field(default_factory=list)  # what the camera acted on (tests)
    refuse_relay: bool = False  # answers every output trigger with an error (e.g. output in alarm linkage)
    ignore_relay: bool = False  # answers OK but the output never changes (a dead relay driver)

    def subscribe(self) -> asyncio.Queue[SimDetection | None]:
        """A queue of this camera's detections (one per open event stream)."""
        queue: asyncio.Queue[SimDetection | None] = asyncio.Queue(maxsize=256)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[SimDetection | None]) -> None:
        """Stop feeding a stream that closed."""
        self.subscribers.discard(queue)

    def publish(self, detection: SimDetection) -> None:
        """Hand a detection to every open stream; a stream that does not read loses it (counted)."""
        self.published += 1
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(detection)
            except asyncio.QueueFull:
                self.dropped += 1

    def camera_time(self, now: datetime | None = None) -> datetime:
        """The camera's clock (hours off under `clock_skew`)."""
        now = now or datetime.now(UTC)
        return now + SKEW if "clock_skew" in self.faults else now


def jpeg(seed: int, size: int = 2048) -> bytes:
    """A small, valid-looking JPEG (SOI, APP0, filler, EOI); content varies with `seed`."""
    body = bytearray()
    rnd = random.Random(seed)
    while len(body) < size:
        body += struct.pack(">I", rnd.getrandbits(32))
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    crc = struct.pack(">I", zlib.crc32(bytes(body)))
    return b"\xff\xd8" + app0 + b"\xff\xfe" + struct.pack(">H", 6) + crc + bytes(body[:size]) + b"\xff\xd9"


class SimSite:
    """Every simulated camera on one port, and the detection generator."""

    def __init__(self, cameras: Iterable[SimCamera], *, rate_per_min: float = 6.0, seed: int = 1,
                 faults: Iterable[str] = (), fault_cameras: Iterable[str] | None = None,
                 picture_bytes: int = 2048, stateful_hold_s: float = 3.0) -> None:
        self.cameras = {c.id: c for c in cameras}
        self.rate_per_min = rate_per_min
        self.rng = random.Random(seed)
        self.picture_bytes = picture_bytes
        self.stateful_hold_s = stateful_hold_s
        self.realm = "courtyard-sim"
        self._seq = 0
        targets = set(fault_cameras) if fault_cameras is not None else set(self.cameras)
        for cam in self.cameras.values():
            if cam.id in targets:
                cam.faults |= set(faults)
        self._tasks: set[asyncio.Task[None]] = set()

    def camera(self, camera_id: str) -> SimCamera | None:
        """The camera with this id, if any."""
        return self.cameras.get(camera_id)

    def first(self, brand: Brand) -> SimCamera | None:
        """The first camera of a brand: what the bare vendor paths (no /<id>/ prefix) reach."""
        return next((c for c in self.cameras.values() if c.brand == brand), None)

    def detect(self, camera_id: str, detection: str, *, state: SimState = "pulse", channel: int = 1,
               region: str | None = None, confidence: int | None = 90, picture: bool = True,
               rule: str | None = None, code: str | None = None) -> SimDetection:
        """Raise one detection now on one camera (tests, scenarios, the generator)."""
        cam = self.cameras[camera_id]
        self._seq += 1
        det = SimDetection(
            seq=self._seq, detection=detection, state=state, channel=channel, region=region,
            region_id=1 if region else None, confidence=confidence, time=cam.camera_time(),
            picture=jpeg(self._seq, self.picture_bytes) if picture and state != "stop" else None,
            rule=rule, code=code,
        )
        cam.publish(det)
        return det

    async def run(self) -> None:
        """Raise random detections at `rate_per_min` across all cameras, until cancelled."""
        if self.rate_per_min <= 0 or not self.cameras:
            await asyncio.Event().wait()
        names = [d for d, _ in DETECTION_MIX]
        weights = [w for _, w in DETECTION_MIX]
        ids = sorted(self.cameras)
        try:
            while True:
                await asyncio.sleep(self.rng.expovariate(self.rate_per_min / 60.0))
                cam = self.cameras[self.rng.choice(ids)]
                if "silent" in cam.faults:
                    continue
                detection = self.rng.choices(names, weights)[0]
                channel = self.rng.randint(1, cam.channels)
                region = "zone-1" if detection in ("intrusion", "ebike") else None
                rule = self.rng.choice(("field", "line", "entrance")) if detection == "intrusion" else None
                if detection in STATEFUL:
                    self.detect(cam.id, detection, state="start", channel=channel, region=region)
                    task = asyncio.create_task(self._stop_later(cam.id, detection, channel, region))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:
                    self.detect(cam.id, detection, channel=channel, region=region, rule=rule,
                                confidence=self.rng.randint(60, 99))
        finally:
            for task in self._tasks:
                task.cancel()

    async def _stop_later(self, camera_id: str, detection: str, channel: int, region: str | None) -> None:
        await asyncio.sleep(self.stateful_hold_s)
        self.detect(camera_id, detection, state="stop", channel=channel, region=region, picture=False)


def default_cameras(password: str = "sim-pass") -> list[SimCamera]:
    """The stock line-up: Hikvision lobby and garage cameras, a Dahua garage camera, an ONVIF lobby camera."""
    return [
        SimCamera("hik-lobby", "hikvision", channels=2, password=password),
        SimCamera("hik-garage", "hikvision", channels=1, password=password, json_alerts=True),
        SimCamera("dahua-garage", "dahua", channels=4, password=password),
        SimCamera("onvif-lobby", "onvif", channels=1, password=password),
    ]


def parse_cameras(spec: str, password: str = "sim-pass") -> list[SimCamera]:
    """`id:brand[:channels],...` -> cameras (e.g. `lobby:hikvision:2,garage:dahua`)."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        parts = item.split(":")
        if len(parts) < 2 or parts[1] not in BRANDS:
            raise ValueError(f"camera {item!r}: want id:brand[:channels], brand one of {', '.join(BRANDS)}")
        channels = int(parts[2]) if len(parts) > 2 else 1
        out.append(SimCamera(parts[0], parts[1], channels=channels, password=password))  # type: ignore[arg-type]
    return out
