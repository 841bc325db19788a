"""Generate the committed JSON Schemas: `python -m schemas.export` (a test checks for drift)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from schemas.common import SCHEMA_ID

HERE = Path(__file__).parent
EVENT_SCHEMA_PATH = HERE / "event.schema.json"
CONFIG_SCHEMA_PATH = HERE / "config.schema.json"
SCENARIO_SCHEMA_PATH = HERE / "scenario.schema.json"
COMMAND_REQUEST_SCHEMA_PATH = HERE / "command_request.schema.json"
COMMAND_RESULT_SCHEMA_PATH = HERE / "command_result.schema.json"
ASYNCAPI_PATH = HERE / "asyncapi.json"


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of `courtyard.event/1`, as published (aliases: `schema`, `class`).

    Built from the driver registry: installed plugins' kinds and payloads are in it.
    """
    from gateway.registry import event_model

    schema = event_model().model_json_schema(by_alias=True, mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://courtyard.dev/schemas/{SCHEMA_ID}.json"
    return schema


def scenario_json_schema() -> dict[str, Any]:
    """JSON Schema of scenario files (`scenarios/*.yaml`)."""
    from simulators.scenario.model import Scenario

    schema = Scenario.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Courtyard scenario"
    return schema


def command_json_schemas() -> dict[Path, dict[str, Any]]:
    """JSON Schemas of command requests and results (docs/commands.md), by file."""
    from schemas.command import REQUEST_SCHEMA_ID, RESULT_SCHEMA_ID, CommandRequest, CommandResult

    out = {}
    for path, model, sid in ((COMMAND_REQUEST_SCHEMA_PATH, CommandRequest, REQUEST_SCHEMA_ID),
                             (COMMAND_RESULT_SCHEMA_PATH, CommandResult, RESULT_SCHEMA_ID)):
        schema = (model.model_json_schema(by_alias=True, mode="serialization") if model is CommandResult
                  else model.model_json_schema(by_alias=True))
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://courtyard.dev/schemas/{sid}.json"
        out[path] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    """Stable text form of a schema (what is committed)."""
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main() -> int:
    """Write every committed schema: event, config, scenario and the MQTT contract's AsyncAPI."""
    from gateway.asyncapi import asyncapi_document
    from gateway.config import config_json_schema

    EVENT_SCHEMA_PATH.write_text(render(event_json_schema()), encoding="utf-8")
    CONFIG_SCHEMA_PATH.write_text(render(config_json_schema()), encoding="utf-8")
    SCENARIO_SCHEMA_PATH.write_text(render(scenario_json_schema()), encoding="utf-8")
    for path, schema in command_json_schemas().items():
        path.write_text(render(schema), encoding="utf-8")
    ASYNCAPI_PATH.write_text(render(asyncapi_document()), encoding="utf-8")
    print(f"wrote {EVENT_SCHEMA_PATH.name}, {CONFIG_SCHEMA_PATH.name}, {SCENARIO_SCHEMA_PATH.name},"
          f" {ASYNCAPI_PATH.name} and the command schemas in {HERE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
