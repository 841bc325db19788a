"""One HTTP push listener per gateway address, shared by every device configured on it.

Devices (plate cameras today, other cameras later) are told a URL; each device's driver
registers its path here with a `Policy`. The listener owns every HTTP-level defence, so a
driver only ever sees authenticated, size-checked, rate-limited pushes:

- connections: a cap in total (kept `reserve_fds` below the descriptor limit) and per source
  address; over the cap the oldest idle connection is dropped, else the new one gets a canned
  503 and is closed at once. A connection must deliver its request head within
  `header_timeout_s` of opening (or of its previous reply), and its body within
  `body_timeout_s`. Accept errors (EMFILE) are logged once a minute with a count.
- order of checks, cheapest first and the body last: listener-wide rate, path, method, source
  allowlist, per-source rate, header auth (token, URL token, Basic, Digest), declared size,
  the body-bytes budget (503 over it), the body, HMAC and its replay cache, the endpoint's
  total rate. So an unauthenticated upload is refused before its body is read, except under
  HMAC, where the bytes in flight are bounded instead.

Anything refused gets a 4xx/503 with a JSON body `{"error": ..., "reason": ...}`, counted per
reason (on the endpoint when it is known, in `PushListener.counters` otherwise). Secrets and
URL tokens are never logged. A handler that fails answers 500 for that request only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import resource
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_urldispatcher import _default_expect_handler

from drivers.http_plate_reader.listener_config import (
    Auth,
    BasicAuth,
    DigestAuth,
    HmacAuth,
    ListenerSettings,
    NoAuth,
    SourceNetwork,
    TokenAuth,
    UrlTokenAuth,
    unauthenticated_network_problem,
)
from gateway.http_guard import ACCEPT_BACKLOG, ConnectionGuard, start_guarded

log = logging.getLogger(__name__)

MAX_BUCKETS = 10_000
#: Seconds between two log lines about the same kind of trouble (refusals, accept errors).
LOG_INTERVAL_S = 60.0
#: Connections asyncio may accept in one go (and the listen queue): each holds a descriptor until
#: the guard turns it away, so the cap leaves this many free too.
_ROUTE_KEY = web.RequestKey("courtyard.route", str)
_CHECKED_KEY: web.RequestKey[tuple[str, Endpoint | None, web.Response | None]] = web.RequestKey(
    "courtyard.checked", tuple
)


@dataclass(frozen=True, slots=True)
class PushRequest:
    """What an endpoint gets: an authenticated body and where it came from.

    `path` is the registered path (never the request's own, which may carry a URL token).
    """

    path: str
    content_type: str
    body: bytes
    remote: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class PushReply:
    """What goes back to the device."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] | None = None  # e.g. Retry-After on 503


@dataclass(frozen=True, slots=True)
class Policy:
    """HTTP-level limits of one endpoint."""

    auth: Auth
    max_body_bytes: int
    rate_per_s: float
    burst: int
    allow_sources: tuple[SourceNetwork, ...] = ()
    total_rate_per_s: float | None = None  # all sources together, authenticated pushes only
    total_burst: int = 1
    settings: ListenerSettings = field(default_factory=ListenerSettings)


class Endpoint(Protocol):
    """A device as the listener sees it."""

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


def _same(given: str, expected: str) -> bool:
    # surrogateescape: aiohttp hands non-UTF-8 header bytes over as surrogates
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def check_auth(auth: Auth, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    """None when the request is authentic, else the reason it is not (header and HMAC modes)."""
    if isinstance(auth, HmacAuth):
        return _check_hmac(auth, headers, body, now)[0]
    if isinstance(auth, TokenAuth | BasicAuth):
        return _check_header_auth(auth, headers)
    return None


def _check_header_auth(auth: TokenAuth | BasicAuth, headers: Mapping[str, str]) -> str | None:
    if isinstance(auth, TokenAuth):
        given = headers.get(auth.header)
        if given is None:
            return f"missing {auth.header} header"
        return None if _same(given, auth.token.get_secret_value()) else f"wrong {auth.header}"
    scheme, _, encoded = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return "missing Basic Authorization header"
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return "malformed Basic Authorization header"
    user_ok = hmac.compare_digest(user.encode(), auth.username.encode())
    pass_ok = hmac.compare_digest(password.encode(), auth.password.get_secret_value().encode())
    return None if user_ok and pass_ok else "wrong username or password"


def _check_hmac(auth: HmacAuth, headers: Mapping[str, str], body: bytes, now: float) -> tuple[str | None, float]:
    """(problem, expiry): the expiry is when the timestamp itself stops being accepted."""
    signature, stamp = headers.get(auth.header), headers.get(auth.timestamp_header)
    if signature is None or stamp is None:
        return f"missing {auth.header} or {auth.timestamp_header} header", 0.0
    try:
        when = float(stamp)
    except ValueError:
        return f"{auth.timestamp_header} is not a Unix time", 0.0
    skew = abs(now - when)
    if not skew <= auth.max_skew_s:
        return f"{auth.timestamp_header} is {skew:.0f} s off gateway time (max {auth.max_skew_s:.0f} s)", 0.0
    expected = sign(auth.secret.get_secret_value(), stamp, body)
    if not _same(signature.removeprefix("sha256=").lower(), expected):
        return "signature mismatch", 0.0
    return None, when + auth.max_skew_s


# ------------------------------------------------------------------ small bounded state


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp

    def take(self, rate: float, burst: int, now: float) -> float:
        """0 when a token was taken, else seconds until one is available."""
        self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / rate


class _ReplayCache:
    """Signatures already accepted, each until its timestamp leaves the skew window."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.evicted = 0

    def first_use(self, key: tuple[str, str], expiry: float, now: float) -> bool:
        while self._seen:
            oldest_key, oldest_expiry = next(iter(self._seen.items()))
            if oldest_expiry > now and len(self._seen) < self.size:
                break
            del self._seen[oldest_key]
            if oldest_expiry > now:
                self.evicted += 1  # still replayable: the cache is too small for the push rate
        if key in self._seen:
            return False
        self._seen[key] = expiry
        return True


class _DigestState:
    """Server side of RFC 7616 Digest (qop=auth): signed nonces with expiry, nonce-count tracking.

    A nonce is `<issued ms hex>.<hmac>`, so any nonce can be checked without state. Each nonce
    in use remembers the nonce counts it has seen (a repeat is a replay). Tracking is bounded:
    when the oldest is dropped, every nonce issued up to it becomes stale (never replayable).
    """

    MAX_NONCES = 4096
    MAX_COUNTS_PER_NONCE = 1024

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self.opaque = secrets.token_hex(16)
        self._in_use: OrderedDict[str, set[int]] = OrderedDict()
        self._stale_up_to_ms = 0

    def nonce(self, realm: str) -> str:
        issued = f"{int(time.time() * 1000):x}"
        return f"{issued}.{self._mac(issued, realm)}"

    def _mac(self, issued: str, realm: str) -> str:
        return hmac.new(self._key, f"{issued}:{realm}".encode(), hashlib.sha256).hexdigest()[:32]

    def challenges(self, auth: DigestAuth, *, stale: bool = False) -> list[str]:
        nonce = self.nonce(auth.realm)
        extra = ", stale=true" if stale else ""
        return [
            f'Digest realm="{auth.realm}", qop="auth", algorithm={alg}, nonce="{nonce}", opaque="{self.opaque}"{extra}'
            for alg in auth.algorithms
        ]

    def check(self, auth: DigestAuth, header: str, method: str, raw_uri: str) -> tuple[str | None, bool]:
        """(problem, stale): None when authentic. Cheap checks first, the hash, then replay."""
        scheme, _, rest = header.partition(" ")
        if scheme.lower() != "digest":
            return "missing Digest Authorization header", False
        params = _parse_auth_params(rest)
        problem = self._header_problem(auth, params, raw_uri)
        if problem is not None:
            return problem, False
        issued_ms = self._issued_ms(auth, params["nonce"])
        if isinstance(issued_ms, str):
            return issued_ms, True
        try:
            count = int(params["nc"], 16)
        except ValueError:
            return "Digest nc is not hex", False
        if not self._response_ok(auth, params, method):
            return "wrong username or password", False
        return self._use(params["nonce"], issued_ms, count, params["nc"])

    def _header_problem(self, auth: DigestAuth, params: dict[str, str], raw_uri: str) -> str | None:
        """What makes the header unusable for this realm and request, if anything."""
        required = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
        missing = [k for k in required if k not in params]
        if missing:
            return f"Digest header lacks {', '.join(missing)}"
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in auth.algorithms:
            return f"Digest algorithm {algorithm[:20]} not offered"
        if params["qop"] != "auth":
            return "Digest qop must be auth"
        if params.get("opaque", self.opaque) != self.opaque:
            return "Digest opaque does not match"
        if params["realm"] != auth.realm:
            return "Digest realm does not match"
        if _uri_path(params["uri"]) != _uri_path(raw_uri):
            return "Digest uri is not the request's"
        return None

    def _issued_ms(self, auth: DigestAuth, nonce: str) -> int | str:
        """When this listener issued `nonce` (ms), or why it is not usable (the client may retry: stale)."""
        issued, _, mac = nonce.partition(".")
        if not re.fullmatch(r"[0-9a-f]{1,16}", issued) or not hmac.compare_digest(
            mac.encode(), self._mac(issued, auth.realm).encode()
        ):
            return "Digest nonce was not issued here"
        issued_ms = int(issued, 16)
        if time.time() * 1000 - issued_ms > auth.nonce_ttl_s * 1000:
            return "Digest nonce expired"
        return issued_ms

    @staticmethod
    def _response_ok(auth: DigestAuth, params: dict[str, str], method: str) -> bool:
        """RFC 7616 `response` (qop auth) over the configured credentials, compared in constant time."""
        hash_name = "sha256" if params.get("algorithm", "MD5").upper() == "SHA-256" else "md5"

        def digest(text: str) -> str:
            return hashlib.new(hash_name, text.encode("utf-8", "surrogateescape")).hexdigest()

        ha1 = digest(f"{params['username']}:{auth.realm}:{auth.password.get_secret_value()}")
        ha2 = digest(f"{method}:{params['uri']}")
        expected = digest(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:auth:{ha2}")
        user_ok = _same(params["username"], auth.username)
        return _same(params["response"].lower(), expected) and user_ok

    def _use(self, nonce: str, issued_ms: int, count: int, nc: str) -> tuple[str | None, bool]:
        """Record one use of `nonce` with count `count`; a count seen before is a replay."""
        seen = self._in_use.get(nonce)
        if seen is None:
            if issued_ms <= self._stale_up_to_ms:
                return "Digest nonce no longer tracked", True
            seen = self._in_use[nonce] = set()
            while len(self._in_use) > self.MAX_NONCES:
                dropped, _ = self._in_use.popitem(last=False)
                self._stale_up_to_ms = max(self._stale_up_to_ms, int(dropped.partition(".")[0], 16))
        if count in seen:
            return f"Digest nonce count {nc} already used (replay)", False
        if len(seen) >= self.MAX_COUNTS_PER_NONCE:
            return "Digest nonce used too often", True
        seen.add(count)
        return None, False


_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


def _parse_auth_params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _PARAM.finditer(text[:4096]):
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out.setdefault(m.group(1).lower(), value)
    return out


def _uri_path(uri: str) -> str:
    if "://" in uri:  # absolute-form: compare from the path on
        uri = "/" + uri.split("://", 1)[1].partition("/")[2]
    return uri


# ------------------------------------------------------------------ connection guard


def descriptor_room(reserve: int) -> int:
    """Descriptors this process may still open while keeping `reserve` free."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64  # a guess where /proc is missing
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return soft - reserve - in_use


class _AcceptErrorLimiter:
    """The loop's exception handler, with accept errors (EMFILE and kin) summarised per interval."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.previous = loop.get_exception_handler()
        self.suppressed = 0
        self.last = -1e9

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept() out of system resource") or ("accept" in message.lower() and (
            isinstance(context.get("exception"), OSError)
        )):
            for listener in _LISTENERS.get(loop, ()):
                listener.counters["accept_errors"] += 1
            now = time.monotonic()
            self.suppressed += 1
            if now - self.last >= LOG_INTERVAL_S:
                log.error("accept failed %d time(s) in the last %.0f s: %s (%s); pushes may be refused until"
                          " descriptors free up", self.suppressed, min(now - self.last, LOG_INTERVAL_S), message,
                          context.get("exception"))
                self.suppressed, self.last = 0, now
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


_LISTENERS: dict[asyncio.AbstractEventLoop, list[PushListener]] = {}


def _install_accept_limiter(listener: PushListener) -> None:
    loop = asyncio.get_running_loop()
    if not isinstance(loop.get_exception_handler(), _AcceptErrorLimiter):
        loop.set_exception_handler(_AcceptErrorLimiter(loop))
    _LISTENERS.setdefault(loop, []).append(listener)


class _RedactingAccessLogger(AbstractAccessLogger):
    """One line per request, naming the registered route only (never a URL token or query)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = request.get(_ROUTE_KEY, "<unknown path>")
        self.logger.info("%s %s %s %s %.1f ms", request.remote, request.method, route, response.status, time * 1000)


# ------------------------------------------------------------------ the listener


class PushListener:
    """The shared aiohttp server; endpoints come and go with `register`/`unregister`."""

    def __init__(self, host: str, port: int, settings: ListenerSettings | None = None) -> None:
        self.host = host
        self.port = port
        self.settings = settings or ListenerSettings()
        self.counters: Counter[str] = Counter()  # listener-level refusals, per reason
        self.max_connections = self.settings.max_connections
        self.in_flight = 0  # body bytes buffered right now
        self._routes: dict[str, Endpoint] = {}
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._totals: dict[str, _Bucket] = {}
        self._all = _Bucket(float(self.settings.requests_burst), time.monotonic())
        self._replays = _ReplayCache(self.settings.replay_cache_size)
        self._digest = _DigestState()
        self._runner: web.AppRunner | None = None
        self._guard: ConnectionGuard | None = None
        self._warned: dict[tuple[str, str], float] = {}
        self._bound_loopback = True

    async def start(self) -> PushListener:
        """Bind and serve; `port` 0 picks a free port (read it back from `self.port`)."""
        s = self.settings
        room = descriptor_room(s.reserve_fds + ACCEPT_BACKLOG)
        self.max_connections = max(1, min(s.max_connections, room))
        if self.max_connections < s.max_connections:
            log.warning("listener %s:%s: at most %d connections (descriptor limit %d, %d kept in reserve)",
                        self.host, self.port, self.max_connections,
                        resource.getrlimit(resource.RLIMIT_NOFILE)[0], s.reserve_fds)
        app = web.Application(client_max_size=1)  # bodies are read by hand, with per-endpoint limits
        app.router.add_route("*", "/{tail:.*}", self._dispatch, expect_handler=self._expect)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=log if s.access_log else None,
            access_log_class=_RedactingAccessLogger, keepalive_timeout=s.header_timeout_s,
            lingering_time=min(2.0, s.body_timeout_s), max_line_size=8190, max_field_size=8190,
        )
        await runner.setup()
        self._guard = ConnectionGuard(self, self.max_connections, s.max_connections_per_source, s.header_timeout_s)
        addresses = await start_guarded(runner, self.host, self.port, self._guard)
        self._runner = runner
        self.port = addresses[0][1]
        self._bound_loopback = all(ipaddress.ip_address(str(a[0]).split("%")[0]).is_loopback for a in addresses)
        _install_accept_limiter(self)
        return self

    async def aclose(self) -> None:
        """Stop serving (called by the runtime at shutdown)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            if self._guard is not None:
                self._guard.close_all()
            await runner.cleanup()
            loop = asyncio.get_running_loop()
            with_loop = _LISTENERS.get(loop, [])
            if self in with_loop:
                with_loop.remove(self)
            if not with_loop:
                _LISTENERS.pop(loop, None)

    @property
    def open_connections(self) -> int:
        """Connections admitted and still open."""
        return len(self._guard.conns) if self._guard is not None else 0

    def register(self, path: str, endpoint: Endpoint) -> None:
        """Route `path` to `endpoint`.

        Raises ValueError when the path is taken by another endpoint, when the endpoint's listener
        settings differ from this listener's, or when the listener is reachable from the network
        and the endpoint has no authentication nor consent.
        """
        current = self._routes.get(path)
        if current is not None and current is not endpoint:
            raise ValueError(f"path {path} on {self.host}:{self.port} is already used by another endpoint")
        policy = endpoint.policy
        if policy.settings != self.settings:
            raise ValueError(f"listener settings for {path} differ from those {self.host}:{self.port} was opened"
                             " with; endpoints sharing a listener must use the same `listener:` block")
        bound = "127.0.0.1" if self._bound_loopback else self.host or "0.0.0.0"  # what was bound, not named
        problem = unauthenticated_network_problem(bound, policy.auth, list(policy.allow_sources))
        if problem is not None:
            raise ValueError(problem)
        self._routes[path] = endpoint

    def unregister(self, path: str, endpoint: Endpoint) -> None:
        """Remove the route if it still belongs to `endpoint`."""
        if self._routes.get(path) is endpoint:
            del self._routes[path]

    @property
    def paths(self) -> list[str]:
        """Registered paths (for diagnostics)."""
        return sorted(self._routes)

    def count(self, error: str, reason: str) -> None:
        """Count a listener-level refusal and log it at most once per interval per kind."""
        self.counters[error] += 1
        self._warn(("*", error), f"listener {self.host}:{self.port} refused: {error} ({reason});"
                   f" {self.counters[error]} so far")

    def _warn(self, key: tuple[str, str], message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) > LOG_INTERVAL_S:
            self._warned[key] = now
            log.warning("%s", message)

    def _route(self, request: web.Request) -> tuple[str, Endpoint | None, str | None]:
        """(registered path, endpoint, token from the path) for a request path."""
        path = request.path
        endpoint = self._routes.get(path)
        if endpoint is not None:
            return path, endpoint, None
        parent, _, last = path.rpartition("/")
        endpoint = self._routes.get(parent)
        if endpoint is not None and isinstance(endpoint.policy.auth, UrlTokenAuth):
            return parent, endpoint, last
        return path, None, None

    def _source_bucket(self, path: str, remote: str, policy: Policy, now: float) -> float:
        key = (path, remote)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(policy.burst), now)
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(policy.rate_per_s, policy.burst, now)

    def _refuse(
        self,
        endpoint: Endpoint | None,
        path: str,
        status: int,
        error: str,
        reason: str,
        *,
        headers: Mapping[str, str] | None = None,
        challenges: list[str] | None = None,
        log_reason: str | None = None,
    ) -> web.Response:
        if endpoint is not None:
            endpoint.refused(status, error, reason)
            self._warn((path, error), f"refused push to {path}: {status} {error} ({log_reason or reason})")
        else:
            self.count(error, log_reason or reason)
        response = web.Response(
            status=status, body=error_body(error, reason), content_type="application/json", headers=headers
        )
        for challenge in challenges or ():
            response.headers.add("WWW-Authenticate", challenge)
        return response

    def _auth_on_headers(self, request: web.Request, endpoint: Endpoint, path: str, path_token: str | None
                         ) -> web.Response | None:
        auth = endpoint.policy.auth
        if isinstance(auth, NoAuth | HmacAuth):
            return None
        if isinstance(auth, TokenAuth | BasicAuth):
            problem = _check_header_auth(auth, request.headers)
            if problem is None:
                return None
            extra = {"WWW-Authenticate": 'Basic realm="courtyard"'} if isinstance(auth, BasicAuth) else None
            return self._refuse(endpoint, path, 401, "unauthorized", problem, headers=extra)
        if isinstance(auth, UrlTokenAuth):
            given = path_token if path_token is not None else request.query.get(auth.param)
            if given is None:
                problem = f"missing token (append /<token> to the path or ?{auth.param}=<token>)"
            elif not _same(given, auth.token.get_secret_value()):
                problem = "wrong token"
            else:
                return None
            return self._refuse(endpoint, path, 401, "unauthorized", problem)
        assert isinstance(auth, DigestAuth)
        header = request.headers.get("Authorization")
        if header is None:
            problem, stale = "missing Digest Authorization header", False
        else:
            problem, stale = self._digest.check(auth, header, request.method, request.raw_path)
        if problem is None:
            return None
        return self._refuse(endpoint, path, 401, "unauthorized", problem,
                            challenges=self._digest.challenges(auth, stale=stale))

    def _before_body(self, request: web.Request) -> tuple[str, Endpoint | None, web.Response | None]:
        """Every check that needs no body, once per request (the Expect handler runs it early)."""
        if _CHECKED_KEY in request:
            return request[_CHECKED_KEY]
        result = self._checks_before_body(request)
        request[_CHECKED_KEY] = result
        return result

    def _checks_before_body(self, request: web.Request) -> tuple[str, Endpoint | None, web.Response | None]:
        now = time.monotonic()
        s = self.settings
        wait = self._all.take(s.max_requests_per_s, s.requests_burst, now)
        if wait:
            return request.path, None, self._refuse(
                None, request.path, 429, "rate_limited_total",
                f"more than {s.max_requests_per_s:g} requests/s to this listener",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        path, endpoint, path_token = self._route(request)
        request[_ROUTE_KEY] = path if endpoint is not None else "<unknown path>"
        if endpoint is None:
            # The path is echoed to the client (who sent it) but never logged: it may carry a URL token.
            return path, None, self._refuse(
                None, path, 404, "unknown_path", f"nothing is configured at {path}", log_reason="no such path"
            )
        if request.method != "POST":
            return path, endpoint, self._refuse(endpoint, path, 405, "method_not_allowed",
                                                f"{request.method} not allowed; use POST", headers={"Allow": "POST"})
        policy = endpoint.policy
        remote = request.remote or "?"
        if policy.allow_sources and not _allowed(remote, policy.allow_sources):
            return path, endpoint, self._refuse(endpoint, path, 403, "source_not_allowed",
                                                f"{remote} is not in allow_sources")
        wait = self._source_bucket(path, remote, policy, now)
        if wait:
            return path, endpoint, self._refuse(
                endpoint, path, 429, "rate_limited", f"more than {policy.rate_per_s:g} pushes/s from {remote}",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        refused = self._auth_on_headers(request, endpoint, path, path_token)
        if refused is not None:
            return path, endpoint, refused
        declared = request.content_length
        if declared is not None and declared > policy.max_body_bytes:
            return path, endpoint, self._refuse(
                endpoint, path, 413, "too_large", f"body of {declared} bytes exceeds {policy.max_body_bytes}"
            )
        return path, endpoint, None

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: refuse before the client sends its body, when we can."""
        _, _, refused = self._before_body(request)
        if refused is not None:
            refused.force_close()
            return refused
        await _default_expect_handler(request)
        return None

    async def _read_body(self, request: web.Request, limit: int) -> tuple[bytes | None, int]:
        """(body or None if over `limit`, bytes taken from the in-flight budget).

        A declared length that does not fit what is left of the budget is refused before reading;
        otherwise bytes are counted as they arrive, so a client trickling its body holds only what
        it has sent.
        """
        budget = self.settings.max_body_bytes_in_flight
        declared = request.content_length
        if declared and self.in_flight + declared > budget:
            raise _OverBudget
        chunks: list[bytes] = []
        taken = 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                async for chunk in request.content.iter_any():
                    if taken + len(chunk) > limit:
                        return None, taken
                    if self.in_flight + len(chunk) > budget:
                        raise _OverBudget
                    self.in_flight += len(chunk)
                    taken += len(chunk)
                    chunks.append(chunk)
        except BaseException:
            self.in_flight -= taken
            raise
        return b"".join(chunks), taken

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if self._guard is None:
            return await self._serve(request)
        with self._guard.serving(request):
            return await self._serve(request)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path, endpoint, refused = self._before_body(request)
        if refused is not None:
            return refused
        assert endpoint is not None
        policy = endpoint.policy
        s = self.settings
        try:
            body, taken = await self._read_body(request, policy.max_body_bytes)
        except _OverBudget:
            response = self._refuse(endpoint, path, 503, "busy",
                                    f"more than {s.max_body_bytes_in_flight} body bytes in flight; retry",
                                    headers={"Retry-After": "2"})
            response.force_close()  # the unread body is not worth reading
            return response
        except TimeoutError:
            return self._refuse(endpoint, path, 408, "timeout", f"body not received within {s.body_timeout_s:g} s")
        try:
            if body is None:
                return self._refuse(endpoint, path, 413, "too_large", f"body exceeds {policy.max_body_bytes} bytes")
            auth = policy.auth
            if isinstance(auth, HmacAuth):
                problem, expiry = _check_hmac(auth, request.headers, body, time.time())
                if problem is not None:
                    return self._refuse(endpoint, path, 401, "unauthorized", problem)
                signature = request.headers[auth.header].removeprefix("sha256=").lower()
                fresh = self._replays.first_use((path, signature), expiry, time.time())
                self.counters["replay_cache_evicted"] = self._replays.evicted
                if not fresh:
                    return self._refuse(endpoint, path, 409, "replayed",
                                        "this signed push was already accepted; sign each push anew")
            if policy.total_rate_per_s is not None:
                bucket = self._totals.get(path)
                if bucket is None:
                    bucket = self._totals[path] = _Bucket(float(policy.total_burst), time.monotonic())
                wait = bucket.take(policy.total_rate_per_s, policy.total_burst, time.monotonic())
                if wait:
                    return self._refuse(
                        endpoint, path, 429, "rate_limited_total",
                        f"more than {policy.total_rate_per_s:g} pushes/s to {path} from all sources",
                        headers={"Retry-After": str(max(1, round(wait)))},
                    )
            push = PushRequest(path, request.headers.get("Content-Type", ""), body, request.remote or "?",
                               request.headers)
            try:
                reply = await endpoint.handle(push)
            except Exception as exc:  # one endpoint's failure stays that endpoint's problem
                log.exception("handler for %s failed", path)
                return self._refuse(endpoint, path, 500, "internal", type(exc).__name__)
            return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type,
                                headers=reply.headers)
        finally:
            self.in_flight -= taken


class _OverBudget(Exception):
    """The body would take the in-flight byte budget over its limit."""


def _allowed(remote: str, networks: tuple[SourceNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(remote.split("%", maxsplit=1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


#: The name the plate driver has always used.
PlateListener = PushListener


async def open_listener(host: str, port: int, settings: ListenerSettings | None = None) -> PushListener:
    """Factory for `ctx.shared`: a started listener."""
    return await PushListener(host, port, settings).start()
