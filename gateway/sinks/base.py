"""What a sink is: a loop that drains the outbox from its own cursor."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.outbox import Outbox


class Sink(abc.ABC):
    """Delivers committed events somewhere; at-least-once, resuming from its own cursor."""

    name: str

    @abc.abstractmethod
    async def run(self, outbox: Outbox) -> None:
        """Deliver forever (until cancelled), reconnecting with back-off."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Say goodbye to the peer (e.g. retained offline status) before the task is cancelled."""
