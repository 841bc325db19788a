"""ONVIF events over PullPoint: the pure parser (`parse`) and the I/O-only transport (`OnvifTransport`).

The transport talks SOAP (drivers/camera/onvif_soap.py) to the camera:

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
import hashlib
import math
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import yaml

from drivers.camera import onvif_soap as soap
from drivers.camera.config import CameraConfig
from drivers.camera.events import EVENT_KINDS, CameraInputError, Signal
from gateway.driver import DeviceContext, PushDriver
from gateway.errors import DeviceUnavailable
from gateway.media import MediaStore, image_name
from schemas.camera import Rule

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


def _digest_header(challenge: str, method: str, url: str, user: str, password: str) -> str | None:
    """An RFC 7616 (MD5, qop=auth) Authorization header answering a `WWW-Authenticate: Digest` challenge."""
    scheme, _, rest = challenge.partition(" ")
    if scheme.lower() != "digest":
        return None
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in re.finditer(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))', rest)}
    realm, nonce = params.get("realm", ""), params.get("nonce", "")
    uri = urlsplit(url).path + (f"?{urlsplit(url).query}" if urlsplit(url).query else "")

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{uri}")
    cnonce, nc = secrets.token_hex(8), "00000001"
    if "auth" in params.get("qop", "").split(","):
        response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        extra = f', qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        response, extra = md5(f"{ha1}:{nonce}:{ha2}"), ""
    opaque = f', opaque="{params["opaque"]}"' if "opaque" in params else ""
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5{extra}{opaque}')


class OnvifTransport(PushDriver):
    """One ONVIF camera over PullPoint: I/O only; decoding is `parse` behind the camera decoder."""

    def __init__(self, config: CameraConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.cfg = config
        self.options = config.onvif
        self.fmap = load_family(config.onvif.family)
        self.skew = timedelta(0)  # camera clock - gateway clock
        self.subscription: str | None = None
        self.events_url: str | None = None
        self.media_url: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._renew_at = 0.0
        self._snapshot_uris: dict[int, str | None] = {}
        self._profiles: list[str] | None = None
        self.unsubscribed = 0
        from drivers.camera.decoder import CameraDecoder  # the decoder imports this module's `parse`

        self.decoder = CameraDecoder(config, ctx)

    # -- plumbing --

    @property
    def device_url(self) -> str:
        """The device service address: `url` plus `onvif.service_path`."""
        return (self.cfg.url or "").rstrip("/") + self.options.service_path

    def _password(self) -> str:
        return self.cfg.password.get_secret_value() if self.cfg.password else ""

    def _camera_now(self) -> datetime:
        return datetime.now(UTC) + self.skew

    async def _call(self, url: str, body: str, *, auth: bool = True, action: str | None = None,
                    timeout_s: float | None = None) -> soap.Document:
        """POST one SOAP request; the answer parsed (a fault raises `SoapFault`)."""
        assert self._session is not None
        security = ""
        if auth:
            security = soap.security_header(self.cfg.username, self._password(), created=self._camera_now(),
                                            nonce=os.urandom(16))
        data = soap.envelope(body, security=security, to=url if action else None, action=action)
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.cfg.connect_timeout_s + 5,
                                        sock_connect=self.cfg.connect_timeout_s)
        try:
            async with self._session.post(url, data=data, timeout=timeout, headers={
                "Content-Type": 'application/soap+xml; charset=utf-8'}) as resp:
                payload = await self._read_bounded(resp)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SoapCallError(f"{type(exc).__name__}: {exc}") from exc
        try:
            return soap.parse(payload)
        except soap.SoapFault:
            raise
        except soap.SoapError:
            if status >= 400:
                raise SoapCallError(f"HTTP {status}") from None
            raise

    @staticmethod
    async def _read_bounded(resp: aiohttp.ClientResponse, limit: int = soap.MAX_RESPONSE_BYTES) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise soap.SoapError(f"response over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- the session --

    async def _open(self) -> None:
        sent = datetime.now(UTC)
        camera_time = soap.parse_system_date_and_time(
            await self._call(self.device_url, soap.GET_SYSTEM_DATE_AND_TIME, auth=False))
        received = datetime.now(UTC)
        self.skew = camera_time - (sent + (received - sent) / 2)
        if abs(self.skew.total_seconds()) > 5:
            self.ctx.counters.inc("camera.onvif.clock_skew_corrected")
        caps = soap.parse_capabilities(await self._call(self.device_url, soap.GET_CAPABILITIES))
        base = self.device_url
        self.events_url = urljoin(base, caps.get("events") or base)
        self.media_url = urljoin(base, caps["media"]) if caps.get("media") else None
        await self._subscribe()

    async def _subscribe(self) -> None:
        assert self.events_url is not None
        sub = soap.parse_subscription(await self._call(
            self.events_url, soap.create_pull_point_subscription(self.options.termination_s),
            action=soap.EVENTS_ACTIONS["CreatePullPointSubscription"]))
        self.subscription = urljoin(self.events_url, sub.address)
        self._schedule_renew(sub.current, sub.termination)

    def _schedule_renew(self, current: datetime | None, termination: datetime | None) -> None:
        """Renew a margin before the camera's termination time (measured on the camera's clock)."""
        lifetime = (termination - current).total_seconds() if current and termination else self.options.termination_s
        lifetime = max(lifetime, 1.0)
        margin = min(max(lifetime * 0.2, self.options.pull_timeout_s + self.cfg.connect_timeout_s), lifetime * 0.8)
        self._renew_at = time.monotonic() + lifetime - margin

    async def _renew(self) -> None:
        assert self.subscription is not None
        current, termination = soap.parse_renew(await self._call(
            self.subscription, soap.renew(self.options.termination_s), action=soap.EVENTS_ACTIONS["Renew"]))
        self._schedule_renew(current, termination)
        self.ctx.counters.inc("camera.onvif.renewals")

    async def _unsubscribe(self) -> None:
        if self.subscription is None or self._session is None:
            return
        url, self.subscription = self.subscription, None
        try:
            await self._call(url, soap.UNSUBSCRIBE, action=soap.EVENTS_ACTIONS["Unsubscribe"], timeout_s=3.0)
            self.unsubscribed += 1
        except (soap.SoapError, SoapCallError):  # a courtesy: the subscription expires anyway
            self.ctx.counters.inc("camera.onvif.unsubscribe_failed")

    async def _pull(self) -> dict[str, Any] | None:
        """One PullMessages; the parsed answer, or None when it was malformed (counted, ingested as a reject)."""
        assert self.subscription is not None
        try:
            doc = await self._call(
                self.subscription, soap.pull_messages(self.options.pull_timeout_s, self.options.message_limit),
                action=soap.EVENTS_ACTIONS["PullMessages"],
                timeout_s=self.options.pull_timeout_s + self.cfg.connect_timeout_s + 5)
            return soap.parse_pull_messages(doc, vendor_prefixes=self.fmap.namespaces)
        except soap.SoapFault:
            raise
        except soap.SoapError as exc:
            self.ctx.counters.inc("camera.onvif.malformed")
            await self._ingest("reject", {"error": "malformed_soap", "detail": str(exc)[:300]})
            return None

    async def _ingest(self, channel: str, raw: dict[str, Any]) -> None:
        ingest = getattr(self.ctx, "ingest", None)
        if ingest is not None:
            await ingest(channel, raw)
            return
        decoder = self.decoder  # the older context: record, decode and emit here
        self.ctx.record(channel, raw)
        drafts = decoder.feed(channel, raw, self.ctx.now())
        if drafts:
            try:
                await self.ctx.emit(drafts)
            except BaseException:
                decoder.forget()
                raise

    # -- snapshots --

    def _wants_snapshot(self, msg: dict[str, Any]) -> int | None:
        """The channel to picture when `msg` would raise a new alarm (None: no picture needed)."""
        if not self.fmap.snapshot or self.media_url is None:
            return None
        rule, state = classify_message(msg, self.fmap)
        if rule is None or state not in ("start", "pulse") or not EVENT_KINDS[rule.detection].alarm:
            return None
        items = {**_items(msg.get("source")), **_items(msg.get("data"))}
        channel = _channel(items, self.fmap) or 1
        region = _first(items, self.fmap.region_items)
        probe = Signal(rule.detection, "start", "", channel=_channel(items, self.fmap),
                       region_id=region[:64] if region else None)
        if self.decoder.is_open(probe):
            return None
        return channel

    async def _snapshot_uri(self, channel: int) -> str | None:
        if channel in self._snapshot_uris:
            return self._snapshot_uris[channel]
        assert self.media_url is not None
        uri: str | None = None
        try:
            if self._profiles is None:
                self._profiles = soap.parse_profiles(await self._call(self.media_url, soap.GET_PROFILES))
            if self._profiles:
                token = self._profiles[min(channel, len(self._profiles)) - 1]
                uri = urljoin(self.media_url, soap.parse_snapshot_uri(
                    await self._call(self.media_url, soap.get_snapshot_uri(token))))
        except (soap.SoapError, SoapCallError) as exc:
            self.ctx.log.info("no snapshot URI for channel %d: %s", channel, exc)
        self._snapshot_uris[channel] = uri
        return uri

    async def _fetch(self, url: str) -> bytes | None:
        """GET a picture with Digest (or Basic) auth, bounded by `media.max_image_bytes`."""
        assert self._session is not None
        limit = self.cfg.media.max_image_bytes
        timeout = aiohttp.ClientTimeout(total=self.cfg.connect_timeout_s + 5)
        headers: dict[str, str] = {}
        auth = aiohttp.BasicAuth(self.cfg.username, self._password()) if self.cfg.auth == "basic" else None
        for _ in range(2):
            async with self._session.get(url, headers=headers, auth=auth, timeout=timeout) as resp:
                if resp.status == 401 and not headers and self.cfg.auth == "digest":
                    header = _digest_header(resp.headers.get("WWW-Authenticate", ""), "GET", url,
                                            self.cfg.username, self._password())
                    if header is None:
                        return None
                    headers["Authorization"] = header
                    continue
                if resp.status != 200:
                    return None
                try:
                    return await self._read_bounded(resp, limit)
                except soap.SoapError:
                    self.ctx.counters.inc("camera.picture_too_large")
                    return None
        return None

    async def _pictures(self, messages: list[dict[str, Any]]) -> dict[str, str]:
        pictures: dict[str, str] = {}
        taken: dict[int, str] = {}
        for index, msg in enumerate(messages):
            channel = self._wants_snapshot(msg)
            if channel is None:
                continue
            if channel not in taken:
                try:
                    uri = await self._snapshot_uri(channel)
                    data = await self._fetch(uri) if uri else None
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    self.ctx.log.info("snapshot failed: %s", exc)
                    data = None
                if not data:
                    self.ctx.counters.inc("camera.snapshot_failed")
                    continue
                store: MediaStore = await self.ctx.shared(f"media:{self.cfg.media.path.resolve()}", self._media)
                name = image_name(self.cfg.id, data)
                await store.store(name, data)
                taken[channel] = name
            pictures[str(index)] = taken[channel]
        return pictures

    async def _media(self) -> MediaStore:
        store = MediaStore(self.cfg.media.path, self.cfg.media.max_bytes, uri_prefix=self.cfg.media.uri_prefix)
        await asyncio.to_thread(store.scan)
        return store

    # -- the loop --

    async def run(self) -> None:
        """Subscribe, pull, renew; reconnects are the supervisor's (raise `DeviceUnavailable`)."""
        self._session = aiohttp.ClientSession()
        try:
            try:
                await self._open()
            except soap.SoapFault as exc:
                if exc.auth:
                    self.ctx.counters.inc("camera.auth_failures")
                raise DeviceUnavailable(f"ONVIF setup refused: {exc}") from exc
            except (soap.SoapError, SoapCallError) as exc:
                raise DeviceUnavailable(f"ONVIF setup failed: {exc}") from exc
            await self.ctx.set_online(True)
            while True:
                try:
                    if time.monotonic() >= self._renew_at:
                        await self._renew()
                    answer = await self._pull()
                except soap.SoapFault as exc:
                    if exc.unknown_subscription:
                        self.ctx.counters.inc("camera.onvif.subscription_lost")
                        self.subscription = None  # gone on the camera: nothing to unsubscribe
                    raise DeviceUnavailable(f"ONVIF: {exc}") from exc
                except (soap.SoapError, SoapCallError) as exc:
                    raise DeviceUnavailable(f"ONVIF pull/renew failed: {exc}") from exc
                if answer is not None and answer["messages"]:
                    answer["pictures"] = await self._pictures(answer["messages"])
                    answer["skew_s"] = round(self.skew.total_seconds(), 3)
                    unknown = sum(1 for m in answer["messages"] if classify_message(m, self.fmap)[0] is None)
                    if unknown:
                        self.ctx.counters.inc("camera.onvif.unknown_topics", unknown)
                    await self._ingest("onvif", answer)
                    self.ctx.counters.inc("camera.onvif.messages", len(answer["messages"]))
                due = self.decoder.next_expiry()
                if due is not None and due <= self.ctx.now():
                    await self._ingest("tick", {})
        finally:
            await asyncio.shield(self._close())

    async def _close(self) -> None:
        try:
            await self._unsubscribe()
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None
