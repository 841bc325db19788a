"""Log output: plain text or one JSON object per line (`--log-format json`), secrets masked in both.

JSON lines carry `time`, `level`, `logger`, `message`, and where they apply `device` (from the
`courtyard.device.<id>` loggers or `extra={"device": ...}`), `sink` (from the sink modules or
`extra`), `event_id` and `alarm_id` (`extra`), and `exception` (the traceback text).

Secrets are masked as `***` wherever they would appear: every `SecretStr` of the loaded
configuration (`register_secrets`) and every environment variable whose name says it holds one
(`*TOKEN*`, `*PASSWORD*`, `*SECRET*`, `*PASSWD*`, `*_KEY`, `*APIKEY*`). Code does not log
secrets to begin with (they are `SecretStr`); this catches what a library echoes back, such as
a URL with a token in an exception message.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, SecretStr

MASK = "***"
MIN_SECRET_LEN = 4  # shorter values would mask ordinary words and digits
SECRET_ENV = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|_KEY$|APIKEY|API_KEY|CREDENTIAL", re.IGNORECASE)
#: Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_SINK_LOGGERS = {"gateway.sinks.mqtt": "mqtt", "gateway.sinks.influx": "influx"}
_DEVICE_LOGGER = "courtyard.device."

_secrets: set[str] = set()


def register_secrets(values: Iterable[str]) -> None:
    """Mask these values in every log line from now on."""
    _secrets.update(v for v in values if len(v) >= MIN_SECRET_LEN)
    _compile()


def secrets_of(model: Any) -> list[str]:
    """Every `SecretStr` value inside a pydantic model (nested models, lists and dicts too)."""
    found: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, SecretStr):
            found.append(obj.get_secret_value())
        elif isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                walk(getattr(obj, name, None))
            user, password = getattr(obj, "username", None), getattr(obj, "password", None)
            if isinstance(user, str) and isinstance(password, SecretStr):  # what HTTP Basic sends, echoed back
                found.append(base64.b64encode(f"{user}:{password.get_secret_value()}".encode()).decode())
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v)

    walk(model)
    return found


def env_secrets() -> list[str]:
    """Values of environment variables whose names say they hold a secret."""
    return [v for k, v in os.environ.items() if SECRET_ENV.search(k) and v]


_pattern: re.Pattern[str] | None = None


def _compile() -> None:
    global _pattern
    # Longest first, so a secret containing another is masked whole.
    ordered = sorted(_secrets, key=len, reverse=True)
    _pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    return _pattern.sub(MASK, text) if _pattern is not None and text else text


class TextFormatter(logging.Formatter):
    """The usual one-line text format, secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.name.startswith(_DEVICE_LOGGER):
            doc["device"] = record.name[len(_DEVICE_LOGGER):]
        sink = _SINK_LOGGERS.get(record.name)
        if sink is not None:
            doc["sink"] = sink
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = redact(value) if isinstance(value, str) else _plain(value)
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exception"] = redact(record.exc_text)
        return json.dumps(doc, ensure_ascii=False, default=str)


def _plain(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return redact(str(value))
    return value


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configure the root logger on stderr; `fmt` is `text` or `json`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    register_secrets(env_secrets())
