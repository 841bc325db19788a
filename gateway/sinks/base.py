"""What a sink is: a loop that drains the outbox from its own cursor."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.outbox import Outbox
    from schemas.event import Event


class Sink(abc.ABC):
    """Delivers committed events somewhere; at-least-once, resuming from its own cursor."""

    name: str
    #: `time.monotonic()` since when the sink cannot deliver; None while it can (or cannot tell).
    #: `/readyz` compares it with `ops.outage_budget_s`.
    down_since: float | None = None

    @abc.abstractmethod
    async def run(self, outbox: Outbox) -> None:
        """Deliver forever (until cancelled), reconnecting with back-off."""

    async def flush(self) -> bool:
        """Send now what the sink derived from delivered events and holds back (MQTT: retained
        states waiting for their interval); False when it could not. `Gateway.drain` calls it."""
        return True

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Say goodbye to the peer (e.g. retained offline status) before the task is cancelled."""

    def bind(self, devices: Mapping[str, str], *, reconcile: bool = True) -> None:  # noqa: B027 - optional hook
        """Called once before `run()`: the configured devices (id -> kind). With `reconcile`, a
        sink that keeps per-device state on its peer (MQTT retained topics) may bring it in
        line with the outbox and this list; off for a gateway that runs none of its devices
        (`courtyard replay --config`)."""

    def devices_stopped(self, availability: Sequence[Event]) -> None:  # noqa: B027 - optional hook
        """The gateway is stopping cleanly: `availability` holds one `device.offline` per device
        (reason `gateway_stopped`), for a sink that keeps device presence (MQTT) to publish in
        `stop()`, before its own offline status. They are not committed events."""
