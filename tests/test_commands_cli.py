"""`courtyard command` through a real broker with the example's config, `courtyard commands`, and
a plain `mosquitto_pub` request as docs/commands.md shows it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.runtime import Gateway
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import MqttCollector
from tests.servers import Mosquitto, free_port

EXAMPLE = Path(__file__).parent.parent / "examples" / "elevator.yaml"


def env_for(tmp_path: Path, mosquitto: Mosquitto, lift_port: int) -> dict[str, str]:
    return {**os.environ, "MQTT_HOST": mosquitto.host, "MQTT_PORT": str(mosquitto.port),
            "ELEVATOR_PORT": str(lift_port), "COURTYARD_DATA": str(tmp_path), "SITE": "cli-site", "INFLUX_URL": ""}


async def cli(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *argv, env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_command_and_journal(tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    env = env_for(tmp_path, mosquitto, port)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(EXAMPLE)
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=0)})
    async with sim, Gateway(cfg) as gw:
        await asyncio.wait_for(gw.commands.bus.connected.wait(), 10)
        code, out, err = await cli(env, "command", "-c", str(EXAMPLE), "lift-b1-1", "call", "floor=7", "--wait",
                                   "--json")
        assert code == 0, err
        results = [json.loads(line) for line in out.splitlines()]
        assert [r["state"] for r in results] == ["accepted", "sent", "succeeded"]
        assert results[0]["requester"].startswith("mqtt:cli:")
        code, out, err = await cli(env, "command", "-c", str(EXAMPLE), "lift-b1-1", "call", "floor=77", "--wait")
        assert code == 1 and "rejected" in out and "bad_arg:floor" in out, (out, err)
        code, out, err = await cli(env, "command", "-c", str(EXAMPLE), "lift-9", "call", "floor=7")
        assert code == 2 and "no device" in err
        if shutil.which("mosquitto_pub"):  # exactly as docs/commands.md shows it
            async with MqttCollector(mosquitto.host, mosquitto.port,
                                     "courtyard/cli-site/elevator/lift-b1-1/cmd/+/result") as col:
                body = json.dumps({"id": "doc-example-1", "args": {"floor": 1}, "ttl_s": 30,
                                   "requested_by": "duty-room"})
                subprocess.run(["mosquitto_pub", "-h", mosquitto.host, "-p", str(mosquitto.port), "-q", "1",
                                "-t", "courtyard/cli-site/elevator/lift-b1-1/cmd/call", "-m", body], check=True)
                await col.wait_for(lambda c: any(json.loads(p)["final"] for _, p in c.messages), 15)
                assert json.loads(col.messages[-1][1])["state"] == "succeeded"
        await gw.commands.wait_idle()
    code, out, err = await cli(env, "commands", "-c", str(EXAMPLE), "--state", "succeeded", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["args"] for r in rows][:1] == [{"floor": 7}] and {r["name"] for r in rows} == {"call"}
    code, out, err = await cli(env, "commands", "-c", str(EXAMPLE), "--device", "lift-b1-1", "--since", "1h")
    assert code == 0 and "bad_arg:floor" in out and "rejected" in out
