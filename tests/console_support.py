"""Shared by the console tests: a gateway with a console and an elevator simulator, logins, a stand-in alarm book.

`StandInAlarmBook` implements the interface the console codes against (`active`, `get`,
`operate`, `subscribe`) with a journal of the operations it was asked for, so the console's
side can be checked without the book's own policy (allowlists, latching, escalation); the
tests that need the real thing (gateway/alarm_book.py) ask for it with `book="real"`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from gateway.alarm_book import AlarmOpRejected as OpRejected
from gateway.alarm_book import AlarmView as View
from gateway.config import parse_config
from gateway.console.auth import hash_password
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import base_config
from tests.servers import free_port

PASSWORDS = {"op": "operator-pass-1", "viewer": "viewer-pass-1", "admin": "admin-pass-1"}
#: Hashing is slow on purpose; the tests hash each password once.
_HASHES = {name: hash_password(pw) for name, pw in PASSWORDS.items()}
ROLES = {"op": "operator", "viewer": "viewer", "admin": "admin"}


def console_section(**extra: Any) -> dict[str, Any]:
    """A console config with the three test users on a free loopback port."""
    return {"port": free_port(), "timezone": "Asia/Shanghai",
            "users": [{"name": n, "role": ROLES[n], "password_hash": _HASHES[n]} for n in PASSWORDS], **extra}


def lift_config(tmp_path: Path, sim_port: int, *, mqtt: Any = None, console: dict[str, Any] | None = None,
                lifts: int = 1, **extra: Any) -> Any:
    devices = [{"id": f"lift-{i}", "driver": "modbus_elevator", "port": sim_port, "unit_id": i, "poll_interval_s": 0.1,
                "timeout_s": 0.5, "highest_floor": 18, "name": f"Tower 4 lift {i}",
                "location": {"building": "4", "unit": "1"}} for i in range(1, lifts + 1)]
    extra.setdefault("commands", {"allow": [{"requesters": ["console:op", "console:admin"], "devices": ["*"],
                                             "commands": ["*"]}]})
    return parse_config(base_config(tmp_path, mqtt=mqtt, devices=devices, console=console or console_section(),
                                    **extra))


class StandInAlarmBook:
    """Raise -> active_unacked; ack -> active_acked; clear -> cleared_unacked or closed (acked)."""

    def __init__(self, gw: Gateway, classes: tuple[str, ...] = ("alarm", "fault", "connectivity")) -> None:
        self.classes = classes
        self.views: dict[str, View] = {}
        self.subscribers: list[Callable[[View], None]] = []
        self.ops: list[tuple[str, str, str, str | None]] = []
        gw.outbox.add_observer(self._events)

    def _events(self, events: Sequence[Any]) -> None:
        for ev in events:
            if ev.alarm_id is None or ev.state not in ("raised", "cleared") or ev.class_ not in self.classes:
                continue
            old = self.views.get(ev.alarm_id)
            if ev.state == "raised" and old is None:
                self._set(View(ev.alarm_id, ev.device.id, ev.device.kind, ev.type, ev.severity, "active_unacked",
                               None, False, ev.time, None, None, None,
                               ev.device.location.model_dump(exclude_none=True), ev.id))
            elif ev.state == "cleared" and old is not None:
                state = "closed" if old.state == "active_acked" else "cleared_unacked"
                self._set(replace(old, state=state, cleared_at=ev.time, last_event_id=ev.id))

    def _set(self, view: View) -> None:
        if view.state == "closed":
            self.views.pop(view.alarm_id, None)
        else:
            self.views[view.alarm_id] = view
        for fn in self.subscribers:
            fn(view)

    def active(self) -> list[View]:
        return list(self.views.values())

    def get(self, alarm_id: str) -> View | None:
        return self.views.get(alarm_id)

    async def operate(self, alarm_id: str, op: str, *, user: str, requester: str, comment: str | None = None,
                      until: datetime | None = None) -> View:
        view = self.views.get(alarm_id)
        if view is None:
            raise OpRejected("unknown_alarm")
        self.ops.append((alarm_id, op, requester, comment))
        if op == "ack":
            if view.state not in ("active_unacked", "cleared_unacked"):
                raise OpRejected("not_unacknowledged")
            view = replace(view, state="closed" if view.state == "cleared_unacked" else "active_acked",
                           acked_by=user, comment=comment)
        elif op == "shelve":
            view = replace(view, shelved_until=until, comment=comment)
        elif op == "unshelve":
            view = replace(view, shelved_until=None)
        else:
            raise OpRejected("not_latched")
        self._set(view)
        return view

    async def start(self) -> None:
        """Nothing to start: it follows the outbox from construction on."""

    async def wait_idle(self) -> None:
        """Operations complete at once."""

    async def stop(self) -> None:
        """Nothing to release."""

    def subscribe(self, fn: Callable[[View], None]) -> Callable[[], None]:
        self.subscribers.append(fn)
        return lambda: self.subscribers.remove(fn)


@contextlib.asynccontextmanager
async def lift_rig(tmp_path: Path, *, book: bool | str | tuple[str, ...] = False, lifts: int = 1, missing: int = 0,
                   **cfg: Any) -> \
        AsyncIterator[tuple[ElevatorSimulator, Gateway, str]]:
    """Elevator simulator + gateway with a console; yields (sim, gw, console base URL).

    `book`: False, no alarm lifecycle; True (or the event classes it manages), the stand-in;
    "real", the gateway's own alarm book. `missing` more lifts are configured than simulated:
    they never answer (offline).
    """
    if book != "real":
        cfg["alarms"] = {**cfg.get("alarms", {}), "lifecycle": {"enabled": False}}
    else:  # operators may operate (the book's own allowlist)
        cfg["alarms"] = {**cfg.get("alarms", {}), "lifecycle": {
            "allow": [{"requesters": ["console:op", "console:admin"], "devices": ["*"], "ops": ["*"]}]}}
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={i: ElevatorModel(call_rate_per_s=0) for i in range(1, lifts + 1)})
    gw = Gateway(lift_config(tmp_path, port, lifts=lifts + missing, **cfg))
    if book and book != "real":  # follows the stream from the start, like the real book
        gw.alarm_book = StandInAlarmBook(gw, *([book] if isinstance(book, tuple) else []))  # type: ignore[attr-defined]
    async with sim, gw:
        yield sim, gw, f"http://127.0.0.1:{gw.console.port}"


def client() -> aiohttp.ClientSession:
    """A client that keeps cookies from 127.0.0.1 (aiohttp refuses IP-address cookies by default)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(session: aiohttp.ClientSession, base: str, user: str = "op") -> str:
    """Log in; returns the CSRF token."""
    async with session.post(f"{base}/api/login", json={"user": user, "password": PASSWORDS[user]}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["csrf"])


def now() -> datetime:
    return datetime.now(UTC)
