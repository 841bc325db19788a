"""Driver SDK: what a driver is, what it is given, and what it hands back.

A driver is a transport adapter plus a pure decoder. Two shapes exist:

* `PollingDriver` (e.g. Modbus): the supervisor calls `read()` on a fixed schedule and
  feeds the raw result to `decode()`. `read()` does all the I/O and returns JSON-able raw
  data, so raw inputs can be recorded and replayed through the same `decode()`.
* `PushDriver` (OPC UA subscriptions, BLE notifications, HTTP push): `run()` until
  cancelled, emitting events through the context and reporting link state.

Drivers never build envelopes: they return `EventDraft`s and the context stamps site,
device, ids and receipt time, then commits them to the outbox.
"""

from __future__ import annotations

import abc
import importlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import VALID, AlarmState, DeviceKind, EventClass, Location, Quality, Severity


@dataclass(frozen=True, kw_only=True, slots=True)
class EventDraft:
    """An event as a driver knows it; the context turns it into a full `Event`."""

    type: str
    cls: EventClass
    payload: BaseModel
    severity: Severity = "info"
    state: AlarmState = "momentary"
    alarm_id: str | None = None
    raw_code: str | None = None
    seq: int | None = None
    quality: Quality = VALID
    time: datetime | None = None  # None: gateway receipt time


class BackoffConfig(BaseModel):
    """Capped exponential back-off with jitter, used between reconnect attempts."""

    model_config = ConfigDict(extra="forbid")

    initial_s: float = Field(0.5, gt=0)
    max_s: float = Field(30.0, gt=0)
    factor: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, le=1, description="Fraction of the delay randomized (+/-)")


class DeviceConfig(BaseModel):
    """Fields every device entry has; each driver subclasses this with its own settings."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    driver: str
    name: str | None = None
    vendor: str | None = None
    model: str | None = None
    location: Location = Location()
    enabled: bool = True
    offline_after: int = Field(3, ge=1, description="Consecutive misses before `device.offline`")
    backoff: BackoffConfig = BackoffConfig()
    simulated: bool = Field(False, description="Mark events as coming from a simulator")


class Counters(Protocol):
    """Where drivers count what they reject, drop or retry."""

    def inc(self, name: str, n: int = 1) -> None: ...


class Recorder(Protocol):
    """Receives raw driver inputs for `courtyard run --record`."""

    def record(self, device: str, channel: str, data: Any, when: datetime) -> None: ...


class DeviceContext(Protocol):
    """What the runtime gives a driver: identity, clock, counters and the way out."""

    @property
    def config(self) -> DeviceConfig:
        """The device's validated configuration (the driver's own model)."""
        ...

    @property
    def log(self) -> logging.Logger:
        """Logger named after the device."""
        ...

    @property
    def counters(self) -> Counters:
        """Counters scoped to the device."""
        ...

    def now(self) -> datetime:
        """Current gateway time (UTC); replays substitute their own clock."""
        ...

    async def emit(self, drafts: Sequence[EventDraft], *, wait_s: float | None = None) -> None:
        """Stamp and commit events to the outbox; returns once they are durable.

        Under `overflow: block`, lane-1 events wait at most `wait_s` for room, then `OutboxFull`.
        """
        ...

    async def set_online(self, online: bool, *, reason: str | None = None, misses: int = 0) -> None:
        """Report link state (push drivers); a `connectivity` event is emitted on change."""
        ...

    @property
    def recording(self) -> bool:
        """True when raw inputs are being recorded (skip building costly raw data otherwise)."""
        ...

    def record(self, channel: str, data: Any) -> None:
        """Record one raw input (no-op unless recording is on)."""
        ...

    async def shared(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        """One object per runtime for `key` (e.g. a shared HTTP listener), created on first use.

        If the object has an async `aclose()`, the runtime calls it on shutdown.
        """
        ...


class PollingDriver(abc.ABC):
    """A device the gateway asks, on a schedule."""

    def __init__(self, config: DeviceConfig, ctx: DeviceContext) -> None:
        self.config = config
        self.ctx = ctx

    @property
    @abc.abstractmethod
    def interval(self) -> float:
        """Seconds between polls."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the link; raise `DeviceUnavailable` when it cannot be opened."""

    @abc.abstractmethod
    async def read(self) -> Any:
        """Do one poll's I/O and return JSON-able raw data.

        Raise `DeviceUnavailable` (link lost: reconnect) or `DeviceProtocolError`
        (device answered with an error: count a miss, keep the link).
        """

    @abc.abstractmethod
    def decode(self, raw: Any, now: datetime) -> list[EventDraft]:
        """Turn raw data into event drafts. Pure apart from the driver's own state; never raises."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the link; must not raise."""

    def forget(self) -> None:  # noqa: B027 - optional hook
        """Drop derived state (open alarms, last status) after its events could not be committed."""


class PushDriver(abc.ABC):
    """A device that tells the gateway when something happens."""

    def __init__(self, config: DeviceConfig, ctx: DeviceContext) -> None:
        self.config = config
        self.ctx = ctx

    @abc.abstractmethod
    async def run(self) -> None:
        """Serve the device until cancelled. Raise `DeviceUnavailable` to be restarted with back-off."""

    def replay(self, channel: str, data: Any, now: datetime) -> list[EventDraft]:
        """Decode one recorded raw input (for `courtyard replay`); drivers that record implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not support replay")


Driver = PollingDriver | PushDriver


@dataclass(frozen=True, kw_only=True)
class DriverSpec:
    """A driver's registration: everything the registry and CLI need to know about it."""

    name: str
    kind: DeviceKind
    transport: str
    shape: Literal["polling", "push"]
    config: type[DeviceConfig]
    #: The driver class, or "module:Class" imported on first use, so that listing drivers or
    #: validating a config does not load every protocol stack (asyncua alone is ~40 MB).
    factory: Callable[[Any, DeviceContext], Driver] | str
    summary: str
    simulator: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def build(self, config: DeviceConfig, ctx: DeviceContext) -> Driver:
        """A driver instance for one configured device."""
        factory = self.factory
        if isinstance(factory, str):
            module, _, name = factory.partition(":")
            factory = getattr(importlib.import_module(module), name)
        driver = factory(config, ctx)
        if not isinstance(driver, PollingDriver | PushDriver):
            raise TypeError(f"driver {self.name} built a {type(driver).__name__}")
        return driver
