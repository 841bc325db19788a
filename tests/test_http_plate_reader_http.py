"""The plate reader over real HTTP on loopback: listener, auth, limits, gate decisions, media.

The driver runs against a small in-test context (`FakeContext`) so each test can look at
exactly what was emitted, in which order, and control when `emit()` returns.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.http_plate_reader import HttpPlateReaderConfig
from drivers.http_plate_reader.decoder import PlateDecoder
from drivers.http_plate_reader.driver import HttpPlateReader
from drivers.http_plate_reader.listener import PlateListener
from drivers.http_plate_reader.media import MediaStore
from gateway.driver import EventDraft
from gateway.errors import OutboxError, OutboxFull
from gateway.testing import IngestingContext
from schemas.lpr import LprPayload
from simulators.plate_reader import (
    RESIDENTS,
    Camera,
    CameraAuth,
    GarageSim,
    IsapiBarrierServer,
    fake_jpeg,
    hikvision_heartbeat_body,
    hikvision_plate_body,
    parse_args,
    serve,
    zhenshi_gpio_body,
    zhenshi_heartbeat_body,
    zhenshi_plate_body,
)

ALLOWED = "京A12345"
BLOCKED = "粤BD12345"
VISITOR = "沪C88888"
EXPIRED = "浙A66666"


class FakeCounters:
    """Counts in a dict."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n


