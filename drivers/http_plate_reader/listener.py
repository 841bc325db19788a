"""One HTTP listener per gateway address, shared by every camera configured on it.

Cameras are told a URL; each camera's driver registers its path here. The listener owns the
HTTP-level defences so a driver only ever sees authenticated, size-checked, rate-limited
pushes: per-camera auth (token, HMAC or basic), body size limits, per-source token buckets.
Anything refused gets a 4xx with a JSON body `{"error": ..., "reason": ...}`. A handler that
fails answers 500 for that request only; other cameras never notice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from drivers.http_plate_reader.config import Auth, LprBasicAuth, LprHmacAuth, LprTokenAuth

log = logging.getLogger(__name__)

MAX_BUCKETS = 10_000
BODY_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class PushRequest:
    """What a camera endpoint gets: an authenticated body and where it came from."""

    path: str
    content_type: str
    body: bytes
    remote: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class PushReply:
    """What goes back to the camera."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] | None = None  # e.g. Retry-After on 503


@dataclass(frozen=True, slots=True)
class Policy:
    """HTTP-level limits of one camera endpoint."""

    auth: Auth
    max_body_bytes: int
    rate_per_s: float
    burst: int


class Endpoint(Protocol):
    """A camera as the listener sees it."""

    policy: Policy

    async def handle(self, request: PushRequest) -> PushReply:
        """Process one accepted push and produce the reply."""
        ...

    def refused(self, status: int, error: str, reason: str) -> None:
        """Told about every push refused before `handle` (for counters)."""
        ...


