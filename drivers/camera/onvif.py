"""ONVIF events over PullPoint: the pure parser (`parse`) and the I/O-only session (`run_onvif`).

`CameraDriver` runs `run_onvif(driver)` for `protocol: onvif`. It talks SOAP
(drivers/camera/onvif_soap.py) to the camera:

1. `GetSystemDateAndTime` (no auth): the camera's clock, so every UsernameToken's `Created` is
   on the camera's time however far its clock is off (the skew is re-measured on each connect);
2. `GetCapabilities`: the events and media service addresses;
3. `CreatePullPointSubscription` with a short termination time (`onvif.termination_s`);
   cameras cannot list subscriptions, so a leaked one fills their table until it expires;
4. `PullMessages(timeout, limit)` in a loop, `Renew` before the termination time, and
   `Unsubscribe` when the gateway stops the device.

A pull error, a failed renew or an expired subscription ends `run()` with `DeviceUnavailable`:
the supervisor reconnects with back-off and reports `device.offline` after `offline_after`
misses. A malformed response is counted and kept as `camera.input_rejected`, and pulling goes on.

Each PullMessages answer is ingested on channel `onvif` as JSON-able data:
`{"messages": [{"topic", "utc", "op", "source", "key", "data"}], "pictures": {"<i>": name},
"skew_s": float}`; `parse` turns it into `Signal`s using the family's topic map
(drivers/camera/onvif_maps/<family>.yaml). Snapshots are fetched (GetSnapshotUri, then an HTTP GET
with Digest auth) only for messages that would raise a new alarm, and stored in the media store
before the ingest, so the event carries the stored picture's reference.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import yaml

from drivers.camera import onvif_soap as soap
from drivers.camera.config import CameraConfig
from drivers.camera.events import EVENT_KINDS, CameraInputError, Signal
from gateway.errors import DeviceUnavailable
from schemas.camera import Rule

if TYPE_CHECKING:
    from drivers.camera.driver import CameraDriver

MAPS_DIR = Path(__file__).with_name("onvif_maps")
_RULES: frozenset[str] = frozenset({"intrusion", "line_crossing", "region_entrance", "region_exit", "loitering"})
_TRUE = frozenset({"true", "1", "on", "active", "yes"})
_FALSE = frozenset({"false", "0", "off", "inactive", "no"})
_TRAILING_NUMBER = re.compile(r"(\d+)\D*$")
MAX_MESSAGES = soap.MAX_NOTIFICATIONS


# --- topic maps -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicRule:
    """What one topic means: a detection, and how its state is read."""

    detection: str
    state: str | None = None  # data item holding true/false; None with pulse
    pulse: bool = False  # no state: every message is one detection
    rule: Rule | None = None
    ignore: bool = False


@dataclass(frozen=True, slots=True)
class FamilyMap:
    """A camera family's ONVIF topic map (one YAML file in onvif_maps/)."""

    family: str
    topics: dict[str, TopicRule]
    namespaces: dict[str, str]  # namespace URI -> canonical prefix
    channel_items: tuple[str, ...]
    channel_base: int
    region_items: tuple[str, ...]
    confidence_items: tuple[str, ...]
    confidence_scale: float
    target_items: tuple[str, ...]
    snapshot: bool


class MapError(ValueError):
    """A topic map file is unusable (named, with the reason)."""


def families() -> list[str]:
    """Names of the shipped topic maps."""
    return sorted(p.stem for p in MAPS_DIR.glob("*.yaml"))


