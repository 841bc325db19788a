"""The MQTT contract (docs/mqtt.md) as an AsyncAPI 3.0 document, generated from the models.

`courtyard schema --asyncapi` prints it; `schemas/asyncapi.json` is the committed copy (a test
checks it for drift and validates it against the official AsyncAPI 3.0.0 JSON Schema).

Every channel is one `Channel` in `CHANNELS`: an address template, the pydantic model of its
message, retain flag, QoS and who sends it. A feature that adds topics (commands and their
results, rule outputs, alarm operations) appends `Channel`s with its own models, with
`action="receive"` for what the gateway subscribes to; the document follows.

Payload schemas come from `model_json_schema` with every definition hoisted into
`components/schemas`, so one `$ref` form is used across the document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from gateway import __version__
from schemas.common import DeviceRef
from schemas.event import Event

ASYNCAPI_VERSION = "3.0.0"
MQTT_BINDING = "0.2.0"
REF = "#/components/schemas/{model}"
LAST_WILL = {"topic": "{prefix}/{site}/gateway/{gateway}/status", "qos": 1, "retain": True,
             "message": '{"status": "offline", "gateway": "{gateway}", "site": "{site}"}'}


# --- message models of the topics that are not plain events -----------------------------------


class StateDocument(BaseModel):
    """`courtyard.state/1`: the device's whole current state, one part per zone, amplifier, lane or door."""

    model_config = ConfigDict(extra="forbid", title="StateDocument")

    schema_: Literal["courtyard.state/1"] = Field(alias="schema")
    site: str
    gateway: str
    device: DeviceRef
    time: str = Field(description="The latest `time` among the parts (RFC 3339)")
    parts: dict[str, Event] = Field(
        description="Part key (`device`, `zone/{zone}`, `amplifier/{amplifier}`, `lane/{lane}`, `door/{door_no}`)"
        " -> the latest accepted status event of that part")


class GatewayStatus(BaseModel):
    """Presence of a gateway; `offline` is also its MQTT last will."""

    model_config = ConfigDict(extra="forbid", title="GatewayStatus")

    status: Literal["online", "offline"]
    gateway: str
    site: str


class GatewayMetrics(BaseModel):
    """Periodic health report: uptime, undelivered events per sink, and the gateway's counters by name."""

    model_config = ConfigDict(extra="allow", title="GatewayMetrics")

    uptime_s: float
    backlog: dict[str, int] = Field(description="Undelivered events per sink")


class SyncMarker(BaseModel):
    """Published by a gateway to itself while reconciling retained topics; consumers ignore it."""

    model_config = ConfigDict(extra="forbid", title="SyncMarker")

    sync: str
    gateway: str


# --- channels ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    """One topic pattern of the contract."""

    id: str
    address: str  # with {parameters}; {prefix} and {site} are common to all
    summary: str
    description: str
    message: type[BaseModel]
    message_name: str
    retain: bool
    qos: Literal[0, 1, 2] = 1
    action: Literal["send", "receive"] = "send"  # from the gateway's side
    parameters: dict[str, str] = field(default_factory=dict)  # name -> description (beyond prefix and site)


DEVICE_PARAMS = {
    "kind": "Device kind: elevator, access_gate, pa, plate_reader",
    "device": "Device id (unique within the site)",
}

TYPE_PARAM = "Event type, e.g. elevator.status (its dots written as `mqtt.type_separator`, '.' unless configured)"

