"""Event ids: RFC 9562 UUIDv7, unique, sorted by creation, and never repeated by a forked child."""

from __future__ import annotations

import os
import uuid

from gateway.ids import uuid7


def test_ids_are_version_7_unique_and_sorted_even_within_one_millisecond() -> None:
    ids = [uuid7() for _ in range(50_000)]  # thousands per millisecond: the counter orders them
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for text in ids[:: 997]:
        u = uuid.UUID(text)
        assert u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == text


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: its ids, the same way the parent makes its own
        os.close(read)
        os.write(write, "\n".join(uuid7() for _ in range(200)).encode())
        os._exit(0)
    os.close(write)
    mine = {uuid7() for _ in range(200)}
    with os.fdopen(read) as f:
        theirs = set(f.read().split("\n"))
    os.waitpid(pid, 0)
    assert len(theirs) == 200
    # Same milliseconds and counters are likely; the random bits must differ.
    assert {t[19:] for t in theirs}.isdisjoint({m[19:] for m in mine})
