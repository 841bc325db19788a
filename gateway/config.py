"""Gateway configuration: YAML with `${ENV}` interpolation, validated by pydantic.

Every problem is reported with the file, the line and the field path, e.g.
`site.yaml:14: devices[0].port: Input should be less than or equal to 65535`.
The device list is a union discriminated on `driver`, built from the driver registry,
so each device entry is validated by its own driver's model.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from gateway.driver import DeviceConfig
from gateway.errors import ConfigError, ConfigProblem
from gateway.yamlfile import Lines, format_path, line_of, load_yaml
from schemas.rule import Rule


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutboxConfig(_Strict):
    """The durable outbox and local history (SQLite, WAL)."""

    path: Path = Path("./courtyard-data/outbox.db")
    max_events: int = Field(
        1_000_000, ge=100, description="Disk budget in events: bounds history plus backlog, except undelivered"
        " alarms, faults, connectivity and commands (kept over budget, counted)")
    overflow: Literal["drop_oldest_status", "block"] = Field(
        "drop_oldest_status",
        description="Past the budget, after delivered history: drop the oldest undelivered lane-1 events of any"
        " class (counted), or make lane-1 producers wait (pushes get 503 + Retry-After). Alarms, faults,"
        " connectivity and commands are never dropped and never wait.",
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
    urls: list[str] = Field(
        default_factory=list,
        description="Brokers to try in turn (`mqtt://host:port` or `host:port`; a string is split on commas, so"
        " `urls: ${MQTT_URLS:-}` works); on a lost link or a failed connect the next one is used. Empty: host/port",
    )
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None
    tls: TlsConfig | None = None
    topic_prefix: str = "courtyard"
    type_separator: Literal[".", "_", "-"] = Field(
        ".", description="Written for the dots of the event type in `.../event/{type}` topics. NATS Server"
        " before 2.10 (Debian's 2.9) refuses '.' in MQTT topics: use '_' there. Bodies are unchanged")
    keepalive_s: int = Field(30, ge=5)
    batch: int = Field(200, ge=1, description="Events in flight per batch")
    backoff_max_s: float = Field(15.0, gt=0)
    state_interval_s: float = Field(
        2.0, ge=0, le=60, description="Least time between two publishes of one device's retained `state`: a"
        " change after a quiet spell goes at once, later ones within the interval are merged and go at its end"
        " (every event still goes on its event topic at once). 0: after every batch")

    @field_validator("username", "client_id", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("urls", mode="before")
    @classmethod
    def _split_urls(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [u.strip() for u in v.split(",") if u.strip()]
        return v

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            parse_broker_url(url)
        return v

    def brokers(self) -> list[tuple[str, int]]:
        """(host, port) of every broker, in failover order."""
        return [parse_broker_url(u) for u in self.urls] or [(self.host, self.port)]


def parse_broker_url(url: str) -> tuple[str, int]:
    """`mqtt://host:port`, `mqtts://host:port`, `tcp://host:port` or `host:port` -> (host, port)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise ValueError(f"broker URL {url!r}: expected mqtt://host:port")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"broker URL {url!r}: bad port") from None
    if parts.username or parts.password or parts.path not in ("", "/"):
        raise ValueError(f"broker URL {url!r}: only scheme, host and port (credentials go in username/password)")
    return parts.hostname, port or (8883 if parts.scheme in ("mqtts", "ssl") else 1883)


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


class AlarmOpRule(_Strict):
    """One allowlist entry of alarm operations: these requesters may do these operations on the
    alarms of these devices (shell-style patterns; requesters as for commands: `mqtt:<user>`,
    `cli:<login>`, `console:<user>`)."""

    requesters: list[str] = Field(min_length=1)
    devices: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    ops: list[Literal["ack", "shelve", "unshelve", "reset", "*"]] = Field(["*"], min_length=1)
    note: str | None = None


