"""UUIDv7 event ids: unique, and sortable by creation time (RFC 9562)."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import uuid
from datetime import datetime

_lock = threading.Lock()
_random = random.Random(os.urandom(16))
# A forked child must not repeat its parent's sequence (same millisecond, same counter: same id).
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(16)))
_last_ms = 0
_counter = 0


def uuid7() -> str:
    """Return a new UUIDv7 string; ids made in the same millisecond stay ordered via a counter.

    The 62 random bits come from a generator seeded once from the OS, not a system call per
    id: they make ids unique, they are not secrets (one id per event, a thousand a second).
    """
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                ms += 1
                _counter = 0
        else:
            _counter = 0
        _last_ms = ms
        value = (ms << 80) | (0x7 << 76) | (_counter << 64) | (0b10 << 62) | _random.getrandbits(62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_from(when: datetime, *parts: str) -> str:
    """A UUIDv7 determined by a time and some names (e.g. device, condition).

    Used for `alarm_id`: the same raise at the same instant gets the same id live and in a
    replay, and ids still sort by time.
    """
    ms = int(when.timestamp() * 1000)
    digest = hashlib.sha256("\x1f".join((*parts, when.isoformat())).encode()).digest()
    rand_a = int.from_bytes(digest[:2], "big") & 0xFFF
    rand_b = int.from_bytes(digest[2:10], "big") & ((1 << 62) - 1)
    value = ((ms & ((1 << 48) - 1)) << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))
