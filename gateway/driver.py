"""Driver SDK: what a driver is, what it is given, and what it hands back.

Every driver is two parts (docs/drivers.md has the whole contract):

* a **transport** (`PollingDriver` or `PushDriver`) that only does I/O: a polling driver's
  `read()` returns one poll's raw data, a push driver's `run()` serves the device and hands
  each raw input to `await ctx.ingest(channel, raw)`;
* a pure **decoder** (`Decoder`) with one entry point, `feed(channel, raw, now)`, that turns
  raw input into `EventDraft`s, and `forget()`, called when a commit failed.

Everything after the raw input is the runtime's, the same for polling, push and replay:
it records the input, decodes it at its receipt time, stamps the drafts into envelopes,
commits them, and calls `forget()` when the commit fails.
"""

from __future__ import annotations

import abc
import importlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from gateway.backoff import BackoffConfig
from schemas.common import VALID, AlarmState, EventClass, Location, Quality, Severity


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


class DeviceConfig(BaseModel):
    """Fields every device entry has; each driver subclasses this with its own settings."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    driver: str
    name: str | None = None
    vendor: str | None = None
    model: str | None = None
    location: Location = Location()
    tags: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]] = Field(
        default_factory=list, max_length=32, description="Free labels rules select devices by (evacuation, lobby)")
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


class Decoder(Protocol):
    """A device's pure decoding: raw input in, event drafts out, no I/O.

    `feed` is given the input's receipt time `now` (the recorded time during a replay) and
    must derive everything from its arguments and its own state, so that a replay of the same
    inputs at the same times gives the same events, alarm ids included. It never raises on
    device data: bad input becomes `rejected`-quality drafts. `forget` is called when the
    drafts of a `feed` could not be committed: drop or mark what they derived so the
    conditions behind them are reported again from the next input.
    """

    def feed(self, channel: str, raw: Any, now: datetime) -> list[EventDraft]: ...

    def forget(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Ingested:
    """What the runtime did with one raw input: the drafts decoded, and when it was received."""

    drafts: list[EventDraft]
    received: datetime


#: Awaited with what was decoded, after decoding and before the commit (e.g. to store images
#: the events point to); raising aborts the commit, and the decoder is told to forget.
BeforeCommit = Callable[[Sequence["Ingested"]], Awaitable[None]]


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

    def bind(self, decoder: Decoder) -> None:
        """Name the decoder `ingest` feeds (drivers do it by assigning `self.decoder`)."""
        ...

    @property
    def recording(self) -> bool:
        """True when inputs are recorded: raw input must then be JSON-able (bytes as hex or base64)."""
        ...

    async def ingest(self, channel: str, raw: Any, *, before_commit: BeforeCommit | None = None,
                     wait_s: float | None = None) -> Ingested:
        """Record one raw input, decode it at its receipt time, commit the drafts; durable on return.

        Raises what the commit raised, after telling the decoder to forget (except `OutboxFull`:
        under `overflow: block`, lane-1 events wait at most `wait_s` for room, then are refused,
        and no alarm is ever among them, so the decoder keeps its state).
        """
        ...

    async def ingest_many(self, inputs: Sequence[tuple[str, Any]], *, before_commit: BeforeCommit | None = None,
                          wait_s: float | None = None) -> list[Ingested]:
        """`ingest` for a burst (e.g. BLE notifications): each input at its own receipt time, one commit."""
        ...

    async def emit(self, drafts: Sequence[EventDraft], *, wait_s: float | None = None) -> None:
        """Stamp and commit drafts that come from no raw input; prefer `ingest`."""
        ...

    async def set_online(self, online: bool, *, reason: str | None = None, misses: int = 0) -> None:
        """Report link state (push drivers); a `connectivity` event is emitted on change."""
        ...

    async def shared(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        """One object per runtime for `key` (e.g. a shared HTTP listener), created on first use.

        If the object has an async `aclose()`, the runtime calls it on shutdown.
        """
        ...


class _Transport:
    """What both transport shapes share: config, context, and the decoder `ingest` feeds."""

    _decoder: Decoder | None = None

    def __init__(self, config: DeviceConfig, ctx: DeviceContext) -> None:
        self.config = config
        self.ctx = ctx

    @property
    def decoder(self) -> Decoder:
        """The device's pure decoder; assigning it also binds it to the context."""
        if self._decoder is None:
            raise TypeError(f"{type(self).__name__} has no decoder")
        return self._decoder

    @decoder.setter
    def decoder(self, decoder: Decoder) -> None:
        self._decoder = decoder
        self.ctx.bind(decoder)


class _DecodeAdapter:
    """The decoder of a polling driver in the older shape (`decode(raw, now)` and `forget()`)."""

    def __init__(self, driver: PollingDriver) -> None:
        self.driver = driver

    def feed(self, channel: str, raw: Any, now: datetime) -> list[EventDraft]:
        return self.driver.decode(raw, now)

    def forget(self) -> None:
        self.driver.forget()


class PollingDriver(_Transport, abc.ABC):
    """A device the gateway asks, on a schedule: the supervisor ingests each `read()` on channel `poll`."""

    def __init__(self, config: DeviceConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        if type(self).decode is not PollingDriver.decode:  # older shape: decode() is its decoder
            self.decoder = _DecodeAdapter(self)

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

    def decode(self, raw: Any, now: datetime) -> list[EventDraft]:
        """Older shape, still supported: set `self.decoder` instead."""
        raise NotImplementedError

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the link; must not raise."""

    def forget(self) -> None:
        """Older shape: drop derived state after its events could not be committed."""


class PushDriver(_Transport, abc.ABC):
    """A device that tells the gateway when something happens: `run()` hands inputs to `ctx.ingest`."""

    @abc.abstractmethod
    async def run(self) -> None:
        """Serve the device until cancelled. Raise `DeviceUnavailable` to be restarted with back-off."""


Driver = PollingDriver | PushDriver


@dataclass(frozen=True, kw_only=True)
class DriverSpec:
    """A driver's registration: everything the registry and CLI need to know about it."""

    name: str
    #: The device kind (`device.kind` of its events); a plugin may add one.
    kind: str
    transport: str
    shape: Literal["polling", "push"]
    config: type[DeviceConfig]
    #: The driver class, or "module:Class" imported on first use, so that listing drivers or
    #: validating a config does not load every protocol stack (asyncua alone is ~40 MB).
    factory: Callable[[Any, DeviceContext], Driver] | str
    summary: str
    #: The payload model of its events: a pydantic model with `kind: Literal["<discriminator>"]`.
    #: The registry builds the event envelope's payload union from these.
    payload: type[BaseModel] | None = None
    #: Name of its simulator for `courtyard simulate NAME`, and the module serving it (imported
    #: only when used; it exposes `add_arguments(parser)` and `async serve(args)`).
    simulator: str | None = None
    simulator_module: str | None = None
    #: "module:Class" of the `KindAdapter` that puts its simulators in scenarios (kind-wide).
    scenario_adapter: str | None = None
    #: "module:Class" of the driver's decoder, built as `Class(config, ctx)`: what `courtyard
    #: replay` feeds, without building (or importing) the transport. None: replay builds the driver.
    decoder: str | None = None
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

    def build_decoder(self, config: DeviceConfig, ctx: DeviceContext) -> Decoder:
        """The decoder alone (replay): from `decoder` when declared, else the driver's own."""
        if self.decoder is None:
            return self.build(config, ctx).decoder
        module, _, name = self.decoder.partition(":")
        decoder: Decoder = getattr(importlib.import_module(module), name)(config, ctx)
        return decoder