CHANNELS: list[Channel] = [
    Channel(
        "event", "{prefix}/{site}/{kind}/{device}/event/{type}", "Every accepted event",
        "Every event the outbox accepted, exactly as stored. At least once: deduplicate on `id`. Order is kept"
        " per device within a lane; alarms, faults, connectivity and commands overtake a status backlog.",
        Event, "Event", retain=False, parameters={**DEVICE_PARAMS, "type": TYPE_PARAM}),
    Channel(
        "state", "{prefix}/{site}/{kind}/{device}/state", "The device's whole current state",
        "Retained. Merges the latest accepted (not rejected) status event of each part of the device. Published"
        " at most once per `mqtt.state_interval_s` per device (2 s by default): a change after a quiet spell at"
        " once, faster ones merged to the end of the interval; the event topic carries every change at once.",
        StateDocument, "State", retain=True, parameters=DEVICE_PARAMS),
    Channel(
        "availability", "{prefix}/{site}/{kind}/{device}/availability", "The device's latest connectivity event",
        "Retained `device.online` / `device.offline`. A device is reachable only while this says"
        " `payload.online: true` and its gateway's status says `online`. After a clean stop: `device.offline`,"
        " state `momentary`, reason `gateway_stopped`.",
        Event, "Availability", retain=True, parameters=DEVICE_PARAMS),
    Channel(
        "alarm", "{prefix}/{site}/{kind}/{device}/alarm/{alarmId}", "One active alarm or fault",
        "Retained raise event of each active alarm, fault or device.offline; the clear publishes a zero-length"
        " retained message, which deletes the topic. The raise and the clear carry the same `alarm_id`.",
        Event, "Alarm", retain=True, parameters={**DEVICE_PARAMS, "alarmId": "The alarm's `alarm_id` (UUIDv7)"}),
    Channel(
        "gatewayStatus", "{prefix}/{site}/gateway/{gateway}/status", "Gateway presence",
        "Retained. `online` on connect; `offline` on a clean stop and as the MQTT last will (crash, power or"
        " network loss: published by the broker after 1.5 x keep-alive).",
        GatewayStatus, "GatewayStatus", retain=True, parameters={"gateway": "The gateway's `gateway_id`"}),
    Channel(
        "gatewayMetrics", "{prefix}/{site}/gateway/{gateway}/metrics", "Gateway health report",
        "Every `status_interval_s`, QoS 0, not retained.",
        GatewayMetrics, "GatewayMetrics", retain=False, qos=0, parameters={"gateway": "The gateway's `gateway_id`"}),
    Channel(
        "gatewaySync", "{prefix}/{site}/gateway/{gateway}/sync/{token}", "Reconciliation marker (ignore)",
        "Once per connect, the gateway publishes this to itself to know when the broker has sent every retained"
        " topic.",
        SyncMarker, "SyncMarker", retain=False,
        parameters={"gateway": "The gateway's `gateway_id`", "token": "Random per connect"}),
]


def _hoist(models: list[type[BaseModel]]) -> dict[str, Any]:
    """JSON Schemas of `models` and everything they use, keyed by name, refs into components/schemas."""
    _, top = models_json_schema([(m, "serialization") for m in models], by_alias=True, ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    return {name: _asyncapi_schema(s) for name, s in schemas.items()}


def _asyncapi_schema(node: Any) -> Any:
    """JSON Schema -> AsyncAPI Schema: its `discriminator` is the property name, not an object."""
    if isinstance(node, dict):
        out = {k: _asyncapi_schema(v) for k, v in node.items()}
        disc = out.get("discriminator")
        if isinstance(disc, dict):
            out["discriminator"] = disc.get("propertyName")
        return out
    if isinstance(node, list):
        return [_asyncapi_schema(v) for v in node]
    return node


def asyncapi_document(channels: list[Channel] | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the gateway's MQTT interface."""
    chans = CHANNELS if channels is None else channels
    schemas = _hoist(list(dict.fromkeys(c.message for c in chans)))
    messages: dict[str, Any] = {}
    doc_channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    common = {
        "prefix": {"description": "`mqtt.topic_prefix` (default `courtyard`)", "default": "courtyard"},
        "site": {"description": "The configuration's `site`"},
    }
    for c in chans:
        model_name = c.message.model_config.get("title") or c.message.__name__
        messages.setdefault(c.message_name, {
            "name": c.message_name,
            "title": c.message_name,
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model=model_name)},
            "bindings": {"mqtt": {"bindingVersion": MQTT_BINDING}},
        })
        doc_channels[c.id] = {
            "address": c.address,
            "title": c.summary,
            "description": c.description,
            "parameters": {**common, **{k: {"description": v} for k, v in c.parameters.items()}},
            "messages": {c.message_name: {"$ref": f"#/components/messages/{c.message_name}"}},
        }
        verb = "publish" if c.action == "send" else "receive"
        operations[f"{verb}{c.id[0].upper()}{c.id[1:]}"] = {
            "action": c.action,
            "channel": {"$ref": f"#/channels/{c.id}"},
            "summary": c.summary,
            "messages": [{"$ref": f"#/channels/{c.id}/messages/{c.message_name}"}],
            "bindings": {"mqtt": {"qos": c.qos, "retain": c.retain, "bindingVersion": MQTT_BINDING}},
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:courtyard:gateway:mqtt",
        "info": {
            "title": "Courtyard gateway: MQTT contract",
            "version": __version__,
            "description": "What a property platform can rely on when it subscribes to a Courtyard gateway"
            " (docs/mqtt.md). Operations are from the gateway's side: `send` is what it publishes.",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "{host}:{port}",
                "protocol": "mqtt",
                "protocolVersion": "3.1.1",
                "description": "Any MQTT 3.1.1 broker with QoS 1 and retained messages (mosquitto by default;"
                " NATS Server with MQTT on JetStream for a cluster: docs/deploy.md)",
                "variables": {"host": {"default": "127.0.0.1"}, "port": {"default": "1883"}},
                "bindings": {"mqtt": {"cleanSession": True, "keepAlive": 30, "lastWill": LAST_WILL,
                                      "bindingVersion": MQTT_BINDING}},
            },
        },
        "channels": doc_channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }
