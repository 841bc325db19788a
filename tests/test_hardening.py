"""Regression tests for bad input and failure paths found in review."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from drivers.ble_access_gate import codec as ble_codec
from drivers.ble_access_gate.normalize import redact
from drivers.http_plate_reader.codec import PushRejected, _parse_xml
from drivers.http_plate_reader.config import LprTokenAuth
from drivers.http_plate_reader.listener import check_auth
from drivers.http_plate_reader.plates import rescale_confidence
from gateway.config import InfluxConfig, parse_config
from gateway.metrics import Counters
from gateway.outbox import Outbox
from gateway.recorder import JsonlRecorder
from gateway.replay import recording_header, replay_events
from gateway.runtime import Gateway
from gateway.sinks.influx import InfluxSink
from tests.helpers import base_config, eventually, fake_write_endpoint
from tests.servers import free_port
from tests.test_outbox import make_event


def test_non_utf8_auth_header_is_refused_not_crashed() -> None:
    auth = LprTokenAuth(mode="token", token="s3cret-token")  # type: ignore[call-arg]
    # aiohttp hands undecodable header bytes over as surrogates
    assert check_auth(auth, {"X-Auth-Token": "\udcff\udcfe"}, b"", 0.0) is not None


def test_huge_integer_confidence_is_a_reason_not_an_exception() -> None:
    assert rescale_confidence(10**400, "percent") == (None, ("bad_confidence",))


def test_xml_entities_refused_in_any_encoding() -> None:
    doc = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY e "A">]>'
           "<EventNotificationAlert><licensePlate>&e;</licensePlate></EventNotificationAlert>")
    with pytest.raises(PushRejected) as info:
        _parse_xml(doc.encode("utf-16"))
    assert info.value.status == 400


def test_rejected_ble_frames_never_carry_the_credential() -> None:
    card = bytes.fromhex("a1b2c3d4")
    frame = bytes(ble_codec.RECORD_HEAD_SIZE) + card + b"\x00\x00"
    assert card not in redact(frame)
    assert len(redact(frame)) == len(frame)


async def test_influx_auth_failure_is_an_outage_not_a_dead_letter(tmp_path: Path) -> None:
    answers = [401, 403, 404, 204]
    seen: list[int] = []

    async def write(request: web.Request) -> web.Response:
        status = answers[min(len(seen), len(answers) - 1)]
        seen.append(status)
        return web.Response(status=status, text="auth please" if status != 204 else "")

    counters = Counters()
    async with fake_write_endpoint(write) as url:
        sink = InfluxSink(InfluxConfig(url=url, api="v1", backoff_max_s=0.05), counters=counters)
        async with Outbox(tmp_path / "o.db", sinks=["influx"], counters=counters) as ob:
            await ob.append([make_event(i) for i in range(5)])
            task = asyncio.create_task(sink.run(ob))
            await eventually(lambda: 204 in seen, timeout=10)
            await eventually(lambda: counters.get("influx.written") == 5, timeout=5)
            task.cancel()
            await sink.stop()
    assert counters.get("influx.dead_lettered") == 0
    assert seen[:3] == [401, 403, 404]


async def test_replay_skips_and_counts_bad_lines(tmp_path: Path) -> None:
    cfg = parse_config(base_config(tmp_path, devices=[{"id": "lift-1", "driver": "modbus_elevator"}]))
    rec = tmp_path / "r.jsonl"
    recorder = JsonlRecorder(rec, recording_header(cfg, None))
    recorder.record("lift-1", "poll", {"blocks": [[0, [1] * 16]]}, datetime.now(UTC))
    recorder.close()
    assert stat.S_IMODE(os.stat(rec).st_mode) == 0o600, "recordings hold secrets"
    with rec.open("a") as fh:
        fh.write("[1, 2]\nnot json\n")
        fh.write(json.dumps({"t": "2026-01-01T00:00:00", "device": "lift-1", "channel": "poll",
                             "data": {"blocks": []}}) + "\n")
        fh.write(json.dumps({"t": datetime.now(UTC).isoformat(), "device": "lift-1", "channel": "poll",
                             "data": "garbage"}) + "\n")
    counters = Counters()
    events = [e async for e in replay_events(rec, counters=counters)]
    assert counters.get("replay.bad_lines") == 2
    assert [e.quality.status for e in events if e.type == "elevator.status"][-1] == "rejected"


async def test_a_device_that_cannot_be_built_does_not_stop_the_others(tmp_path: Path) -> None:
    port = free_port()
    from simulators.elevator import ElevatorSimulator

    cfg = parse_config(base_config(tmp_path, devices=[
        {"id": "lift-1", "driver": "modbus_elevator", "port": port, "poll_interval_s": 0.2},
        {"id": "lift-2", "driver": "modbus_elevator", "port": port, "poll_interval_s": 0.2},
    ]))
    from gateway import registry

    spec = registry.get("modbus_elevator")
    original = spec.build

    def build(config, ctx):  # type: ignore[no-untyped-def]
        if config.id == "lift-2":
            raise RuntimeError("broken driver")
        return original(config, ctx)

    object.__setattr__(spec, "build", build)
    try:
        async with ElevatorSimulator(port=port), Gateway(cfg) as gw:
            await eventually(lambda: gw.counters.get("device.lift-1.polls") > 3, timeout=5)
            assert gw.counters.get("device_build_failures") == 1
    finally:
        object.__delattr__(spec, "build")
