"""A simulated camera's HTTP side: authenticated pushes, and the Zhenshi offline buffer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from drivers.http_plate_reader.listener import sign

# ------------------------------------------------------------------ HTTP camera


@dataclass
class CameraAuth:
    """How a simulated camera authenticates: token, HMAC secret or basic credentials."""

    token: str | None = None
    token_header: str = "X-Auth-Token"
    hmac_secret: str | None = None
    basic: tuple[str, str] | None = None

    def headers(self, body: bytes, *, wrong: bool = False) -> dict[str, str]:
        """Headers for one request; `wrong` spoils the credentials (fault injection)."""
        spoil = "-wrong" if wrong else ""
        headers: dict[str, str] = {}
        if self.token:
            headers[self.token_header] = self.token + spoil
        if self.hmac_secret:
            stamp = f"{time.time():.3f}"  # a fresh signature even for the same body twice in a second
            headers["X-Timestamp"] = stamp
            headers["X-Signature"] = sign(self.hmac_secret + spoil, stamp, body)
        if self.basic:
            user, password = self.basic
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}{spoil}".encode()).decode()
        return headers


@dataclass
class PushResult:
    """What the gateway answered to one push."""

    status: int
    body: bytes
    latency_s: float

    def json(self) -> Any:
        """The reply body as JSON (raises if it is not)."""
        return json.loads(self.body)

    @property
    def opened(self) -> bool:
        """True when a Zhenshi reply told the barrier to open."""
        try:
            return bool(self.json()["Response_AlarmInfoPlate"]["info"] == "ok")
        except (ValueError, KeyError, TypeError):
            return False


class Camera:
    """One camera's HTTP side: posts bodies to its URL with its credentials."""

    def __init__(self, session: aiohttp.ClientSession, url: str, auth: CameraAuth | None = None) -> None:
        self.session = session
        self.url = url
        self.auth = auth or CameraAuth()

    async def post(
        self,
        body: bytes,
        content_type: str = "application/json",
        *,
        wrong_auth: bool = False,
        headers: dict[str, str] | None = None,
    ) -> PushResult:
        """POST one body and return status, reply and latency."""
        all_headers = {
            "Content-Type": content_type,
            **self.auth.headers(body, wrong=wrong_auth),
            **(headers or {}),
        }
        started = time.perf_counter()
        async with self.session.post(self.url, data=body, headers=all_headers) as resp:
            data = await resp.read()
        return PushResult(resp.status, data, time.perf_counter() - started)


def continues(result: PushResult, plateid: int) -> bool:
    """True when a reply tells a Zhenshi camera to go on with its offline buffer after `plateid`."""
    try:
        go_on = result.json()["Response_AlarmInfoPlate"]["ContinuePushOffline"]
        return int(go_on["plateid"]) == plateid and int(go_on["continue"]) == 1
    except (ValueError, KeyError, TypeError):
        return False


@dataclass
class _Buffered:
    plateid: int
    body: bytes


class BufferingCamera:
    """A Zhenshi camera's offline buffer, as the protocol describes it.

    A read the server did not answer with 200 is kept (up to `capacity`, oldest dropped) and
    re-sent with `isoffline: 1` once the server answers again, one record at a time: the next
    only after a reply carrying `ContinuePushOffline` for this record's `plateid`. With
    `resend_every` k, every k-th record is sent twice, as a camera does when a live read
    interrupts the drain before the reply arrived; the server must keep it once.
    """

    def __init__(self, camera: Camera, capacity: int, *, resend_every: int = 0) -> None:
        self.camera = camera
        self.capacity = capacity
        self.resend_every = resend_every
        self.buffer: deque[_Buffered] = deque()
        self.delivered: list[int] = []  # plateids the server told the camera to continue after
        self.dropped = 0
        self.resent = 0
        self._drained = 0
        self._lock = asyncio.Lock()

    def keep(self, plateid: int, offline_body: bytes) -> None:
        """Buffer one undelivered read (its `isoffline: 1` body)."""
        if len(self.buffer) >= self.capacity:
            self.buffer.popleft()
            self.dropped += 1
        self.buffer.append(_Buffered(plateid, offline_body))

    async def push(self, plateid: int, make_body: Callable[[bool], bytes]) -> PushResult | None:
        """Send a live read (`make_body(offline)` builds it); undelivered, it is buffered; delivered, drain."""
        try:
            result: PushResult | None = await self.camera.post(make_body(False))
        except aiohttp.ClientError:
            result = None
        if result is None or result.status != 200:
            self.keep(plateid, make_body(True))
            return result
        await self.drain()
        return result

    async def drain(self) -> int:
        """Re-send buffered reads while each reply says continue for that record; returns how many went."""
        sent = 0
        async with self._lock:
            while self.buffer:
                record = self.buffer[0]
                try:
                    self._drained += 1
                    if self.resend_every and self._drained % self.resend_every == 0:
                        await self.camera.post(record.body)  # reply "lost": the camera will send it again
                        self.resent += 1
                    result = await self.camera.post(record.body)
                except aiohttp.ClientError:
                    return sent
                if result.status != 200 or not continues(result, record.plateid):
                    return sent
                self.buffer.popleft()
                self.delivered.append(record.plateid)
                sent += 1
        return sent



# ------------------------------------------------------------------ reply-channel commands


def reply_command(result: PushResult) -> tuple[str, int] | None:
    """The barrier instruction a heartbeat reply carries (`Response_Heartbeat`), as (info, cmdid)."""
    try:
        doc = result.json()["Response_Heartbeat"]
        info, cmdid = doc["info"], int(doc["cmdid"])
    except (ValueError, KeyError, TypeError):
        return None
    return (info, cmdid) if info in ("opendoor", "closedoor") else None


class ZhenshiBarrierCamera:
    """A Zhenshi camera with a barrier: heartbeats, takes the barrier instructions its replies carry,
    moves the barrier and, with `gate_input`, reports the barrier's up/down contact as `AlarmGioIn`."""

    def __init__(self, camera: Camera, *, serial: str = "sim-0001", gate_input: int | None = None,
                 heartbeat_s: float = 0.2) -> None:
        self.camera = camera
        self.serial = serial
        self.gate_input = gate_input
        self.heartbeat_s = heartbeat_s
        self.barrier = "down"
        self.acted: list[tuple[str, int]] = []  # instructions the camera acted on, in order
        self.acted_at: list[float] = []  # perf_counter of each (benches)
        self.stuck = False  # the barrier motor does not move (the contact keeps its state)
        self.beats = 0

    async def beat(self) -> PushResult:
        """One heartbeat; acts on the instruction its reply carries."""
        from simulators.plate_reader.bodies import zhenshi_gpio_body, zhenshi_heartbeat_form

        body, ctype = zhenshi_heartbeat_form(self.serial)
        result = await self.camera.post(body, ctype)
        self.beats += 1
        command = reply_command(result)
        if command is not None:
            self.acted.append(command)
            self.acted_at.append(time.perf_counter())
            target = "up" if command[0] == "opendoor" else "down"
            if not self.stuck and target != self.barrier:
                self.barrier = target
                if self.gate_input is not None:
                    await self.camera.post(zhenshi_gpio_body(self.gate_input, int(target == "up"), self.serial))
        return result

    async def run(self) -> None:
        """Heartbeat every `heartbeat_s` until cancelled (a refused or failed post is retried next beat)."""
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                await self.beat()
            await asyncio.sleep(self.heartbeat_s)
