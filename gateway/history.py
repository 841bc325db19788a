"""Read-only access to the local history (the outbox database) for the CLI."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.outbox import connect

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`90s`, `10m`, `2h`, `7d` -> seconds; ValueError otherwise."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}: use a number and s, m, h or d (e.g. 10m)")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class HistoryRow:
    """One stored event."""

    seq: int
    received_ns: int
    device: str
    kind: str
    type: str
    cls: str
    body: str


def query(
    db_path: Path,
    *,
    since_s: float | None = None,
    device: str | None = None,
    type_glob: str | None = None,
    limit: int | None = None,
) -> Iterator[HistoryRow]:
    """Events in commit order, filtered."""
    if not db_path.exists():
        raise FileNotFoundError(f"no history at {db_path} (has the gateway run with this config?)")
    sql = "SELECT seq, received_ns, device, kind, type, class, body FROM events WHERE 1=1"
    args: list[object] = []
    if since_s is not None:
        sql += " AND received_ns >= ?"
        args.append(time.time_ns() - int(since_s * 1e9))
    if device:
        sql += " AND device = ?"
        args.append(device)
    if type_glob:
        sql += " AND type GLOB ?"
        args.append(type_glob)
    sql += " ORDER BY seq"
    if limit:
        sql = f"SELECT * FROM ({sql.replace('ORDER BY seq', 'ORDER BY seq DESC')} LIMIT ?) ORDER BY seq"
        args.append(limit)
    conn = connect(db_path, readonly=True)
    try:
        for row in conn.execute(sql, args):
            yield HistoryRow(*row)
    finally:
        conn.close()


def dead_letters(db_path: Path) -> list[dict[str, object]]:
    """Batches a database rejected, newest last."""
    conn = connect(db_path, readonly=True)
    try:
        cur = conn.execute(
            "SELECT id, sink, at_ns, status, reason, first_seq, last_seq, count, body FROM dead_letters ORDER BY id"
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur]
    finally:
        conn.close()
