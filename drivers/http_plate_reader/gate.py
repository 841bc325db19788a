"""Barrier decisions at the edge: pure rules over the camera's local lists."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from drivers.http_plate_reader.config import LprAccessConfig
from drivers.http_plate_reader.plates import PlateCheck
from schemas.lpr import GateAction, GateReason


@dataclass(frozen=True, slots=True)
class Decision:
    """Open or deny, and which rule said so."""

    action: GateAction
    reason: GateReason
    pass_id: str | None = None

    @property
    def opens(self) -> bool:
        """True when the barrier should go up."""
        return self.action == "open"


class GateRules:
    """Blocklist first, then allowlist, then visitor passes, then the default for unknown plates.

    A blocklisted plate is denied even when the read is only suspect: a false deny costs a
    guard a button press, a false open lets a barred vehicle in.
    """

    def __init__(self, access: LprAccessConfig) -> None:
        self._allow = frozenset(access.allowlist)
        self._block = frozenset(access.blocklist)
        self._visitors = {v.plate: v for v in sorted(access.visitors, key=lambda v: v.valid_until)}
        self._unknown: GateAction = access.unknown

    def is_blocked(self, plate: str) -> bool:
        """True when `plate` (canonical) is on the blocklist."""
        return plate in self._block

    def decide(self, check: PlateCheck, now: datetime) -> Decision:
        """Decide for one read at gateway time `now`."""
        if check.plate_class == "none":
            return Decision("deny", "no_plate")
        if check.plate is None or check.status == "rejected":
            return Decision("deny", "invalid_plate")
        plate = check.plate
        if plate in self._block:
            return Decision("deny", "blocklist")
        if plate in self._allow:
            return Decision("open", "allowlist")
        visitor = self._visitors.get(plate)
        if visitor is not None:
            started = visitor.valid_from is None or visitor.valid_from <= now
            if started and now <= visitor.valid_until:
                return Decision("open", "visitor", visitor.pass_id)
            return Decision("deny", "visitor_expired", visitor.pass_id)
        return Decision(self._unknown, "unknown")