class Shared:
    """`ctx.shared` for a set of fake contexts: one object per key, closed at the end."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def get(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        async with self._lock:
            if key not in self.objects:
                self.objects[key] = await factory()
            return self.objects[key]

    async def aclose(self) -> None:
        for obj in self.objects.values():
            await obj.aclose()


class FakeContext(IngestingContext):
    """A DeviceContext that keeps what it is given; `gate` can hold `emit()` to test ordering."""

    def __init__(self, config: HttpPlateReaderConfig, shared: Shared) -> None:
        self.config = config
        self.log = logging.getLogger(f"test.{config.id}")
        self.counters = FakeCounters()
        self.events: list[EventDraft] = []
        self.online: list[tuple[bool, str | None, int]] = []
        self.recorded: list[tuple[str, Any]] = []
        self.received: list[datetime] = []
        self.gate: asyncio.Event | None = None
        self.fail_emit: bool | Exception = False
        self._shared = shared

    def now(self) -> datetime:
        self.input_time = datetime.now(UTC)  # the ingest path asks once per input, then records it
        return self.input_time

    async def emit(self, drafts: Sequence[EventDraft], *, wait_s: float | None = None) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_emit:
            raise self.fail_emit if isinstance(self.fail_emit, Exception) else OutboxError("disk full")
        self.events.extend(drafts)

    async def set_online(self, online: bool, *, reason: str | None = None, misses: int = 0) -> None:
        self.online.append((online, reason, misses))

    recording = True

    def record(self, channel: str, data: Any) -> None:
        """Keep the input and its receipt time (what a recording keeps)."""
        self.recorded.append((channel, data))
        self.received.append(self.input_time)

    async def shared(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        return await self._shared.get(key, factory)

    def of_type(self, event_type: str) -> list[EventDraft]:
        return [e for e in self.events if e.type == event_type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def camera_config(tmp_path: Path, port: int, device_id: str, **extra: Any) -> HttpPlateReaderConfig:
    now = datetime.now(UTC)
    doc: dict[str, Any] = {
        "id": device_id,
        "driver": "http_plate_reader",
        "listen_host": "127.0.0.1",
        "listen_port": port,
        "lane": "in-1",
        "direction": "entry",
        "access": {
            "allowlist": [ALLOWED],
            "blocklist": [BLOCKED],
            "visitors": [
                {"plate": VISITOR, "valid_until": (now + timedelta(hours=2)).isoformat(), "pass_id": "v-1"},
                {"plate": EXPIRED, "valid_until": (now - timedelta(hours=2)).isoformat(), "pass_id": "v-0"},
            ],
        },
        "media": {"path": str(tmp_path / "media"), "max_bytes": 10_000_000, "max_image_bytes": 100_000},
        **extra,
    }
    return HttpPlateReaderConfig.model_validate(doc)


class Site:
    """Cameras running against one shared listener, and an HTTP client to be the cameras."""

    def __init__(self, tmp_path: Path, session: aiohttp.ClientSession) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.shared = Shared()
        self.session = session
        self.ctx: dict[str, FakeContext] = {}
        self.drivers: dict[str, HttpPlateReader] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def add(self, device_id: str, **extra: Any) -> FakeContext:
        cfg = camera_config(self.tmp_path, self.port, device_id, **extra)
        ctx = FakeContext(cfg, self.shared)
        driver = HttpPlateReader(cfg, ctx)
        self.ctx[device_id], self.drivers[device_id] = ctx, driver
        self.tasks.append(asyncio.create_task(driver.run()))
        for _ in range(200):
            listener = self.shared.objects.get(f"http_plate_reader:127.0.0.1:{self.port}")
            if listener is not None and cfg.url_path in listener.paths:
                return ctx
            await asyncio.sleep(0.01)
        raise AssertionError(f"{device_id} did not register")

    def camera(self, device_id: str, auth: CameraAuth | None = None) -> Camera:
        return Camera(self.session, f"http://127.0.0.1:{self.port}/lpr/{device_id}", auth)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.shared.aclose()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with aiohttp.ClientSession() as session:
        s = Site(tmp_path, session)
        try:
            yield s
        finally:
            await s.close()


def payload(draft: EventDraft) -> LprPayload:
    assert isinstance(draft.payload, LprPayload)
    return draft.payload


# ------------------------------------------------------------------ plate reads and decisions


async def test_allowlisted_plate_opens_and_emits_read_and_decision(site: Site) -> None:
    ctx = await site.add("cam-in")
    image = fake_jpeg(2000)
    result = await site.camera("cam-in").post(zhenshi_plate_body("京A·12345", confidence=97, image=image))
    assert result.status == 200
    assert result.json() == {"Response_AlarmInfoPlate": {"info": "ok", "plateid": 1}}
    read, decision = ctx.events
    assert read.type == "lpr.plate_read" and read.quality.status == "valid"
    p = payload(read)
    assert (p.plate, p.plate_raw, p.plate_color, p.plate_class) == (ALLOWED, "京A·12345", "blue", "ordinary")
    assert (p.confidence, p.direction, p.lane) == (0.97, "entry", "in-1")
    assert p.image_uri is not None and len(p.image_uri) == 1
    stored = Path(p.image_uri[0].removeprefix("file://"))
    assert await asyncio.to_thread(stored.read_bytes) == image
    assert decision.type == "lpr.gate_decision"
    assert (payload(decision).decision, payload(decision).reason) == ("open", "allowlist")
    assert ctx.online == [(True, "push received", 0)]
    assert ctx.recorded and ctx.recorded[0][0] == "push"


@pytest.mark.parametrize(
    ("plate", "color", "action", "reason", "severity"),
    [
        (BLOCKED, "green", "deny", "blocklist", "major"),
        (VISITOR, "blue", "open", "visitor", "info"),
        (EXPIRED, "blue", "deny", "visitor_expired", "info"),
        ("川A99999", "blue", "deny", "unknown", "info"),
        ("京AO1234", "blue", "deny", "invalid_plate", "info"),
        ("_无_", "blue", "deny", "no_plate", "info"),
    ],
)
async def test_gate_decisions(
    site: Site,
    plate: str,
    color: str,
    action: str,
    reason: str,
    severity: str,
) -> None:
    ctx = await site.add("cam-in")
    result = await site.camera("cam-in").post(zhenshi_plate_body(plate, color=color))
    assert result.status == 200
    assert result.opened is (action == "open")
    decision = ctx.of_type("lpr.gate_decision")[0]
    assert (payload(decision).decision, payload(decision).reason, decision.severity) == (action, reason, severity)
    assert ctx.of_type("lpr.plate_read")[0].severity == severity


async def test_invalid_plate_is_a_rejected_read_not_an_http_error(site: Site) -> None:
    ctx = await site.add("cam-in")
    result = await site.camera("cam-in").post(zhenshi_plate_body("京AO1234"))
    assert result.status == 200 and not result.opened
    read = ctx.of_type("lpr.plate_read")[0]
    assert read.quality.status == "rejected"
    assert "letter_i_or_o_in_serial" in read.quality.reasons
    assert payload(read).plate is None and payload(read).plate_raw == "京AO1234"


async def test_low_confidence_and_colour_mismatch_are_suspect(site: Site) -> None:
    ctx = await site.add("cam-in", min_confidence=0.8)
    await site.camera("cam-in").post(zhenshi_plate_body(ALLOWED, confidence=55))
    await site.camera("cam-in").post(zhenshi_plate_body("苏E12345D", color="blue"))
    low, mismatch = ctx.of_type("lpr.plate_read")
    assert low.quality.status == "suspect" and low.quality.reasons == ("low_confidence",)
    assert mismatch.quality.reasons == ("color_length_mismatch",)


async def test_gbk_and_base64_plates_decoded(site: Site) -> None:
    ctx = await site.add("cam-in")
    cam = site.camera("cam-in")
    await cam.post(zhenshi_plate_body("豫A00001", license_encoding="gbk"))
    await cam.post(zhenshi_plate_body("浙B12345", license_encoding="base64"))
    plates = [payload(e).plate for e in ctx.of_type("lpr.plate_read")]
    assert plates == ["豫A00001", "浙B12345"]
    assert all(e.quality.status == "valid" for e in ctx.of_type("lpr.plate_read"))
    assert ctx.counters.values.get("lpr.decoded_base64") == 1


async def test_offline_buffered_read_is_recorded_without_a_decision(site: Site) -> None:
    ctx = await site.add("cam-in")
    result = await site.camera("cam-in").post(zhenshi_plate_body(BLOCKED, color="green", offline=True, when=1e9))
    assert result.status == 200 and not result.opened
    (read,) = ctx.events
    assert read.type == "lpr.plate_read" and read.severity == "major"
    assert payload(read).is_offline_replay is True
    assert read.time == datetime.fromtimestamp(1e9, UTC)  # the camera's time, however old
    assert ctx.of_type("lpr.gate_decision") == []


async def test_reply_is_sent_only_after_events_are_committed(site: Site) -> None:
    ctx = await site.add("cam-in")
    ctx.gate = asyncio.Event()
    push = asyncio.create_task(site.camera("cam-in").post(zhenshi_plate_body(ALLOWED)))
    await asyncio.sleep(0.3)
    assert not push.done(), "camera got its reply before the events were committed"
    assert ctx.events == []
    ctx.gate.set()
    result = await push
    assert result.opened
    assert [e.type for e in ctx.events] == ["lpr.plate_read", "lpr.gate_decision"]


@pytest.mark.parametrize("failure", [OutboxError("disk full"), OutboxFull("over budget", retry_after_s=2.0)])
async def test_commit_failure_answers_503_and_never_opens(site: Site, failure: Exception) -> None:
    ctx = await site.add("cam-in")
    ctx.fail_emit = failure
    result = await site.camera("cam-in").post(zhenshi_plate_body(ALLOWED))
    assert result.status == 503
    assert result.json()["error"] == ("outbox_full" if isinstance(failure, OutboxFull) else "not_committed")
    ctx.fail_emit = False  # the camera's retry is not mistaken for a duplicate
    assert (await site.camera("cam-in").post(zhenshi_plate_body(ALLOWED))).opened


async def test_duplicates_suppressed_and_counted(site: Site) -> None:
    ctx = await site.add("cam-in", dedupe_s=0.5)
    cam = site.camera("cam-in")
    results = await asyncio.gather(*(cam.post(zhenshi_plate_body(ALLOWED)) for _ in range(5)))
    assert all(r.opened for r in results)
    assert len(ctx.of_type("lpr.plate_read")) == 1
    assert ctx.counters.values["lpr.duplicates_suppressed"] == 4
    await cam.post(zhenshi_plate_body(ALLOWED, channel=3), headers=None)  # same lane: lane is configured
    await asyncio.sleep(0.6)
    await cam.post(zhenshi_plate_body(ALLOWED))
    reads = ctx.of_type("lpr.plate_read")
    assert len(reads) == 2 and payload(reads[1]).suppressed == 5


# ------------------------------------------------------------------ HTTP-level defences


async def test_malformed_json_gets_400_with_reason_and_other_cameras_unaffected(site: Site) -> None:
    bad_ctx = await site.add("cam-bad")
    good_ctx = await site.add("cam-good")
    body = zhenshi_plate_body(ALLOWED)
    bad, good = await asyncio.gather(
        site.camera("cam-bad").post(body[: len(body) // 2]),
        site.camera("cam-good").post(body),
    )
    assert bad.status == 400
    assert bad.json()["error"] == "malformed_json" and "line 1" in bad.json()["reason"]
    assert good.opened
    rejected = bad_ctx.of_type("lpr.push_rejected")[0]
    assert rejected.quality.status == "rejected" and rejected.quality.reasons == ("malformed_json",)
    assert [e.type for e in good_ctx.events] == ["lpr.plate_read", "lpr.gate_decision"]


async def test_unknown_path_and_wrong_method(site: Site) -> None:
    await site.add("cam-in")
    nowhere = await site.camera("nope").post(b"{}")
    assert nowhere.status == 404 and nowhere.json()["error"] == "unknown_path"
    async with site.session.get(f"http://127.0.0.1:{site.port}/lpr/cam-in") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("auth_config", "camera_auth"),
    [
        ({"mode": "token", "token": "s3cret-token"}, CameraAuth(token="s3cret-token")),
        ({"mode": "hmac", "secret": "hmac-secret-1"}, CameraAuth(hmac_secret="hmac-secret-1")),
        ({"mode": "basic", "username": "cam", "password": "pw"}, CameraAuth(basic=("cam", "pw"))),
    ],
)
async def test_auth_modes(site: Site, auth_config: dict[str, Any], camera_auth: CameraAuth) -> None:
    ctx = await site.add("cam-in", auth=auth_config)
    cam = site.camera("cam-in", camera_auth)
    wrong = await cam.post(zhenshi_plate_body(ALLOWED), wrong_auth=True)
    assert wrong.status == 401 and wrong.json()["error"] == "unauthorized"
    missing = await site.camera("cam-in").post(zhenshi_plate_body(ALLOWED))
    assert missing.status == 401 and "missing" in missing.json()["reason"]
    assert ctx.events == []  # nothing from an unauthenticated source reaches the outbox
    assert ctx.counters.values["lpr.refused.unauthorized"] == 2
    assert (await cam.post(zhenshi_plate_body(ALLOWED))).opened


async def test_hmac_replay_outside_window_refused(site: Site) -> None:
    await site.add("cam-in", auth={"mode": "hmac", "secret": "hmac-secret-1", "max_skew_s": 60})
    from drivers.http_plate_reader.listener import sign

    body = zhenshi_plate_body(ALLOWED)
    old = "1000000000"
    result = await site.camera("cam-in").post(
        body,
        headers={"X-Timestamp": old, "X-Signature": sign("hmac-secret-1", old, body)},
    )
    assert result.status == 401 and "off gateway time" in result.json()["reason"]


async def test_hmac_replay_inside_window_refused_and_barrier_not_opened_twice(site: Site) -> None:
    ctx = await site.add("cam-in", auth={"mode": "hmac", "secret": "hmac-secret-1"}, dedupe_s=0)
    from drivers.http_plate_reader.listener import sign

    body = zhenshi_plate_body(ALLOWED)
    stamp = str(int(datetime.now(UTC).timestamp()))
    headers = {"X-Timestamp": stamp, "X-Signature": sign("hmac-secret-1", stamp, body)}
    first = await site.camera("cam-in").post(body, headers=headers)
    replay = await site.camera("cam-in").post(body, headers=headers)  # captured and sent again, same second
    assert first.opened
    assert replay.status == 409 and replay.json()["error"] == "replayed" and not replay.opened
    assert len(ctx.of_type("lpr.gate_decision")) == 1
    assert ctx.counters.values["lpr.refused.replayed"] == 1


async def test_camera_auth_as_shipped_url_token_digest_and_allowlist(site: Site) -> None:
    token = "zhenshi-url-token-0123"
    zs = await site.add("zs-in", auth={"mode": "url_token", "token": token})
    hik = await site.add("hik-in", protocol="hikvision", auth={"mode": "digest", "username": "cam", "password": "pw"})
    only = await site.add("zs-lan", allow_sources=["127.0.0.2/32"])
    base = f"http://127.0.0.1:{site.port}/lpr"
    async with site.session.post(f"{base}/zs-in/{token}", data=zhenshi_plate_body(ALLOWED)) as resp:
        assert resp.status == 200 and (await resp.json()) == {"Response_AlarmInfoPlate": {"info": "ok", "plateid": 1}}
    body, ctype = hikvision_plate_body(ALLOWED)
    digest = aiohttp.DigestAuthMiddleware("cam", "pw")
    async with (
        aiohttp.ClientSession(middlewares=(digest,)) as session,
        session.post(f"{base}/hik-in", data=body, headers={"Content-Type": ctype}) as resp,
    ):
        assert resp.status == 200 and b"/lpr/hik-in" in await resp.read()  # the reply names the path
    async with site.session.post(f"{base}/zs-lan", data=zhenshi_plate_body(ALLOWED)) as resp:
        assert resp.status == 403 and (await resp.json())["error"] == "source_not_allowed"
    assert [e.type for e in zs.events] == ["lpr.plate_read", "lpr.gate_decision"]
    assert [e.type for e in hik.events] == ["lpr.plate_read", "lpr.gate_decision"]
    assert hik.counters.values["lpr.refused.unauthorized"] == 1  # the client's first try, answered with a challenge
    assert only.events == [] and only.counters.values["lpr.refused.source_not_allowed"] == 1


async def test_body_and_image_size_limits(site: Site) -> None:
    ctx = await site.add("cam-in", max_body_bytes=50_000)
    cam = site.camera("cam-in")
    huge = await cam.post(b"{" + b" " * 60_000 + b"}")
    assert huge.status == 413 and huge.json()["error"] == "too_large"
    big_image = await cam.post(zhenshi_plate_body(ALLOWED, image=fake_jpeg(30_000)))
    assert big_image.status == 200  # under both limits
    site_ctx = await site.add("cam-img", max_body_bytes=1_000_000)
    oversize = await site.camera("cam-img").post(zhenshi_plate_body(ALLOWED, image=fake_jpeg(150_000)))
    assert oversize.status == 413
    assert oversize.json()["error"] == "image_too_large" and "150000 bytes" in oversize.json()["reason"]
    read = site_ctx.of_type("lpr.plate_read")[0]
    assert read.quality.status == "rejected" and "image_too_large" in read.quality.reasons
    assert ctx.counters.values["lpr.refused.too_large"] == 1


async def test_rate_limit_per_source(site: Site) -> None:
    ctx = await site.add("cam-in", rate_limit_per_s=0.5, rate_burst=3)
    other = await site.add("cam-other")
    cam = site.camera("cam-in")
    statuses = [(await cam.post(zhenshi_heartbeat_body())).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert (await site.camera("cam-other").post(zhenshi_heartbeat_body())).status == 200
    async with site.session.post(cam.url, data=b"{}") as resp:
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"] == "rate_limited"
    assert ctx.counters.values["lpr.refused.rate_limited"] == 3
    assert other.counters.values.get("lpr.refused.rate_limited") is None


async def test_handler_crash_is_that_cameras_500_only(site: Site) -> None:
    await site.add("cam-broken")
    good = await site.add("cam-good")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    site.drivers["cam-broken"].plates.process = boom  # type: ignore[method-assign]
    broken = await site.camera("cam-broken").post(zhenshi_plate_body(ALLOWED))
    assert broken.status == 500 and broken.json() == {"error": "internal", "reason": "RuntimeError"}
    assert (await site.camera("cam-good").post(zhenshi_plate_body(ALLOWED))).opened
    assert len(good.events) == 2


async def test_wrong_serial_refused(site: Site) -> None:
    ctx = await site.add("cam-in", serial="sn-right")
    result = await site.camera("cam-in").post(zhenshi_plate_body(ALLOWED, serial="sn-other"))
    assert result.status == 403 and result.json()["error"] == "wrong_camera"
    assert ctx.online == []  # a stranger's push does not prove this camera is alive


# ------------------------------------------------------------------ connectivity, barrier, Hikvision


async def test_heartbeats_keep_online_and_silence_takes_offline(site: Site) -> None:
    ctx = await site.add("cam-in", heartbeat_interval_s=0.1, offline_after=3)
    cam = site.camera("cam-in")
    for _ in range(4):
        assert (await cam.post(zhenshi_heartbeat_body())).json() == {"status": "ok"}
        await asyncio.sleep(0.05)
    assert ctx.online == [(True, "push received", 0)]
    for _ in range(100):
        if len(ctx.online) == 2:
            break
        await asyncio.sleep(0.05)
    online, reason, misses = ctx.online[1]
    assert online is False and misses >= 3 and reason is not None and "no push or heartbeat" in reason
    await cam.post(zhenshi_plate_body(ALLOWED))
    assert ctx.online[-1][0] is True
    assert ctx.counters.values["lpr.heartbeats"] == 4


async def test_barrier_state_and_stuck_fault(site: Site) -> None:
    ctx = await site.add("cam-in", gate_input=1, barrier_timeout_s=0.2)
    cam = site.camera("cam-in")
    assert (await cam.post(zhenshi_plate_body(ALLOWED))).opened
    for _ in range(100):
        if ctx.of_type("lpr.barrier_stuck"):
            break
        await asyncio.sleep(0.02)
    raised = ctx.of_type("lpr.barrier_stuck")[0]
    assert (raised.cls, raised.state, raised.severity) == ("fault", "raised", "major")
    await cam.post(zhenshi_gpio_body(1, 1))
    await cam.post(zhenshi_gpio_body(2, 1))
    states = [payload(e).gate_state for e in ctx.of_type("lpr.gate_state")]
    assert states == ["up"]
    cleared = ctx.of_type("lpr.barrier_stuck")[1]
    assert cleared.state == "cleared" and cleared.alarm_id == raised.alarm_id
    assert payload(ctx.of_type("lpr.io_trigger")[0]).io_input == 2
    assert_replays(ctx)  # the timer's alarm is recorded: a replay raises and clears the same alarm_id


def replay(ctx: FakeContext) -> list[EventDraft]:
    """Feed what `ctx` recorded, at its receipt times, to a fresh decoder, as `courtyard replay` does."""
    decoder = PlateDecoder(ctx.config, FakeContext(ctx.config, Shared()))
    replayed: list[EventDraft] = []
    for (channel, data), when in zip(ctx.recorded, ctx.received, strict=True):
        drafts = decoder.feed(channel, json.loads(json.dumps(data)), when)
        replayed += [d if d.time else replace(d, time=when) for d in drafts]
    return replayed


def assert_replays(ctx: FakeContext) -> None:
    """Every recorded input, fed at its receipt time to a fresh decoder, gives the events the live driver did."""
    replayed = replay(ctx)
    assert replayed == ctx.events


async def test_barrier_up_and_down_within_the_window_is_not_stuck(site: Site) -> None:
    ctx = await site.add("cam-in", gate_input=1, barrier_timeout_s=0.3, dedupe_s=0)
    cam = site.camera("cam-in")
    assert (await cam.post(zhenshi_plate_body(ALLOWED))).opened
    await cam.post(zhenshi_gpio_body(1, 1))
    await cam.post(zhenshi_gpio_body(1, 0))  # a quick car: down again before the window ends
    assert (await cam.post(zhenshi_plate_body(ALLOWED))).opened
    await asyncio.sleep(0.5)  # the second open came while down and no up followed: that one is stuck
    assert [e.state for e in ctx.of_type("lpr.barrier_stuck")] == ["raised"]
    await cam.post(zhenshi_gpio_body(1, 1))
    assert (await cam.post(zhenshi_plate_body(ALLOWED))).opened  # already up: no new report needed
    await asyncio.sleep(0.5)
    assert [e.state for e in ctx.of_type("lpr.barrier_stuck")] == ["raised", "cleared"]


async def test_hikvision_multipart_on_the_same_listener(site: Site) -> None:
    ctx = await site.add("hik-out", protocol="hikvision", direction=None, lane=None, forward_is="entry")
    pictures = [("licensePlatePicture.jpg", fake_jpeg(800, 1)), ("detectionPicture.jpg", fake_jpeg(4000, 2))]
    body, ctype = hikvision_plate_body(
        "沪AF12345", color="green", confidence=96, seq=9, lane=2, images=pictures, direction="reverse"
    )
    cam = site.camera("hik-out")
    result = await cam.post(body, ctype)
    assert result.status == 200 and b"<statusString>OK</statusString>" in result.body
    read = ctx.of_type("lpr.plate_read")[0]
    p = payload(read)
    assert (p.plate, p.plate_color, p.plate_type, p.confidence) == ("沪AF12345", "green", "nev_small", 0.96)
    assert (p.direction, p.lane, read.seq) == ("exit", "2", 9)
    assert p.image_uri is not None and len(p.image_uri) == 2
    hb, hb_type = hikvision_heartbeat_body()
    assert (await cam.post(hb, hb_type)).status == 200
    xml_bomb = b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa">]><EventNotificationAlert/>'
    refused = await cam.post(xml_bomb, "application/xml")
    assert refused.status == 400 and refused.json()["error"] == "bad_xml"


@pytest.mark.parametrize(
    ("auth", "password", "error"),
    [
        ("digest", "admin12345", None),
        ("digest", "wrong", "HTTP 401 from camera"),
        ("basic", "admin12345", "HTTP 401 from camera"),  # the simulated cameras only speak digest, as shipped
    ],
)
async def test_hikvision_barrier_opened_over_isapi(site: Site, auth: str, password: str, error: str | None) -> None:
    opened: list[str] = []
    isapi = IsapiBarrierServer("admin", "admin12345", opened.append)
    await isapi.start("127.0.0.1", 0)
    try:
        barrier = {"url": f"http://127.0.0.1:{isapi.port}/hik-in", "password": password, "auth": auth}
        ctx = await site.add("hik-in", protocol="hikvision", barrier=barrier)
        cam = site.camera("hik-in")
        for plate in (ALLOWED, "川A99999"):  # one open, one deny: only the open is commanded
            body, ctype = hikvision_plate_body(plate)
            assert (await cam.post(body, ctype)).status == 200
        for _ in range(200):
            if ctx.of_type("lpr.barrier_command"):
                break
            await asyncio.sleep(0.01)
        (command,) = ctx.of_type("lpr.barrier_command")
        assert command.cls == "command"
        assert (payload(command).plate, payload(command).decision, payload(command).detail) == (ALLOWED, "open", error)
        assert opened == ([] if error else ["hik-in"])
        assert command.severity == ("info" if error is None else "major")
    finally:
        await isapi.close()


async def test_barrier_unreachable_is_reported(site: Site) -> None:
    barrier = {"url": f"http://127.0.0.1:{free_port()}", "password": "x", "timeout_s": 0.5}
    ctx = await site.add("hik-in", protocol="hikvision", barrier=barrier)
    body, ctype = hikvision_plate_body(ALLOWED)
    assert (await site.camera("hik-in").post(body, ctype)).status == 200  # the reply never waits on the barrier
    for _ in range(200):
        if ctx.of_type("lpr.barrier_command"):
            break
        await asyncio.sleep(0.01)
    detail = payload(ctx.of_type("lpr.barrier_command")[0]).detail
    assert detail is not None and "Connect" in detail
    assert ctx.counters.values["lpr.barrier_command_failed"] == 1
    assert_replays(ctx)  # how the command went is recorded too


async def test_replay_gives_the_same_events(site: Site, tmp_path: Path) -> None:
    ctx = await site.add("cam-in")
    cam = site.camera("cam-in")
    await cam.post(zhenshi_plate_body(ALLOWED, image=fake_jpeg(1000), when=1_700_000_000))
    await cam.post(zhenshi_plate_body("京AO1234", when=1_700_000_001))
    await cam.post(b"{not json")
    replayed = replay(ctx)
    assert [(e.type, e.payload, e.quality, e.time) for e in replayed] == [
        (e.type, e.payload, e.quality, e.time) for e in ctx.events
    ]
    assert all(e.time is not None for e in replayed)  # reads without a device clock: receipt time, not emit time


async def test_media_store_evicts_oldest(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "m", max_bytes=2500)
    store.scan()
    uris = [await store.store(f"cam/{i}.jpg", bytes([i]) * 1000) for i in range(4)]
    assert store.total_bytes == 2000 and store.evicted == 2
    on_disk = sorted(p.name for p in (tmp_path / "m" / "cam").iterdir())
    assert on_disk == ["2.jpg", "3.jpg"]
    assert uris[3] == (tmp_path / "m" / "cam" / "3.jpg").resolve().as_uri()
    again = MediaStore(tmp_path / "m", max_bytes=1500)
    again.scan()  # a restart with a smaller budget trims at once
    assert again.total_bytes == 1000


async def test_simulator_drives_a_garage_over_http(site: Site) -> None:
    entry = await site.add("lpr-entry", heartbeat_interval_s=0.5)
    exit_ = await site.add("lpr-exit", direction="exit", access={"unknown": "open"})
    args = parse_args(
        [
            "--target",
            f"http://127.0.0.1:{site.port}",
            "--count",
            "40",
            "--rate",
            "6000",
            "--seed",
            "7",
            "--heartbeat",
            "0.2",
            "--image-bytes",
            "2000",
            "--fault",
            "malformed_json",
            "--fault",
            "base64",
            "--fault",
            "burst",
            "--fault",
            "invalid_plate",
            "--fault-rate",
            "0.3",
        ]
    )
    await asyncio.wait_for(serve(args), 30)
    reads = entry.of_type("lpr.plate_read") + exit_.of_type("lpr.plate_read")
    assert len(reads) >= 20
    colors = {payload(e).plate_color for e in reads}
    assert {"blue", "green"} <= colors
    assert any(e.quality.status == "rejected" for e in reads)
    assert entry.of_type("lpr.push_rejected") or exit_.of_type("lpr.push_rejected")
    assert entry.online[0][0] is True and exit_.online[0][0] is True


async def test_simulator_hikvision_with_auth_and_faults(site: Site) -> None:
    auth = {"mode": "token", "token": "sim-token-1"}
    entry = await site.add(
        "lpr-entry",
        protocol="hikvision",
        auth=auth,
        media={"path": str(site.tmp_path / "media"), "max_image_bytes": 50_000},
    )
    exit_ = await site.add("lpr-exit", protocol="hikvision", auth=auth, direction="exit")
    args = parse_args(
        [
            "--target",
            f"http://127.0.0.1:{site.port}",
            "--protocol",
            "hikvision",
            "--token",
            "sim-token-1",
            "--count",
            "40",
            "--rate",
            "6000",
            "--seed",
            "3",
            "--heartbeat",
            "0.2",
            "--image-bytes",
            "1000",
            "--oversize-bytes",
            "60000",
            "--fault",
            "oversize_image",
            "--fault",
            "wrong_auth",
            "--fault-rate",
            "0.4",
        ]
    )
    await asyncio.wait_for(serve(args), 30)
    counters = {**entry.counters.values}
    for key, value in exit_.counters.values.items():
        counters[key] = counters.get(key, 0) + value
    assert counters.get("lpr.refused.unauthorized", 0) >= 1
    assert counters.get("lpr.rejected.image_too_large", 0) >= 1
    assert counters.get("lpr.heartbeats", 0) >= 1
    reads = entry.of_type("lpr.plate_read") + exit_.of_type("lpr.plate_read")
    assert any(e.quality.status == "valid" and payload(e).image_uri for e in reads)


async def test_simulator_hikvision_barriers_open_over_isapi(site: Site) -> None:
    isapi_port = free_port()
    for cam in ("lpr-entry", "lpr-exit"):
        barrier = {"url": f"http://127.0.0.1:{isapi_port}/{cam}", "password": "admin12345"}
        await site.add(cam, protocol="hikvision", barrier=barrier, access={"allowlist": list(RESIDENTS)})
    args = parse_args(
        [
            *("--target", f"http://127.0.0.1:{site.port}", "--protocol", "hikvision", "--isapi-port", str(isapi_port)),
            *("--count", "30", "--rate", "3000", "--seed", "5", "--image-bytes", "0"),
        ]
    )
    sim = GarageSim(args, site.session)
    await asyncio.wait_for(sim.run(), 30)
    assert sim.isapi is not None
    opened = {camera for camera, mode in sim.isapi.commands if mode == "open"}
    assert opened == {"lpr-entry", "lpr-exit"}  # residents drove in, and out again
    commands = site.ctx["lpr-entry"].of_type("lpr.barrier_command") + site.ctx["lpr-exit"].of_type(
        "lpr.barrier_command"
    )
    assert commands and all(payload(c).detail is None for c in commands)


async def test_simulator_silent_camera_goes_offline(site: Site) -> None:
    ctx = await site.add("lpr-entry", heartbeat_interval_s=0.1, offline_after=2)
    await site.add("lpr-exit")
    args = parse_args(
        [
            "--target",
            f"http://127.0.0.1:{site.port}",
            "--count",
            "3",
            "--rate",
            "6000",
            "--heartbeat",
            "0.05",
            "--fault",
            "silent",
            "--fault-rate",
            "1",
            "--silent-s",
            "0.6",
            "--image-bytes",
            "0",
        ]
    )
    await asyncio.wait_for(serve(args), 30)
    assert [online for online, _, _ in ctx.online][:2] == [True, False]


# ------------------------------------------------------------------ property: no body crashes the listener


@pytest.fixture(scope="module")
def threaded_listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A listener with a Zhenshi and a Hikvision camera in a background loop, for sync hypothesis tests."""
    tmp = tmp_path_factory.mktemp("lpr-prop")
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        shared = Shared()
        tasks = []
        for device_id, extra in (("zs", {}), ("hik", {"protocol": "hikvision"})):
            cfg = camera_config(
                tmp, port, device_id, rate_limit_per_s=1e6, rate_burst=10**6, max_body_bytes=20_000, **extra
            )
            tasks.append(asyncio.create_task(HttpPlateReader(cfg, FakeContext(cfg, shared)).run()))
        for _ in range(500):
            if f"http_plate_reader:127.0.0.1:{port}" in shared.objects:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        ready.set()
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await shared.aclose()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port
    assert stop is not None
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