class AlarmLifecycleConfig(_Strict):
    """The alarm book (docs/rules.md): acknowledgement, shelving, latching, escalation."""

    enabled: bool = Field(True, description="Keep every managed alarm until a person closes it")
    classes: list[Literal["alarm", "fault", "connectivity"]] = Field(
        ["alarm", "fault"], description="Event classes whose alarms the book manages")
    severities: list[Literal["critical", "major", "minor", "info"]] = Field(
        ["critical", "major"],
        description="Severities the book manages; other alarms close when their condition clears")
    latch: list[str] = Field(
        default_factory=lambda: ["*fire*", "*smoke*", "*tamper*"],
        description="Alarm types (shell patterns) that stay active after their condition clears, until reset")
    escalate_after_s: dict[Literal["critical", "major", "minor", "info"], float] = Field(
        {"critical": 60.0, "major": 300.0},
        description="An alarm not acknowledged this long after its raise gets `alarm.escalated` (once)")
    max_shelve_s: float = Field(8 * 3600.0, gt=0, description="Longest shelving one operation may ask for")
    allow: list[AlarmOpRule] = Field(
        default_factory=list, description="Who may ack/shelve/unshelve/reset; everything else is `not_allowed`")

    def manages(self, cls: str, severity: str | None) -> bool:
        """Whether an alarm of this class and severity is kept in the book until closed."""
        return self.enabled and cls in self.classes and (severity or "info") in self.severities

    def latches(self, alarm_type: str) -> bool:
        """Whether an alarm of this type latches until reset."""
        from fnmatch import fnmatchcase

        return any(fnmatchcase(alarm_type, p) for p in self.latch)

    def allows(self, requester: str, device: str, op: str) -> bool:
        """Whether an entry lets `requester` do `op` on the alarms of `device`."""
        from fnmatch import fnmatchcase

        return any(any(fnmatchcase(requester, p) for p in r.requesters)
                   and any(fnmatchcase(device, p) for p in r.devices)
                   and ("*" in r.ops or op in r.ops) for r in self.allow)


class AlarmsConfig(_Strict):
    """How alarms left open by a previous run are carried across a restart, and their lifecycle."""

    restart_grace_s: float = Field(
        60.0, ge=0,
        description="After a start, drivers have this long to raise again an alarm the previous run left open:"
        " it then keeps its alarm_id and is not re-published; the others are cleared (gateway_restarted)."
        " Keep it above the longest raise window (elevator outside_door_zone_s: 45 s); 0 clears at once.",
    )
    lifecycle: AlarmLifecycleConfig = AlarmLifecycleConfig()


class CommandRule(_Strict):
    """One allowlist entry: these requesters may send these commands to these devices.

    Each list holds shell-style patterns (`*`, `lift-*`). Requesters are named by where they
    come from: `mqtt:<requested_by>` (see docs/commands.md on what the broker's ACLs must
    guarantee), `rule:<name>`, `console:<user>`.
    """

    requesters: list[str] = Field(min_length=1)
    devices: list[str] = Field(min_length=1)
    commands: list[str] = Field(min_length=1)
    note: str | None = None


class CommandsConfig(_Strict):
    """Commands to devices (docs/commands.md): who may send what, and how long the gateway waits."""

    enabled: bool = Field(True, description="Subscribe to command requests on MQTT")
    allow: list[CommandRule] = Field(
        default_factory=list, description="Everything not allowed here is rejected (`not_allowed`)")
    answer_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Longest wait for a device's answer once a command is sent")
    resume_timeout_s: float = Field(
        5.0, gt=0, le=600, description="After a restart, how long a command left `sent` may take to read back")
    reject_unknown_devices: bool = Field(
        True, description="Answer `rejected: unknown_device` for devices not in this config. Several gateways"
        " sharing a site all see every request: keep this true on one of them only")

    def allows(self, requester: str, device: str, command: str) -> bool:
        """Whether a rule lets `requester` send `command` to `device`."""
        from fnmatch import fnmatchcase

        def any_of(patterns: list[str], value: str) -> bool:
            return any(fnmatchcase(value, p) for p in patterns)

        return any(any_of(r.requesters, requester) and any_of(r.devices, device) and any_of(r.commands, command)
                   for r in self.allow)


