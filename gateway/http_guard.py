"""The connection guard in front of every HTTP surface: push listener, ops server, console.

aiohttp has no cap on open connections and no deadline for a request head, so a slow or
flooding client could hold every descriptor of the process. The guard admits each accepted
connection or turns it away with a canned 503 (which fits the socket buffer, so the
descriptor goes at once): at most `total` connections, at most `per_source` from one
address, and a connection that has not completed a request head within `header_timeout_s`
is dropped. At the total cap, an idle connection of the source holding the most gives way,
so a device with nothing open still gets in while a flood from many addresses evicts itself.

A server marks each request it serves (`ConnectionGuard.serving`): a connection busy with a
request is never cut by the head deadline nor evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Protocol

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = ["ACCEPT_BACKLOG", "ConnectionGuard", "GuardedSite", "Refusals", "start_guarded"]

#: Listen backlog of a guarded site: the guard answers quickly, a long kernel queue only hides a flood.
ACCEPT_BACKLOG = 32


class Refusals(Protocol):
    """Who is told of each connection the guard turns away or drops (counted, logged)."""

    def count(self, error: str, reason: str) -> None:
        """One refusal: `error` is its counter name, `reason` says why."""
        ...


class Connection:
    """One admitted connection: where from, and whether a request is being served on it."""

    __slots__ = ("busy", "closed", "idle_since", "source", "transport")

    def __init__(self, transport: asyncio.Transport, source: str, now: float) -> None:
        self.transport = transport
        self.source = source
        self.idle_since = now
        self.busy = False
        self.closed = False


def overloaded_reply(reason: str) -> bytes:
    """The whole HTTP answer to a connection over a cap."""
    body = json.dumps({"error": "too_many_connections", "reason": reason}, ensure_ascii=False).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGuard:
    """Counts connections, enforces the caps and the request-head deadline."""

    def __init__(self, refusals: Refusals, total: int, per_source: int, header_timeout_s: float) -> None:
        self.refusals = refusals
        self.total = total
        self.per_source = per_source
        self.header_timeout_s = header_timeout_s
        self.conns: dict[asyncio.BaseTransport, Connection] = {}
        self.by_source: Counter[str] = Counter()

    @contextlib.contextmanager
    def serving(self, request: web.BaseRequest) -> Iterator[None]:
        """While a request is served on its connection: not cut by the head deadline, not evicted."""
        conn = self.conns.get(request.transport) if request.transport is not None else None
        if conn is None:
            yield
            return
        conn.busy = True
        try:
            yield
        finally:
            conn.busy = False
            conn.idle_since = asyncio.get_running_loop().time()

    def admit(self, transport: asyncio.Transport) -> Connection | None:
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.by_source[source] >= self.per_source:
            self._turn_away(transport, "connections_per_source",
                            f"more than {self.per_source} open connections from {source}")
            return None
        if len(self.conns) >= self.total and not self._evict_idle(source):
            self._turn_away(transport, "connections_total", f"more than {self.total} open connections")
            return None
        conn = Connection(transport, source, now)
        self.conns[transport] = conn
        self.by_source[source] += 1
        loop.call_at(now + self.header_timeout_s, self._deadline, conn)
        return conn

    def _turn_away(self, transport: asyncio.Transport, error: str, reason: str) -> None:
        self.refusals.count(error, reason)
        try:
            transport.write(overloaded_reply(reason))
        finally:
            transport.close()  # a canned reply fits in the socket buffer: the descriptor goes at once

    def _evict_idle(self, newcomer: str) -> bool:
        """At the cap, make room by dropping an idle connection of the source holding the most.

        Only a source holding at least two more than the newcomer's gives one up, so a camera
        with no connection open always gets in while a flood from many addresses evicts itself.
        """
        have = self.by_source[newcomer]
        victim: Connection | None = None
        for conn in self.conns.values():
            if conn.busy or self.by_source[conn.source] < have + 2:
                continue
            if victim is None or (self.by_source[conn.source], -conn.idle_since) > (
                self.by_source[victim.source], -victim.idle_since
            ):
                victim = conn
        if victim is None:
            return False
        self.refusals.count("idle_evicted", f"idle connection from {victim.source} dropped for one from {newcomer}")
        self.drop(victim)
        return True

    def drop(self, conn: Connection) -> None:
        self.release(conn)
        conn.transport.abort()

    def release(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.pop(conn.transport, None)
        self.by_source[conn.source] -= 1
        if self.by_source[conn.source] <= 0:
            del self.by_source[conn.source]

    def _deadline(self, conn: Connection) -> None:
        if conn.closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if conn.busy:
            loop.call_at(now + self.header_timeout_s, self._deadline, conn)
            return
        due = conn.idle_since + self.header_timeout_s
        if now >= due:
            self.refusals.count("header_timeout", f"no complete request head within {self.header_timeout_s:g} s")
            self.drop(conn)
        else:
            loop.call_at(due, self._deadline, conn)

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            self.drop(conn)


class _GuardedProtocol(asyncio.Protocol):
    """Admits (or turns away) a connection, then hands it to aiohttp's own handler."""

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], RequestHandler]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: RequestHandler | None = None
        self._conn: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._conn = self._guard.admit(transport)
        if self._conn is not None:
            self._inner = self._factory()
            self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> None:
        if self._inner is not None:
            self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._conn is not None:
            self._guard.release(self._conn)
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None


class GuardedSite(web.TCPSite):
    """aiohttp's TCPSite with the connection guard in front of every connection."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard) -> None:
        super().__init__(runner, host, port, reuse_address=True, backlog=ACCEPT_BACKLOG)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        guard = self._guard
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _GuardedProtocol(guard, server), self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


async def start_guarded(runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard) -> list[tuple[str, int]]:
    """Bind a set-up runner behind `guard`; the bound (host, port) addresses, the first one
    first (port 0 picks a free port). A failed bind cleans the runner up and raises."""
    site = GuardedSite(runner, host, port, guard)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return [(str(a[0]), int(a[1])) for a in runner.addresses if isinstance(a, tuple)]
