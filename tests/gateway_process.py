"""A gateway as its own process, for tests that kill it (SIGKILL) between a command and its result.

`start` runs `courtyard run` in its own session, logging to `gateway.log` beside the config;
`kill` is the abrupt death, `stop` the clean one. `send_until_accepted` sends a command until the
(still starting) gateway answers, a fresh id each time; `finals` and `state_of` read its outcome
from the MQTT results and from the journal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.command_bus import CommandClient
from gateway.commands import list_journal


def start(path: Path) -> subprocess.Popen[bytes]:
    with (path.parent / "gateway.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(path)],
                                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            kill(proc)


def state_of(db: Path, cid: str) -> str | None:
    """The journal state of command `cid`, None while it is not journaled."""
    rows = [r for r in list_journal(db) if r.id == cid]
    return rows[0].state if rows else None


async def send_until_accepted(client: CommandClient, kind: str, device: str, command: str, args: dict[str, Any],
                              ttl_s: float = 120) -> str | None:
    """One try (for `eventually`): the id once the gateway answered it, else None. The unanswered
    ones find nobody subscribed yet."""
    cid = await client.send(kind, device, command, args=args, ttl_s=ttl_s)
    try:
        await client.wait(cid, final=False, timeout=1.5)
    except TimeoutError:
        return None
    return cid


def finals(client: CommandClient, cid: str) -> list[dict[str, Any]]:
    """The final results of `cid` received on MQTT."""
    return [r for r in client.results.get(cid, []) if r["final"]]
