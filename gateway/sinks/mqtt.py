"""MQTT sink (aiomqtt over paho-mqtt): the property platform's contract.

Topics (prefix `courtyard` by default):

* `{p}/{site}/{kind}/{device}/event/{type}`   every event, QoS 1, not retained
* `{p}/{site}/{kind}/{device}/state`          latest accepted status event, retained
* `{p}/{site}/{kind}/{device}/availability`   latest connectivity event, retained
* `{p}/{site}/{kind}/{device}/alarm/{alarm_id}` active alarm or fault, retained; emptied on clear
* `{p}/{site}/gateway/{gateway}/status`       `online`/`offline`, retained, offline is the LWT
* `{p}/{site}/gateway/{gateway}/metrics`      counters and backlog, QoS 0, periodic
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiomqtt

from gateway.config import MqttConfig
from gateway.driver import BackoffConfig
from gateway.metrics import Counters
from gateway.outbox import Outbox, Stored
from gateway.sinks.base import Sink
from gateway.supervisor import backoff_delays

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 30.0
MAX_CLIENT_ID = 64  # MQTT 3.1.1 only promises 23 bytes; mosquitto and the big brokers take more


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
    ) -> None:
        self.cfg = cfg
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

    def _status(self, status: str) -> str:
        return json.dumps({"status": status, "gateway": self.gateway_id, "site": self.site})

    def _make_client(self) -> aiomqtt.Client:
        cfg = self.cfg
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=self.client_id,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            keepalive=cfg.keepalive_s,
            will=aiomqtt.Will(self.status_topic, self._status("offline"), qos=1, retain=True),
            tls_context=tls_context(cfg),
            max_inflight_messages=cfg.batch,
            timeout=10,
            clean_session=True,
        )

    async def run(self, outbox: Outbox) -> None:
        """Connect, publish, reconnect with back-off; resume from the outbox cursor."""
        delays = backoff_delays(BackoffConfig(initial_s=0.2, max_s=self.cfg.backoff_max_s))
        while True:
            try:
                client = self._make_client()
                client.pending_calls_threshold = 100_000  # we bound in-flight ourselves (one batch)
                async with client:
                    self._client = client
                    await client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
                    self.connected.set()
                    self.counters.inc("connects")
                    log.info("MQTT connected to %s:%d", self.cfg.host, self.cfg.port)
                    delays = backoff_delays(BackoffConfig(initial_s=0.2, max_s=self.cfg.backoff_max_s))
                    await asyncio.gather(self._deliver(client, outbox), self._report(client, outbox))
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
            await asyncio.sleep(next(delays))

    async def _deliver(self, client: aiomqtt.Client, outbox: Outbox) -> None:
        while True:
            rows = await outbox.fetch(self.name, self.cfg.batch)
            if not rows:
                await outbox.wait_new(self.name, timeout=1.0)
                continue
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await asyncio.gather(*(p for row in rows for p in self._publishes(client, row)))
            await outbox.ack(self.name, rows)
            self.counters.inc("published", len(rows))

    def _publishes(self, client: aiomqtt.Client, row: Stored) -> list[Any]:
        base = f"{self.prefix}/{row.kind}/{row.device}"
        out = [client.publish(f"{base}/event/{row.type}", row.body, qos=1)]
        if row.cls == "status" and (
            '"rejected"' not in row.body or json.loads(row.body)["quality"]["status"] != "rejected"
        ):
            out.append(client.publish(f"{base}/state", row.body, qos=1, retain=True))
        if row.cls == "connectivity":
            out.append(client.publish(f"{base}/availability", row.body, qos=1, retain=True))
        if row.cls in ("alarm", "fault", "connectivity"):  # an offline device is an active alarm too
            ev = json.loads(row.body)
            if ev.get("alarm_id"):
                topic = f"{base}/alarm/{ev['alarm_id']}"
                body = row.body if ev["state"] == "raised" else b""
                out.append(client.publish(topic, body, qos=1, retain=True))
        return out

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
        """Mark the gateway offline (retained) on a clean shutdown."""
        client = self._client
        if client is not None:
            try:
                async with asyncio.timeout(2):
                    await client.publish(self.status_topic, self._status("offline"), qos=1, retain=True)
            except (aiomqtt.MqttError, TimeoutError):
                log.debug("could not publish offline status", exc_info=True)
