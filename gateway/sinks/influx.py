"""InfluxDB sink: influxdb-client's v2 write API, or line protocol on `/write` for InfluxDB 1.x.

Mapping: measurement = device kind; tags = site, device, type, class, severity, state,
quality (all low cardinality); fields = the payload's scalar facts plus `event_id`;
timestamp = event time in ns (plus a stable per-id offset below the time's own precision,
see `_resolution_ns`), so a redelivered event overwrites itself and distinct events do not.

Server answers: 2xx acks the batch; 429/503 wait `Retry-After` (or back-off) and retry;
413, 400 and 422 halve the batch until the refused lines stand alone; a single refused line
(400/422, or 413 for one event) goes to the dead-letter table with the server's reason and is
skipped, so one bad point never costs the rest of its batch; anything else (401/403/404: credentials or database
wrong, 5xx, connection refused, timeout) is an outage: retried with capped back-off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from gateway.backoff import BackoffConfig, backoff_delays
from gateway.config import InfluxConfig
from gateway.metrics import Counters
from gateway.outbox import Outbox, Stored
from gateway.sinks.base import Sink

log = logging.getLogger(__name__)

LOCATION_TAGS = ("building", "garage", "zone")
# Payload keys that are personal data or high cardinality: never written as tags, and
# personal data not at all (plates are kept as fields: they are the point of a plate reader).
SKIP_FIELDS = frozenset({"kind", "raw"})


def to_line(row: Stored) -> str:
    """One event as a line-protocol line.

    Tags, id, alarm id and timestamp come from the row's columns; the body is parsed once,
    for what only it holds (site, severity, raw code, sequence and the payload's fields).
    """
    ev = json.loads(row.body)
    p = (Point(row.kind).tag("site", ev["site"]).tag("device", row.device)
         .tag("type", row.type).tag("class", row.cls).tag("severity", ev["severity"]).tag("state", row.state)
         .tag("quality", row.quality))
    location = ev["device"].get("location") or {}
    for key in LOCATION_TAGS:  # few values per site: dashboards group alarms by building, garage, zone
        if location.get(key):
            p = p.tag(key, str(location[key]))
    p = p.field("event_id", row.id)
    if row.alarm_id is not None:
        p = p.field("alarm_id", row.alarm_id)
    for key in ("raw_code", "seq"):
        if ev.get(key) is not None:
            p = p.field(key, ev[key])
    for key, value in ev["payload"].items():
        if key in SKIP_FIELDS or value is None or isinstance(value, dict | list):
            continue
        p = p.field(key, value)
    line: str = p.time(_point_ns(row.time_ns, row.id), WritePrecision.NS).to_line_protocol()
    return line


def _resolution_ns(ts: int) -> int:
    """How precise a timestamp really is: 1 s for whole-second device clocks, else ms or us.

    Two events of one series at the same instant (a device-reported and a derived alarm in
    one poll; two passages stamped by a gate's one-second clock) would overwrite each other
    as InfluxDB points. Each point therefore gets a stable, id-derived offset below the
    timestamp's own precision: distinct events land on distinct points, a redelivered event
    lands on exactly its own point, and no timestamp moves past what the source could tell.
    """
    for unit in (1_000_000_000, 1_000_000, 1_000):
        if ts % unit == 0:
            return unit
    return 1


def point_time_ns(iso_time: str, event_id: str) -> int:
    """The InfluxDB timestamp of an event: its time plus a stable offset below its precision."""
    return _point_ns(_ns(iso_time), event_id)


def _point_ns(ts: int, event_id: str) -> int:
    return ts + zlib.crc32(event_id.encode()) % _resolution_ns(ts)


def _ns(iso: str) -> int:
    from datetime import datetime

    from schemas.event import event_time_ns

    return event_time_ns(datetime.fromisoformat(iso))


@dataclass
class WriteOutcome:
    """What the server said about one batch."""

    ok: bool
    status: int | None = None
    reason: str = ""
    retry_after: float | None = None

    @property
    def rejected(self) -> bool:
        """The data itself was refused (400 bad line protocol or type conflict, 413 for one event, 422).

        401/403/404 mean credentials or the database are wrong: an outage to retry, not a
        reason to throw the events away.
        """
        return self.status in (400, 413, 422)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class InfluxSink(Sink):
    """Batches events into line protocol and writes them, one batch at a time."""

    def __init__(self, cfg: InfluxConfig, *, counters: Counters, name: str = "influx") -> None:
        self.cfg = cfg
        self.name = name
        self.counters = counters.child(f"{name}.")
        self._session: aiohttp.ClientSession | None = None
        self._client: InfluxDBClientAsync | None = None

    async def _write_v1(self, body: str) -> WriteOutcome:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s))
        params = {"db": self.cfg.database, "precision": "ns"}
        # Basic auth rather than u/p query parameters, which proxies and access logs record.
        auth = aiohttp.BasicAuth(self.cfg.username, self.cfg.password.get_secret_value()) if self.cfg.username else None
        url = self.cfg.url.rstrip("/") + "/write"
        async with self._session.post(url, params=params, data=body.encode(), auth=auth) as resp:
            if resp.status < 300:
                return WriteOutcome(True, resp.status)
            text = await resp.text()
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            return WriteOutcome(False, resp.status, text.strip()[:1000], retry_after)

    async def _write_v2(self, body: str) -> WriteOutcome:
        if self._client is None:
            self._client = InfluxDBClientAsync(
                url=self.cfg.url, token=self.cfg.token.get_secret_value() or "-", org=self.cfg.org or "-",
                timeout=int(self.cfg.timeout_s * 1000),
            )
        try:
            await self._client.write_api().write(bucket=self.cfg.database, org=self.cfg.org or "-", record=body)
        except ApiException as exc:
            headers: Any = exc.headers or {}
            return WriteOutcome(False, exc.status, str(exc.body or exc.reason)[:1000],
                                parse_retry_after(headers.get("Retry-After")))
        return WriteOutcome(True, 204)

    async def write(self, body: str) -> WriteOutcome:
        """Send one batch of lines."""
        return await (self._write_v1(body) if self.cfg.api == "v1" else self._write_v2(body))

    async def run(self, outbox: Outbox) -> None:
        """Drain the outbox into InfluxDB forever; nothing that goes wrong ends this loop."""
        backoff = BackoffConfig(initial_s=0.2, max_s=self.cfg.backoff_max_s)
        delays = backoff_delays(backoff)
        failures = 0
        while True:
            try:
                rows = await outbox.fetch(self.name, self.cfg.batch)
                if not rows:
                    await outbox.wait_new(self.name, timeout=1.0)
                    continue
                outcome = await self._deliver(outbox, rows)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. the outbox could not be read: retry, never stop delivering
                self.counters.inc("errors")
                log.exception("InfluxDB sink failed; retrying")
                outcome = WriteOutcome(False, None, f"{type(exc).__name__}: {exc}")
            if outcome.ok:
                self.down_since = None
                if failures:
                    log.info("InfluxDB writes recovered after %d failed attempts", failures)
                    failures = 0
                    delays = backoff_delays(backoff)
                continue
            self.counters.inc("retries")
            if self.down_since is None:
                self.down_since = time.monotonic()
            failures += 1
            delay = outcome.retry_after if outcome.retry_after is not None else next(delays)
            # One warning per outage, not one per retry.
            log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                    "InfluxDB write failed (%s %s); retrying in %.1fs", outcome.status, outcome.reason, delay)
            await asyncio.sleep(delay)

    async def _deliver(self, outbox: Outbox, rows: Sequence[Stored]) -> WriteOutcome:
        """Write `rows`; ack what the server took or refused for good. Not ok: retry them later."""
        refused: list[WriteOutcome] = []
        outcome = await self._deliver_part(outbox, rows, refused)
        if refused:  # one line per batch, however many lines were refused
            log.error("InfluxDB refused %d of %d events (%s): %s; kept as dead letters",
                      len(refused), len(rows), refused[0].status, refused[0].reason,
                      extra={"sink": self.name, "event_id": _event_id(rows[0])})
        return outcome

    async def _deliver_part(self, outbox: Outbox, rows: Sequence[Stored], refused: list[WriteOutcome]) -> WriteOutcome:
        """Write `rows`, bisecting a refused batch so that only the refused lines are dead-lettered.

        InfluxDB 1.x answers a batch with one bad line (type conflict, integer out of range,
        point beyond retention) with 400 "partial write" and drops just that line; servers
        that refuse the whole request do the same for the batch. Either way the halves are
        sent again (a point already written is overwritten by itself: same series, same
        timestamp) until each refused line stands alone.
        """
        lines = [to_line(r) for r in rows]
        try:
            outcome = await self.write("\n".join(lines))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return WriteOutcome(False, None, f"{type(exc).__name__}: {exc}")
        if outcome.ok:
            await outbox.ack(self.name, rows)
            self.counters.inc("written", len(rows))
            return outcome
        if (outcome.rejected or outcome.status == 413) and len(rows) > 1:
            self.counters.inc("batch_splits")
            half = len(rows) // 2
            first = await self._deliver_part(outbox, rows[:half], refused)
            return await self._deliver_part(outbox, rows[half:], refused) if first.ok else first
        if outcome.rejected:
            refused.append(outcome)
            await outbox.dead_letter(self.name, outcome.status, outcome.reason, rows, "\n".join(lines))
            await outbox.ack(self.name, rows)
            return WriteOutcome(True, outcome.status)
        return outcome

    async def stop(self) -> None:
        """Close HTTP sessions."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._client is not None:
            await self._client.close()
            self._client = None


def _event_id(row: Stored) -> str | None:
    """The id of a stored event, for log lines (`--log-format json` shows it as `event_id`)."""
    try:
        value = json.loads(row.body).get("id")
    except ValueError:
        return None
    return value if isinstance(value, str) else None
