"""A small in-memory `DeviceContext` for driving the BLE gate driver without the gateway runtime."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.driver import DeviceConfig, EventDraft
from gateway.testing import IngestingContext


class CountingCounters:
    """`Counters` backed by a `collections.Counter`."""

    def __init__(self) -> None:
        self.values: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1) -> None:
        """Add `n` to counter `name`."""
        self.values[name] += n


class CollectingContext(IngestingContext):
    """Collects emitted drafts, link-state reports and recordings; the clock can be pinned."""

    def __init__(self, config: DeviceConfig, *, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.log = logging.getLogger(f"courtyard.test.{config.id}")
        self.counters = CountingCounters()
        self.drafts: list[EventDraft] = []
        self.online: list[tuple[bool, str | None]] = []
        self.recorded: list[tuple[str, Any]] = []
        self.clock = clock
        self._shared: dict[str, Any] = {}
        self._changed = asyncio.Event()

    def now(self) -> datetime:
        """The injected clock (e.g. a simulation's), else the wall clock."""
        return self.clock() if self.clock is not None else datetime.now(UTC)

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        """Keep the drafts (the real context commits them to the outbox)."""
        self.drafts.extend(drafts)
        self._changed.set()

    async def set_online(self, online: bool, *, reason: str | None = None, misses: int = 0) -> None:
        """Keep the link-state report."""
        self.online.append((online, reason))
        self._changed.set()

    recording = True

    def record(self, channel: str, data: Any) -> None:
        """Keep the raw input."""
        self.recorded.append((channel, data))

    async def shared(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        """One object per key, as the runtime does."""
        if key not in self._shared:
            self._shared[key] = await factory()
        return self._shared[key]

    async def aclose(self) -> None:
        """Close shared objects, as the runtime does at shutdown."""
        for obj in self._shared.values():
            close = getattr(obj, "aclose", None)
            if close is not None:
                await close()
        self._shared.clear()

    def types(self) -> list[str]:
        """Emitted event types, in order."""
        return [d.type for d in self.drafts]

    async def wait_for(self, predicate: Callable[[CollectingContext], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate(self)` holds (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()
