"""Cameras over real HTTP -> gateway -> real mosquitto and InfluxDB 1.x -> read back.

Also: the barrier keeps working while the broker is down (decisions are made and committed
locally), and what was decided then is published once the broker is back.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import parse_config
from gateway.runtime import Gateway
from schemas.event import Event
from simulators.plate_reader import Camera, CameraAuth, fake_jpeg, hikvision_plate_body, zhenshi_plate_body
from tests.helpers import MqttCollector, base_config, eventually
from tests.servers import InfluxV1, Mosquitto, free_port

TOKEN = "e2e-token-123"


def cameras(tmp_path: Path, port: int) -> list[dict[str, Any]]:
    common = {
        "driver": "http_plate_reader",
        "listen_host": "127.0.0.1",
        "listen_port": port,
        "simulated": True,
        "location": {"garage": "B1"},
        "media": {"path": str(tmp_path / "media")},
        "access": {"allowlist": ["京A12345", "沪AF12345"], "blocklist": ["粤B99999"]},
    }
    return [
        {
            "id": "lpr-entry",
            "vendor": "zhenshi",
            "direction": "entry",
            "lane": "in",
            "auth": {"mode": "token", "token": TOKEN},
            **common,
        },
        {
            "id": "lpr-exit",
            "vendor": "hikvision",
            "protocol": "hikvision",
            "direction": "exit",
            "lane": "out",
            **common,
        },
    ]


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def test_e2e_plate_reads_reach_mqtt_and_influx(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influx_v1: InfluxV1,
) -> None:
    port = free_port()
    influx = {"url": influx_v1.url, "api": "v1", "database": influx_v1.database, "batch": 50}
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, influx=influx, devices=cameras(tmp_path, port)))
    topic = "courtyard/test-site/plate_reader/#"
    async with (
        MqttCollector(mosquitto.host, mosquitto.port, topic) as col,
        Gateway(cfg) as gw,
        aiohttp.ClientSession() as session,
    ):
        await eventually(lambda: _listening(port), timeout=10)
        entry = Camera(session, f"http://127.0.0.1:{port}/lpr/lpr-entry", CameraAuth(token=TOKEN))
        exit_ = Camera(session, f"http://127.0.0.1:{port}/lpr/lpr-exit")
        opened = await entry.post(zhenshi_plate_body("京A12345", confidence=96, image=fake_jpeg(5000)))
        blocked = await entry.post(zhenshi_plate_body("粤B99999", confidence=90))
        body, ctype = hikvision_plate_body(
            "沪AF12345", color="green", confidence=93, seq=5, images=[("licensePlatePicture.jpg", fake_jpeg(3000))]
        )
        left = await exit_.post(body, ctype)
        assert opened.opened and not blocked.opened and blocked.status == 200
        assert left.status == 200

        await col.wait_for(lambda c: sum(1 for e in c.events() if e["type"] == "lpr.gate_decision") >= 3, 15)
        assert await gw.drain(15)
        events = [Event.model_validate(e) for e in col.events()]
        topics = {t for t, _ in col.messages if "/event/" in t}
        assert "courtyard/test-site/plate_reader/lpr-entry/event/lpr.plate_read" in topics
        assert "courtyard/test-site/plate_reader/lpr-exit/event/lpr.gate_decision" in topics
        decisions = {
            (e.device.id, e.payload.plate, e.payload.decision, e.severity)  # type: ignore[union-attr]
            for e in events
            if e.type == "lpr.gate_decision"
        }
        assert decisions >= {
            ("lpr-entry", "京A12345", "open", "info"),
            ("lpr-entry", "粤B99999", "deny", "major"),
            ("lpr-exit", "沪AF12345", "open", "info"),
        }
        reads = [e for e in events if e.type == "lpr.plate_read"]
        for read in reads:
            uris = read.payload.image_uri  # type: ignore[union-attr]
            assert read.device.kind == "plate_reader" and read.device.location.garage == "B1"
            assert all(u.startswith("file://") for u in uris or ())
            raw = next(p for t, p in col.messages if t.endswith("/event/lpr.plate_read") and read.id.encode() in p)
            assert b"imageFile" not in raw and len(raw) < 4000  # images never inline on MQTT

        rows = await eventually(lambda: _rows(influx_v1, len(reads)), timeout=15)
        by_id = {r["event_id"]: r for r in rows}
        for read in reads:
            row = by_id[read.id]
            assert row["device"] == read.device.id and row["type"] == "lpr.plate_read"
            assert row["plate"] == read.payload.plate  # type: ignore[union-attr]
            assert row["confidence"] == read.payload.confidence  # type: ignore[union-attr]
            assert row["quality"] == read.quality.status


async def _rows(influx: InfluxV1, wanted: int) -> list[dict[str, Any]] | None:
    rows = await influx.query("SELECT * FROM plate_reader WHERE \"type\" = 'lpr.plate_read'")
    return rows if len(rows) >= wanted else None


async def test_e2e_barrier_works_while_broker_is_down(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, devices=cameras(tmp_path, port)))
    async with Gateway(cfg) as gw, aiohttp.ClientSession() as session:
        await eventually(lambda: _listening(port), timeout=10)
        entry = Camera(session, f"http://127.0.0.1:{port}/lpr/lpr-entry", CameraAuth(token=TOKEN))
        await asyncio.to_thread(mosquitto.stop)
        try:
            result = await entry.post(zhenshi_plate_body("京A12345"))
            assert result.status == 200 and result.json() == {"Response_AlarmInfoPlate": {"info": "ok", "plateid": 1}}
        finally:
            await asyncio.to_thread(mosquitto.start)
        assert await gw.drain(20), "decisions taken while the broker was down were not delivered after"
        history = [json.loads(r.body) for r in await _history(tmp_path)]
        decision = next(e for e in history if e["type"] == "lpr.gate_decision")
        assert decision["payload"]["decision"] == "open" and decision["payload"]["plate"] == "京A12345"


async def _history(tmp_path: Path) -> list[Any]:
    from gateway.history import query

    return list(query(tmp_path / "outbox.db"))