bodies = st.one_of(
    st.binary(max_size=3000),
    st.builds(
        lambda p, c, b64: zhenshi_plate_body(p, confidence=c, license_encoding="base64" if b64 else "utf8"),
        st.text(alphabet="京沪粤AB0123OID学 ·", max_size=10),
        st.integers(-5, 500),
        st.booleans(),
    ),
    st.builds(
        lambda d: json.dumps(d).encode(),
        st.dictionaries(
            st.sampled_from(["AlarmInfoPlate", "heartbeat", "AlarmGioIn", "x"]),
            st.none() | st.integers() | st.text(),
            max_size=3,
        ),
    ),
)


@given(
    path=st.sampled_from(["/lpr/zs", "/lpr/hik"]),
    body=bodies,
    ctype=st.sampled_from(["application/json", "application/xml", "multipart/form-data; boundary=b", "text/plain"]),
    extra=st.dictionaries(
        st.sampled_from(["X-Timestamp", "Authorization", "X-Signature"]),
        st.text(alphabet="abc123=:", max_size=10),
        max_size=2,
    ),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_request_crashes_the_listener(
    threaded_listener: int,
    path: str,
    body: bytes,
    ctype: str,
    extra: dict[str, str],
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", threaded_listener, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": ctype, **extra})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    assert resp.status < 500, data
    if resp.status >= 400:
        doc = json.loads(data)
        assert set(doc) == {"error", "reason"} and doc["reason"]


