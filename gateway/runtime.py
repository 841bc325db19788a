"""The gateway process: outbox, sinks and one supervised task per device, wired in one place."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from gateway import registry
from gateway.alarms import RestartConfirmation, restart_clear
from gateway.backoff import backoff_delays
from gateway.config import GatewayConfigBase
from gateway.driver import BeforeCommit, Decoder, DeviceConfig, EventDraft, Ingested, PollingDriver, Recorder
from gateway.errors import OutboxError, OutboxFull
from gateway.ids import uuid7, uuid7_from
from gateway.metrics import Counters
from gateway.outbox import Outbox, lane_of
from gateway.sinks.base import Sink
from gateway.supervisor import supervise
from schemas.common import ConnectivityPayload, DeviceRef
from schemas.event import Event

log = logging.getLogger(__name__)

T = TypeVar("T")
LINK_CHANNEL = "link"
POLL_CHANNEL = "poll"

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Gateway wall clock, UTC."""
    return datetime.now(UTC)


class EventFactory:
    """Turns drafts into envelopes for one device."""

    def __init__(self, *, site: str, gateway: str, device: DeviceRef, simulated: bool, scenario: str | None) -> None:
        self.site = site
        self.gateway = gateway
        self.device = device
        self.simulated = simulated
        self.scenario = scenario
        self.model = registry.event_model()  # the envelope for every registered kind and payload

    def build(self, draft: EventDraft, received: datetime) -> Event:
        """One full event; raises ValidationError when the driver produced something invalid."""
        return self.model.model_validate({
            "id": uuid7(),
            "time": draft.time or received,
            "received": received,
            "site": self.site,
            "gateway": self.gateway,
            "device": self.device,
            "class": draft.cls,
            "type": draft.type,
            "severity": draft.severity,
            "state": draft.state,
            "alarm_id": draft.alarm_id,
            "raw_code": draft.raw_code,
            "seq": draft.seq,
            "quality": draft.quality,
            "simulated": self.simulated,
            "scenario": self.scenario,
            "payload": draft.payload,
        })


def connectivity_draft(online: bool, *, reason: str | None, misses: int, alarm_id: str | None) -> EventDraft:
    """`device.offline` (raised) and the `device.online` that clears it, paired by `alarm_id`.

    The first `device.online` of a device, with nothing to clear, is momentary.
    """
    return EventDraft(
        type="device.online" if online else "device.offline",
        cls="connectivity",
        severity="info" if online else "major",
        state="raised" if not online else ("cleared" if alarm_id else "momentary"),
        alarm_id=alarm_id,
        payload=ConnectivityPayload(online=online, misses=misses, reason=reason),
    )


#: How long a driver's status and ordinary events may wait to share a commit with other
#: devices' (see `Outbox.append`): a thousand polls a second spread over the second commit in
#: about a hundred transactions, not a thousand. Alarms, faults, connectivity and commands
#: (lane 0) commit at once.
COMMIT_LINGER_S = 0.01

STOPPED_REASON = "gateway_stopped"
#: How many times stop() cancels a device task that keeps running (0.2 s apart).
STOP_CANCEL_ATTEMPTS = 50


def stopped_draft() -> EventDraft:
    """A device's availability once the gateway stopped cleanly: offline, momentary (no alarm)."""
    return EventDraft(type="device.offline", cls="connectivity", severity="info", state="momentary",
                      payload=ConnectivityPayload(online=False, misses=0, reason=STOPPED_REASON))


def device_ref(config: DeviceConfig, kind: str) -> DeviceRef:
    """The envelope's device block for a configured device."""
    return registry.device_ref_model()(
        id=config.id, kind=kind, driver=config.driver, vendor=config.vendor, model=config.model,
        location=config.location,
    )


