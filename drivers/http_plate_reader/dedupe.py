"""De-duplication of plate reads: the decoder's memory of recent reads, and how commits settle it.

A camera sends one vehicle several times (a live read repeated within `dedupe_s`, or a buffered
record re-sent after a lost answer). The first copy is committed; later copies answer as the
first did, once it is committed. An entry whose commit fails is forgotten, so the camera's retry
is not taken for a duplicate.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from drivers.http_plate_reader.gate import Decision

#: A camera re-sends a buffered record it got no answer for (e.g. a live read interrupted the
#: drain); the same plateid within this window is the same record, committed once.
OFFLINE_DEDUPE_S = 3600.0
#: Memory is pruned of expired entries only past this size (cheap on the hot path).
_PRUNE_AT = 1024

Key = tuple[str, str]


@dataclass
class Recent:
    """The last read of a plate on a lane (or of a buffered record), for de-duplication."""

    at: float
    decision: Decision
    committed: asyncio.Future[None] | None  # None: committed already
    suppressed: int = 0


def offline_key(serial: str | None, seq: int | None) -> Key | None:
    """The key of a buffered record: the camera's own record number, when it gives one."""
    return (f"offline:{serial or ''}", str(seq)) if seq is not None else None


def _pending_future() -> asyncio.Future[None] | None:
    try:
        return asyncio.get_running_loop().create_future()
    except RuntimeError:  # decoding outside a loop (tests, tools): nothing can wait on it
        return None


class RecentReads:
    """Recent reads by key, on the receipt clock (so a replay suppresses the same reads)."""

    def __init__(self, dedupe_s: float) -> None:
        self.dedupe_s = dedupe_s
        self._recent: dict[Key, Recent] = {}

    def _window(self, key: Key) -> float:
        return OFFLINE_DEDUPE_S if key[0].startswith("offline:") else self.dedupe_s

    def duplicate_of(self, key: Key | None, mono: float) -> Recent | None:
        """The earlier read `key` repeats, if it is still within its window."""
        if key is None or self._window(key) <= 0:
            return None
        recent = self._recent.get(key)
        return recent if recent is not None and mono - recent.at < self._window(key) else None

    def remember(self, key: Key, mono: float, decision: Decision) -> int | None:
        """Record a new read; returns how many copies of the previous one were suppressed."""
        previous = self._recent.get(key)
        suppressed = previous.suppressed if previous is not None and previous.suppressed else None
        self._recent[key] = Recent(mono, decision, _pending_future())
        self._prune(mono)
        return suppressed

    def committed(self, key: Key) -> None:
        """The read under `key` is committed: duplicates waiting on it may answer now."""
        recent = self._recent.get(key)
        if recent is not None and recent.committed is not None:
            if not recent.committed.done():
                recent.committed.set_result(None)
            recent.committed = None

    def not_committed(self, key: Key, exc: BaseException) -> None:
        """The read under `key` was not committed: forget it, and fail the duplicates waiting on it."""
        recent = self._recent.pop(key, None)
        if recent is not None and recent.committed is not None and not recent.committed.done():
            recent.committed.set_exception(RuntimeError(f"original read not committed: {exc!r}"))
            recent.committed.exception()  # retrieved: no "never retrieved" warning if nobody waits

    def _prune(self, mono: float) -> None:
        if len(self._recent) < _PRUNE_AT:
            return
        # Past its window an entry goes, committed or not: whoever waits holds its future.
        for key in [k for k, r in self._recent.items() if r.at < mono - self._window(k)]:
            del self._recent[key]
