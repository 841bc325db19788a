"""The AsyncAPI document: committed copy current, valid against the official AsyncAPI 3.0.0 JSON Schema
(npm @asyncapi/specs, installed by `make test` into build/npm), and true of what a gateway publishes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from gateway.asyncapi import CHANNELS, Channel, asyncapi_document
from gateway.config import parse_config
from gateway.runtime import Gateway
from schemas.export import render
from simulators.elevator import ElevatorModel, ElevatorSimulator
from tests.helpers import MqttCollector, base_config
from tests.servers import Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "schemas" / "asyncapi.json"
SPEC = ROOT / "build" / "npm" / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"


def official_validator() -> jsonschema.Draft7Validator:
    if not SPEC.exists():
        pytest.fail(f"{SPEC} is missing: run `make test` (it installs @asyncapi/specs with npm)")
    return jsonschema.Draft7Validator(json.loads(SPEC.read_text()))


def test_committed_document_is_current() -> None:
    assert COMMITTED.read_text() == render(asyncapi_document()), (
        "schemas/asyncapi.json drifted from the models: `courtyard schema --asyncapi > schemas/asyncapi.json`")


def test_cli_prints_the_document() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "schema", "--asyncapi"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert json.loads(out) == json.loads(COMMITTED.read_text())


def test_valid_against_the_official_schema() -> None:
    validator = official_validator()
    doc = json.loads(COMMITTED.read_text())
    errors = [f"{e.json_path}: {e.message[:200]}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    # The validator does reject a broken document (so the check above can fail).
    broken = {**doc, "operations": {"x": {"action": "publish", "channel": {"$ref": "#/channels/event"}}}}
    assert list(validator.iter_errors(broken))


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_reference_resolves_and_parameters_match_addresses() -> None:
    doc = json.loads(COMMITTED.read_text())
    refs = re.findall(r'"\$ref": "(#[^"]*)"', COMMITTED.read_text())
    assert refs
    for ref in refs:
        _resolve(doc, ref)  # KeyError: a dangling reference
    for cid, channel in doc["channels"].items():
        used = set(re.findall(r"\{(\w+)\}", channel["address"]))
        assert used == set(channel["parameters"]), cid


def test_a_new_channel_is_one_model_away() -> None:
    from pydantic import BaseModel

    class CommandResult(BaseModel):
        command_id: str
        ok: bool

    extra = Channel("commandResult", "{prefix}/{site}/{kind}/{device}/command/{commandId}/result", "Result",
                    "A command's outcome", CommandResult, "CommandResult", retain=False,
                    parameters={"kind": "k", "device": "d", "commandId": "c"})
    doc = asyncapi_document([*CHANNELS, extra])
    assert "CommandResult" in doc["components"]["schemas"]
    assert doc["operations"]["publishCommandResult"]["channel"] == {"$ref": "#/channels/commandResult"}
    assert not list(official_validator().iter_errors(doc))


def payload_validator(doc: dict[str, Any], message: str) -> jsonschema.Draft202012Validator:
    """A validator for one message's payload, resolving `#/components/schemas/...` against the document."""
    registry: Registry[Any] = Registry().with_resource("urn:courtyard:asyncapi", Resource.from_contents(
        doc, default_specification=__import__("referencing.jsonschema").jsonschema.DRAFT202012))
    payload = doc["components"]["messages"][message]["payload"]
    schema = {"$ref": "urn:courtyard:asyncapi" + payload["$ref"]}
    return jsonschema.Draft202012Validator(schema, registry=registry)


async def test_what_a_gateway_publishes_matches_the_document(tmp_path: Path, mosquitto: Mosquitto) -> None:
    doc = json.loads(COMMITTED.read_text())
    patterns = []
    for channel in doc["channels"].values():
        regex = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(channel["address"])) + "$"
        (name,) = channel["messages"]
        patterns.append((re.compile(regex), name))
    port = free_port()
    sim = ElevatorSimulator(port=port, elevators={1: ElevatorModel(call_rate_per_s=2.0, seed=9)})
    lift = {"id": "lift-x", "driver": "modbus_elevator", "port": port, "unit_id": 1, "poll_interval_s": 0.2,
            "timeout_s": 0.5, "simulated": True, "thresholds": {"trapped_s": 0.5}}
    cfg = parse_config(base_config(tmp_path, mqtt=mosquitto, site="asyncapi-site", devices=[lift],
                                   status_interval_s=0.5))
    async with sim, MqttCollector(mosquitto.host, mosquitto.port, "courtyard/asyncapi-site/#") as col, Gateway(cfg):
        await sim.inject("trapped", device_id=1)
        await col.wait_for(lambda c: any(t.endswith("/metrics") for t, _ in c.messages)
                           and any("/alarm/" in t for t, _ in c.messages), 15)
        await sim.clear("trapped")
        await col.wait_for(lambda c: any(e["state"] == "cleared" for e in c.events()), 15)
    seen = set()
    for topic, payload in col.messages:
        matches = [name for regex, name in patterns if regex.match(topic)]
        assert len(matches) == 1, f"{topic} matches {matches} channels"
        if not payload and "/alarm/" in topic:
            continue  # the clear: an empty retained message
        errors = list(payload_validator(doc, matches[0]).iter_errors(json.loads(payload)))
        assert not errors, (topic, [e.message[:200] for e in errors])
        seen.add(matches[0])
    assert seen >= {"Event", "State", "Availability", "Alarm", "GatewayStatus", "GatewayMetrics"}
