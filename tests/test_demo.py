"""`courtyard demo` smoke test: 30 s headless, then SIGINT; every kind landed, nothing lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway.history import query
from tests.helpers import MqttCollector
from tests.servers import Mosquitto

ROOT = Path(__file__).resolve().parents[1]


async def test_demo_headless_for_30_seconds(tmp_path: Path, mosquitto: Mosquitto) -> None:
    env = os.environ | {"MQTT_HOST": mosquitto.host, "MQTT_PORT": str(mosquitto.port)}
    async with MqttCollector(mosquitto.host, mosquitto.port, "courtyard/jinxiu-garden/#") as col:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "demo", "--headless", "--data", str(tmp_path), cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        await asyncio.sleep(30)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        text = out.decode()
        assert "mosquitto_sub" in text.splitlines()[0], "the demo says how to subscribe"
        assert "stopped cleanly" in text
        accepted = [json.loads(r.body) for r in query(tmp_path / "outbox.db")]
        ids = {e["id"] for e in accepted}
        await col.wait_for(lambda c: ids <= {e["id"] for e in c.events()}, timeout=20)

    kinds = {e["device"]["kind"] for e in accepted if e["class"] != "connectivity"}
    assert kinds == {"elevator", "access_gate", "pa", "plate_reader"}
    states: dict[str, set[str]] = {}
    for e in accepted:
        if e["alarm_id"] and e["class"] in ("alarm", "fault"):
            states.setdefault(e["alarm_id"], set()).add(e["state"])
    assert any(s == {"raised", "cleared"} for s in states.values()), "an alarm was raised and cleared"
    # the live log printed what the platform receives
    assert "courtyard/jinxiu-garden/elevator/lift-b2-1/event/elevator.alarm_button [raised]" in text
    # and the history is there afterwards
    res = subprocess.run([sys.executable, "-m", "gateway", "events", "--db", str(tmp_path / "outbox.db"),
                          "--type", "pa.*", "--json"], check=False, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip()
