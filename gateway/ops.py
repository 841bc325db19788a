"""The ops HTTP server: Prometheus `/metrics`, `/healthz` (alive) and `/readyz` (able to accept and deliver).

Metrics are read from the gateway's state at scrape time (counters, outbox backlog, device
links), so nothing on the hot path pays for them except the poll-duration histogram. Each
gateway has its own `CollectorRegistry`: two gateways in one process (tests, `replay`) never
mix. Later features add their own metrics through `GatewayMetrics.registry` (create
`prometheus_client.Counter(..., registry=gw.metrics.registry)`) or `GatewayMetrics.register`.

The server follows the project's rule for anything that listens: loopback by default, and a
non-loopback address only with a bearer token (checked before anything else, in constant time).
Connections are capped and must deliver their request head within `ops.header_timeout_s`,
using the same connection guard as the HTTP push listener.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.config import OpsConfig, is_loopback_host
from gateway.http_guard import ConnectionGuard, start_guarded

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)

PREFIX = "courtyard"
#: Poll round trips: Modbus on a LAN answers in milliseconds; a struggling link takes seconds.
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Counters with their own metric (by name prefix); the rest go to `courtyard_counter_total{name}`.
LANES = (0, 1)


class GatewayMetrics:
    """The Prometheus view of one gateway."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.registry = CollectorRegistry(auto_describe=True)
        self.poll_duration = Histogram(
            f"{PREFIX}_poll_duration_seconds", "Duration of answered device polls (read round trip)",
            ["device"], buckets=POLL_BUCKETS, registry=self.registry,
        )
        self._collector = _GatewayCollector(gw)
        self.registry.register(self._collector)

    def register(self, collector: Collector) -> None:
        """Add a collector (commands, rules, the console register theirs here)."""
        self.registry.register(collector)

    async def render(self) -> bytes:
        """The exposition text; reads what needs the database first (off the event loop)."""
        outbox = self.gw.outbox
        try:
            self._collector.backlog = await outbox.backlog() if outbox.problem != "outbox not open" else {}
        except Exception as exc:  # a scrape must still answer: the backlog is then missing
            log.debug("backlog unavailable for /metrics: %s", exc)
            self._collector.backlog = {}
        return generate_latest(self.registry)


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)


