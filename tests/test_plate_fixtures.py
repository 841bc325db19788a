"""Everything a camera sends in normal operation goes through the gateway without a refusal.

The payloads under tests/data/plates are shaped as the vendors' protocol documents describe
them (see its manifest). Each is posted over real HTTP to a running gateway, one camera per
vendor on one shared listener; the outbox must then hold the expected reads and no
`lpr.push_rejected`, and no valid plate may come out with `rejected` quality.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.config import parse_config
from gateway.history import query
from gateway.runtime import Gateway
from tests.helpers import base_config, eventually
from tests.servers import free_port

DATA = Path(__file__).parent / "data" / "plates"
MANIFEST: list[dict[str, Any]] = yaml.safe_load((DATA / "manifest.yaml").read_text(encoding="utf-8"))
CAMERA = {"zhenshi": "lpr-zhenshi", "hikvision": "lpr-hikvision", "dahua": "lpr-dahua"}


def cameras(tmp_path: Path, port: int) -> list[dict[str, Any]]:
    common = {
        "driver": "http_plate_reader",
        "listen_host": "127.0.0.1",
        "listen_port": port,
        "media": {"path": str(tmp_path / "media")},
        "dedupe_s": 0,  # every fixture is its own read here
        "forward_is": "entry",
    }
    return [
        {"id": CAMERA["zhenshi"], "protocol": "zhenshi", "vendor": "zhenshi", **common, "forward_is": None},
        {"id": CAMERA["hikvision"], "protocol": "hikvision", "vendor": "hikvision", **common},
        {"id": CAMERA["dahua"], "protocol": "dahua", "vendor": "dahua", **common},  # fixed paths at /
    ]


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def url(port: int, entry: dict[str, Any]) -> str:
    if entry["vendor"] == "dahua":
        return f"http://127.0.0.1:{port}{entry['path']}"
    return f"http://127.0.0.1:{port}/lpr/{CAMERA[entry['vendor']]}"


def test_manifest_lists_every_fixture() -> None:
    listed = {e["file"] for e in MANIFEST}
    on_disk = {str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.is_file() and p.name != "manifest.yaml"}
    assert listed == on_disk
    assert {e["vendor"] for e in MANIFEST} == {"zhenshi", "hikvision", "dahua"}
    assert {e["kind"] for e in MANIFEST} == {"read", "heartbeat", "io"}


async def _registered(gw: Gateway, port: int, cfg: Any) -> bool:
    """Every camera's paths are on the shared listener (cameras register one by one at start)."""
    if not await _listening(port):
        return False
    listener = gw._shared.get(f"http_plate_reader:127.0.0.1:{port}")
    wanted = {p for dev in cfg.devices for p in dev.url_paths}
    return listener is not None and wanted <= set(listener.paths)


async def test_normal_operation_never_produces_push_rejected(tmp_path: Path) -> None:
    port = free_port()
    cfg = parse_config(base_config(tmp_path, devices=cameras(tmp_path, port)))
    async with Gateway(cfg) as gw, aiohttp.ClientSession() as session:
        await eventually(lambda: _registered(gw, port, cfg), timeout=10)
        for entry in MANIFEST:
            body = (DATA / entry["file"]).read_bytes()
            async with session.post(url(port, entry), data=body, headers={"Content-Type": entry["content_type"]}) as r:
                reply = await r.read()
                assert r.status == 200, (entry["file"], r.status, reply)
            if entry["vendor"] == "zhenshi" and entry["kind"] == "read":
                answer = json.loads(reply)["Response_AlarmInfoPlate"]
                plateid = json.loads(body)["AlarmInfoPlate"]["result"]["PlateResult"]["plateid"]
                assert answer["plateid"] == plateid, entry["file"]
                assert ("ContinuePushOffline" in answer) == bool(entry.get("offline")), entry["file"]
        assert await gw.drain(10)
        counters = gw.counters.snapshot()

    events = [json.loads(r.body) for r in query(tmp_path / "outbox.db")]
    lpr = [e for e in events if e["type"].startswith("lpr.")]
    assert [e for e in lpr if e["type"] == "lpr.push_rejected"] == []
    assert [e for e in lpr if e["quality"]["status"] == "rejected"] == []
    assert not any(".lpr.rejected" in name or ".lpr.refused" in name for name in counters), counters
    reads = [e for e in lpr if e["type"] == "lpr.plate_read"]
    expected = [e for e in MANIFEST if e["kind"] == "read"]
    assert len(reads) == len(expected)
    for entry, read in zip(expected, reads, strict=True):
        p = read["payload"]
        assert read["device"]["id"] == CAMERA[entry["vendor"]]
        assert (p["plate"], p["plate_color"], p["plate_type"]) == (entry["plate"], entry["color"], entry["type"]), (
            entry["file"]
        )
        assert read["quality"]["status"] == "valid", (entry["file"], read["quality"])
        if "heading" in entry:  # forward is entry in these lanes
            assert p["direction"] == ("entry" if entry["heading"] == "forward" else "exit"), entry["file"]
        assert p["is_offline_replay"] is bool(entry.get("offline")) or (
            p["is_offline_replay"] is None and not entry.get("offline")
        )
    heartbeats = sum(1 for e in MANIFEST if e["kind"] == "heartbeat")
    assert sum(n for name, n in counters.items() if name.endswith(".lpr.heartbeats")) == heartbeats
    assert [e["payload"]["io_input"] for e in lpr if e["type"] == "lpr.io_trigger"] == [3]


@pytest.mark.parametrize(
    ("vendor", "path", "body", "ctype", "status"),
    [
        ("zhenshi", None, b'{"AlarmInfoPlate": ', "application/json", 400),
        ("zhenshi", None, b"foo=1", "application/x-www-form-urlencoded", 422),
        (
            "hikvision",
            None,
            b"<EventNotificationAlert><eventType>ANPR</eventType></EventNotificationAlert>",
            "application/xml",
            422,
        ),
        ("dahua", "/NotificationInfo/TollgateInfo", b'{"Picture": {}}', "application/json", 422),
    ],
)
async def test_refusals_stay_clear_4xx_with_a_reason(
    tmp_path: Path, vendor: str, path: str | None, body: bytes, ctype: str, status: int
) -> None:
    port = free_port()
    cfg = parse_config(base_config(tmp_path, devices=cameras(tmp_path, port)))
    async with Gateway(cfg) as gw, aiohttp.ClientSession() as session:
        await eventually(lambda: _registered(gw, port, cfg), timeout=10)
        target = url(port, {"vendor": vendor, "path": path})
        async with session.post(target, data=body, headers={"Content-Type": ctype}) as r:
            assert r.status == status
            reply = await r.json()
    assert reply["error"] and reply["reason"]
