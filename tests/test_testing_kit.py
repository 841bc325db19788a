"""The public test kit itself: fake context, controllable clock, decoder runs over recorded input."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import yaml

from drivers.modbus_elevator.config import ModbusElevatorConfig
from drivers.modbus_elevator.decoder import ElevatorDecoder
from drivers.modbus_elevator.regmap import load_map
from gateway.driver import EventDraft
from gateway.testing import CASES_DIR, T0, FakeClock, FakeContext, feed_all, read_inputs
from schemas.common import ConnectivityPayload


class Counting:
    """A decoder that reports each input's receipt time and remembers whether it was told to forget."""

    def __init__(self) -> None:
        self.forgotten = 0

    def feed(self, channel: str, raw: Any, now: datetime) -> list[EventDraft]:
        return [EventDraft(type="device.online", cls="connectivity", payload=ConnectivityPayload(online=True))]

    def forget(self) -> None:
        self.forgotten += 1


def config() -> ModbusElevatorConfig:
    return ModbusElevatorConfig(id="lift-1", driver="modbus_elevator")


async def test_fake_context_clock_commit_failure_and_recording() -> None:
    clock = FakeClock()
    ctx = FakeContext(config(), clock=clock, recording=True)
    decoder = Counting()
    ctx.bind(decoder)
    await ctx.ingest("poll", {"n": 1})
    clock.advance(2.5)
    done = await ctx.ingest("poll", {"n": 2})
    assert [d.time for d in ctx.emitted] == [T0, clock()] and done.received == clock()
    assert [(c, r) for c, r, _ in ctx.recorded] == [("poll", {"n": 1}), ("poll", {"n": 2})]
    ctx.fail_next = OSError("disk full")
    with pytest.raises(OSError):
        await ctx.ingest("poll", {"n": 3})
    assert decoder.forgotten == 1 and len(ctx.emitted) == 2  # nothing committed, decoder told to forget


def test_feed_all_runs_a_real_decoder_over_recorded_input() -> None:
    """The elevator's trapped case, fed to its decoder alone: the alarm is raised and cleared at recorded times."""
    case = CASES_DIR / "modbus_elevator" / "passenger_trapped"
    cfg_data = yaml.safe_load((case / "config.yaml").read_text())["devices"][0]
    cfg = ModbusElevatorConfig.model_validate(cfg_data)
    ctx = FakeContext(cfg)
    decoder = ElevatorDecoder(cfg, ctx, load_map(cfg.map))
    lines = [r for r in read_inputs(case / "input.jsonl")
             if r["channel"] == "poll"]
    drafts = feed_all(decoder, [(r["channel"], r["data"], datetime.fromisoformat(r["t"])) for r in lines])
    trapped = [d for d in drafts if d.type == "elevator.passenger_trapped"]
    assert [d.state for d in trapped] == ["raised", "cleared"] and trapped[0].alarm_id == trapped[1].alarm_id
    assert all(d.time is not None for d in drafts)
