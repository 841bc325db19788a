"""`free_port`: ports for test servers, outside the ephemeral range, never the same one twice in a row."""

from __future__ import annotations

import socket

from simulators.net import ephemeral_range, free_port


def test_ports_handed_out_before_anything_binds_them_are_distinct() -> None:
    ports = [free_port() for _ in range(300)]  # nothing binds them: only the memory keeps them apart
    assert len(set(ports)) == len(ports)
    low, high = ephemeral_range()
    assert all(not low <= p <= high for p in ports)
    with socket.socket() as s:  # and each was free when handed out
        s.bind(("127.0.0.1", ports[-1]))
