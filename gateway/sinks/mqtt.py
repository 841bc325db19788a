"""MQTT sink (aiomqtt over paho-mqtt): the property platform's contract (docs/mqtt.md).

Topics (prefix `courtyard` by default):

* `{p}/{site}/{kind}/{device}/event/{type}`   every event, QoS 1, not retained
* `{p}/{site}/{kind}/{device}/state`          the device's whole current state, retained: the latest
                                              accepted status event of each part (zone, amplifier,
                                              lane, door, or the device as a whole); at most once
                                              per `state_interval_s` per device (docs/mqtt.md)
* `{p}/{site}/{kind}/{device}/availability`   latest connectivity event, retained; `device.offline`
                                              with reason `gateway_stopped` after a clean stop
* `{p}/{site}/{kind}/{device}/alarm/{alarm_id}` active alarm or fault, retained; emptied on clear
* `{p}/{site}/gateway/{gateway}/status`       `online`/`offline`, retained, offline is the LWT
* `{p}/{site}/gateway/{gateway}/metrics`      counters and backlog, QoS 0, periodic

A device is reachable only while its availability says online *and* its gateway's status
says online: the LWT covers a gateway that dies without a clean stop.

On every connect, before delivering, the sink reconciles the retained topics of its own
gateway with the outbox: alarms the outbox does not hold as open are emptied, open alarms
missing on the broker are retained again, and the topics of devices no longer configured
are emptied.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import secrets
import socket
import ssl
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from gateway.backoff import BackoffConfig, backoff_delays
from gateway.config import AlarmLifecycleConfig, MqttConfig
from gateway.metrics import Counters
from gateway.outbox import Outbox, Stored
from gateway.sinks.base import Sink
from schemas.event import Event, event_time_ns

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 30.0
#: How long the retained topics may take to arrive. A healthy broker answers in milliseconds;
#: one whose ACL lets the gateway subscribe but not read (mosquitto grants such subscriptions
#: and delivers nothing) holds the first delivery this long, once per process.
RECONCILE_TIMEOUT_S = 3.0
STATE_SCHEMA = "courtyard.state/1"
#: Payload fields naming the part of a device a status event describes, and the key prefix
#: of that part in the retained state (`zone/z1`); a status event without one is `device`.
STATE_PARTS = (("zone", "zone"), ("amplifier", "amplifier"), ("lane", "lane"), ("door_no", "door"))
#: The payload keys of those fields as they appear in a stored body.
_PART_KEYS = tuple(f'"{field}":' for field, _ in STATE_PARTS)
MAX_CLIENT_ID = 64  # MQTT 3.1.1 only promises 23 bytes; mosquitto and the big brokers take more
#: Most messages one batch may have awaiting PUBACK: packet ids are 16 bits, and a few are left
#: for the client's other publishes (status, metrics, commands).
MAX_IN_FLIGHT = 60_000
#: A batch smaller than `mqtt.batch` is followed by this pause before the next fetch, so events
#: arriving one by one (polls spread over their interval) travel a few per batch, not one per
#: fetch, publish, confirm and cursor write. A full batch (a backlog) is followed at once.
LINGER_S = 0.005


def tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    """TLS context that verifies the server whenever a CA is configured."""
    tls = cfg.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    if tls.cert:
        ctx.load_cert_chain(str(tls.cert), str(tls.key) if tls.key else None)
    if tls.insecure_skip_verify and not tls.ca:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class MqttSink(Sink):
    """Publishes the outbox on MQTT with QoS 1; acks the cursor only after PUBACKs."""

    name = "mqtt"

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        site: str,
        gateway_id: str,
        counters: Counters,
        health: Callable[[], dict[str, Any]] | None = None,
        status_interval_s: float = 30.0,
        lifecycle: AlarmLifecycleConfig | None = None,
    ) -> None:
        self.cfg = cfg
        #: The alarm book's policy: which alarms stay retained after their clear, until closed.
        self.lifecycle = lifecycle
        self.site = site
        self.gateway_id = gateway_id
        self.counters = counters.child("mqtt.")
        self.health = health
        self.status_interval_s = status_interval_s
        self.prefix = f"{cfg.topic_prefix}/{site}"
        self.status_topic = f"{self.prefix}/gateway/{gateway_id}/status"
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._started = time.time()
        # A broker disconnects the older of two sessions with one client id, so two gateways
        # (or a restarted one overlapping its predecessor) would kick each other forever. The
        # suffix is per process, kept across reconnects; the LWT stays on the per-gateway topic.
        base = cfg.client_id or f"courtyard-{site}-{gateway_id}"
        self.client_id = f"{base[:MAX_CLIENT_ID - 7]}-{secrets.token_hex(3)}"
        self.devices: dict[str, str] = {}  # configured device id -> kind
        self.reconcile = False
        self._known: set[tuple[str, str]] | None = None  # (gateway, device) in the outbox, read once
        self._states: dict[str, DeviceState] = {}  # device -> its retained state document
        self._stopped: list[Event] = []
        self._dirty: set[str] = set()  # devices whose state changed since it was last published
        self._state_sent: dict[str, float] = {}  # device -> loop time its state was last published
        self._state_due: list[tuple[float, str]] = []  # heap of (due, device)
        self._deferred: set[str] = set()  # devices in _state_due
        self._brokers = cfg.brokers()
        self._broker_index = 0
        self.down_since = time.monotonic()  # not connected yet

    def bind(self, devices: Mapping[str, str], *, reconcile: bool = True) -> None:
        """The devices this gateway runs (id -> kind); with `reconcile`, retained topics are
        checked against the outbox and this list on every connect."""
        self.devices = dict(devices)
        self.reconcile = reconcile

    def devices_stopped(self, availability: Sequence[Event]) -> None:
        """Published (retained) by `stop()`, before the gateway's own offline status."""
        self._stopped = list(availability)

    def _status(self, status: str) -> str:
        return json.dumps({"status": status, "gateway": self.gateway_id, "site": self.site})

    @property
    def broker(self) -> tuple[str, int]:
        """The broker in use (or tried next): one of `mqtt.urls`, else host and port."""
        return self._brokers[self._broker_index]

    def _make_client(self) -> aiomqtt.Client:
        cfg = self.cfg
        host, port = self.broker
        return aiomqtt.Client(
            host,
            port,
            identifier=self.client_id,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            keepalive=cfg.keepalive_s,
            will=aiomqtt.Will(self.status_topic, self._status("offline"), qos=1, retain=True),
            tls_context=tls_context(cfg),
            # No paho queue: paho scans every queued message on each PUBACK when it keeps one
            # (quadratic in the batch); the sink bounds what is in flight, one batch.
            max_inflight_messages=0,
            timeout=10,
            clean_session=True,
        )

    async def run(self, outbox: Outbox) -> None:
        """Connect, publish, reconnect with back-off; resume from the outbox cursor."""
        delays = backoff_delays(BackoffConfig(initial_s=0.2, max_s=self.cfg.backoff_max_s))
        tried = 0  # brokers tried since the last good connection
        while True:
            try:
                client = self._make_client()
                client.pending_calls_threshold = 100_000  # we bound in-flight ourselves (one batch)
                retrieve_disconnect(client)
                async with client:
                    self._client = client
                    await client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
                    if self.reconcile:
                        await self._reconcile(client, outbox)
                    self.connected.set()
                    self.down_since = None
                    tried = 0
                    self.counters.inc("connects")
                    log.info("MQTT connected to %s:%d", *self.broker)
                    delays = backoff_delays(BackoffConfig(initial_s=0.2, max_s=self.cfg.backoff_max_s))
                    await asyncio.gather(self._deliver(client, outbox), self._report(client, outbox),
                                         self._watch(client))
            except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                self.counters.inc("disconnects")
                if self.connected.is_set():
                    log.warning("MQTT link lost: %s", exc)
                else:
                    log.debug("MQTT connect failed: %s", exc)
            except Exception:  # e.g. the outbox could not be read: retry, never stop delivering
                self.counters.inc("errors")
                log.exception("MQTT sink failed; retrying")
            finally:
                self.connected.clear()
                self._client = None
                if self.down_since is None:
                    self.down_since = time.monotonic()
            tried += 1
            if len(self._brokers) > 1:  # fail over at once; back off only once every broker failed
                self._broker_index = (self._broker_index + 1) % len(self._brokers)
                self.counters.inc("failovers")
                log.info("MQTT: trying broker %s:%d next", *self.broker)
                if tried % len(self._brokers):
                    continue
            await asyncio.sleep(next(delays))

    async def _watch(self, client: aiomqtt.Client) -> None:
        """End the connection as soon as the broker drops it, even with nothing to publish: an idle
        sink must not look connected (/readyz) nor wait for its next publish to fail over."""
        paho = getattr(client, "_client", None)
        while paho is not None:
            await asyncio.sleep(0.5)
            if not paho.is_connected():
                raise aiomqtt.MqttError("connection lost")

    async def _deliver(self, client: aiomqtt.Client, outbox: Outbox) -> None:
        publisher = Publisher.of(client)
        loop = asyncio.get_running_loop()
        limit = min(self.cfg.batch, MAX_IN_FLIGHT // 4)
        while True:
            fetched_at = loop.time()
            rows = await outbox.fetch(self.name, limit)
            pub = publisher.batch()
            for row in rows:
                self._publish_row(pub, row)
            # States go after the events they merge, at most one per device and batch.
            states = self._states_due(fetched_at)
            if not rows and not states:
                wait = 1.0 if not self._state_due else min(1.0, max(0.0, self._state_due[0][0] - fetched_at))
                await outbox.wait_new(self.name, timeout=wait)
                continue
            try:
                self._publish_states(pub, states)
                await pub.confirmed(PUBLISH_TIMEOUT_S)
            except BaseException:
                for device in states:  # not known to be retained: publish again on the next link
                    self._state_sent.pop(device, None)
                    self._dirty.add(device)
                raise
            if rows:
                await outbox.ack(self.name, rows)
                self.counters.inc("published", len(rows))
            if len(rows) < limit and (rest := fetched_at + LINGER_S - loop.time()) > 0:
                await asyncio.sleep(rest)

    def _states_due(self, now: float) -> list[str]:
        """Devices whose retained state goes out now (`state_interval_s` apart per device).

        A device whose state was not published within the interval goes at once (an
        isolated change is not delayed); one changing faster waits for the end of its
        interval and then goes with everything merged by then. That halves the messages of
        a lift changing every second, at a price bounded and documented: the retained state
        may lag the device's events by up to the interval.
        """
        interval = self.cfg.state_interval_s
        out: list[str] = []
        due = self._state_due
        while due and due[0][0] <= now:
            device = heapq.heappop(due)[1]
            self._deferred.discard(device)
            self._dirty.discard(device)
            out.append(device)
        for device in self._dirty:
            if device in self._deferred:
                continue
            sent = self._state_sent.get(device)
            if sent is None or now - sent >= interval:
                out.append(device)
            else:
                heapq.heappush(due, (sent + interval, device))
                self._deferred.add(device)
        self._dirty.clear()
        return out

    async def flush(self) -> bool:
        """Publish at once every state still waiting for its interval; False without a link."""
        client = self._client
        if client is None:
            return not (self._dirty or self._deferred)
        states = self._pending_states()
        if not states:
            return True
        pub = Publisher.of(client).batch()
        try:
            self._publish_states(pub, states)
            await pub.confirmed(PUBLISH_TIMEOUT_S)
        except (aiomqtt.MqttError, TimeoutError):
            self._dirty.update(states)
            return False
        return True

    def _publish_states(self, pub: Batch, devices: Sequence[str]) -> None:
        now = asyncio.get_running_loop().time()
        for device in devices:
            state = self._states[device]
            pub.publish(f"{self.prefix}/{state.kind}/{device}/state", state.document(), retain=True)
            self._state_sent[device] = now

    def _pending_states(self) -> list[str]:
        """Every device whose state is merged but not yet published (for a clean stop)."""
        pending = [*self._dirty, *self._deferred]
        self._dirty.clear()
        self._deferred.clear()
        self._state_due.clear()
        return pending

    def _publish_row(self, pub: Batch, row: Stored) -> None:
        """The stored body, as is, on every topic the row belongs on (its columns route it)."""
        base = f"{self.prefix}/{row.kind}/{row.device}"
        pub.publish(f"{base}/event/{row.type.replace('.', self.cfg.type_separator)}", row.body)
        if row.cls == "status":
            self._merge_state(row)
        elif row.cls == "connectivity":
            pub.publish(f"{base}/availability", row.body, retain=True)
        # An offline device is an active alarm too. The row's columns route it: no JSON parse.
        if row.alarm_id and row.cls in ("alarm", "fault", "connectivity"):
            body = self._retained_alarm(row)
            if body is not None:
                pub.publish(f"{base}/alarm/{row.alarm_id}", body, retain=True)

    def _retained_alarm(self, row: Stored) -> str | bytes | None:
        """What `alarm/{alarm_id}` holds after this row: its body, empty, or unchanged (None).

        A raise is retained. An alarm-book transition (`alarm.<transition>`, momentary) replaces
        it, and empties it once the alarm is closed. A clear empties it unless the book keeps
        that alarm until a person closes it (its `alarm.cleared`/`alarm.closed` follows).
        """
        if row.state == "raised":
            return row.body
        if row.state == "momentary":
            if not row.type.startswith("alarm."):
                return None
            try:
                payload = json.loads(row.body).get("payload") or {}
            except (ValueError, AttributeError):
                return None
            if payload.get("kind") != "alarm_lifecycle":
                return None
            return b"" if payload.get("lifecycle_state") == "closed" else row.body
        if self.lifecycle is not None and self.lifecycle.enabled:
            try:
                severity = json.loads(row.body).get("severity")
            except (ValueError, AttributeError):
                severity = None
            if self.lifecycle.manages(row.cls, severity):
                return None
        return b""

    def _merge_state(self, row: Stored) -> None:
        """Fold one status event into its device's state; rejected samples change nothing."""
        if row.quality == "rejected":
            return
        state = self._states.get(row.device)
        if state is None:
            state = self._states[row.device] = DeviceState()
        if not state.merge_body(row.body, row.time_ns):
            state.merge(json.loads(row.body), row.body, row.time_ns)  # where it belongs, and when
        self._dirty.add(row.device)

    async def _report(self, client: aiomqtt.Client, outbox: Outbox) -> None:
        topic = f"{self.prefix}/gateway/{self.gateway_id}/metrics"
        while True:
            await asyncio.sleep(self.status_interval_s)
            report: dict[str, Any] = {"uptime_s": round(time.time() - self._started, 1)}
            report["backlog"] = await outbox.backlog()
            if self.health is not None:
                report.update(self.health())
            await client.publish(topic, json.dumps(report), qos=0)

    async def stop(self) -> None:
        """On a clean shutdown: each device's availability offline, then the gateway's (retained)."""
        client = self._client
        if client is not None:
            try:
                pub = Publisher.of(client).batch()
                self._publish_states(pub, self._pending_states())  # a clean stop leaves no state behind
                for ev in self._stopped:
                    pub.publish(f"{self.prefix}/{ev.device.kind}/{ev.device.id}/availability", ev.to_json(),
                                retain=True)
                await pub.confirmed(2 + 0.01 * len(self._stopped))
                async with asyncio.timeout(2):
                    await client.publish(self.status_topic, self._status("offline"), qos=1, retain=True)
            except (aiomqtt.MqttError, TimeoutError):
                log.debug("could not publish offline status", exc_info=True)

    # --- retained-topic reconciliation -----------------------------------------------------

    async def _retained(self, client: aiomqtt.Client) -> dict[str, bytes]:
        """The site's retained availability, state and alarm topics, as the broker holds them.

        MQTT has no end-of-retained marker: after subscribing, a message to a private topic is
        published; the broker delivers it after the retained ones it queued for us.
        """
        token = secrets.token_hex(8)
        marker = f"{self.prefix}/gateway/{self.gateway_id}/sync/{token}"
        filters = [f"{self.prefix}/+/+/availability", f"{self.prefix}/+/+/state", f"{self.prefix}/+/+/alarm/+"]
        got: dict[str, bytes] = {}
        granted = await client.subscribe([(f, 1) for f in (*filters, marker)])
        try:
            if any(g.is_failure if isinstance(g, ReasonCode) else g >= 0x80 for g in granted):  # e.g. an ACL
                self.reconcile = False
                log.warning("the broker refused the subscriptions: retained topics are not reconciled"
                            " (the ACL must let the gateway read %s/#)", self.prefix)
                raise _Unreadable
            await client.publish(marker, json.dumps({"sync": token, "gateway": self.gateway_id}), qos=1)
            async with asyncio.timeout(RECONCILE_TIMEOUT_S):
                async for msg in client.messages:
                    topic = str(msg.topic)
                    if topic == marker:
                        break
                    if msg.retain and isinstance(msg.payload, bytes) and msg.payload:
                        got[topic] = msg.payload
        except TimeoutError:
            self.counters.inc("reconcile_timeouts")
            if not got:  # not even our own marker: the broker will not let us read
                self.reconcile = False
                log.warning("read nothing back from the broker in %.0f s: retained topics are not reconciled"
                            " (the ACL must let the gateway read %s/#)", RECONCILE_TIMEOUT_S, self.prefix)
                raise _Unreadable from None
            log.warning("retained topics not all read in %.0f s; reconciling what arrived", RECONCILE_TIMEOUT_S)
        finally:
            await client.unsubscribe([*filters, marker])
        return got

    async def _reconcile(self, client: aiomqtt.Client, outbox: Outbox) -> None:
        """Make the broker's retained topics of this gateway match the outbox and the config.

        A retained topic is ours when its body names this gateway, or a gateway the outbox
        knows the device under (a renamed gateway); other gateways' topics are left alone.
        """
        try:
            retained = await self._retained(client)
        except _Unreadable:
            self.counters.inc("reconcile_refused")
            return
        if self._known is None:
            self._known = await outbox.known_devices()
        open_alarms: dict[str, Event] = {}
        # Alarms the alarm book keeps (cleared but not closed, or acked) hold their last transition.
        for body in [*await outbox.open_alarms(), *await outbox.book_alarms()]:
            try:
                ev = Event.model_validate_json(body)
            except ValueError:
                continue
            if ev.alarm_id and self.devices.get(ev.device.id) == ev.device.kind:
                open_alarms[ev.alarm_id] = ev
        clears: list[str] = []
        for topic, payload in retained.items():
            parts = topic[len(self.prefix) + 1:].split("/")
            kind, device, leaf = parts[0], parts[1], parts[2]
            if kind == "gateway":
                continue
            try:
                doc = json.loads(payload)
                gateway = doc.get("gateway") if isinstance(doc, dict) else None
            except ValueError:
                doc, gateway = None, None
            configured = self.devices.get(device) == kind
            if not (gateway == self.gateway_id or (gateway, device) in self._known
                    or (gateway is None and configured)):
                continue
            if leaf == "alarm":
                if not (configured and parts[3] in open_alarms):
                    clears.append(topic)
            elif not configured:
                clears.append(topic)
            elif leaf == "state" and isinstance(doc, dict) and doc.get("schema") == STATE_SCHEMA \
                    and device not in self._states:
                with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):  # not ours to trust
                    self._states[device] = DeviceState.from_document(doc)  # parts not reported again still hold
        restore = [ev for aid, ev in open_alarms.items()
                   if f"{self.prefix}/{ev.device.kind}/{ev.device.id}/alarm/{aid}" not in retained]
        pub = Publisher.of(client).batch()
        for t in clears:
            pub.publish(t, b"", retain=True)
        for ev in restore:
            pub.publish(f"{self.prefix}/{ev.device.kind}/{ev.device.id}/alarm/{ev.alarm_id}", ev.to_json(),
                        retain=True)
        await pub.confirmed(PUBLISH_TIMEOUT_S)
        if clears or restore:
            log.info("retained topics reconciled: %d emptied, %d open alarms retained again",
                     len(clears), len(restore))
        self.counters.inc("retained_cleared", len(clears))
        self.counters.inc("retained_restored", len(restore))