def is_loopback_host(host: str) -> bool:
    """True when `host` names only the loopback interface (hostnames other than localhost are not)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class OpsConfig(_Strict):
    """The ops HTTP server: `/metrics` (Prometheus), `/healthz`, `/readyz`. Off unless a port is set."""

    host: str = Field("127.0.0.1", description="Loopback by default; any other address needs `token`")
    port: int | None = Field(
        None, ge=0, le=65535, description="Empty or absent: no ops server (`port: ${OPS_PORT:-}`); 0: a free port")
    token: SecretStr | None = Field(
        None, description="Bearer token every request must carry (`Authorization: Bearer ...`); required on a"
        " non-loopback address. Take it from the environment: `token: ${OPS_TOKEN}`")
    outage_budget_s: float = Field(
        120.0, ge=0, description="/readyz stays ready while each sink has been down for less than this")
    max_connections: int = Field(32, ge=1, description="Open connections in total")
    header_timeout_s: float = Field(5.0, gt=0, description="A request head must arrive this soon")

    @field_validator("port", "token", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @model_validator(mode="after")
    def _network_needs_token(self) -> OpsConfig:
        if self.port is not None and not is_loopback_host(self.host) and self.token is None:
            raise ValueError(f"ops.host {self.host} is reachable from the network: set ops.token (a bearer token,"
                             " e.g. token: ${OPS_TOKEN}) or bind 127.0.0.1")
        return self


ROLES = ("viewer", "operator", "admin")
USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class ConsoleUser(_Strict):
    """One console login: a name, a role and a salted scrypt hash (`courtyard users add` writes them)."""

    name: str = Field(pattern=USER_NAME_PATTERN)
    role: Literal["viewer", "operator", "admin"] = Field(
        description="viewer: look only; operator: also acknowledge, shelve, reset and command; admin: all of it")
    password_hash: SecretStr = Field(
        description="`scrypt$<n>$<r>$<p>$<salt>$<hash>` (base64), as `courtyard users add` prints; never a password")


class ConsoleConfig(_Strict):
    """The duty console (docs/console.md): one screen in the browser, served by the gateway itself."""

    host: str = Field("127.0.0.1", description="Loopback by default; another address needs at least one user")
    port: int | None = Field(
        None, ge=0, le=65535,
        description="Empty: the ops port when `ops.port` is set (one listener), else 8080; 0: a free port")
    users: list[ConsoleUser] = Field(default_factory=list, description="Logins kept in the config itself")
    users_file: Path | None = Field(
        None, description="A users file managed by `courtyard users add|passwd|remove` (0600); read at start")
    timezone: str | None = Field(
        None, description="IANA zone the console shows times in (e.g. Asia/Shanghai); empty: the host's zone")
    session_ttl_s: float = Field(12 * 3600.0, gt=0, le=7 * 86400, description="A login lasts this long")
    secure_cookies: bool = Field(
        False, description="Mark cookies Secure (set this when a TLS proxy serves the console)")
    max_connections: int = Field(64, ge=2, description="Open connections in total (live views hold one each)")
    header_timeout_s: float = Field(5.0, gt=0, description="A request head must arrive this soon")
    body_timeout_s: float = Field(10.0, gt=0, description="A request body must arrive this soon")
    login_attempts: int = Field(5, ge=1, description="Failed logins per user or address before a pause")
    login_window_s: float = Field(300.0, gt=0, description="The window `login_attempts` is counted over")

    @field_validator("port", "users_file", "timezone", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        if v is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r} (an IANA name such as Asia/Shanghai)") from None
        return v

    @model_validator(mode="after")
    def _unique_users(self) -> ConsoleConfig:
        names = [u.name for u in self.users]
        if len(names) != len(set(names)):
            raise ValueError("console.users: a name appears twice")
        return self


class GatewayConfigBase(_Strict):
    """Top-level settings shared by every gateway."""

    site: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    gateway_id: str = Field("gw-1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    outbox: OutboxConfig = OutboxConfig()
    mqtt: MqttConfig = MqttConfig()
    influx: InfluxConfig = InfluxConfig()
    alarms: AlarmsConfig = AlarmsConfig()
    commands: CommandsConfig = CommandsConfig()
    ops: OpsConfig = OpsConfig()
    console: ConsoleConfig | None = Field(
        None, description="The duty console in the browser (docs/console.md); absent: not served")
    status_interval_s: float = Field(30.0, gt=0, description="Gateway health report period")
    rules: list[Rule] = Field(default_factory=list, description="Linkage rules (docs/rules.md)")
    rule_files: list[Path] = Field(default_factory=list, description="Files of rules (`rules: [...]`), loaded at"
                                   " start; relative paths from the working directory")
    devices: list[DeviceConfig] = Field(default_factory=list)  # narrowed per driver in config_model()

    @model_validator(mode="after")
    def _console_listener(self) -> GatewayConfigBase:
        con = self.console
        if con is not None and self.ops.port is not None and con.port in (None, self.ops.port) \
                and con.host != self.ops.host:
            raise ValueError(f"console shares the ops port {self.ops.port}: set console.host to ops.host"
                             f" ({self.ops.host}), or give the console a port of its own")
        return self


@cache
def config_model() -> type[GatewayConfigBase]:
    """The full config model: base settings plus `devices`, one union branch per registered driver."""
    from gateway import registry

    models = [registry.device_config_model(name) for name in registry.drivers()]
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


# --- YAML with line numbers and environment interpolation (gateway.yamlfile) ---------------------


def _problems(exc: ValidationError, source: str, lines: dict[tuple[Any, ...], int], data: Any) -> list[ConfigProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        # Drop the union tag pydantic inserts after a device index (devices.0.<driver>.field).
        if len(loc) >= 3 and loc[0] == "devices" and isinstance(loc[1], int) and isinstance(loc[2], str):
            entry = data["devices"][loc[1]] if isinstance(data, dict) else None
            if isinstance(entry, dict) and entry.get("driver") == loc[2]:
                del loc[2]
        msg = err["msg"]
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("driver")
            if err["type"] == "union_tag_invalid":
                from gateway import registry

                rejected = registry.problems().get(str(err.get("ctx", {}).get("tag")))
                if rejected:
                    msg = f"{msg}; that driver was refused: {rejected}"
        path = tuple(loc)
        problems.append(ConfigProblem(source, line_of(lines, path), format_path(path), msg))
    return problems


def parse_config(
    data: Any, *, source: str = "<config>", lines: dict[tuple[Any, ...], int] | None = None
) -> GatewayConfigBase:
    """Validate already-loaded config data; raise `ConfigError` with every problem found."""
    try:
        return config_model().model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, source, lines or {}, data)) from None


def _load_text(text: str, source: str) -> tuple[GatewayConfigBase, Lines]:
    data, lines, env_problems = load_yaml(text, source, env=True)
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
    return config, lines


def load_config_text(text: str, *, source: str = "<config>") -> GatewayConfigBase:
    """Parse and validate YAML text."""
    return _load_text(text, source)[0]


def _read(path: str | Path) -> tuple[str, str]:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8"), str(p)
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(p), None, "", f"cannot read: {exc.strerror or exc}")]) from exc


def load_config(path: str | Path) -> GatewayConfigBase:
    """Load, interpolate and validate a configuration file."""
    text, source = _read(path)
    return load_config_text(text, source=source)


@dataclass(frozen=True)
class ConfigReport:
    """What `courtyard validate` says about a file that loads."""

    config: GatewayConfigBase
    #: Devices that cannot run (e.g. their driver plugin is unusable): `run` skips them.
    errors: list[ConfigProblem]
    #: Legal, but probably not meant (e.g. an elevator map without `occupied`).
    warnings: list[ConfigProblem]


def check_config(path: str | Path) -> ConfigReport:
    """Load a config (raising `ConfigError` like `load_config`), then check what loading cannot.

    Each device model may offer `config_warnings() -> [(field, message)]`.
    """
    from gateway import registry

    text, source = _read(path)
    config, lines = _load_text(text, source)
    unusable = registry.problems()
    errors, warnings = [], []
    for i, dev in enumerate(config.devices):
        if dev.enabled and dev.driver in unusable:
            loc = ("devices", i, "driver")
            errors.append(ConfigProblem(source, line_of(lines, loc), format_path(loc),
                                        f"driver {dev.driver!r} is unusable ({unusable[dev.driver]}); "
                                        "this device will be skipped"))
        check = getattr(dev, "config_warnings", None)
        for field, message in check() if callable(check) else ():
            loc = ("devices", i, field)
            warnings.append(ConfigProblem(source, line_of(lines, loc), format_path(loc), message))
    return ConfigReport(config, errors, warnings)
