"""The console's HTTP side: pages, the JSON API, the live stream (SSE), logins.

Every route but the login page, its assets and `/healthz` needs a session (an HttpOnly,
SameSite=Strict cookie). Every state-changing request (POST) also needs the session's CSRF
token in `X-CSRF-Token` and, when the browser sends one, an `Origin` of this very host.
Bodies are JSON, at most `MAX_BODY` bytes, read within `console.body_timeout_s`. Connections go
through the same guard as the HTTP push listener and the ops server (caps per source and in
total, request head deadline). Operations act through the gateway's journaled paths:
`CommandService.submit` for commands (requester `console:<user>`, so the allowlist applies)
and the alarm book for acknowledgement, shelving and reset.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import mimetypes
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.config import ConsoleConfig, is_loopback_host
from gateway.console.auth import (
    MAX_PASSWORD,
    Session,
    Sessions,
    Throttle,
    all_users,
    check_login,
)
from gateway.console.live import LiveModel, media_path
from gateway.http_guard import ConnectionGuard, start_guarded
from gateway.media import MediaStore
from gateway.outbox import connect

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
COOKIE = "courtyard_session"
MAX_BODY = 16 * 1024
#: SSE: a comment this often keeps proxies and the browser from timing the stream out.
HEARTBEAT_S = 15.0
#: SSE: a browser that takes longer than this to take a write has stalled; its stream ends (it resumes).
STALL_S = 30.0
#: Event log pages: at most this many rows per request (CSV export too).
MAX_ROWS = 10_000
DEFAULT_PORT = 8080
ALARM_OPS = ("ack", "shelve", "unshelve", "reset")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
    " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Call:
    """What the checks established about a request: its session and its JSON body."""

    session: Session | None = None
    json: dict[str, Any] = field(default_factory=dict)

    @property
    def user(self) -> Session:
        assert self.session is not None  # routes that need a session have been given one
        return self.session


Inner = Callable[[web.Request, Call], Awaitable[web.StreamResponse]]


class Refused(Exception):
    """A request turned away: status, machine-readable error, and why."""

    def __init__(self, status: int, error: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason, self.headers = status, error, reason, headers or {}


def host_timezone() -> str:
    """The host's IANA zone name (TZ, /etc/timezone, /etc/localtime), else UTC."""
    import os

    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and "/" in tz:
        return tz
    try:
        name = Path("/etc/timezone").read_text().strip()
        if name:
            return name
    except OSError:
        pass
    try:
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    return "UTC"


class _ConsoleCollector(Collector):
    """The console's refusals, sessions and live streams, for /metrics."""

    def __init__(self, console: ConsoleServer) -> None:
        self.console = console

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        c = self.console
        refused = CounterMetricFamily("courtyard_console_refusals", "Requests or connections the console turned"
                                      " away, by reason", labels=["reason"])
        for reason, n in sorted(c.counters.items()):
            refused.add_metric([reason], n)
        yield refused
        yield GaugeMetricFamily("courtyard_console_sessions", "Logged-in console sessions", value=c.sessions.live())
        yield GaugeMetricFamily("courtyard_console_streams", "Open live views (SSE streams)", value=len(c._streams))


