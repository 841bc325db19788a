"""Command requests and results on MQTT (docs/commands.md).

Subscribes (QoS 1) to `{prefix}/{site}/+/+/cmd/+` and hands every request to the
`CommandService`; publishes each state change on `.../cmd/{name}/result` (QoS 1, not
retained), and also on the request's MQTT 5 response topic with its correlation data when it
had one. Its own MQTT 5 connection, apart from the event sink's: requests keep flowing while
the sink works through a backlog, and the sink's session (3.1.1) is unchanged.

A result that cannot be published (broker down, link cut, publish timed out) is kept in the
outbox database (`command_results_pending`) and published, in order, as soon as the bus is
connected again, before any newer result; so results produced during an outage are not lost,
across restarts either. The same state is also a `command` event in the outbox, and repeating
the request (same id) returns the current result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import uuid
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.backoff import BackoffConfig, backoff_delays
from gateway.commands import Command, CommandService
from gateway.config import MqttConfig
from gateway.sinks.mqtt import retrieve_disconnect, tls_context

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 5.0
#: Results kept while the broker is away; beyond this the oldest go (counted `results_dropped`):
#: their states are still `command` events in the outbox and in the journal.
MAX_PENDING_RESULTS = 100_000
FLUSH_BATCH = 500
_PENDING_SCHEMA = """
CREATE TABLE IF NOT EXISTS command_results_pending (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    body TEXT NOT NULL,
    correlation BLOB
);
"""
#: Requests and results are small and latency-bound: no Nagle delay on our side of the link
#: (the broker's side needs `set_tcp_nodelay true` in mosquitto.conf, docs/commands.md).
#: Requests waiting to be read; a flood beyond this is dropped by the client, not buffered without bound.
MAX_QUEUED_REQUESTS = 1000
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def request_topic(prefix: str, site: str, kind: str, device: str, name: str) -> str:
    """Where a request for `name` on `device` is published."""
    return f"{prefix}/{site}/{kind}/{device}/cmd/{name}"


def result_topic(prefix: str, site: str, kind: str, device: str, name: str) -> str:
    """Where its results are published."""
    return f"{request_topic(prefix, site, kind, device, name)}/result"


class CommandBus:
    """The MQTT side of commands for one gateway."""

    def __init__(self, cfg: MqttConfig, service: CommandService) -> None:
        self.cfg = cfg
        self.service = service
        self.site = service.site
        self.prefix = f"{cfg.topic_prefix}/{self.site}"
        self.filter = f"{self.prefix}/+/+/cmd/+"
        base = cfg.client_id or f"courtyard-{self.site}-{service.gateway}"
        self.client_id = f"{base[:40]}-cmd-{secrets.token_hex(3)}"
        self.connected = asyncio.Event()
        self.counters = service.counters
        self._client: aiomqtt.Client | None = None
        #: Operations on alarms arrive on `{prefix}/{site}/alarm/{alarm_id}/cmd/{op}` (same filter).
        self.alarm_book: Any = None
        self._order = asyncio.Lock()  # results leave in the order they were produced
        self._backlog: bool | None = None  # unpublished results kept (None: not looked yet)
        self._lost = asyncio.Event()  # set when the current connection ends: its publishes never complete
        service.listeners.append(self.publish_result)

    async def run(self) -> None:
        """Connect, subscribe, take requests; reconnect with back-off."""
        delays = backoff_delays(BackoffConfig(initial_s=0.2, max_s=self.cfg.backoff_max_s))
        while True:
            try:
                cfg = self.cfg
                client = aiomqtt.Client(
                    cfg.host, cfg.port, identifier=self.client_id, username=cfg.username,
                    password=cfg.password.get_secret_value() if cfg.password else None,
                    keepalive=cfg.keepalive_s, tls_context=tls_context(cfg), timeout=10,
                    protocol=aiomqtt.ProtocolVersion.V5, socket_options=NODELAY,
                    max_queued_incoming_messages=MAX_QUEUED_REQUESTS,
                )
                retrieve_disconnect(client)  # a broker dying while we stop must not leave it unretrieved
                async with client:
                    self._lost = asyncio.Event()
                    await client.subscribe(self.filter, qos=1)
                    async with self._order:  # what the outage held back goes first, in order
                        self._client = client
                        await self._flush(client)
                    self.connected.set()
                    delays = backoff_delays(BackoffConfig(initial_s=0.2, max_s=self.cfg.backoff_max_s))
                    log.info("command requests taken on %s", self.filter)
                    async for msg in client.messages:
                        await self._request(msg)
            except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                self.counters.inc("bus_disconnects")
                log.debug("command bus link: %s", exc)
            finally:
                self.connected.clear()
                self._client = None
                self._lost.set()
            await asyncio.sleep(next(delays))

    async def _request(self, msg: aiomqtt.Message) -> None:
        parts = str(msg.topic).split("/")
        if len(parts) != len(self.prefix.split("/")) + 4:  # {kind}/{device}/cmd/{name}
            return
        kind, device, name = parts[-4], parts[-3], parts[-1]
        if kind == "alarm":
            await self._alarm_op(str(msg.topic), device, name, msg.payload)
            return
        props = msg.properties
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        body = msg.payload if isinstance(msg.payload, bytes | bytearray) else str(msg.payload or "").encode()
        requester = "mqtt:"
        try:
            data = json.loads(body) if len(body) <= 65536 else None
            if isinstance(data, dict) and isinstance(data.get("requested_by"), str):
                requester += data["requested_by"][:128]
        except ValueError:
            pass
        if isinstance(response, str) and not self._usable_response_topic(response):
            self.counters.inc("response_topics_refused")
            response = None  # results still go to the result topic
        try:
            await self.service.submit(kind, device, name, bytes(body), requester=requester,
                                      response_topic=response if isinstance(response, str) else None,
                                      correlation=bytes(correlation) if correlation is not None else None)
        except Exception:  # one bad request never ends the subscription
            self.counters.inc("bus_errors")
            log.exception("command request on %s failed", msg.topic)

    async def _alarm_op(self, topic: str, alarm_id: str, op: str, payload: Any) -> None:
        """An alarm operation: handed to the alarm book; its result on `{topic}/result` (QoS 1)."""
        body = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
        if self.alarm_book is None:
            self.counters.inc("alarm_ops_unavailable")
            result: dict[str, Any] = {"id": None, "alarm_id": alarm_id, "op": op, "ok": False,
                                      "reason": "alarm_book_disabled"}
        else:
            try:
                result = await self.alarm_book.mqtt_operation(alarm_id, op, bytes(body))
            except Exception:  # one bad request never ends the subscription
                self.counters.inc("bus_errors")
                log.exception("alarm operation on %s failed", topic)
                return
        client = self._client
        if client is None:
            return
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await client.publish(f"{topic}/result", json.dumps(result), qos=1)

    def _usable_response_topic(self, topic: str) -> bool:
        """A requester's response topic, unless it would make the gateway publish where it speaks
        for devices (inside its site's prefix, only result topics are) or is not a topic."""
        if not topic or len(topic) > 512 or any(c in topic for c in "+#\0"):
            return False
        return not topic.startswith(f"{self.prefix}/") or (topic.endswith("/result") and "/cmd/" in topic)

    async def publish_result(self, cmd: Command) -> None:
        """Publish one state of `cmd` (QoS 1), on the result topic and the response topic if any;
        kept for later when the broker cannot take it now (or older results still wait)."""
        body = cmd.result(self.site, self.service.gateway).to_json()
        topic = result_topic(self.cfg.topic_prefix, self.site, cmd.kind, cmd.device, cmd.name)
        targets = [topic]
        if cmd.response_topic and cmd.response_topic != topic:
            targets.append(cmd.response_topic)
        async with self._order:
            if self._backlog is None:
                self._backlog = await self._pending_count() > 0
            client = self._client
            rows = [(target, body, cmd.correlation) for target in targets]
            if client is not None and not self._backlog and await self._send(client, rows):
                self.counters.inc("results_published")
                return
            await self._keep(rows)  # QoS 1: a result published twice is harmless (same id and state)

    async def _send(self, client: aiomqtt.Client, rows: list[tuple[str, str, bytes | None]]) -> bool:
        """Publish QoS 1 (in order, together) until acknowledged; False when the connection ends first,
        or after `PUBLISH_TIMEOUT_S` (a publish on a dead link would otherwise wait for ever)."""
        lost = self._lost
        if lost.is_set():
            return False
        pubs: asyncio.Future[Any] = asyncio.gather(*(client.publish(topic, body, qos=1, properties=_props(corr))
                                                     for topic, body, corr in rows))
        waiter: asyncio.Future[Any] = asyncio.ensure_future(lost.wait())
        try:
            done, _ = await asyncio.wait({pubs, waiter}, timeout=PUBLISH_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if pubs in done and not pubs.cancelled() and pubs.exception() is None:
            return True
        pubs.cancel()
        with contextlib.suppress(BaseException):
            await pubs
        return False

    # --- results held back while the broker is away ------------------------------------------

    async def _pending_count(self) -> int:
        def run(db: Any) -> int:
            db.executescript(_PENDING_SCHEMA)
            (n,) = db.execute("SELECT COUNT(*) FROM command_results_pending").fetchone()
            return int(n)
        result: int = await self.service.gw.outbox.on_writer(run)
        return result

    async def _keep(self, rows: list[tuple[str, str, bytes | None]]) -> None:
        """Store results for the next connection (oldest dropped beyond `MAX_PENDING_RESULTS`)."""
        from gateway.outbox import transaction

        def run(db: Any) -> int:
            with transaction(db):
                db.executemany("INSERT INTO command_results_pending (topic, body, correlation) VALUES (?, ?, ?)",
                               rows)
                (n,) = db.execute("SELECT COUNT(*) FROM command_results_pending").fetchone()
                over = int(n) - MAX_PENDING_RESULTS
                if over > 0:
                    db.execute("DELETE FROM command_results_pending WHERE n IN (SELECT n FROM"
                               " command_results_pending ORDER BY n LIMIT ?)", (over,))
                return max(over, 0)
        try:
            dropped = await self.service.gw.outbox.on_writer(run)
        except Exception:  # the outbox is closing: the journal and the events keep the states
            self.counters.inc("results_unpublished")
            log.debug("result not kept", exc_info=True)
            return
        self._backlog = True
        self.counters.inc("results_held", len(rows))
        if dropped:
            self.counters.inc("results_dropped", dropped)

    async def _flush(self, client: aiomqtt.Client) -> None:
        """Publish the kept results, oldest first, deleting each batch once the broker has it."""
        from gateway.outbox import transaction

        def take(db: Any) -> list[tuple[int, str, str, bytes | None]]:
            db.executescript(_PENDING_SCHEMA)
            return list(db.execute("SELECT n, topic, body, correlation FROM command_results_pending"
                                   " ORDER BY n LIMIT ?", (FLUSH_BATCH,)))

        def forget(last: int) -> Any:
            def run(db: Any) -> None:
                with transaction(db):
                    db.execute("DELETE FROM command_results_pending WHERE n <= ?", (last,))
            return run

        outbox = self.service.gw.outbox
        while True:
            rows = await outbox.on_writer(take)
            if not rows:
                self._backlog = False
                return
            # QoS 1 in flight together, in order on one connection (the broker keeps the order)
            if not await self._send(client, [(topic, body, corr) for _, topic, body, corr in rows]):
                self._backlog = True
                raise aiomqtt.MqttError("result backlog not published")
            await outbox.on_writer(forget(rows[-1][0]))
            self.counters.inc("results_published", len(rows))
            self.counters.inc("results_flushed", len(rows))


def _props(correlation: bytes | None) -> Any:
    """MQTT 5 publish properties carrying the request's correlation data, if it had any."""
    if correlation is None:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = correlation
    return props


class CommandClient:
    """A requester on MQTT (the CLI, tests, benches): publishes requests, collects their results.

    Results are matched by command id, from `{prefix}/{site}/+/+/cmd/+/result`; requests carry
    MQTT 5 correlation data (the id) and a response topic, as any requester may.
    """

    def __init__(self, cfg: MqttConfig, site: str, *, identifier: str | None = None) -> None:
        self.cfg = cfg
        self.site = site
        self.identifier = identifier or f"courtyard-cli-{secrets.token_hex(4)}"
        self.results: dict[str, list[dict[str, Any]]] = {}
        self._changed = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CommandClient:
        cfg = self.cfg
        self._client = aiomqtt.Client(
            cfg.host, cfg.port, identifier=self.identifier, username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None, tls_context=tls_context(cfg),
            timeout=10, protocol=aiomqtt.ProtocolVersion.V5, socket_options=NODELAY)
        await self._client.__aenter__()
        await self._client.subscribe(f"{cfg.topic_prefix}/{self.site}/+/+/cmd/+/result", qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)

    async def _collect(self) -> None:
        assert self._client is not None
        async for msg in self._client.messages:
            try:
                body = json.loads(msg.payload if isinstance(msg.payload, bytes | str) else b"")
            except ValueError:
                continue
            if not isinstance(body, dict):
                continue
            # Keyed by id, and by correlation data: a request refused unread has no id to echo.
            keys = {body.get("id")}
            corr = getattr(msg.properties, "CorrelationData", None) if msg.properties is not None else None
            if isinstance(corr, bytes | bytearray):
                keys.add(bytes(corr).decode(errors="replace"))
            for key in keys - {None, ""}:
                self.results.setdefault(str(key), []).append(body)
            self._changed.set()

    async def send(self, kind: str, device: str, name: str, *, args: dict[str, Any] | None = None,
                   ttl_s: float = 30.0, requested_by: str | None = None, cid: str | None = None,
                   raw: bytes | None = None) -> str:
        """Publish one request (QoS 1); returns its id. `raw` replaces the JSON body (bad-input tests)."""
        assert self._client is not None
        cid = cid or str(uuid.uuid4())
        body = raw if raw is not None else json.dumps(
            {"id": cid, "args": args or {}, "ttl_s": ttl_s, "requested_by": requested_by}).encode()
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = cid.encode()
        props.ResponseTopic = result_topic(self.cfg.topic_prefix, self.site, kind, device, name)
        await self._client.publish(request_topic(self.cfg.topic_prefix, self.site, kind, device, name), body,
                                   qos=1, properties=props)
        return cid

    async def wait(self, cid: str, *, final: bool = True, timeout: float = 30.0) -> dict[str, Any]:
        """The first result of `cid` (or its final one): TimeoutError when none arrives in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for res in self.results.get(cid, []):
                if res["final"] or not final:
                    return res
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no {'final ' if final else ''}result for command {cid} in {timeout:.0f} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