class _GatewayCollector(Collector):
    """Turns the gateway's counters and state into metric families at scrape time."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.backlog: dict[str, int] = {}

    def describe(self) -> Iterable[Metric]:
        return []  # families are built per scrape; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        gw = self.gw
        c = gw.counters.snapshot()
        sinks = [s.name for s in gw.sinks]

        info = GaugeMetricFamily(f"{PREFIX}_info", "Gateway identity", labels=["version", "site", "gateway"])
        info.add_metric([__version__, gw.config.site, gw.config.gateway_id], 1)
        yield info

        accepted = _counter("events_accepted", "Events committed to the outbox", ["lane"])
        for lane in LANES:
            accepted.add_metric([str(lane)], c.get(f"outbox.accepted.lane{lane}", 0))
        yield accepted

        published = _counter("events_published", "Events a sink delivered (acknowledged by its peer)",
                             ["sink", "lane"])
        dead = _counter("dead_letters", "Events a sink's peer refused for good, kept as dead letters", ["sink"])
        backlog = _gauge("backlog_events", "Accepted events a sink has not delivered yet", ["sink"])
        connected = _gauge("sink_up", "1 while the sink can deliver (connected, last write good)", ["sink"])
        for sink in gw.sinks:
            for lane in LANES:
                published.add_metric([sink.name, str(lane)], c.get(f"{sink.name}.delivered.lane{lane}", 0))
            dead.add_metric([sink.name], c.get(f"{sink.name}.dead_lettered", 0))
            if sink.name in self.backlog:
                backlog.add_metric([sink.name], self.backlog[sink.name])
            connected.add_metric([sink.name], 0 if sink.down_since is not None else 1)
        yield from (published, dead, backlog, connected)

        dropped = _counter("events_dropped", "Undelivered lane-1 events dropped over the disk budget", [])
        dropped.add_metric([], c.get("outbox.dropped_lane1", 0))
        over = _counter("events_over_budget", "Lane-0 events kept although over the disk budget", [])
        over.add_metric([], c.get("outbox.over_budget", 0))
        refused = _counter("events_refused", "Events not accepted, by reason", ["reason"])
        refused.add_metric(["outbox_full"], c.get("outbox.refused_full", 0))
        refused.add_metric(["commit_failed"], c.get("outbox.commit_failures", 0))
        yield from (dropped, over, refused)

        online = _gauge("device_online", "1: the device answers; 0: offline (no sample while unknown)",
                        ["device", "driver"])
        states = {"online": 0, "offline": 0, "unknown": 0}
        events = _counter("device_events", "Events a device's driver emitted", ["device"])
        misses = _counter("device_misses", "Failed polls, connects or heartbeats", ["device"])
        pushes = _counter("push_refusals", "Pushes refused on a device's endpoint (auth, size, rate, method)",
                          ["device", "reason"])
        other = _counter("device_counter", "Every other per-device counter, by name", ["device", "name"])
        for dev_id in gw.devices:
            prefix = f"device.{dev_id}."
            for name, value in c.items():
                if not name.startswith(prefix):
                    continue
                short = name[len(prefix):]
                if short in ("events", "misses"):
                    continue
                _, sep, reason = short.rpartition(".refused.")
                if sep and "." not in reason:
                    pushes.add_metric([dev_id, reason], value)
                else:
                    other.add_metric([dev_id, short], value)
        for dev_id, ctx in gw.devices.items():
            if ctx.online is None:
                states["unknown"] += 1
            else:
                states["online" if ctx.online else "offline"] += 1
                online.add_metric([dev_id, ctx.config.driver], 1 if ctx.online else 0)
            events.add_metric([dev_id], c.get(f"device.{dev_id}.events", 0))
            misses.add_metric([dev_id], c.get(f"device.{dev_id}.misses", 0))
        devices = _gauge("devices", "Configured, running devices by link state", ["state"])
        for state, n in states.items():
            devices.add_metric([state], n)
        yield from (online, devices, events, misses, pushes, other)

        refusals = _counter("http_listener_refusals", "Connections or requests an HTTP listener turned away",
                            ["listener", "reason"])
        for listener in _listeners(gw):
            where = f"{listener.host}:{listener.port}"
            for reason, n in sorted(listener.counters.items()):
                refusals.add_metric([where, reason], n)
        yield refusals
        ops = gw.ops_server
        if ops is not None:
            own = _counter("ops_refusals", "Requests or connections the ops server turned away", ["reason"])
            for reason, n in sorted(ops.counters.items()):
                own.add_metric([reason], n)
            yield own

        rest = _counter("counter", "Every other internal counter, by name", ["name"])
        for name, value in c.items():
            if name.startswith(("device.", "outbox.accepted.")) or any(
                    name.startswith(f"{s}.delivered.") for s in sinks):
                continue
            rest.add_metric([name], value)
        yield rest


def _listeners(gw: Gateway) -> list[Any]:
    """HTTP listeners the drivers share (they keep refusal counters in `counters`)."""
    found = []
    for obj in list(getattr(gw, "_shared", {}).values()):
        counters = getattr(obj, "counters", None)
        if isinstance(counters, dict) and hasattr(obj, "host") and hasattr(obj, "port"):
            found.append(obj)
    return found


async def readiness(gw: Gateway, budget_s: float) -> tuple[bool, dict[str, Any]]:
    """Ready when the outbox accepts events and every sink delivers or has been down less than `budget_s`."""
    checks: dict[str, Any] = {}
    problem = gw.outbox.problem
    checks["outbox"] = {"ok": problem is None, **({"problem": problem} if problem else {})}
    now = time.monotonic()
    for sink in gw.sinks:
        down = sink.down_since
        down_s = None if down is None else round(now - down, 1)
        checks[f"sink:{sink.name}"] = {"ok": down_s is None or down_s < budget_s, "down_s": down_s}
    return all(v["ok"] for v in checks.values()), checks


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OpsServer:
    """aiohttp server for /metrics, /healthz and /readyz; other features may add routes before start()."""

    def __init__(self, gw: Gateway, cfg: OpsConfig) -> None:
        if cfg.port is None:
            raise ValueError("ops.port is not set")
        if not is_loopback_host(cfg.host) and cfg.token is None:  # the config refuses it too
            raise ValueError(f"ops server on {cfg.host} needs ops.token")
        self.gw = gw
        self.cfg = cfg
        self.host = cfg.host
        self.port: int = cfg.port
        self.counters: dict[str, int] = {}  # refusals, per reason (also exported)
        self._routes: list[tuple[str, str, Handler]] = []
        self._own_auth: set[Handler] = set()  # routes that check their own sessions (the console)
        #: Largest request body; the ops routes take none, the console raises it for its JSON.
        self.client_max_size = 1024
        self._runner: web.AppRunner | None = None
        self._guard: ConnectionGuard | None = None
        self.add_route("GET", "/metrics", self._metrics)
        self.add_route("GET", "/healthz", self._healthz)
        self.add_route("GET", "/readyz", self._readyz)

    def add_route(self, method: str, path: str, handler: Handler, *, own_auth: bool = False) -> None:
        """Serve `handler` too (the console shares this port); call before `start()`.

        `own_auth`: the handler authenticates its requests itself (console sessions), so the
        bearer token does not apply to it.
        """
        if self._runner is not None:
            raise RuntimeError("routes must be added before the ops server starts")
        self._routes.append((method, path, handler))
        if own_auth:
            self._own_auth.add(handler)

    def count(self, error: str, reason: str) -> None:
        """One refused connection or request (the connection guard calls this as well)."""
        self.counters[error] = self.counters.get(error, 0) + 1
        log.debug("ops server refused: %s (%s)", error, reason)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = self.cfg.token
        if token is not None and request.match_info.handler not in self._own_auth:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {token.get_secret_value()}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                self.count("unauthorized", "missing or wrong bearer token")
                return web.json_response({"error": "unauthorized"}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="courtyard-ops"'})
        if self._guard is None:
            return await handler(request)
        with self._guard.serving(request):  # a slow scrape is not cut by the request-head deadline
            return await handler(request)

    async def start(self) -> OpsServer:
        """Bind and serve; with port 0 the chosen port is in `self.port`."""
        app = web.Application(client_max_size=self.client_max_size, middlewares=[self._auth])
        for method, path, handler in self._routes:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, keepalive_timeout=self.cfg.header_timeout_s,
                               max_line_size=4096, max_field_size=4096)
        await runner.setup()
        self._guard = ConnectionGuard(self, self.cfg.max_connections, max(1, self.cfg.max_connections // 2),
                                      self.cfg.header_timeout_s)
        self.port = (await start_guarded(runner, self.host, self.port, self._guard))[0][1]
        self._runner = runner
        log.info("ops server on http://%s:%d (/metrics, /healthz, /readyz)%s", self.host, self.port,
                 "" if self.cfg.token is None else ", bearer token required")
        return self

    async def aclose(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            if self._guard is not None:
                self._guard.close_all()
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self.gw.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "gateway": self.gw.config.gateway_id})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, checks = await readiness(self.gw, self.cfg.outage_budget_s)
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def start_ops(gw: Gateway, console: Any = None) -> OpsServer | None:
    """The configured ops server, started; None when `ops.port` is unset.

    `console` (a `ConsoleServer` configured to share this port) adds its routes first.
    """
    cfg = gw.config.ops
    if cfg.port is None:
        return None
    server = OpsServer(gw, cfg)
    if console is not None:
        console.attach(server)
    return await server.start()