class DeviceState:
    """One device's retained `courtyard.state/1` document, kept as the parts' stored JSON.

    The document embeds whole status events; they are kept as the exact bodies the outbox
    holds, and the document is joined from them, so a state costs no re-encoding of events.
    """

    __slots__ = ("_envelope", "header", "kind", "parts")

    def __init__(self) -> None:
        self.kind = ""
        self.header = ""  # the "site", "gateway" and "device" members, from the latest event
        self.parts: dict[str, tuple[int, str, str]] = {}  # part -> (instant in ns, time as sent, body)
        self._envelope: str | None = None  # the body text `header` was parsed from (see merge_body)

    def merge(self, ev: Mapping[str, Any], body: str, time_ns: int | None = None) -> None:
        """The latest status event of its part (`ev` is `body` parsed; `time_ns` its instant)."""
        device = ev["device"]
        self.kind = device["kind"]
        self.header = (f'"site":{json.dumps(ev["site"])},"gateway":{json.dumps(ev["gateway"])},'
                       f'"device":{json.dumps(device)}')
        self._envelope = _envelope_text(body)
        # Times may carry a device's UTC offset: compare instants, not strings.
        instant = time_ns if time_ns is not None else event_time_ns(datetime.fromisoformat(ev["time"]))
        self.parts[state_part(ev["payload"])] = (instant, ev["time"], body)

    def merge_body(self, body: str, time_ns: int) -> bool:
        """`merge` without parsing the body, for the common case; False: parse it and `merge`.

        A status event of the whole device (its payload names no part field) whose site,
        gateway and device read exactly as those of the event `header` came from needs no
        parse: only its time as sent, found in the envelope (which precedes the payload).
        Most status events are such; a lift's state costs no JSON decoding per event.
        """
        envelope = _envelope_text(body)
        if envelope is None or envelope != self._envelope:
            return False
        payload = body.find(',"payload":', body.find(',"class":'))
        if payload < 0 or any(body.find(key, payload) >= 0 for key in _PART_KEYS):
            return False
        start = body.find('"time":"')
        end = body.find('"', start + 8)
        if start < 0 or end < 0 or start > payload:
            return False
        self.parts["device"] = (time_ns, body[start + 8:end], body)
        return True

    def document(self) -> str:
        """The retained document (schema, parts, site, gateway, device, time)."""
        parts = ",".join(f"{json.dumps(name)}:{body}" for name, (_, _, body) in self.parts.items())
        latest = max(self.parts.values(), key=lambda p: p[0])[1]
        return f'{{"schema":"{STATE_SCHEMA}","parts":{{{parts}}},{self.header},"time":{json.dumps(latest)}}}'

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> DeviceState:
        """A document read back from the broker (a restart): its parts hold until reported again."""
        state = cls()
        for name, ev in doc["parts"].items():
            state.parts[str(name)] = (event_time_ns(datetime.fromisoformat(ev["time"])), ev["time"], json.dumps(ev))
        state.kind = doc["device"]["kind"]
        state.header = (f'"site":{json.dumps(doc["site"])},"gateway":{json.dumps(doc["gateway"])},'
                        f'"device":{json.dumps(doc["device"])}')
        return state


