"""A device's numeric history for the console's chart: from InfluxDB 1.x when configured, else the local history.

The InfluxDB sink writes one point per event: measurement = device kind, tag `device`, and the
payload's scalar facts as fields (gateway/sinks/influx.py). InfluxDB keeps history longer than
the outbox, so the chart reads it there when it can; when the query fails (or the sink is v2,
whose Flux API this does not speak yet) the chart says so and uses the local history.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp

from gateway.config import InfluxConfig

#: Fields of a point that are identifiers or text, not a quantity to draw.
_NOT_SERIES = {"event_id", "alarm_id", "raw_code", "seq", "time"}
MAX_POINTS = 10_000


class SeriesUnavailable(Exception):
    """InfluxDB could not answer (unreachable, refused, wrong database): use the local history."""


def _quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def influxql(kind: str, device: str, since: datetime, until: datetime | None, limit: int) -> str:
    """The InfluxQL query for one device's points (identifiers and literals quoted, never pasted)."""
    where = f"{_quote_ident('device')} = {_quote_literal(device)} AND time >= {_quote_literal(since.isoformat())}"
    if until is not None:
        where += f" AND time <= {_quote_literal(until.isoformat())}"
    return f"SELECT * FROM {_quote_ident(kind)} WHERE {where} ORDER BY time DESC LIMIT {int(limit)}"


async def influx_points(cfg: InfluxConfig, kind: str, device: str, since: datetime, until: datetime | None = None,
                        limit: int = MAX_POINTS) -> list[dict[str, Any]]:
    """Points of one device, newest first, as `{"time": ISO, "payload": {field: number}}`."""
    if not cfg.url or cfg.api != "v1":
        raise SeriesUnavailable("InfluxDB 2.x is not read by the console yet" if cfg.url else "no InfluxDB")
    params = {"db": cfg.database, "q": influxql(kind, device, since, until, limit), "epoch": "ms"}
    auth = aiohttp.BasicAuth(cfg.username, cfg.password.get_secret_value()) if cfg.username else None
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(cfg.url.rstrip("/") + "/query", params=params, auth=auth) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise SeriesUnavailable(f"InfluxDB answered {resp.status}: {text.strip()[:200]}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SeriesUnavailable(f"InfluxDB unreachable: {exc or type(exc).__name__}") from None
    try:
        data = json.loads(text)
        result = data["results"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        raise SeriesUnavailable("InfluxDB answered something that is not a query result") from None
    if "error" in result:
        raise SeriesUnavailable(f"InfluxDB: {result['error']}")
    points: list[dict[str, Any]] = []
    for series in result.get("series", []):
        columns = series.get("columns", [])
        for values in series.get("values", []):
            row = dict(zip(columns, values, strict=False))
            when = row.get("time")
            if not isinstance(when, int | float):
                continue
            numbers = {k: v for k, v in row.items() if k not in _NOT_SERIES and isinstance(v, int | float)
                       and not isinstance(v, bool)}
            numbers.update({k: int(v) for k, v in row.items() if isinstance(v, bool)})
            if numbers:
                iso = datetime.fromtimestamp(when / 1000, UTC).isoformat().replace("+00:00", "Z")
                points.append({"time": iso, "payload": numbers})
    return points