@given(
    body=st.binary(max_size=2000),
    ctype=st.sampled_from(["application/json", "multipart/form-data; boundary=x"]),
    protocol=st.sampled_from(["zhenshi", "hikvision"]),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_body_crashes_the_normalizer(tmp_path: Path, body: bytes, ctype: str, protocol: str) -> None:
    cfg = camera_config(tmp_path, 8088, "cam", protocol=protocol)
    outcome = PlateDecoder(cfg, FakeContext(cfg, Shared())).process(ctype, body, datetime.now(UTC), 0.0, "/p")
    assert outcome.reply.status in (200, 400, 403, 413, 422)
    for draft in outcome.drafts:
        assert draft.quality.status != "rejected" or draft.quality.reasons
        draft.payload.model_dump_json()  # publishable as JSON


@given(
    license=st.text(max_size=12)
    | st.binary(max_size=12).map(lambda b: b.decode("latin-1"))
    | st.sampled_from(["\ud800京A12345", "京A\udfff1234", "\udc80"])
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_license_string_gives_publishable_events(tmp_path: Path, license: str) -> None:
    cfg = camera_config(tmp_path, 8088, "cam")
    body = json.dumps({"AlarmInfoPlate": {"result": {"PlateResult": {"license": license, "confidence": 90}}}})
    outcome = PlateDecoder(cfg, FakeContext(cfg, Shared())).process(
        "application/json", body.encode(), datetime.now(UTC), 0.0, "/p"
    )
    assert outcome.reply.status == 200
    for draft in outcome.drafts:
        draft.payload.model_dump_json()


def test_basic_header_helper_roundtrip() -> None:
    headers = CameraAuth(basic=("u", "p")).headers(b"")
    assert base64.b64decode(headers["Authorization"].split()[1]) == b"u:p"
    with contextlib.suppress(KeyError):
        assert "X-Auth-Token" not in headers


def test_listener_refuses_second_camera_on_same_path(tmp_path: Path) -> None:
    listener = PlateListener("127.0.0.1", 0)
    cfg = camera_config(tmp_path, 8088, "x")
    a, b = HttpPlateReader(cfg, FakeContext(cfg, Shared())), HttpPlateReader(cfg, FakeContext(cfg, Shared()))
    listener.register("/lpr/x", a)
    with pytest.raises(ValueError, match="already used"):
        listener.register("/lpr/x", b)
    listener.unregister("/lpr/x", b)
    assert listener.paths == ["/lpr/x"]


def test_config_rejects_conflicting_lists_and_bad_paths(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="both allowlist and blocklist"):
        camera_config(tmp_path, 8088, "cam", access={"allowlist": [ALLOWED], "blocklist": ["京A·12345"]})
    with pytest.raises(ValidationError, match="path must start with /"):
        camera_config(tmp_path, 8088, "cam", path="lpr/cam")
    with pytest.raises(ValidationError, match=r"at least 8"):
        camera_config(tmp_path, 8088, "cam", auth={"mode": "token", "token": "short"})
    assert camera_config(tmp_path, 8088, "cam").url_path == "/lpr/cam"


async def test_port_in_use_is_device_unavailable(tmp_path: Path) -> None:
    from gateway.errors import DeviceUnavailable

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = camera_config(tmp_path, busy.getsockname()[1], "cam")
        driver = HttpPlateReader(cfg, FakeContext(cfg, Shared()))
        with pytest.raises(DeviceUnavailable, match="cannot listen"):
            await driver.run()
