"""Courtyard's exception hierarchy.

    CourtyardError
    ├── ConfigError              configuration file invalid (file, line, path per problem)
    ├── DriverError              raised by drivers at their boundary
    │   ├── DeviceUnavailable    transport failure: connect refused, timeout, link dropped -> reconnect
    │   └── DeviceProtocolError  the device answered, but with an error (e.g. Modbus exception) -> miss
    ├── DecodeError              raw input cannot be decoded (becomes a `rejected` event, never escapes)
    └── OutboxError              the outbox cannot accept events
        └── OutboxFull           over budget with `overflow: block`; retry after `retry_after_s`
"""

from __future__ import annotations

from dataclasses import dataclass


class CourtyardError(Exception):
    """Base of every error Courtyard raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path or '<root>'}: {self.message}"


class ConfigError(CourtyardError):
    """A configuration file is invalid; `problems` lists every issue found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class DriverError(CourtyardError):
    """Base for errors a driver raises."""


class DeviceUnavailable(DriverError):
    """The device cannot be reached; the supervisor reconnects with back-off."""


class DeviceProtocolError(DriverError):
    """The device answered with an error; counted as a miss, the link is kept."""


class DecodeError(CourtyardError):
    """Raw input could not be decoded."""


class OutboxError(CourtyardError):
    """The outbox refused or failed to store events."""


class OutboxFull(OutboxError):
    """Over the disk budget under `overflow: block`: lane-1 events wait at most a bounded time.

    Push transports answer their peer 503 with `Retry-After: retry_after_s` instead of holding
    the request past the peer's own timeout.
    """

    def __init__(self, message: str = "outbox over budget", *, retry_after_s: float = 5.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)