class Publisher:
    """QoS-1 publishes straight through paho, confirmed per batch: one future per batch.

    aiomqtt's `publish` costs an Event, a `wait_for` and a scan of every pending call per
    message (quadratic in a batch). Here each message is handed to paho at once and its packet
    id remembered by its batch; paho's PUBACK callback, which still confirms aiomqtt's own
    publishes (status, metrics, the reconciliation marker), takes ids off their batch. One
    publisher per client (`Publisher.of`); a reconnect makes a new client, so ids never carry
    over from a lost connection.
    """

    _by_client: weakref.WeakKeyDictionary[aiomqtt.Client, Publisher] = weakref.WeakKeyDictionary()

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.paho: paho.Client = client._client
        self.owner: dict[int, Batch] = {}  # packet id -> the batch waiting for its PUBACK
        self._loop = asyncio.get_running_loop()
        self._quickack_due = False
        self._chained: Callable[..., None] = self.paho.on_publish  # type: ignore[assignment]
        self.paho.on_publish = self._on_publish

    @classmethod
    def of(cls, client: aiomqtt.Client) -> Publisher:
        """The publisher of `client`, installed on first use."""
        pub = cls._by_client.get(client)
        if pub is None:
            pub = cls._by_client[client] = cls(client)
        return pub

    def batch(self) -> Batch:
        """A set of messages confirmed together."""
        return Batch(self)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        batch = self.owner.pop(mid, None)
        if batch is None:
            self._chained(client, userdata, mid, reason_code, properties)
        else:
            batch.acked(mid)
            if self.owner and not self._quickack_due:
                # More PUBACKs to come: acknowledge what was read now (see `_quickack`), once
                # per read of the socket (after paho has handled all it read), not per PUBACK.
                self._quickack_due = True
                self._loop.call_soon(self._quickack, client)

    def _quickack(self, client: paho.Client) -> None:
        self._quickack_due = False
        _quickack(client.socket())


