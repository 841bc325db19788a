"""Per-device supervision: one task per device connection, back-off, connectivity events.

A device that hangs or dies only ever costs its own task: polls run on the device's own
schedule, timeouts are the driver's, reconnects wait a capped, jittered exponential delay
that starts afresh only once the device has answered a read (connecting is not enough),
and after `offline_after` consecutive misses a `device.offline` event is emitted
(`device.online` when it answers again).

Every wait (poll ticks and back-off) goes through `clock`, so tests can swap in a clock whose
sleeps advance virtual time at once: supervision is then tested without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from gateway.backoff import backoff_delays
from gateway.driver import PollingDriver, PushDriver
from gateway.errors import DeviceProtocolError, DeviceUnavailable

if TYPE_CHECKING:
    from gateway.runtime import DeviceRuntime

__all__ = ["Clock", "LoopClock", "backoff_delays", "supervise"]  # backoff_delays: re-exported for old imports

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Where supervision reads the time and waits: the poll schedule and back-off."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep(self, delay: float) -> None:
        """Wait `delay` seconds of this clock."""
        ...


class LoopClock:
    """The event loop's own clock: real time."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)


#: The clock every supervised device runs on (tests substitute a virtual one).
clock: Clock = LoopClock()


async def _clock_sleep(delay: float) -> None:
    await clock.sleep(delay)


#: How back-off waits are slept: on `clock` unless a test substitutes a recorder.
backoff_sleep: Callable[[float], Awaitable[None]] = _clock_sleep


async def supervise(driver: PollingDriver | PushDriver, ctx: DeviceRuntime) -> None:
    """Run one device forever (until cancelled); nothing that goes wrong ends this task."""
    while True:
        try:
            if isinstance(driver, PollingDriver):
                await _supervise_polling(driver, ctx)
            else:
                await _supervise_push(driver, ctx)
        except asyncio.CancelledError:
            raise
        except Exception:  # e.g. the outbox refused a connectivity event (disk full): start over
            log.exception("%s: supervision failed; restarting it", ctx.config.id)
            ctx.counters.inc("supervisor_restarts")
            if isinstance(driver, PollingDriver):
                await _close_quietly(driver)
            await backoff_sleep(ctx.next_backoff())


async def _supervise_polling(driver: PollingDriver, ctx: DeviceRuntime) -> None:
    delays = backoff_delays(ctx.config.backoff)
    while True:
        try:
            await driver.connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await ctx.miss(f"connect failed: {exc or type(exc).__name__}")
            await _close_quietly(driver)
            await backoff_sleep(next(delays))
            continue
        # Back-off starts afresh only after a good read, not on connect: a device that accepts
        # TCP and never answers must be retried ever more slowly, not twice a second.
        answered = False
        next_at = clock.monotonic()
        while True:
            started = time.monotonic()  # real duration of the read, whatever clock schedules the polls
            try:
                raw = await driver.read()
            except asyncio.CancelledError:
                await _close_quietly(driver)
                raise
            except DeviceProtocolError as exc:
                ctx.counters.inc("protocol_errors")
                await ctx.miss(f"device error: {exc}")
            except Exception as exc:
                if not isinstance(exc, DeviceUnavailable | OSError | TimeoutError):
                    log.exception("%s: unexpected error in read()", ctx.config.id)
                    ctx.counters.inc("driver_crashes")
                ctx.counters.inc("link_errors")
                await ctx.miss(f"link lost: {exc or type(exc).__name__}")
                await _close_quietly(driver)
                await backoff_sleep(next(delays))
                break
            else:
                if not answered:
                    answered = True
                    delays = backoff_delays(ctx.config.backoff)
                    next_at = _phased(clock.monotonic(), driver.interval, ctx.config.id,
                                      ctx.poll_peers) - driver.interval
                ctx.counters.inc("polls")
                ctx.observe_poll(time.monotonic() - started)
                await ctx.poll_answered(raw, interval=driver.interval)
            next_at += driver.interval
            now = clock.monotonic()
            if next_at < now:  # fell behind (slow device): skip missed ticks rather than burst
                ctx.counters.inc("late_polls")
                next_at = now + driver.interval
            await clock.sleep(next_at - now)


#: Narrowest poll slot: devices are spread over the slots of their interval.
POLL_SLOT_S = 0.05
#: Devices per slot that the slot count aims at: enough that a slot's commit and MQTT batch
#: are shared, few enough that a slot's burst of reads and decodes stays a few milliseconds.
DEVICES_PER_SLOT = 20


def poll_slots(interval: float, peers: int) -> int:
    """How many slots an interval is cut into for `peers` devices polling at that interval.

    Each slot costs its own commit and MQTT batch, so a few devices share one slot, while
    a thousand get the interval's 50 ms slots: 10 lifts poll in one slot, 100 in 5, 1,000
    and more in 20 (at 1 s).
    """
    return max(1, min(round(interval / POLL_SLOT_S), -(-peers // DEVICES_PER_SLOT)))


def _phased(now: float, interval: float, device_id: str, peers: int = 1) -> float:
    """When a device's second poll on a link is due: in its own slot of the interval.

    Devices started together (a gateway start, a switch coming back) would otherwise poll in
    the same instant every interval: one burst of reads, decodes and commits, and the last
    poll of a thousand waits for all the others. Each device gets one of the interval's
    slots (`poll_slots`, from a hash of its id), so the work is spread evenly, while the
    devices of one slot still share commits and MQTT batches (per-transaction and per-batch
    costs are then paid once per slot, not once per device). The gap to the first poll is
    between 0.1 and 1.1 intervals.
    """
    slots = poll_slots(interval, peers)
    phase = zlib.crc32(device_id.encode()) % slots * interval / slots
    at = now + (phase - now) % interval
    return at + interval if at - now < 0.1 * interval else at


async def _supervise_push(driver: PushDriver, ctx: DeviceRuntime) -> None:
    while True:
        ctx.link_up_since_start = False
        try:
            await driver.run()
            reason = "driver stopped"
        except asyncio.CancelledError:
            raise
        except DeviceUnavailable as exc:
            reason = f"link lost: {exc}"
        except Exception as exc:
            log.exception("%s: driver crashed", ctx.config.id)
            ctx.counters.inc("driver_crashes")
            reason = f"driver crashed: {type(exc).__name__}: {exc}"
        ctx.counters.inc("link_errors")
        if ctx.link_up_since_start:  # it was working: start back-off afresh
            ctx.reset_backoff()
        await ctx.miss(reason)
        await backoff_sleep(ctx.next_backoff())


async def _close_quietly(driver: PollingDriver) -> None:
    try:
        await driver.close()
    except Exception:
        log.debug("close failed", exc_info=True)
