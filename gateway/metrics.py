"""Process-wide counters: cheap to bump, exported in the gateway's health report."""

from __future__ import annotations

from collections import Counter


class Counters:
    """Named monotonic counters, optionally prefixed (e.g. per device)."""

    def __init__(self, prefix: str = "", store: Counter[str] | None = None) -> None:
        self._prefix = prefix
        self._store: Counter[str] = store if store is not None else Counter()

    def inc(self, name: str, n: int = 1) -> None:
        """Add `n` to counter `name`."""
        self._store[self._prefix + name] += n

    def child(self, prefix: str) -> Counters:
        """A view that prefixes every name (shares the same store)."""
        return Counters(self._prefix + prefix, self._store)

    def get(self, name: str) -> int:
        """Current value of `name` (within this view's prefix)."""
        return self._store[self._prefix + name]

    def snapshot(self) -> dict[str, int]:
        """All counters as a plain dict."""
        return dict(sorted(self._store.items()))
