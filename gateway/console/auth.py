"""Console logins: salted scrypt hashes, the users file, sessions, CSRF tokens and login throttling.

Passwords are never stored or logged: only `scrypt$n$r$p$salt$hash` (base64). Sessions live in
memory (a restart logs everybody out, which is acceptable for a duty screen and keeps no
secret on disk). Each session has its own CSRF token, sent by the page in a header on every
state-changing request and compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config import ROLES, USER_NAME_PATTERN, ConsoleConfig, ConsoleUser
from gateway.files import FILE_MODE, make_private_dirs, write_private

log = logging.getLogger(__name__)

#: scrypt cost: n=2**14, r=8, p=1 takes ~50 ms and 16 MiB per check, enough to slow guessing.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
RANK = {role: i for i, role in enumerate(ROLES)}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A salted scrypt hash of `password`, in the stored form."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a stored hash (constant-time compare; a malformed hash never matches)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or len(password) > MAX_PASSWORD:
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True), n=int(n), r=int(r),
                             p=int(p), dklen=len(expected), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


#: Verified against when the user is unknown, so an unknown name costs as much time as a known one.
_DUMMY_HASH = hash_password("not-a-real-password", n=SCRYPT_N)


# --- the users file ---------------------------------------------------------------------------


def load_users_file(path: Path) -> list[ConsoleUser]:
    """Users of a users file (`users: [{name, role, password_hash}]`); a missing file has none."""
    if not path.exists():
        return []
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not isinstance(data.get("users", []), list):
        raise ValueError(f"{path}: expected a mapping with a `users` list")
    return [ConsoleUser.model_validate(u) for u in data.get("users", [])]


def save_users_file(path: Path, users: list[ConsoleUser]) -> None:
    """Write the users file, mode 0600 (it holds password hashes)."""
    make_private_dirs(path.parent)
    data = {"users": [{"name": u.name, "role": u.role, "password_hash": u.password_hash.get_secret_value()}
                      for u in users]}
    text = "# Courtyard console users: managed by `courtyard users add|passwd|remove`. Hashes only.\n"
    tmp = path.with_name(path.name + ".tmp")
    write_private(tmp, (text + yaml.safe_dump(data, sort_keys=False)).encode())
    os.replace(tmp, path)


def all_users(cfg: ConsoleConfig) -> dict[str, ConsoleUser]:
    """The config's users, then the users file's (a name in both: the file's entry wins).

    A users file readable by others is made 0600 again, and the log says so.
    """
    users = {u.name: u for u in cfg.users}
    path = cfg.users_file
    if path is not None:
        if path.exists() and path.stat().st_mode & 0o077:
            log.warning("console users file %s was readable by others: made 0600", path)
            path.chmod(FILE_MODE)
        users.update({u.name: u for u in load_users_file(path)})
    return users


def valid_user_name(name: str) -> bool:
    """Whether `name` is usable as a login (also part of the `console:<user>` requester)."""
    import re

    return re.match(USER_NAME_PATTERN, name) is not None


# --- sessions and throttling ------------------------------------------------------------------


@dataclass
class Session:
    """One logged-in browser."""

    sid: str
    user: str
    role: str
    csrf: str
    expires: float
    created: float = field(default_factory=time.time)

    def allows(self, role: str) -> bool:
        """Whether this session's role is at least `role`."""
        return RANK[self.role] >= RANK[role]


class Sessions:
    """Session ids (random, 256 bits) to sessions; expired ones are dropped when seen."""

    MAX = 1000

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._by_id: dict[str, Session] = {}

    def create(self, user: str, role: str) -> Session:
        """A new session (the oldest goes when there are too many)."""
        now = time.time()
        self._by_id = {k: s for k, s in self._by_id.items() if s.expires > now}
        while len(self._by_id) >= self.MAX:
            self._by_id.pop(next(iter(self._by_id)))
        s = Session(secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(32), now + self.ttl_s)
        self._by_id[s.sid] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session of a cookie value, or None."""
        if not sid:
            return None
        s = self._by_id.get(sid)
        if s is None:
            return None
        if s.expires <= time.time():
            del self._by_id[sid]
            return None
        return s

    def live(self) -> int:
        """Sessions not expired yet."""
        now = time.time()
        return sum(1 for s in self._by_id.values() if s.expires > now)

    def drop(self, sid: str) -> None:
        """Log a session out."""
        self._by_id.pop(sid, None)

    def drop_user(self, user: str) -> None:
        """Log out every session of `user` (removed, or their password changed)."""
        self._by_id = {k: s for k, s in self._by_id.items() if s.user != user}


class Throttle:
    """At most `attempts` failed logins per key (user name, source address) within `window_s`."""

    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._fails: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, *keys: str) -> float:
        """Seconds until any of `keys` may try again (0: now)."""
        now = time.monotonic()
        wait = 0.0
        for key in keys:
            q = self._recent(key, now)
            if len(q) >= self.attempts:
                wait = max(wait, q[0] + self.window_s - now)
        return wait

    def failed(self, *keys: str) -> None:
        """One failed login for each key."""
        now = time.monotonic()
        for key in keys:
            self._recent(key, now).append(now)
        if len(self._fails) > 10_000:  # a flood of names: forget the idle ones
            self._fails = {k: q for k, q in self._fails.items() if q}

    def succeeded(self, key: str) -> None:
        """A good login clears that user's failures (never the address's)."""
        self._fails.pop(key, None)


def check_login(users: dict[str, ConsoleUser], name: str, password: str) -> ConsoleUser | None:
    """The user, when name and password match (an unknown name costs the same scrypt time)."""
    user = users.get(name)
    if user is None:
        verify_password(password, _DUMMY_HASH)
        return None
    return user if verify_password(password, user.password_hash.get_secret_value()) else None


def public_user(user: Any) -> dict[str, str]:
    """What the page may know about a session's user."""
    return {"name": user.user, "role": user.role}