@cache
def load_family(family: str) -> FamilyMap:
    """The topic map `onvif_maps/<family>.yaml`, validated."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", family):
        raise MapError(f"bad ONVIF family name {family!r}")
    path = MAPS_DIR / f"{family}.yaml"
    if not path.is_file():
        raise MapError(f"no ONVIF topic map {family!r}; known: {', '.join(families())}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MapError(f"{path.name}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("topics"), dict):
        raise MapError(f"{path.name}: want a mapping with `topics`")
    topics: dict[str, TopicRule] = {}
    for topic, spec in doc["topics"].items():
        if not isinstance(spec, dict):
            raise MapError(f"{path.name}: topic {topic}: want a mapping")
        if spec.get("ignore"):
            topics[str(topic)] = TopicRule("unknown", ignore=True)
            continue
        detection = spec.get("detection")
        if detection not in EVENT_KINDS or detection == "unknown":
            raise MapError(f"{path.name}: topic {topic}: unknown detection {detection!r}")
        rule = spec.get("rule")
        if rule is not None and rule not in _RULES:
            raise MapError(f"{path.name}: topic {topic}: unknown rule {rule!r}")
        pulse = bool(spec.get("pulse", False))
        state = spec.get("state")
        if pulse == (state is not None):
            raise MapError(f"{path.name}: topic {topic}: give exactly one of `state: <item>` or `pulse: true`")
        topics[str(topic)] = TopicRule(detection, state=state, pulse=pulse, rule=rule)
    channel = doc.get("channel") or {}
    confidence = doc.get("confidence") or {}
    return FamilyMap(
        family=family,
        topics=topics,
        namespaces={str(uri): str(prefix) for prefix, uri in (doc.get("namespaces") or {}).items()},
        channel_items=tuple(channel.get("items") or ()),
        channel_base=int(channel.get("base", 1)),
        region_items=tuple(doc.get("region_items") or ()),
        confidence_items=tuple(confidence.get("items") or ()),
        confidence_scale=float(confidence.get("scale", 100)),
        target_items=tuple(doc.get("target_items") or ()),
        snapshot=bool(doc.get("snapshot", False)),
    )


# --- the pure parser ------------------------------------------------------------------------------


def _first(items: dict[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = items.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _channel(items: dict[str, Any], fmap: FamilyMap) -> int | None:
    token = _first(items, fmap.channel_items)
    if token is None:
        return None
    m = _TRAILING_NUMBER.search(token[:64])
    if m is None:
        return None
    number = int(m.group(1)[:9]) + (1 if fmap.channel_base == 0 else 0)
    return number if number >= 1 else None


def _confidence(items: dict[str, Any], fmap: FamilyMap) -> float | None:
    text = _first(items, fmap.confidence_items)
    if text is None:
        return None
    try:
        value = float(text[:32]) / fmap.confidence_scale
    except (ValueError, ZeroDivisionError):
        return None
    return None if math.isnan(value) else min(max(value, 0.0), 1.0)


def _items(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def classify_message(msg: dict[str, Any], fmap: FamilyMap) -> tuple[TopicRule | None, str | None]:
    """(topic rule or None for an unknown topic, start|stop|pulse or None to skip) of one message."""
    topic = msg.get("topic")
    rule = fmap.topics.get(topic) if isinstance(topic, str) else None
    if rule is None:
        return None, "pulse"
    if rule.ignore:
        return rule, None
    op = msg.get("op")
    if rule.pulse:
        return rule, None if op == "Initialized" else "pulse"  # a crossing at subscribe time is history
    if op == "Deleted":
        return rule, "stop"
    items = {**_items(msg.get("source")), **_items(msg.get("data"))}
    value = items.get(rule.state or "")
    text = value.strip().lower() if isinstance(value, str) else ""
    if text in _TRUE:
        return rule, "start"
    if text in _FALSE:
        return rule, "stop"
    return None, "pulse"  # a state we cannot read: kept as unknown with the raw topic


def parse(raw: dict[str, Any], config: CameraConfig) -> list[Signal]:
    """Signals of one recorded PullMessages answer (see the module docstring for its shape).

    Pure and total on JSON-able input: a raw without a message list raises `CameraInputError`;
    an unknown topic or an unreadable state becomes an `unknown` signal carrying the raw topic.
    """
    messages = raw.get("messages")
    if not isinstance(messages, list):
        raise CameraInputError("bad_raw", "ONVIF input without a message list")
    if len(messages) > MAX_MESSAGES:
        raise CameraInputError("oversized", f"{len(messages)} messages in one answer")
    fmap = load_family(config.onvif.family)
    pictures = _items(raw.get("pictures"))
    skew = raw.get("skew_s")
    skew_s = float(skew) if isinstance(skew, int | float) and abs(skew) < 10 * 365 * 86400 else 0.0
    signals: list[Signal] = []
    for index, msg in enumerate(messages):
        if not isinstance(msg, dict):
            signals.append(Signal("unknown", "pulse", "onvif:<not a message>"))
            continue
        rule, state = classify_message(msg, fmap)
        if state is None:
            continue
        source = _items(msg.get("source"))
        data = _items(msg.get("data"))
        items = {**source, **data}
        topic = msg.get("topic") if isinstance(msg.get("topic"), str) else ""
        when = soap.parse_time(msg.get("utc") if isinstance(msg.get("utc"), str) else None)
        if when is not None:
            try:
                when -= timedelta(seconds=skew_s)  # the camera's clock, brought to the gateway's
            except OverflowError:
                when = None
        picture = pictures.get(str(index))
        region = _first(items, fmap.region_items)
        if rule is None:
            signals.append(Signal("unknown", "pulse", f"onvif:{topic}"[:200], channel=_channel(items, fmap),
                                  time=when))
            continue
        signals.append(Signal(
            rule.detection, state,  # type: ignore[arg-type]
            f"onvif:{topic}"[:200],
            channel=_channel(items, fmap),
            rule=rule.rule,
            region=region[:128] if region else None,
            region_id=region[:64] if region else None,
            target=(_first(items, fmap.target_items) or "")[:64] or None,
            confidence=_confidence(items, fmap),
            time=when,
            pictures=(picture,) if isinstance(picture, str) and picture else (),
        ))
    return signals


# --- the transport --------------------------------------------------------------------------------


class SoapCallError(Exception):
    """A SOAP call failed at the transport level (HTTP status, timeout, connection)."""


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """A response body, refused (`SoapError`) past `limit` bytes: a camera cannot make us buffer more."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise soap.SoapError(f"response over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class OnvifSession:
    """One camera's PullPoint session: I/O only; what it reads goes to `driver.ingest`."""

    def __init__(self, driver: CameraDriver, session: aiohttp.ClientSession) -> None:
        self.driver = driver
        self.cfg = driver.cfg
        self.ctx = driver.ctx
        self.http = session
        self.options = driver.cfg.onvif
        self.fmap = load_family(driver.cfg.onvif.family)
        self.skew = timedelta(0)  # camera clock - gateway clock, measured at each connect
        self.subscription: str | None = None
        self.events_url: str | None = None
        self.media_url: str | None = None
        self._renew_at = 0.0
        self._snapshot_uris: dict[int, str | None] = {}
        self._profiles: list[str] | None = None

    @property
    def device_url(self) -> str:
        """The device service address: `url` plus `onvif.service_path`."""
        return (self.cfg.url or "").rstrip("/") + self.options.service_path

    def _password(self) -> str:
        return self.cfg.password.get_secret_value() if self.cfg.password else ""

    def camera_now(self) -> datetime:
        """The camera's clock as the gateway estimates it (gateway time plus the measured skew)."""
        return datetime.now(UTC) + self.skew

    async def call(self, url: str, body: str, *, auth: bool = True, action: str | None = None,
                   timeout_s: float | None = None) -> soap.Document:
        """POST one SOAP request; the answer parsed (a fault raises `SoapFault`, junk `SoapError`)."""
        security = ""
        if auth:
            security = soap.security_header(self.cfg.username, self._password(), created=self.camera_now(),
                                            nonce=os.urandom(16))
        data = soap.envelope(body, security=security, to=url if action else None, action=action)
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.cfg.connect_timeout_s + 5,
                                        sock_connect=self.cfg.connect_timeout_s)
        try:
            async with self.http.post(url, data=data, timeout=timeout,
                                      headers={"Content-Type": "application/soap+xml; charset=utf-8"}) as resp:
                status = resp.status
                payload = await read_bounded(resp, soap.MAX_RESPONSE_BYTES)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SoapCallError(f"{type(exc).__name__}: {exc}") from exc
        try:
            return soap.parse(payload)
        except soap.SoapFault:
            raise
        except soap.SoapError:
            if status >= 400:
                raise SoapCallError(f"HTTP {status} from {urlsplit(url).path}") from None
            raise

    # -- subscription lifecycle --

    async def open(self) -> None:
        """Measure the camera's clock, find its services, subscribe."""
        sent = datetime.now(UTC)
        camera_time = soap.parse_system_date_and_time(
            await self.call(self.device_url, soap.GET_SYSTEM_DATE_AND_TIME, auth=False))
        received = datetime.now(UTC)
        self.skew = camera_time - (sent + (received - sent) / 2)
        if abs(self.skew.total_seconds()) > 5:
            self.ctx.counters.inc("camera.onvif.clock_skew_corrected")
        caps = soap.parse_capabilities(await self.call(self.device_url, soap.GET_CAPABILITIES))
        base = self.device_url
        self.events_url = urljoin(base, caps.get("events") or base)
        self.media_url = urljoin(base, caps["media"]) if caps.get("media") else None
        sub = soap.parse_subscription(await self.call(
            self.events_url, soap.create_pull_point_subscription(self.options.termination_s),
            action=soap.EVENTS_ACTIONS["CreatePullPointSubscription"]))
        self.subscription = urljoin(self.events_url, sub.address)
        self.ctx.counters.inc("camera.onvif.subscriptions")
        self._schedule_renew(sub.current, sub.termination)

    def _schedule_renew(self, current: datetime | None, termination: datetime | None) -> None:
        """Renew a margin before the termination time, both read on the camera's clock."""
        lifetime = (termination - current).total_seconds() if current and termination else self.options.termination_s
        lifetime = max(lifetime, 1.0)
        margin = min(max(lifetime * 0.2, self.options.pull_timeout_s + self.cfg.connect_timeout_s), lifetime * 0.8)
        self._renew_at = time.monotonic() + lifetime - margin

    async def renew(self) -> None:
        """Extend the subscription by `termination_s`."""
        assert self.subscription is not None
        current, termination = soap.parse_renew(await self.call(
            self.subscription, soap.renew(self.options.termination_s), action=soap.EVENTS_ACTIONS["Renew"]))
        self._schedule_renew(current, termination)
        self.ctx.counters.inc("camera.onvif.renewals")

    async def unsubscribe(self) -> None:
        """End the subscription on the camera (a courtesy: it would expire anyway)."""
        if self.subscription is None:
            return
        url, self.subscription = self.subscription, None
        try:
            await self.call(url, soap.UNSUBSCRIBE, action=soap.EVENTS_ACTIONS["Unsubscribe"], timeout_s=3.0)
            self.ctx.counters.inc("camera.onvif.unsubscribed")
        except (soap.SoapError, SoapCallError):
            self.ctx.counters.inc("camera.onvif.unsubscribe_failed")

    async def pull(self) -> dict[str, Any] | None:
        """One PullMessages; the parsed answer, or None when it was malformed (counted, kept as a rejection)."""
        assert self.subscription is not None
        try:
            doc = await self.call(
                self.subscription, soap.pull_messages(self.options.pull_timeout_s, self.options.message_limit),
                action=soap.EVENTS_ACTIONS["PullMessages"],
                timeout_s=self.options.pull_timeout_s + self.cfg.connect_timeout_s + 5)
            return soap.parse_pull_messages(doc, vendor_prefixes=self.fmap.namespaces)
        except soap.SoapFault:
            raise
        except soap.SoapError as exc:
            self.ctx.counters.inc("camera.onvif.malformed")
            await self.driver.reject("malformed_soap", str(exc))
            return None

    # -- snapshots --

    def wants_snapshot(self, msg: dict[str, Any]) -> int | None:
        """The channel to picture when `msg` would raise a new alarm (None: no picture needed)."""
        if not (self.fmap.snapshot and self.cfg.fetch_snapshots and self.media_url):
            return None
        rule, state = classify_message(msg, self.fmap)
        if rule is None or state not in ("start", "pulse") or not EVENT_KINDS[rule.detection].alarm:
            return None
        items = {**_items(msg.get("source")), **_items(msg.get("data"))}
        channel = _channel(items, self.fmap)
        region = _first(items, self.fmap.region_items)
        probe = Signal(rule.detection, "start", "", channel=channel, region_id=region[:64] if region else None)
        return None if self.driver.camera.is_open(probe) else channel or 1

    async def snapshot_uri(self, channel: int) -> str | None:
        """The channel's snapshot URL from media GetProfiles/GetSnapshotUri (asked once per channel)."""
        if channel in self._snapshot_uris:
            return self._snapshot_uris[channel]
        uri: str | None = None
        if self.media_url is not None:
            try:
                if self._profiles is None:
                    self._profiles = soap.parse_profiles(await self.call(self.media_url, soap.GET_PROFILES))
                if self._profiles:
                    token = self._profiles[min(channel, len(self._profiles)) - 1]
                    uri = urljoin(self.media_url, soap.parse_snapshot_uri(
                        await self.call(self.media_url, soap.get_snapshot_uri(token))))
            except (soap.SoapError, SoapCallError) as exc:
                self.ctx.log.info("no snapshot URI for channel %d: %s", channel, exc)
        self._snapshot_uris[channel] = uri
        return uri

    async def fetch(self, url: str) -> bytes | None:
        """GET a picture (the session's Digest auth), bounded by `media.max_image_bytes`."""
        timeout = aiohttp.ClientTimeout(total=max(self.cfg.connect_timeout_s, 2.0))
        try:
            async with self.http.get(url, timeout=timeout) as resp:
                if resp.status != 200 or not resp.content_type.startswith("image/"):
                    return None
                return await read_bounded(resp, self.cfg.media.max_image_bytes)
        except soap.SoapError:
            self.ctx.counters.inc("camera.picture_too_large")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.ctx.log.info("snapshot failed: %s", exc)
        return None

    async def pictures(self, messages: list[dict[str, Any]]) -> dict[str, str]:
        """Media store names by message index, for messages that raise a new alarm (one picture per channel)."""
        pictures: dict[str, str] = {}
        taken: dict[int, str | None] = {}
        for index, msg in enumerate(messages):
            channel = self.wants_snapshot(msg)
            if channel is None:
                continue
            if channel not in taken:
                uri = await self.snapshot_uri(channel)
                data = await self.fetch(uri) if uri else None
                taken[channel] = await self.driver.store_picture(data) if data else None
                if taken[channel] is None:
                    self.ctx.counters.inc("camera.snapshot_failed")
            name = taken[channel]
            if name:
                pictures[str(index)] = name
        return pictures

    # -- the loop --

    async def serve(self) -> None:
        """Pull until cancelled; renew on time. Raises `DeviceUnavailable` for the supervisor to reconnect."""
        try:
            await self.open()
        except soap.SoapFault as exc:
            if exc.auth:
                self.ctx.counters.inc("camera.auth_failed")
            raise DeviceUnavailable(f"ONVIF setup refused: {exc}") from exc
        except (soap.SoapError, SoapCallError) as exc:
            raise DeviceUnavailable(f"ONVIF setup failed: {exc}") from exc
        await self.ctx.set_online(True, reason="PullPoint subscription open")
        while True:
            step = "pull"
            try:
                if time.monotonic() >= self._renew_at:
                    step = "renew"
                    await self.renew()
                    step = "pull"
                answer = await self.pull()
            except soap.SoapFault as exc:
                self.ctx.counters.inc(f"camera.onvif.{step}_failed")
                if exc.unknown_subscription:
                    self.ctx.counters.inc("camera.onvif.subscription_lost")
                    self.subscription = None  # gone on the camera: nothing to unsubscribe
                if exc.auth:
                    self.ctx.counters.inc("camera.auth_failed")
                raise DeviceUnavailable(f"ONVIF {step}: {exc}") from exc
            except (soap.SoapError, SoapCallError) as exc:
                self.ctx.counters.inc(f"camera.onvif.{step}_failed")
                raise DeviceUnavailable(f"ONVIF {step} failed: {exc}") from exc
            if answer is None or not answer["messages"]:
                continue
            messages = answer["messages"]
            unknown = sum(1 for m in messages if classify_message(m, self.fmap)[0] is None)
            if unknown:
                self.ctx.counters.inc("camera.onvif.unknown_topics", unknown)
            raw = {"messages": messages, "pictures": await self.pictures(messages),
                   "skew_s": round(self.skew.total_seconds(), 3)}
            await self.driver.ingest("onvif", raw)


async def run_onvif(driver: CameraDriver) -> None:
    """The `onvif` protocol of the camera driver: one PullPoint session, unsubscribed however it ends."""
    try:
        load_family(driver.cfg.onvif.family)
    except MapError as exc:  # a config problem: say so on every retry, it will not heal by itself
        driver.ctx.counters.inc("camera.onvif.bad_family")
        raise DeviceUnavailable(f"ONVIF topic map: {exc}") from exc
    async with driver.client() as http:
        session = OnvifSession(driver, http)
        driver.onvif = session  # type: ignore[attr-defined]  # for tests and benches to look at
        try:
            await session.serve()
        finally:
            await asyncio.shield(session.unsubscribe())
