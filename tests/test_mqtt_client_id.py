"""Two gateways configured with one MQTT client id must not kick each other off the broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.runtime import Gateway
from tests.helpers import base_config, eventually
from tests.servers import Mosquitto


@pytest.mark.slow
async def test_two_gateways_with_one_client_id_keep_their_sessions(tmp_path: Path, mosquitto: Mosquitto) -> None:
    gateways = []
    for name in ("gw-a", "gw-b"):
        cfg = base_config(tmp_path / name, mqtt=mosquitto, site="clientid-site", gateway_id=name)
        cfg["mqtt"] |= {"client_id": "courtyard-shared", "backoff_max_s": 0.2}
        gateways.append(Gateway(parse_config(cfg)))
    a, b = gateways
    async with a, b:
        await eventually(lambda: a.counters.get("mqtt.connects") and b.counters.get("mqtt.connects"), timeout=10)
        await asyncio.sleep(3)  # with one id, each connect would kick the other off within this window
        assert (a.counters.get("mqtt.connects"), b.counters.get("mqtt.connects")) == (1, 1)
        assert (a.counters.get("mqtt.disconnects"), b.counters.get("mqtt.disconnects")) == (0, 0)
    ids = [gw.sinks[0].client_id for gw in gateways]  # type: ignore[attr-defined]
    assert ids[0] != ids[1] and all(i.startswith("courtyard-shared-") for i in ids)
