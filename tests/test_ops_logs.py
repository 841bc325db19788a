"""`--log-format json`: one object per line with device/sink/event id, and no secret in any log line."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import fake_write_endpoint
from tests.servers import Mosquitto, free_port

MQTT_PASSWORD = "mqtt-pw-Zq81xk"
INFLUX_PASSWORD = "influx-pw-Lm55"
OPS_TOKEN = "ops-token-Hh29aa"
CAMERA_TOKEN = "camera-token-Pp07"
ENV_SECRET = "env-api-key-Rr64"


async def echo_credentials(request: web.Request) -> web.Response:
    """A database that refuses every batch and quotes the credentials it got back (as some proxies do)."""
    auth = request.headers.get("Authorization", "")
    decoded = base64.b64decode(auth.split(" ", 1)[1]).decode() if " " in auth else ""
    return web.json_response({"error": f"unable to parse points; credentials were {decoded} ({auth})"}, status=400)


async def test_json_logs_carry_context_and_no_secrets(tmp_path: Path, mosquitto: Mosquitto) -> None:
    sim_port, dead_port, cam_port = free_port(), free_port(), free_port()
    sim = ElevatorSimulator(port=sim_port, elevators={1: ElevatorModel(call_rate_per_s=2.0, seed=2)})
    async with sim, fake_write_endpoint(echo_credentials) as influx_url:
        lift = {"driver": "modbus_elevator", "unit_id": 1, "poll_interval_s": 0.2, "timeout_s": 0.3,
                "offline_after": 1, "simulated": True}
        config = {
            "site": "logs-site", "gateway_id": "gw-logs",
            "outbox": {"path": str(tmp_path / "outbox.db"), "synchronous": "normal"},
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "username": "gw",
                     "password": "${MQTT_PASSWORD}"},
            "influx": {"url": influx_url, "api": "v1", "username": "writer", "password": INFLUX_PASSWORD},
            "ops": {"port": 0, "token": "${OPS_TOKEN}"},
            "devices": [
                {"id": "lift-live", "port": sim_port, **lift},
                {"id": "lift-dead", "port": dead_port, **lift},
                {"id": "lpr-1", "driver": "http_plate_reader", "listen_host": "127.0.0.1", "listen_port": cam_port,
                 "vendor": "zhenshi", "direction": "entry", "lane": "in",
                 "auth": {"mode": "token", "token": CAMERA_TOKEN}},
            ],
        }
        path = tmp_path / "gw.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "MQTT_PASSWORD": MQTT_PASSWORD, "OPS_TOKEN": OPS_TOKEN, "SERVICE_API_KEY": ENV_SECRET}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "--log-format", "json", "--log-level", "debug", "run", "-c", str(path),
            env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            await asyncio.sleep(6)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
    text = err.decode()
    for secret in (MQTT_PASSWORD, INFLUX_PASSWORD, OPS_TOKEN, CAMERA_TOKEN, ENV_SECRET,
                   base64.b64encode(f"writer:{INFLUX_PASSWORD}".encode()).decode()):
        assert secret not in text, f"{secret} leaked into the logs"
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is one JSON object
    assert lines and all({"time", "level", "logger", "message"} <= set(doc) for doc in lines)
    refused = [d for d in lines if "InfluxDB refused" in d["message"]]
    assert refused, "the refusing database produced no log line"
    assert refused[0]["sink"] == "influx" and len(refused[0]["event_id"]) == 36
    assert "***" in refused[0]["message"]  # the quoted password was masked, not dropped
    assert any(d.get("device") == "lift-dead" for d in lines)
    assert any(d.get("sink") == "mqtt" for d in lines)
    assert proc.returncode == 0


def test_text_format_masks_registered_and_environment_secrets(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from gateway import logs

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    monkeypatch.setenv("SITE_DB_PASSWORD", "from-env-Qw12")
    try:
        logs.setup_logging("info", "text")
        logs.register_secrets(["from-config-Zx34"])
        logging.getLogger("courtyard.test").warning("server said: bad creds from-config-Zx34 / from-env-Qw12")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "bad creds *** / ***" in err
    assert "Zx34" not in err and "Qw12" not in err
