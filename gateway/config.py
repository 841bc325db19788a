"""Gateway configuration: YAML with `${ENV}` interpolation, validated by pydantic.

Every problem is reported with the file, the line and the field path, e.g.
`site.yaml:14: devices[0].port: Input should be less than or equal to 65535`.
The device list is a union discriminated on `driver`, built from the driver registry,
so each device entry is validated by its own driver's model.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, create_model, field_validator

from gateway.driver import DeviceConfig
from gateway.errors import ConfigError, ConfigProblem

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutboxConfig(_Strict):
    """The durable outbox and local history (SQLite, WAL)."""

    path: Path = Path("./courtyard-data/outbox.db")
    max_events: int = Field(1_000_000, ge=100, description="Disk budget in events (history plus backlog)")
    overflow: Literal["drop_oldest_status", "block"] = Field(
        "drop_oldest_status",
        description="At the budget: drop the oldest undelivered status events (counted), or block producers."
        " Alarms, faults and connectivity events are never dropped.",
    )
    history_days: float = Field(7.0, gt=0, description="Delivered events are kept this long as local history")
    synchronous: Literal["full", "normal"] = Field(
        "full", description="SQLite fsync policy: full survives power loss; normal only process crashes"
    )
    batch_max: int = Field(2000, ge=1, description="Most events committed in one transaction")


class TlsConfig(_Strict):
    """TLS for the MQTT link; the server certificate is always verified when a CA is given."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure_skip_verify: bool = Field(False, description="Only for lab use; never combined with `ca`")

    @field_validator("ca", "cert", "key", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v  # `ca: ${MQTT_CA:-}` with nothing set means no CA


class MqttConfig(_Strict):
    """The MQTT sink."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None
    tls: TlsConfig | None = None
    topic_prefix: str = "courtyard"
    keepalive_s: int = Field(30, ge=5)
    batch: int = Field(200, ge=1, description="Events in flight per batch")
    backoff_max_s: float = Field(15.0, gt=0)

    @field_validator("username", "client_id", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v


class InfluxConfig(_Strict):
    """The InfluxDB sink: v2 write API (influxdb-client) or 1.x line protocol on /write."""

    url: str = Field("", description="Empty: no InfluxDB sink")
    api: Literal["v2", "v1"] = "v2"
    database: str = Field("courtyard", description="Bucket (v2) or database (v1)")
    org: str = ""
    token: SecretStr = SecretStr("")
    username: str = ""
    password: SecretStr = SecretStr("")
    batch: int = Field(1000, ge=1)
    timeout_s: float = Field(10.0, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)


class AlarmsConfig(_Strict):
    """How alarms left open by a previous run are carried across a restart."""

    restart_grace_s: float = Field(
        60.0, ge=0,
        description="After a start, drivers have this long to raise again an alarm the previous run left open:"
        " it then keeps its alarm_id and is not re-published; the others are cleared (gateway_restarted)."
        " Keep it above the longest raise window (elevator outside_door_zone_s: 45 s); 0 clears at once.",
    )


class GatewayConfigBase(_Strict):
    """Top-level settings shared by every gateway."""

    site: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    gateway_id: str = Field("gw-1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    outbox: OutboxConfig = OutboxConfig()
    mqtt: MqttConfig = MqttConfig()
    influx: InfluxConfig = InfluxConfig()
    alarms: AlarmsConfig = AlarmsConfig()
    status_interval_s: float = Field(30.0, gt=0, description="Gateway health report period")
    devices: list[DeviceConfig] = Field(default_factory=list)  # narrowed per driver in config_model()


@cache
def config_model() -> type[GatewayConfigBase]:
    """The full config model: base settings plus `devices`, one union branch per registered driver."""
    from gateway import registry

    models = [spec.config for spec in registry.drivers().values()]
    device_type: Any = (
        models[0] if len(models) == 1 else Annotated[Union[tuple(models)], Field(discriminator="driver")]  # noqa: UP007
    )
    model: type[GatewayConfigBase] = create_model(
        "GatewayConfig",
        __base__=GatewayConfigBase,
        devices=(list[device_type], Field(default_factory=list)),
    )
    return model


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the configuration file, for editors."""
    schema = config_model().model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Courtyard gateway configuration"
    return schema


# --- YAML with line numbers and environment interpolation -----------------------------------


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key and sequence item."""


def _interpolate(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None and ":-" in m.group(0)):
            if default is None:
                raise ValueError(f"environment variable {name} is not set and has no default")
            return default
        return value

    return _ENV.sub(sub, text)


def _load_with_lines(
    text: str, source: str
) -> tuple[Any, dict[tuple[Any, ...], int], list[ConfigProblem]]:
    lines: dict[tuple[Any, ...], int] = {}
    problems: list[ConfigProblem] = []
    try:
        root = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigProblem(source, line, "", f"YAML syntax: {getattr(exc, 'problem', exc)}")]) from exc

    flattener = _LineLoader(text)

    def build(node: yaml.Node | None, path: tuple[Any, ...]) -> Any:
        if node is None:
            return None
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            flattener.flatten_mapping(node)  # resolve `<<: *anchor` merge keys in place
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = build(key_node, (*path, "<key>"))
                lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        if node.tag == "tag:yaml.org,2002:str" and "${" in node.value:
            try:
                node = yaml.ScalarNode(node.tag, _interpolate(node.value), node.start_mark, node.end_mark, node.style)
            except ValueError as exc:
                problems.append(ConfigProblem(source, node.start_mark.line + 1, _fmt_path(path), str(exc)))
                return None
            # The result stays a string: the field's own type converts it ("5020" for a port),
            # so a password of 123456, "on" or "null" is never re-typed by YAML.
        return _LineLoader(text).construct_object(node, deep=True)

    try:
        data = build(root, ())
    except yaml.YAMLError as exc:  # e.g. merge keys or tags SafeLoader will not construct
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigProblem(source, line, "", f"YAML: {getattr(exc, 'problem', None) or exc}")]) from exc
    return data, lines, problems


def _fmt_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _problems(exc: ValidationError, source: str, lines: dict[tuple[Any, ...], int], data: Any) -> list[ConfigProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        # Drop the union tag pydantic inserts after a device index (devices.0.<driver>.field).
        if len(loc) >= 3 and loc[0] == "devices" and isinstance(loc[1], int) and isinstance(loc[2], str):
            entry = data["devices"][loc[1]] if isinstance(data, dict) else None
            if isinstance(entry, dict) and entry.get("driver") == loc[2]:
                del loc[2]
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("driver")
        path = tuple(loc)
        line = None
        for cut in range(len(path), -1, -1):
            if path[:cut] in lines:
                line = lines[path[:cut]]
                break
        problems.append(ConfigProblem(source, line, _fmt_path(path), err["msg"]))
    return problems


def parse_config(
    data: Any, *, source: str = "<config>", lines: dict[tuple[Any, ...], int] | None = None
) -> GatewayConfigBase:
    """Validate already-loaded config data; raise `ConfigError` with every problem found."""
    try:
        return config_model().model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, source, lines or {}, data)) from None


def load_config_text(text: str, *, source: str = "<config>") -> GatewayConfigBase:
    """Parse and validate YAML text."""
    data, lines, env_problems = _load_with_lines(text, source)
    if not isinstance(data, dict):
        raise ConfigError([*env_problems, ConfigProblem(source, 1, "", "the file must be a mapping of settings")])
    # Top-level `x-...` keys are free for YAML anchors (`x-lift: &lift {...}`, then `<<: *lift`).
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        config = parse_config(data, source=source, lines=lines)
    except ConfigError as exc:
        seen = {p.path for p in env_problems}
        raise ConfigError(env_problems + [p for p in exc.problems if p.path not in seen]) from None
    if env_problems:
        raise ConfigError(env_problems)
    return config


def load_config(path: str | Path) -> GatewayConfigBase:
    """Load, interpolate and validate a configuration file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(p), None, "", f"cannot read: {exc.strerror or exc}")]) from exc
    return load_config_text(text, source=str(p))