class Batch:
    """Messages handed to paho at once, confirmed together by `confirmed()`."""

    def __init__(self, publisher: Publisher) -> None:
        self._pub = publisher
        self._waiting: set[int] = set()
        self._done: asyncio.Future[None] | None = None

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
        """Hand one message to paho (written when the socket is writable); raises on a lost link."""
        info = self._pub.paho.publish(topic, payload, qos=1, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        self._waiting.add(info.mid)
        self._pub.owner[info.mid] = self

    def acked(self, mid: int) -> None:
        self._waiting.discard(mid)
        if not self._waiting and self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def confirmed(self, timeout: float) -> None:
        """Wait until the broker has acknowledged every message of this batch."""
        if not self._waiting:
            return
        self._done = asyncio.get_running_loop().create_future()
        disconnected = getattr(self._pub.client, "_disconnected", None)
        try:
            async with asyncio.timeout(timeout):
                if isinstance(disconnected, asyncio.Future):
                    # A lost link fails the batch at once, not at the timeout.
                    await asyncio.wait((self._done, disconnected), return_when=asyncio.FIRST_COMPLETED)
                    if not self._done.done():
                        raise aiomqtt.MqttError("connection lost before every PUBACK arrived")
                else:
                    await self._done
        finally:
            for mid in self._waiting:  # a lost or timed-out batch leaves nothing behind
                self._pub.owner.pop(mid, None)
            self._done = None


def _quickack(sock: Any) -> None:
    """Acknowledge what the broker just sent at once (Linux TCP_QUICKACK), not after up to 40 ms.

    A broker with Nagle on (mosquitto's default) sends the first PUBACK of a batch and holds
    the others until that segment is acknowledged; with nothing more to send, our kernel
    delays that acknowledgement, and each batch waited for it (3,000 events/s where the same
    broker with `set_tcp_nodelay true` took 9,000). Setting the option sends a pending
    acknowledgement now.
    """
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None and sock is not None:
        with contextlib.suppress(OSError, AttributeError, ValueError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)


class _Unreadable(Exception):
    """The broker does not let this client read the retained topics back."""


def _envelope_text(body: str) -> str | None:
    """The stored body's text from `,"site":` to `,"class":` (site, gateway, device), or None.

    Bodies are the envelope as serialized (fields in model order, compact); no string in it can
    hold a bare `,"class":` (quotes inside strings are escaped), and `Location` has no `class`
    field, so the first one ends the device block.
    """
    start = body.find(',"site":')
    end = body.find(',"class":', start)
    return body[start:end] if start >= 0 and end >= 0 else None


def state_part(payload: Mapping[str, Any]) -> str:
    """Which part of its device a status payload describes: `zone/z1`, `lane/in`, `door/2` or `device`."""
    for field, name in STATE_PARTS:
        value = payload.get(field)
        if value is not None:
            return f"{name}/{value}"
    return "device"


def retrieve_disconnect(client: aiomqtt.Client) -> None:
    """Mark aiomqtt's disconnect outcome as seen, whenever it arrives.

    aiomqtt sets an exception on its private `_disconnected` future when the broker drops the
    link; if that happens after our `async with` has ended (a broker stopped during shutdown),
    nobody awaits it and asyncio logs "Future exception was never retrieved". The sink already
    handles the lost link through the exceptions its own calls raise.
    """
    fut = getattr(client, "_disconnected", None)
    if isinstance(fut, asyncio.Future):
        fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())