def error_body(error: str, reason: str) -> bytes:
    """The JSON body of every refusal."""
    return json.dumps({"error": error, "reason": reason}, ensure_ascii=False).encode()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 hex over `<timestamp>.<body>`: what a camera (or the simulator) sends."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def check_auth(auth: Auth, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    """None when the request is authentic, else the reason it is not."""
    if isinstance(auth, LprTokenAuth):
        given = headers.get(auth.header)
        if given is None:
            return f"missing {auth.header} header"
        # surrogateescape: aiohttp hands non-UTF-8 header bytes over as surrogates
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), auth.token.get_secret_value().encode()):
            return f"wrong {auth.header}"
        return None
    if isinstance(auth, LprHmacAuth):
        signature, stamp = headers.get(auth.header), headers.get(auth.timestamp_header)
        if signature is None or stamp is None:
            return f"missing {auth.header} or {auth.timestamp_header} header"
        try:
            skew = abs(now - float(stamp))
        except ValueError:
            return f"{auth.timestamp_header} is not a Unix time"
        if not skew <= auth.max_skew_s:
            return f"{auth.timestamp_header} is {skew:.0f} s off gateway time (max {auth.max_skew_s:.0f} s)"
        expected = sign(auth.secret.get_secret_value(), stamp, body)
        given_sig = signature.removeprefix("sha256=").lower().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given_sig, expected.encode()):
            return "signature mismatch"
        return None
    if isinstance(auth, LprBasicAuth):
        header = headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return "missing Basic Authorization header"
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            return "malformed Basic Authorization header"
        user_ok = hmac.compare_digest(user.encode(), auth.username.encode())
        pass_ok = hmac.compare_digest(password.encode(), auth.password.get_secret_value().encode())
        return None if user_ok and pass_ok else "wrong username or password"
    return None


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class PlateListener:
    """The shared aiohttp server; cameras come and go with `register`/`unregister`."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._routes: dict[str, Endpoint] = {}
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._runner: web.AppRunner | None = None
        self._warned: dict[tuple[str, str], float] = {}

    async def start(self) -> PlateListener:
        """Bind and serve; `port` 0 picks a free port (read it back from `self.port`)."""
        app = web.Application(client_max_size=1)  # bodies are read by hand, with per-camera limits
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        return self

    async def aclose(self) -> None:
        """Stop serving (called by the runtime at shutdown)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def register(self, path: str, endpoint: Endpoint) -> None:
        """Route `path` to `endpoint`; a path already taken by another camera is a configuration error."""
        current = self._routes.get(path)
        if current is not None and current is not endpoint:
            raise ValueError(f"path {path} on {self.host}:{self.port} is already used by another camera")
        self._routes[path] = endpoint

    def unregister(self, path: str, endpoint: Endpoint) -> None:
        """Remove the route if it still belongs to `endpoint`."""
        if self._routes.get(path) is endpoint:
            del self._routes[path]

    @property
    def paths(self) -> list[str]:
        """Registered paths (for diagnostics)."""
        return sorted(self._routes)

    def _allow(self, path: str, remote: str, policy: Policy) -> float:
        """Token bucket per (path, source); returns 0 when allowed, else seconds to wait."""
        now = time.monotonic()
        key = (path, remote)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(policy.burst), now)
            self._buckets[key] = bucket
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(policy.burst), bucket.tokens + (now - bucket.stamp) * policy.rate_per_s)
            bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / policy.rate_per_s

    def _refuse(
        self,
        endpoint: Endpoint | None,
        path: str,
        status: int,
        error: str,
        reason: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        if endpoint is not None:
            endpoint.refused(status, error, reason)
        now = time.monotonic()
        key = (path if endpoint is not None else "*", error)  # unknown paths share one key: bounded
        if now - self._warned.get(key, -1e9) > 60:  # at most one line a minute per camera and kind
            self._warned[key] = now
            log.warning("refused push to %s: %s %s (%s)", path, status, error, reason)
        return web.Response(
            status=status, body=error_body(error, reason), content_type="application/json", headers=headers
        )

    async def _read_body(self, request: web.Request, limit: int) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
        return b"".join(chunks)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        endpoint = self._routes.get(path)
        if endpoint is None:
            return self._refuse(None, path, 404, "unknown_path", f"no camera is configured at {path}")
        if request.method != "POST":
            return self._refuse(
                endpoint,
                path,
                405,
                "method_not_allowed",
                f"{request.method} not allowed; use POST",
                headers={"Allow": "POST"},
            )
        policy = endpoint.policy
        remote = request.remote or "?"
        wait = self._allow(path, remote, policy)
        if wait:
            return self._refuse(
                endpoint,
                path,
                429,
                "rate_limited",
                f"more than {policy.rate_per_s:g} pushes/s from {remote}",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        declared = request.content_length
        if declared is not None and declared > policy.max_body_bytes:
            return self._refuse(
                endpoint, path, 413, "too_large", f"body of {declared} bytes exceeds {policy.max_body_bytes}"
            )
        try:
            body = await self._read_body(request, policy.max_body_bytes)
        except TimeoutError:
            return self._refuse(endpoint, path, 408, "timeout", f"body not received within {BODY_TIMEOUT_S:g} s")
        if body is None:
            return self._refuse(endpoint, path, 413, "too_large", f"body exceeds {policy.max_body_bytes} bytes")
        problem = check_auth(policy.auth, request.headers, body, time.time())
        if problem is not None:
            extra = {"WWW-Authenticate": 'Basic realm="courtyard"'} if isinstance(policy.auth, LprBasicAuth) else None
            return self._refuse(endpoint, path, 401, "unauthorized", problem, headers=extra)
        push = PushRequest(path, request.headers.get("Content-Type", ""), body, remote, request.headers)
        try:
            reply = await endpoint.handle(push)
        except Exception as exc:  # one camera's failure stays that camera's problem
            log.exception("camera handler for %s failed", path)
            return self._refuse(endpoint, path, 500, "internal", type(exc).__name__)
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type,
                            headers=reply.headers)


async def open_listener(host: str, port: int) -> PlateListener:
    """Factory for `ctx.shared`: a started listener."""
    return await PlateListener(host, port).start()
