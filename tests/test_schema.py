"""The event schema: committed JSON Schema matches the models; envelopes validate strictly."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest
from pydantic import ValidationError

from gateway.config import config_json_schema
from schemas.common import DeviceRef
from schemas.elevator import ElevatorPayload
from schemas.event import Event
from schemas.export import (
    CONFIG_SCHEMA_PATH,
    EVENT_SCHEMA_PATH,
    SCENARIO_SCHEMA_PATH,
    event_json_schema,
    render,
    scenario_json_schema,
)


def sample_event(**overrides: object) -> Event:
    data: dict[str, object] = {
        "id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "time": datetime(2026, 11, 26, 8, 0, tzinfo=UTC),
        "received": datetime(2026, 11, 26, 8, 0, 0, 5000, tzinfo=UTC),
        "site": "s1",
        "gateway": "gw-1",
        "device": DeviceRef(id="lift-1", kind="elevator", driver="modbus_elevator"),
        "class": "status",
        "type": "elevator.status",
        "payload": ElevatorPayload(floor=3, direction="up", car_running=True),
    }
    data.update(overrides)
    return Event.model_validate(data)


def test_committed_event_schema_matches_models() -> None:
    assert EVENT_SCHEMA_PATH.read_text(encoding="utf-8") == render(event_json_schema()), (
        "schemas/event.schema.json drifted from the models: run `make schema` and commit"
    )


def test_committed_config_schema_matches_models() -> None:
    assert CONFIG_SCHEMA_PATH.read_text(encoding="utf-8") == render(config_json_schema()), (
        "schemas/config.schema.json drifted from the models: run `make schema` and commit"
    )


def test_committed_scenario_schema_matches_models() -> None:
    assert SCENARIO_SCHEMA_PATH.read_text(encoding="utf-8") == render(scenario_json_schema()), (
        "schemas/scenario.schema.json drifted from the models: run `make schema` and commit"
    )


def test_published_json_validates_against_committed_schema() -> None:
    schema = json.loads(EVENT_SCHEMA_PATH.read_text(encoding="utf-8"))
    body = json.loads(sample_event().to_json())
    jsonschema.validate(body, schema)
    assert body["schema"] == "courtyard.event/1"
    assert body["class"] == "status"


def test_schema_rejects_what_models_reject() -> None:
    schema = json.loads(EVENT_SCHEMA_PATH.read_text(encoding="utf-8"))
    body = json.loads(sample_event().to_json())
    body["payload"]["colour"] = "red"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, schema)


def test_round_trip_is_exact() -> None:
    ev = sample_event()
    assert Event.model_validate_json(ev.to_json()) == ev


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type", "Elevator Status"),
        ("class", "gossip"),
        ("severity", "apocalyptic"),
        ("time", datetime(2026, 1, 1)),  # naive datetimes are ambiguous: refused
        ("unknown_field", 1),
    ],
)
def test_envelope_refuses_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        sample_event(**{field: value})


def test_payload_discriminator_picks_the_right_model() -> None:
    ev = Event.model_validate_json(sample_event().to_json())
    assert isinstance(ev.payload, ElevatorPayload)
    with pytest.raises(ValidationError):
        sample_event(payload={"kind": "elevator", "floor": "third"})
