"""Loopback helpers shared by simulators, scenarios, tests and benches."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Ports handed out recently (port -> when): two calls before either port is bound (a
#: simulator's port, then a console's) must not get the same one.
_HANDED_OUT: dict[int, float] = {}
_HOLD_S = 600.0


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default 32768-60999)."""
    try:
        low, high = (int(x) for x in _EPHEMERAL.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, outside the ephemeral range.

    A server that is stopped and started again on its port (an outage test, a scenario's
    `broker_down`) must not hold a port the kernel may hand to an outgoing connection
    meanwhile: a client reconnecting to 127.0.0.1:P can then be given P as its own local port
    and connect to itself (TCP simultaneous open), and the server cannot bind P again.
    """
    low, high = ephemeral_range()
    candidates = [(10000, low - 1)] if low - 1 > 10000 else []
    if high + 1 < 65000:
        candidates.append((high + 1, 65000))
    for _ in range(200):
        if not candidates:
            break
        lo, hi = random.choice(candidates)
        port = random.randint(lo, hi)
        now = time.monotonic()
        if now - _HANDED_OUT.get(port, -_HOLD_S) < _HOLD_S:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT[port] = now
        if len(_HANDED_OUT) > 4096:  # forget the oldest
            for old in sorted(_HANDED_OUT, key=_HANDED_OUT.__getitem__)[:1024]:
                del _HANDED_OUT[old]
        return port
    with socket.socket() as s:  # no room outside the ephemeral range: fall back to the kernel's pick
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
        return chosen
