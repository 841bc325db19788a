"""`courtyard run` uses asyncio's loop unless told to use uvloop (the `fast` extra)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop

from gateway.config import parse_config
from gateway.runtime import Gateway, loop_factory, run_fast
from tests.helpers import base_config


def test_asyncio_by_default_and_uvloop_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COURTYARD_LOOP", raising=False)
    assert loop_factory() is None  # the listener's flood guard is tested on asyncio's loop
    monkeypatch.setenv("COURTYARD_LOOP", "uvloop")
    assert loop_factory() is uvloop.new_event_loop


def test_a_gateway_runs_and_stops_on_uvloop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURTYARD_LOOP", "uvloop")
    cfg = parse_config(base_config(tmp_path))

    async def main() -> str:
        async with Gateway(cfg) as gw:
            assert await gw.drain(5)
        return type(asyncio.get_running_loop()).__module__

    assert run_fast(main()).startswith("uvloop")
    assert (tmp_path / "outbox.db").exists()
