"""Recordings: secrets redacted from the header, file mode 0600, replay still reproduces events."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from gateway.config import parse_config
from gateway.history import query
from gateway.recorder import JsonlRecorder
from gateway.replay import REDACTED, recording_header, replay_events
from gateway.runtime import Gateway
from schemas.common import Location
from simulators.scenario.access_gate import AccessGateAdapter
from simulators.scenario.model import ScenarioDevice
from tests.helpers import base_config, eventually
from tests.servers import free_port

SECRETS = {
    "mqtt": "mqtt-password-7f3a9c",
    "influx": "influx-token-51be02",
    "token": "camera-token-c0ffee11",
    "barrier": "isapi-password-9d8e7f",
    "hmac": "hmac-secret-a1b2c3d4",
    "opcua": "opcua-password-4455aa",
    "url": "urlpass-0099",
}


def secret_config(tmp_path: Path, gate_cfgs: list[dict[str, object]]) -> dict[str, object]:
    plate = {"id": "lpr-1", "driver": "http_plate_reader", "listen_host": "127.0.0.1", "listen_port": free_port(),
             "auth": {"mode": "token", "token": SECRETS["token"]},
             "media": {"path": str(tmp_path / "media")},
             "barrier": {"url": f"http://admin:{SECRETS['url']}@127.0.0.1:9", "password": SECRETS["barrier"]}}
    plate2 = {"id": "lpr-2", "driver": "http_plate_reader", "listen_host": "127.0.0.1", "listen_port": free_port(),
              "auth": {"mode": "hmac", "secret": SECRETS["hmac"]}, "media": {"path": str(tmp_path / "media")}}
    pa = {"id": "pa-1", "driver": "opcua_pa", "url": f"opc.tcp://127.0.0.1:{free_port()}",
          "username": "op", "password": SECRETS["opcua"], "enabled": False}
    cfg = base_config(tmp_path, site="rec-site", devices=[*gate_cfgs, plate, plate2, pa])
    cfg["mqtt"] = {"enabled": False, "username": "gw", "password": SECRETS["mqtt"]}
    cfg["influx"] = {"token": SECRETS["influx"]}
    return cfg


async def test_recording_redacts_secrets_keeps_mode_0600_and_replays(tmp_path: Path) -> None:
    gate = ScenarioDevice(id="gate-r", kind="access_gate", location=Location(building="2"),
                          settings={"rate": 0, "heartbeat_s": 5, "connect_timeout_s": 5, "backoff_max_s": 5})
    adapter = AccessGateAdapter([gate], seed=5, speed=10.0, scenario="rec")
    rec = tmp_path / "rec.jsonl"
    rec.write_text("an older file, world-readable\n")
    os.chmod(rec, 0o644)
    await adapter.start()
    try:
        cfg = parse_config(secret_config(tmp_path, adapter.device_configs()), source="test")
        recorder = JsonlRecorder(rec, recording_header(cfg, "rec"))
        assert stat.S_IMODE(os.stat(rec).st_mode) == 0o600, "an existing file keeps a wider mode"
        try:
            async with Gateway(cfg, recorder=recorder, scenario="rec"):
                db = tmp_path / "outbox.db"
                await eventually(lambda: any(json.loads(r.body)["type"] == "device.online"
                                             for r in query(db, device="gate-r")), timeout=10)
                for outcome in ("granted", "denied"):
                    await adapter.apply(gate, "do", "passage", {"outcome": outcome, "credential": "card-0042"})
                await eventually(lambda: sum(json.loads(r.body)["type"] in ("access.granted", "access.denied")
                                             for r in query(db, device="gate-r")) == 2, timeout=10)
        finally:
            recorder.close()
    finally:
        await adapter.stop()
    text = rec.read_text()
    for name, value in SECRETS.items():
        assert value not in text, f"the {name} secret is in the recording"
    header = json.loads(text.splitlines()[0])
    assert set(header["config"]) == {"site", "gateway_id", "devices"}, "sink settings are not needed to replay"
    devices = {d["id"]: d for d in header["config"]["devices"]}
    assert devices["lpr-1"]["auth"]["token"] == REDACTED
    assert devices["lpr-1"]["barrier"]["url"] == "http://127.0.0.1:9"
    key = cfg.devices[0].credential_key.get_secret_value()  # type: ignore[attr-defined]
    assert devices["gate-r"]["credential_key"] == key, "replay needs the credential hash key"
    assert stat.S_IMODE(os.stat(rec).st_mode) == 0o600

    live = [json.loads(r.body) for r in query(tmp_path / "outbox.db", device="gate-r")]
    replayed = [e.model_dump(mode="json", by_alias=True) async for e in replay_events(rec)]

    def passes(evs: list[dict[str, object]]) -> list[tuple[object, ...]]:
        return [(e["type"], e["payload"]["credential_hash"], e["time"])  # type: ignore[index]
                for e in evs if str(e["type"]).startswith("access.")]

    assert len(passes(live)) == 2
    assert passes(replayed) == passes(live)