class DeviceRuntime:
    """The `DeviceContext` given to one driver: everything that happens after a raw input.

    `ingest` is the one path of every input, live or replayed: record it, decode it at its
    receipt time, stamp the drafts, commit them, and make the decoder forget when the commit
    fails. Replays use the same class with the recording's clock and a collecting sink.
    """

    def __init__(
        self,
        config: DeviceConfig,
        factory: EventFactory,
        sink: Callable[..., Awaitable[None]],  # Outbox.append(events, *, wait_s=None)
        *,
        counters: Counters,
        shared: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]],
        recorder: Recorder | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.config = config
        self.factory = factory
        self._sink = sink
        self.counters = counters
        self._shared = shared
        self._recorder = recorder
        self.recording = recorder is not None
        self._clock = clock
        self.decoder: Decoder | None = None
        self.log = logging.getLogger(f"courtyard.device.{config.id}")
        self.online: bool | None = None
        self._offline_alarm: str | None = None
        self.misses = 0
        self.link_up_since_start = False
        self._delays = backoff_delays(config.backoff)
        self._emit_problem: str | None = None  # why the last poll's events were refused
        #: Devices polling at this device's interval (this one included): sizes its poll slots.
        self.poll_peers = 1
        #: Told the duration of every answered poll (the /metrics histogram), when set.
        self.poll_observer: Callable[[float], None] | None = None

    # DeviceContext -----------------------------------------------------------------------

    def now(self) -> datetime:
        """Gateway time (the recording's during a replay)."""
        return self._clock()

    def bind(self, decoder: Decoder) -> None:
        """The decoder `ingest` feeds."""
        self.decoder = decoder

    async def ingest(self, channel: str, raw: Any, *, before_commit: BeforeCommit | None = None,
                     wait_s: float | None = None) -> Ingested:
        """Record, decode at receipt time, stamp, commit; on a failed commit the decoder forgets.

        A decoder crash is a bug: counted and logged, the input decodes to nothing. What the
        commit (or `before_commit`) raises is raised again, after `forget()`; except
        `OutboxFull` (only lane-1 events, never alarms, wait `wait_s` for room and are refused
        under `overflow: block`): alarm derivation is intact and goes on, so nothing is forgotten.
        """
        (done,) = await self.ingest_many([(channel, raw)], before_commit=before_commit, wait_s=wait_s)
        return done

    async def ingest_many(self, inputs: Sequence[tuple[str, Any]], *, before_commit: BeforeCommit | None = None,
                          wait_s: float | None = None) -> list[Ingested]:
        """`ingest` for a burst: each input recorded and decoded at its own receipt time, one commit."""
        done: list[Ingested] = []
        events: list[Event] = []
        for channel, raw in inputs:
            now = self._clock()
            if self._recorder is not None:
                self._recorder.record(self.config.id, channel, raw, now)
            drafts = self._decode(channel, raw, now)
            done.append(Ingested(drafts, now))
            events += self._stamp(drafts, now)
        if before_commit is None and not events:
            return done
        try:
            if before_commit is not None:
                await before_commit(done)
            if events:
                await self._sink(events, wait_s=wait_s)
                self.counters.inc("events", len(events))
        except OutboxFull:
            raise
        except BaseException:
            if self.decoder is not None and any(channel != LINK_CHANNEL for channel, _ in inputs):
                self.decoder.forget()
            raise
        return done

    def _decode(self, channel: str, raw: Any, now: datetime) -> list[EventDraft]:
        try:
            if channel == LINK_CHANNEL:  # the runtime's own input: link state, as set_online saw it
                return [connectivity_draft(bool(raw["online"]), reason=raw.get("reason"),
                                           misses=int(raw.get("misses", 0)), alarm_id=raw.get("alarm_id"))]
            if self.decoder is None:
                raise TypeError(f"no decoder bound for device {self.config.id}")
            return self.decoder.feed(channel, raw, now)
        except Exception:
            self.counters.inc("decoder_crashes")
            self.log.exception("decoder crashed on %s input %.200r", channel, raw)
            return []

    def _stamp(self, drafts: Sequence[EventDraft], received: datetime) -> list[Event]:
        """Envelopes for drafts; invalid drafts (driver bugs) are counted, logged and skipped."""
        events = []
        for draft in drafts:
            try:
                events.append(self.factory.build(draft, received))
            except ValidationError as exc:
                self.counters.inc("invalid_drafts")
                self.log.error("driver produced an invalid %s event: %s", draft.type, exc)
        return events

    async def emit(
        self, drafts: Sequence[EventDraft], *, received: datetime | None = None, wait_s: float | None = None
    ) -> None:
        """Stamp and commit drafts that come from no recorded input (prefer `ingest`).

        `wait_s` bounds the wait for room under `overflow: block` (then `OutboxFull`).
        """
        events = self._stamp(drafts, received or self.now())
        if events:
            await self._sink(events, wait_s=wait_s)
            self.counters.inc("events", len(events))

    async def set_online(self, online: bool, *, reason: str | None = None, misses: int = 0) -> None:
        """Record link state; emit a connectivity event when it changes."""
        if online:
            self.link_up_since_start = True
            self.misses = 0
        if online == self.online:
            return
        self.online = online
        if online:
            alarm_id, self._offline_alarm = self._offline_alarm, None
        else:
            alarm_id = self._offline_alarm = uuid7_from(self._clock(), self.config.id, "link")
        # Link changes are inputs too: recorded, so a replay reproduces the connectivity events.
        await self.ingest(LINK_CHANNEL, {"online": online, "reason": reason, "misses": misses, "alarm_id": alarm_id})

    async def shared(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        """Runtime-wide shared object."""
        return await self._shared(key, factory)

    # Supervisor hooks --------------------------------------------------------------------

    async def miss(self, reason: str) -> None:
        """One failed poll, connect or heartbeat."""
        self.misses += 1
        self.counters.inc("misses")
        self.log.debug("miss %d: %s", self.misses, reason)
        if self.misses >= self.config.offline_after and self.online is not False:
            self.log.warning("offline after %d misses: %s", self.misses, reason)
            await self.set_online(False, reason=reason, misses=self.misses)

    async def answered(self) -> None:
        """A successful poll."""
        self.misses = 0
        if self.online is not True:
            await self.set_online(True)

    async def poll_answered(self, raw: Any, *, interval: float | None = None) -> None:
        """A poll succeeded: report online, then ingest its raw data on channel `poll`.

        A commit that fails is counted and logged, once per episode: the decoder has
        forgotten (unless the outbox was only full), so the conditions behind these events
        are reported again from the next poll on.
        """
        await self.answered()  # first: `device.online` precedes what the poll decodes, live and replayed
        try:
            # Under `overflow: block`, waiting at most one interval keeps polling, and so
            # alarm derivation, going: lane-0 events never wait for room.
            await self.ingest(POLL_CHANNEL, raw, wait_s=interval)
        except OutboxError as exc:
            if self._emit_problem is None:  # once per episode, not a traceback per poll
                self.log.warning("events of this poll were not accepted: %s", exc)
            self._emit_problem = str(exc)
            # OutboxFull refuses only lane-1 events: the decoder keeps its state (alarm derivation
            # goes on). Any other failure: the decoder has forgotten, and reports again.
            self.counters.inc("emit_refused_full" if isinstance(exc, OutboxFull) else "emit_failures")
        else:
            if self._emit_problem is not None:
                self.log.warning("events accepted again (last refusal: %s)", self._emit_problem)
            self._emit_problem = None

    def observe_poll(self, seconds: float) -> None:
        """An answered poll took `seconds` (the supervisor times `read()`)."""
        if self.poll_observer is not None:
            self.poll_observer(seconds)

    def reset_backoff(self) -> None:
        """Start the back-off sequence again (after a link that worked)."""
        self._delays = backoff_delays(self.config.backoff)

    def next_backoff(self) -> float:
        """Next reconnect delay."""
        return next(self._delays)


class Gateway:
    """A running gateway; use as `async with Gateway(config) as gw:`."""

    def __init__(
        self,
        config: GatewayConfigBase,
        *,
        recorder: Recorder | None = None,
        scenario: str | None = None,
        sinks: Sequence[Sink] | None = None,
        reconcile: bool = True,
    ) -> None:
        from gateway.sinks import build_sinks

        self.config = config
        self.counters = Counters()
        self.sinks: list[Sink] = list(sinks) if sinks is not None else build_sinks(config, self.counters)
        oc = config.outbox
        self.outbox = Outbox(
            oc.path, sinks=[s.name for s in self.sinks], max_events=oc.max_events, overflow=oc.overflow,
            history_days=oc.history_days, synchronous=oc.synchronous, batch_max=oc.batch_max,
            counters=self.counters,
        )
        self.recorder = recorder
        self.scenario = scenario
        self.devices: dict[str, DeviceRuntime] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._shared: dict[str, Any] = {}
        self._shared_lock = asyncio.Lock()
        self._confirm: RestartConfirmation | None = None
        self.commands: Any = None  # gateway.commands.CommandService, once started
        self.rules: Any = None  # gateway.rules.RuleService, once started (when the config has rules)
        self.alarm_book: Any = None  # gateway.alarm_book.AlarmBook, once started (alarms.lifecycle)
        #: Bring the broker's retained topics in line with this config (off when the gateway
        #: runs none of its devices, as `courtyard replay --config` does).
        self.reconcile = reconcile
        from gateway.ops import GatewayMetrics, OpsServer

        #: Prometheus registry of this gateway (`ops.port` serves it; features add their metrics here).
        self.metrics = GatewayMetrics(self)
        self.ops_server: OpsServer | None = None
        self.console: Any = None  # gateway.console.server.ConsoleServer, when the config has `console:`

    async def _get_shared(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        async with self._shared_lock:
            if key not in self._shared:
                self._shared[key] = await factory()
            return self._shared[key]

    async def start(self) -> None:
        """Open the outbox, close alarms a previous run left open, start sinks, then devices."""
        await self.outbox.open()
        await self._close_stale_alarms()  # before any driver runs: they emit through self._admit
        if self.config.alarms.lifecycle.enabled and self.reconcile:
            from gateway.alarm_book import AlarmBook

            self.alarm_book = AlarmBook(self)
            await self.alarm_book.start()  # follows the committed stream before the first driver event
        shared_console = None
        if self.config.console is not None and self.reconcile:  # a replay (`courtyard replay -c`) serves none
            from gateway.console.server import ConsoleServer

            try:
                self.console = ConsoleServer(self, self.config.console)
            except BaseException:
                if self.alarm_book is not None:
                    await self.alarm_book.stop()
                await self.outbox.close()
                raise
            await self.console.live.attach()  # before any driver runs: the console sees every event
            if self.config.ops.port is not None and self.config.console.port in (None, self.config.ops.port):
                shared_console = self.console
        if self.config.ops.port is not None:
            from gateway.ops import start_ops

            try:  # a configured ops port that cannot be served is fatal: the operator would be blind
                self.ops_server = await start_ops(self, shared_console)
            except BaseException:
                if self.console is not None:
                    self.console.live.stop()
                await self.outbox.close()
                raise
        self._bind_sinks()
        for sink in self.sinks:
            self._spawn(sink.run(self.outbox), f"sink-{sink.name}")
        polling: list[tuple[DeviceRuntime, float]] = []
        for dev in self.config.devices:
            if not dev.enabled:
                continue
            try:  # one misconfigured device or unusable driver plugin must not keep the others from running
                spec = registry.get(dev.driver)
                if (reason := registry.problems().get(dev.driver)) is not None:
                    raise RuntimeError(f"driver {dev.driver} is unusable: {reason}")
                factory = EventFactory(
                    site=self.config.site, gateway=self.config.gateway_id, device=device_ref(dev, spec.kind),
                    simulated=dev.simulated, scenario=self.scenario,
                )
                ctx = DeviceRuntime(
                    dev, factory, self._admit, counters=self.counters.child(f"device.{dev.id}."),
                    shared=self._get_shared, recorder=self.recorder,
                )
                driver = spec.build(dev, ctx)
                ctx.poll_observer = self.metrics.poll_duration.labels(dev.id).observe
            except Exception:
                self.counters.inc("device_build_failures")
                log.exception("device %s could not be started; the others run", dev.id)
                continue
            self.devices[dev.id] = ctx
            if isinstance(driver, PollingDriver):
                polling.append((ctx, driver.interval))
            self._spawn(supervise(driver, ctx), f"device-{dev.id}")
        # Before any device task runs (no await since they were spawned): the slot plan sees them all.
        peers = Counter(interval for _, interval in polling)
        for ctx, interval in polling:
            ctx.poll_peers = peers[interval]
        await self._start_grace()
        await self._start_commands()
        await self._start_rules()
        if self.console is not None:
            await self._start_console()
        log.info("gateway %s started: %d device%s, sinks: %s", self.config.gateway_id, len(self.devices),
                 "" if len(self.devices) == 1 else "s",
                 ", ".join(s.name for s in self.sinks) or "none (local history only)")

    async def _start_commands(self) -> None:
        """The command journal (resuming what a previous run left open) and its MQTT requests."""
        if not self.config.commands.enabled or not self.reconcile:  # a replay runs none of its devices
            return
        from gateway.command_bus import CommandBus
        from gateway.commands import CommandService

        self.commands = CommandService(self)
        bus = self.commands.bus = CommandBus(self.config.mqtt, self.commands) if self.config.mqtt.enabled else None
        await self.commands.start()  # the journal exists before the first request can arrive
        if bus is not None:
            bus.alarm_book = self.alarm_book
            self._spawn(bus.run(), "commands-mqtt")

    async def _start_rules(self) -> None:
        """Linkage rules, after the command journal (their actions are commands)."""
        if not self.reconcile:  # a replay acts on nothing
            return
        from gateway.rules import RuleService, load_rules

        rules = load_rules(self.config)
        if not rules:
            return
        self.rules = RuleService(self, rules)
        await self.rules.start()
    async def _start_console(self) -> None:
        """Serve the duty console (its own listener, or the ops one); a console that cannot bind is fatal."""
        assert self.console is not None
        try:
            if self.console.shared:
                await self.console.start_shared()
            else:
                await self.console.start()
        except BaseException:
            await self.stop()
            raise

    async def _close_stale_alarms(self) -> None:
        """Take over the alarms the previous run raised and never cleared.

        Alarm state lives in the drivers, so a restart forgets it: without this, the platform
        would keep those alarms (and their retained topics) active forever. Only alarms of
        devices in this config are touched (an outbox may hold other configs' devices). With
        `alarms.restart_grace_s` > 0 they wait for their drivers to confirm them (see
        `RestartConfirmation`); unconfirmed ones, and all of them when the grace is 0, are
        cleared with their own `alarm_id` and quality `suspect` (reason `gateway_restarted`).
        """
        model = registry.event_model()
        mine = {d.id for d in self.config.devices}
        previous = []
        for body in await self.outbox.open_alarms():
            try:
                raised = model.model_validate_json(body)
            except ValidationError:
                continue
            if raised.device.id in mine:
                previous.append(raised)
        if self.config.alarms.restart_grace_s > 0:
            self._confirm = RestartConfirmation(previous)
        else:
            await self._clear_unconfirmed(previous)

    def _bind_sinks(self) -> None:
        kinds: dict[str, str] = {}
        for dev in self.config.devices:
            try:
                kinds[dev.id] = registry.get(dev.driver).kind
            except Exception:  # an unknown driver is reported where the device is built
                continue
        for sink in self.sinks:
            sink.bind(kinds, reconcile=self.reconcile)

    async def _start_grace(self) -> None:
        """Once devices are built: clear at once what no driver can confirm, time the rest."""
        confirm = self._confirm
        if confirm is None:
            return
        idle = {d.id for d in self.config.devices} - set(self.devices)  # disabled, or failed to build
        await self._clear_unconfirmed(confirm.take_devices(idle))
        if confirm.pending():
            log.info("%d alarm(s) left open by the previous run wait %.0f s for their drivers to confirm them",
                     len(confirm.pending()), self.config.alarms.restart_grace_s)
            self._spawn(self._end_grace(confirm), "alarms-grace")
        else:
            confirm.open = False

    async def _end_grace(self, confirm: RestartConfirmation) -> None:
        await asyncio.sleep(self.config.alarms.restart_grace_s)
        await self._clear_unconfirmed(confirm.expire())

    async def _clear_unconfirmed(self, alarms: Sequence[Event]) -> None:
        if not alarms:
            return
        now = utcnow()
        log.warning("clearing %d alarm(s) left open by the previous run", len(alarms))
        self.counters.inc("stale_alarms_cleared", len(alarms))
        await self.outbox.append([restart_clear(ev, now) for ev in alarms])

    async def _admit(self, events: Sequence[Event], **append: Any) -> None:
        """Every driver event passes here on its way to `outbox.append` (restart confirmation)."""
        confirm = self._confirm
        if confirm is not None:
            before = confirm.confirmed
            events = confirm.admit(events)
            self.counters.inc("stale_alarms_confirmed", confirm.confirmed - before)
        urgent = any(lane_of(e.class_) == 0 for e in events)
        await self.outbox.append(events, linger=0.0 if urgent else COMMIT_LINGER_S, **append)

    def _stopped_availability(self) -> list[Event]:
        """Each device's availability for a clean stop: `device.offline`, reason `gateway_stopped`.

        Handed to the sinks (MQTT retains it), not committed: nothing happened to the devices,
        the gateway only stopped watching them; the history keeps what they last reported.
        """
        now = utcnow()
        return [ctx.factory.build(stopped_draft(), now) for ctx in self.devices.values()]

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_ended)
        self._tasks.append(task)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """Device and sink tasks run until stop(); an early end is a bug worth shouting about."""
        if not task.cancelled() and task.exception() is not None:
            self.counters.inc("task_failures")
            log.error("task %s ended: %r", task.get_name(), task.exception(), exc_info=task.exception())

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every sink has delivered everything accepted so far (MQTT: and published the
        retained states merged from it at once, not at the end of their interval); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            backlog = await self.outbox.backlog()
            if not any(backlog.values()) and all([await sink.flush() for sink in self.sinks]):
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self, *, flush_timeout: float = 5.0) -> None:
        """Stop devices, let sinks flush what they can, close everything."""
        device_tasks = [t for t in self._tasks if t.get_name().startswith("device-")]
        # A cancellation can be swallowed by a protocol library (one landing inside a pymodbus
        # request comes back as a link error, and the supervisor polls on): cancel again until
        # each task has ended, so stop() cannot wait forever for one.
        for _ in range(STOP_CANCEL_ATTEMPTS):
            pending = [t for t in device_tasks if not t.done()]
            if not pending:
                break
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=0.2)
        stuck = [t.get_name() for t in device_tasks if not t.done()]
        if stuck:
            log.error("device tasks did not stop: %s", ", ".join(stuck))
        await asyncio.gather(*(t for t in device_tasks if t.done()), return_exceptions=True)
        for key, obj in list(self._shared.items()):
            aclose = getattr(obj, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("closing shared %s failed", key)
        if self.rules is not None:
            await self.rules.stop()
        if self.commands is not None:
            await self.commands.stop()
        if self.alarm_book is not None:
            await self.alarm_book.wait_idle()
            await self.alarm_book.stop()
        if self.sinks:
            await self.drain(flush_timeout)
        stopped = self._stopped_availability()
        for sink in self.sinks:
            sink.devices_stopped(stopped)
            await sink.stop()
        sink_tasks = [t for t in self._tasks if not t.get_name().startswith("device-")]
        for t in sink_tasks:
            t.cancel()
        await asyncio.gather(*sink_tasks, return_exceptions=True)
        self._tasks.clear()
        if self.console is not None:
            await self.console.aclose()
        if self.ops_server is not None:
            await self.ops_server.aclose()
            self.ops_server = None
        await self.outbox.close()
        totals = sorted((k, v) for k, v in self.counters.snapshot().items() if not k.startswith("device."))
        width = max((len(k) for k, _ in totals), default=0)
        log.info("gateway stopped; counters:%s", "".join(f"\n  {k:<{width}}  {v}" for k, v in totals) or " none")

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_until_signal(gw: Gateway) -> None:
    """Run `gw` until SIGINT or SIGTERM, then stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with gw:
        settle_gc()
        await stop.wait()
        log.info("signal received: stopping")


#: Collector thresholds for a running gateway (Python's defaults: 700, 10, 10).
GC_THRESHOLDS = (20_000, 20, 10)


def settle_gc() -> None:
    """Tune the cycle collector for a long-running gateway, once it has started.

    Every poll allocates and frees thousands of short-lived objects (frames, models, dicts);
    with the default thresholds the collector ran some 50 times a second at a thousand lifts,
    and its full passes over everything the start had built (configuration, drivers, models)
    stopped the loop for up to 200 ms: 15 % of the CPU and most of the poll jitter
    (docs/architecture.md, "Scale and performance"). What the start built lives as long as the
    process, so it is frozen out of every future pass, and the young generation is collected
    less often. Objects still die by reference count at once; only cycles wait a little longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when asked for (`COURTYARD_LOOP=uvloop`, `pip install courtyard[fast]`).

    asyncio's loop is the default: under a descriptor flood uvloop's accept path turned away
    every connection, cameras' pushes included, where asyncio's keeps the HTTP listener's
    guard working (tests/test_listener_slow_clients.py), and uvloop measured within noise of
    it on the gateway's CPU. Opt in where the listener is not exposed.
    """
    if os.environ.get("COURTYARD_LOOP", "").lower() != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        log.warning("COURTYARD_LOOP=uvloop but uvloop is not installed (pip install courtyard[fast]);"
                    " using asyncio's loop")
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_fast(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the fastest event loop installed (see `loop_factory`)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