class ConsoleServer:
    """The duty console of one gateway: its own listener, or routes on the ops server's."""

    def __init__(self, gw: Gateway, cfg: ConsoleConfig) -> None:
        self.gw = gw
        self.cfg = cfg
        self.live = LiveModel(gw)
        self.sessions = Sessions(cfg.session_ttl_s)
        self.throttle = Throttle(cfg.login_attempts, cfg.login_window_s)
        #: Password checks in flight (scrypt: ~50 ms of CPU and 16 MiB each); more wait their turn, briefly.
        self._checks = asyncio.Semaphore(2)
        self.counters: dict[str, int] = {}
        self.resumed = 0  # streams picked up after a reconnect (a valid Last-Event-ID)
        self.timezone = cfg.timezone or host_timezone()
        self.users = all_users(cfg)
        self._users_mtime = self._file_mtime()
        self.host = cfg.host
        self.port: int = DEFAULT_PORT if cfg.port is None else cfg.port
        self.shared = False  # serving on the ops server's listener
        self._runner: web.AppRunner | None = None
        self._guard: ConnectionGuard | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        if not is_loopback_host(cfg.host) and not self.users:
            raise ValueError(f"console on {cfg.host} is reachable from the network but has no users: add one"
                             " with `courtyard users add` (or bind 127.0.0.1)")
        gw.metrics.register(_ConsoleCollector(self))
        if not self.users:
            log.warning("the console has no users: nobody can log in (add one with `courtyard users add`)")

    def _file_mtime(self) -> float | None:
        path = self.cfg.users_file
        try:
            return path.stat().st_mtime if path is not None else None
        except OSError:
            return None

    def _refresh_users(self) -> None:
        """Re-read the users file when `courtyard users` changed it; changed or removed users are logged out."""
        mtime = self._file_mtime()
        if mtime == self._users_mtime:
            return
        try:
            fresh = all_users(self.cfg)
        except (OSError, ValueError) as exc:  # a half-edited file: keep the users we have, say why
            log.error("console users file unreadable, keeping the previous users: %s", exc)
            return
        self._users_mtime = mtime
        for name, old in self.users.items():
            new = fresh.get(name)
            if new is None or new.password_hash.get_secret_value() != old.password_hash.get_secret_value() \
                    or new.role != old.role:
                self.sessions.drop_user(name)
        self.users = fresh
        log.info("console users reloaded: %d", len(fresh))

    # --- routes --------------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path, handler) of every console route, each wrapped with its checks."""
        r = self._route
        return [
            ("GET", "/", r(self._index, page=True)),
            ("GET", "/login", r(self._login_page, public=True)),
            ("GET", "/static/{name}", r(self._static, public=True)),
            ("POST", "/api/login", r(self._login, public=True, post=True, body=True)),
            ("POST", "/api/logout", r(self._logout, post=True)),
            ("GET", "/api/me", r(self._me)),
            ("GET", "/api/state", r(self._state)),
            ("GET", "/api/stream", r(self._stream, stream=True)),
            ("GET", "/api/events", r(self._events)),
            ("GET", "/api/events.csv", r(self._events_csv)),
            ("GET", "/api/devices/{device}/history", r(self._history)),
            ("GET", "/api/devices/{device}/series", r(self._series)),
            ("POST", "/api/alarms/{alarm_id}/{op}", r(self._alarm_op, post=True, role="operator", body=True)),
            ("POST", "/api/commands", r(self._command, post=True, role="operator", body=True)),
            ("GET", "/media", r(self._media)),
        ]

    #: Routes an unauthenticated client may use (tests check every other one refuses).
    PUBLIC = ("/login", "/static/{name}", "/api/login", "/healthz")

    def count(self, error: str, reason: str) -> None:
        """One refused request or connection (the connection guard calls this too)."""
        self.counters[error] = self.counters.get(error, 0) + 1
        log.debug("console refused: %s (%s)", error, reason)

    def _route(self, handler: Inner, *, public: bool = False, page: bool = False, post: bool = False,
               role: str = "viewer", body: bool = False, stream: bool = False) -> Handler:
        async def answer(request: web.Request) -> web.StreamResponse:
            call = Call()
            try:
                if post:
                    self._check_origin(request)
                if not public:
                    self._refresh_users()
                    session = self._session(request)
                    if session is None:
                        if page:
                            raise web.HTTPSeeOther("/login")
                        raise Refused(401, "unauthenticated", "no valid session")
                    if post:
                        self._check_csrf(request, session)
                    if not session.allows(role):
                        raise Refused(403, "forbidden", f"needs the {role} role")
                    call.session = session
                if body:
                    call.json = await self._read_json(request)
                response = await handler(request, call)
            except Refused as exc:
                self.count(exc.error, exc.reason)
                response = web.json_response({"error": exc.error, "reason": exc.reason}, status=exc.status,
                                             headers=exc.headers)
            if not stream:
                response.headers.update({k: v for k, v in _SECURITY_HEADERS.items() if k not in response.headers})
            return response

        async def wrapped(request: web.Request) -> web.StreamResponse:
            # The guard's head deadline does not cut a request being served. On the shared ops
            # listener (no guard of our own) the ops server marks it.
            if self._guard is None:
                return await answer(request)
            with self._guard.serving(request):
                return await answer(request)

        return wrapped

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def _check_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and (origin == "null" or urlsplit(origin).netloc != request.host):
            raise Refused(403, "bad_origin", f"origin {origin[:100]!r} is not this console")

    def _check_csrf(self, request: web.Request, session: Session) -> None:
        import hmac

        given = request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(given.encode(), session.csrf.encode()):
            raise Refused(403, "bad_csrf", "missing or wrong X-CSRF-Token")

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise Refused(415, "unsupported_media_type", "send application/json")
        declared = request.content_length
        if declared is not None and declared > MAX_BODY:
            raise Refused(413, "too_large", f"body over {MAX_BODY} bytes")
        chunks, taken = [], 0
        try:
            async with asyncio.timeout(self.cfg.body_timeout_s):
                async for chunk in request.content.iter_any():
                    taken += len(chunk)
                    if taken > MAX_BODY:
                        raise Refused(413, "too_large", f"body over {MAX_BODY} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise Refused(408, "timeout", f"body not received within {self.cfg.body_timeout_s:g} s",
                          {"Connection": "close"}) from None
        try:
            data = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, "bad_json", "the body is not JSON") from None
        if not isinstance(data, dict):
            raise Refused(400, "bad_json", "the body must be a JSON object")
        return data

    # --- pages and assets ------------------------------------------------------------------------

    async def _index(self, request: web.Request, call: Call) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})

    async def _login_page(self, request: web.Request, call: Call) -> web.StreamResponse:
        return web.FileResponse(STATIC / "login.html", headers={"Content-Type": "text/html; charset=utf-8"})

    async def _static(self, request: web.Request, call: Call) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or name.endswith(".html") or not path.is_file():
            raise Refused(404, "not_found", "no such asset")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        return web.FileResponse(path, headers={"Content-Type": kind})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "gateway": self.gw.config.gateway_id})

    # --- sessions --------------------------------------------------------------------------------

    async def _login(self, request: web.Request, call: Call) -> web.StreamResponse:
        data = call.json
        name, password = data.get("user"), data.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or not name or len(name) > 64 \
                or len(password) > MAX_PASSWORD:
            raise Refused(400, "bad_request", "user and password are required strings")
        peer = request.remote or "?"
        keys = (f"user:{name}", f"addr:{peer}")
        wait = self.throttle.retry_after(*keys)
        if wait > 0:
            raise Refused(429, "throttled", "too many failed logins; wait", {"Retry-After": str(int(wait) + 1)})
        self._refresh_users()
        try:
            async with asyncio.timeout(5):
                await self._checks.acquire()
        except TimeoutError:
            raise Refused(503, "busy", "too many logins at once; try again", {"Retry-After": "5"}) from None
        try:
            user = await asyncio.to_thread(check_login, self.users, name, password)  # scrypt: off the loop
        finally:
            self._checks.release()
        if user is None:
            self.throttle.failed(*keys)
            log.warning("console login refused for %r from %s", name[:64], peer)
            raise Refused(401, "bad_login", "wrong user or password")
        self.throttle.succeeded(keys[0])
        session = self.sessions.create(user.name, user.role)
        log.info("console login: %s (%s) from %s", user.name, user.role, peer)
        response = web.json_response({"user": user.name, "role": user.role, "csrf": session.csrf})
        response.set_cookie(COOKIE, session.sid, httponly=True, samesite="Strict", secure=self.cfg.secure_cookies,
                            path="/", max_age=int(self.cfg.session_ttl_s))
        return response

    async def _logout(self, request: web.Request, call: Call) -> web.StreamResponse:
        session = call.user
        self.sessions.drop(session.sid)
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def _me(self, request: web.Request, call: Call) -> web.StreamResponse:
        s = call.user
        return web.json_response({
            "user": s.user, "role": s.role, "csrf": s.csrf, "site": self.gw.config.site,
            "gateway": self.gw.config.gateway_id, "timezone": self.timezone,
            "commands": self._offered(),
        })

    def _offered(self) -> dict[str, list[str]]:
        """Per device, the commands its executor takes (the page shows buttons for these)."""
        service = self.gw.commands
        if service is None:
            return {}
        out = {}
        for dev in self.gw.config.devices:
            names = service.offered(dev.id) if hasattr(service, "offered") else frozenset()
            if names:
                out[dev.id] = sorted(names)
        return out

    # --- live ------------------------------------------------------------------------------------

    async def _state(self, request: web.Request, call: Call) -> web.StreamResponse:
        return web.json_response(self.live.snapshot(), dumps=_dumps)

    async def _stream(self, request: web.Request, call: Call) -> web.StreamResponse:
        """Server-Sent Events from the message after `Last-Event-ID` (or `?after=`)."""
        session = call.user
        live = self.live
        text = request.headers.get("Last-Event-ID") or request.query.get("after")
        start = live.parse_stream_id(text)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"})
        await response.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            n = live.cursor
            if start is None:  # another run, too old, or garbage: the page reloads its snapshot
                await response.write(f"id: {live.stream_id(n)}\nevent: reset\ndata: {{}}\n\n".encode())
            else:
                n = start
                self.resumed += "Last-Event-ID" in request.headers
            await response.write(b"retry: 1000\n\n")
            while self.sessions.get(session.sid) is not None:
                batch = live.since(n)
                if batch is None:
                    n = live.cursor
                    await response.write(f"id: {live.stream_id(n)}\nevent: reset\ndata: {{}}\n\n".encode())
                    continue
                out = "".join(f"id: {live.stream_id(i)}\ndata: {msg}\n\n" for i, msg in batch) or ": ping\n\n"
                async with asyncio.timeout(STALL_S):  # a reader that stopped reading loses its stream
                    await response.write(out.encode())
                if batch:
                    n = batch[-1][0]
                await live.wait(n, HEARTBEAT_S)
        except TimeoutError:
            self.count("stream_stalled", f"a live view read nothing for {STALL_S:g} s")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._streams.discard(task)
        return response

    # --- history ---------------------------------------------------------------------------------

    def _filters(self, request: web.Request) -> dict[str, Any]:
        q = request.query
        out: dict[str, Any] = {}
        for key in ("kind", "device", "type", "severity", "class"):
            value = q.get(key, "").strip()
            if value:
                if len(value) > 100:
                    raise Refused(400, "bad_filter", f"{key} is too long")
                out[key] = value
        for key in ("since", "until"):
            value = q.get(key, "").strip()
            if value:
                try:
                    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    raise Refused(400, "bad_filter", f"{key}: an ISO 8601 time") from None
                if when.tzinfo is None:
                    from zoneinfo import ZoneInfo

                    when = when.replace(tzinfo=ZoneInfo(self.timezone))  # what the operator typed: site time
                out[key] = int(when.timestamp() * 1e9)
        try:
            out["limit"] = max(1, min(MAX_ROWS, int(q.get("limit", "500"))))
        except ValueError:
            raise Refused(400, "bad_filter", "limit: a number") from None
        return out

    def _query(self, f: dict[str, Any]) -> list[dict[str, Any]]:
        sql = "SELECT body FROM events WHERE 1=1"
        args: list[Any] = []
        if "kind" in f:
            sql += " AND kind = ?"
            args.append(f["kind"])
        if "device" in f:
            sql += " AND device = ?"
            args.append(f["device"])
        if "type" in f:
            sql += " AND type GLOB ?"
            args.append(f["type"] if any(c in f["type"] for c in "*?[") else f"{f['type']}*")
        if "class" in f:
            sql += " AND class = ?"
            args.append(f["class"])
        if "severity" in f:
            sql += " AND json_extract(body, '$.severity') = ?"
            args.append(f["severity"])
        if "since" in f:
            sql += " AND time_ns >= ?"
            args.append(f["since"])
        if "until" in f:
            sql += " AND time_ns <= ?"
            args.append(f["until"])
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(f["limit"])
        path = self.gw.config.outbox.path
        conn = connect(path, readonly=True)
        try:
            rows = [json.loads(r[0]) for r in conn.execute(sql, args)]
        finally:
            conn.close()
        return rows

    async def _rows(self, request: web.Request) -> list[dict[str, Any]]:
        f = self._filters(request)
        try:
            return await asyncio.to_thread(self._query, f)
        except sqlite3.Error as exc:
            raise Refused(503, "history_unavailable", str(exc)) from None

    async def _events(self, request: web.Request, call: Call) -> web.StreamResponse:
        return web.json_response({"events": [_row(b) for b in await self._rows(request)]}, dumps=_dumps)

    async def _events_csv(self, request: web.Request, call: Call) -> web.StreamResponse:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["time", "device", "kind", "class", "type", "severity", "state", "alarm_id", "id", "payload"])
        for b in await self._rows(request):
            r = _row(b)
            w.writerow([_csv_cell(str(r[k] or "")) for k in ("time", "device", "kind", "class", "type", "severity",
                                                              "state", "alarm_id", "id")]
                       + [_csv_cell(json.dumps(r["payload"], ensure_ascii=False, sort_keys=True))])
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        return web.Response(body=("\ufeff" + buf.getvalue()).encode(), headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="courtyard-events-{stamp}.csv"'})

    async def _history(self, request: web.Request, call: Call) -> web.StreamResponse:
        device = request.match_info["device"]
        if device not in self.live.devices:
            raise Refused(404, "unknown_device", "no such device")
        f = self._filters(request)
        f["device"] = device
        try:
            rows = await asyncio.to_thread(self._query, f)
        except sqlite3.Error as exc:
            raise Refused(503, "history_unavailable", str(exc)) from None
        return web.json_response({"device": device, "events": [_row(b) for b in rows]}, dumps=_dumps)

    async def _series(self, request: web.Request, call: Call) -> web.StreamResponse:
        """Numeric history for the chart: InfluxDB (1.x) when configured, else (or when it fails) local."""
        from datetime import UTC, timedelta

        from gateway.console.series import SeriesUnavailable, influx_points

        device = request.match_info["device"]
        dev = self.live.devices.get(device)
        if dev is None:
            raise Refused(404, "unknown_device", "no such device")
        f = self._filters(request)
        since = datetime.fromtimestamp(f["since"] / 1e9, UTC) if "since" in f else \
            datetime.now(UTC) - timedelta(days=1)
        until = datetime.fromtimestamp(f["until"] / 1e9, UTC) if "until" in f else None
        problem = None
        if self.gw.config.influx.url:
            try:
                points = await influx_points(self.gw.config.influx, dev["kind"], device, since, until, f["limit"])
                return web.json_response({"device": device, "source": "influx", "points": points}, dumps=_dumps)
            except SeriesUnavailable as exc:
                problem = str(exc)
        f.update(device=device, since=int(since.timestamp() * 1e9))
        try:
            rows = await asyncio.to_thread(self._query, f)
        except sqlite3.Error as exc:
            raise Refused(503, "history_unavailable", str(exc)) from None
        points = [{"time": r["time"], "payload": r["payload"]} for r in map(_row, rows)]
        return web.json_response({"device": device, "source": "local", "problem": problem, "points": points},
                                 dumps=_dumps)

    async def _media(self, request: web.Request, call: Call) -> web.StreamResponse:
        uri = request.query.get("uri", "")
        stores = [(obj.root, obj.uri_prefix) for obj in getattr(self.gw, "_shared", {}).values()
                  if isinstance(obj, MediaStore)]
        path = media_path(uri, stores) if len(uri) < 2048 else None
        if path is None:
            raise Refused(404, "not_found", "no such picture")
        return web.FileResponse(path, headers={"Content-Type": mimetypes.guess_type(path.name)[0] or "image/jpeg"})

    # --- acting ----------------------------------------------------------------------------------

    async def _alarm_op(self, request: web.Request, call: Call) -> web.StreamResponse:
        session = call.user
        op, alarm_id = request.match_info["op"], request.match_info["alarm_id"]
        if op not in ALARM_OPS:
            raise Refused(404, "unknown_op", f"one of {', '.join(ALARM_OPS)}")
        book = getattr(self.gw, "alarm_book", None)
        if book is None:
            raise Refused(501, "no_alarm_lifecycle", "this gateway runs no alarm lifecycle")
        data = call.json
        comment = data.get("comment")
        if comment is not None and (not isinstance(comment, str) or len(comment) > 500):
            raise Refused(400, "bad_request", "comment: text of at most 500 characters")
        until = None
        if op == "shelve":
            try:
                until = datetime.fromisoformat(str(data.get("until", "")).replace("Z", "+00:00"))
            except ValueError:
                raise Refused(400, "bad_request", "shelve needs `until`, an ISO 8601 time with zone") from None
            if until.tzinfo is None:
                raise Refused(400, "bad_request", "`until` needs a time zone")
        try:
            view = await book.operate(alarm_id, op, user=session.user, requester=f"console:{session.user}",
                                      comment=comment or None, until=until)
        except Exception as exc:
            reason = getattr(exc, "reason", None)
            if reason is None:
                raise
            raise Refused(409, "rejected", str(reason)) from None
        log.info("console: %s %s alarm %s", session.user, op, alarm_id)
        self.live._apply_view(view, publish=True)
        return web.json_response({"alarm": self.live.alarms[alarm_id].public() if alarm_id in self.live.alarms
                                  else {"alarm_id": alarm_id, "state": "closed"}}, dumps=_dumps)

    async def _command(self, request: web.Request, call: Call) -> web.StreamResponse:
        session = call.user
        data = call.json
        device, name, args = data.get("device"), data.get("name"), data.get("args", {})
        if not isinstance(device, str) or not isinstance(name, str) or not isinstance(args, dict):
            raise Refused(400, "bad_request", "device and name (strings) and args (an object)")
        service = self.gw.commands
        if service is None:
            raise Refused(501, "no_commands", "commands are off on this gateway")
        kind = self.live.devices.get(device, {}).get("kind", "unknown")
        cid = data.get("id") if isinstance(data.get("id"), str) else str(uuid.uuid4())
        cmd = await service.submit(kind, device, name, {"id": cid, "args": args, "ttl_s": 30,
                                                        "requested_by": session.user},
                                   requester=f"console:{session.user}")
        log.info("console: %s sent %s to %s: %s", session.user, name, device, cmd.state)
        return web.json_response({"id": cmd.id, "device": cmd.device, "name": cmd.name, "state": cmd.state,
                                  "reason": cmd.reason}, status=200 if cmd.state != "rejected" else 409)

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> ConsoleServer:
        """Follow the event stream, then serve (on the ops listener when it is configured to share)."""
        await self.live.start()
        ops = self.gw.ops_server
        if ops is not None and self.cfg.port in (None, ops.cfg.port):
            raise RuntimeError("the shared listener is set up by attach(), before the ops server starts")
        app = web.Application(client_max_size=MAX_BODY)
        for method, path, handler in [*self.routes(), ("GET", "/healthz", self._healthz)]:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, handle_signals=False, access_log=None,
                               keepalive_timeout=self.cfg.header_timeout_s, max_line_size=8190, max_field_size=8190)
        await runner.setup()
        self._guard = ConnectionGuard(self, self.cfg.max_connections, max(2, self.cfg.max_connections // 2),
                                      self.cfg.header_timeout_s)
        try:
            self.port = (await start_guarded(runner, self.host, self.port, self._guard))[0][1]
        except BaseException:
            self.live.stop()
            raise
        self._runner = runner
        log.info("console on %s", self.url)
        return self

    def attach(self, ops: Any) -> None:
        """Serve on the ops server's listener (call before it starts; `start_shared` after)."""
        self.shared = True
        for method, path, handler in self.routes():
            ops.add_route(method, path, handler, own_auth=True)
        ops.client_max_size = max(ops.client_max_size, MAX_BODY)

    async def start_shared(self) -> ConsoleServer:
        """Once the ops server runs: follow the stream; the port is the ops port."""
        await self.live.start()
        self.port = self.gw.ops_server.port if self.gw.ops_server is not None else self.port
        self.host = self.gw.config.ops.host
        log.info("console on %s (shared with the ops server)", self.url)
        return self

    @property
    def url(self) -> str:
        """Where an operator points the browser."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def aclose(self) -> None:
        """Stop following and serving (live streams end)."""
        self.live.stop()
        for task in list(self._streams):
            task.cancel()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            if self._guard is not None:
                self._guard.close_all()
            await runner.cleanup()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)


def _row(body: dict[str, Any]) -> dict[str, Any]:
    """A stored event (as published) in the event log's shape."""
    dev = body.get("device") or {}
    payload = dict(body.get("payload") or {})
    payload.pop("raw", None)
    return {"id": body.get("id"), "time": body.get("time"), "device": dev.get("id"), "kind": dev.get("kind"),
            "class": body.get("class"), "type": body.get("type"), "severity": body.get("severity"),
            "state": body.get("state"), "alarm_id": body.get("alarm_id"), "payload": payload}


def _csv_cell(text: str) -> str:
    """Keep a spreadsheet from running a cell as a formula (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
