"""`courtyard replay`: feed a recording through the same decoders and normalizers.

A recording (`courtyard run --record FILE`) is JSON lines. The header line carries what
is needed to rebuild every driver: the site, the gateway id and the device list, with
every secret replaced by `<redacted>` except the ones a decoder needs to reproduce its
events (`REPLAY_SECRETS`: the access gate's `credential_key`, which keys credential
hashes). Sink settings (MQTT, InfluxDB, outbox) are left out. Then one line per raw input:
`{"t": <receipt time>, "device": <id>, "channel": <name>, "data": <raw>}`.
Each line goes through the same path as live input, `DeviceRuntime.ingest`, with the
recording's clock: the device's decoder (`DriverSpec.decoder`; no transport is built when
the spec names one) is fed `(channel, data, t)`, and the runtime's own `link` channel
re-creates connectivity events. Events come out as they were published, except `id` and
`received`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from pydantic import SecretStr

from gateway import registry
from gateway.config import GatewayConfigBase, parse_config
from gateway.errors import ConfigError
from gateway.metrics import Counters
from gateway.runtime import DeviceRuntime, EventFactory, device_ref
from schemas.event import Event

log = logging.getLogger(__name__)

RECORDING_VERSION = 1


#: Secret fields a replay needs in clear: without the key, credential hashes would differ.
REPLAY_SECRETS = frozenset({"credential_key"})
REDACTED = "<redacted>"  # long enough for the `min_length` of token and HMAC secret fields
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def redact(value: Any, name: str = "") -> Any:
    """A config dump fit for a recording: secrets redacted, URL credentials stripped.

    Only the fields named in `REPLAY_SECRETS` stay in clear, because replay needs them.
    """
    if isinstance(value, SecretStr):
        return value.get_secret_value() if name in REPLAY_SECRETS else REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, name) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return _URL_USERINFO.sub(r"\g<scheme>", value)
    return value


def recording_header(config: GatewayConfigBase, scenario: str | None) -> dict[str, Any]:
    """The first line of a recording: what replay needs to rebuild the drivers, and no more."""
    dump = config.model_dump(mode="python", exclude_none=False, include={"site", "gateway_id", "devices"})
    return {"courtyard_recording": RECORDING_VERSION, "scenario": scenario, "config": redact(dump)}


class _Clock:
    """The recording's clock: the receipt time of the line being replayed."""

    def __init__(self) -> None:
        self.t: datetime | None = None

    def __call__(self) -> datetime:
        assert self.t is not None, "replay clock not set"
        return self.t


async def _no_shared(key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
    raise RuntimeError("shared resources are not available during replay")


@dataclass
class _Device:
    runtime: DeviceRuntime
    out: list[Event]


def read_recording(fh: IO[str]) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """Header and the input lines of a recording."""
    first = fh.readline()
    try:
        header = json.loads(first)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a Courtyard recording (bad header: {exc})") from None
    if not isinstance(header, dict) or header.get("courtyard_recording") != RECORDING_VERSION:
        raise ValueError("not a Courtyard recording (no version 1 header)")

    def lines() -> Iterator[dict[str, Any]]:
        for n, line in enumerate(fh, start=2):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                log.warning("recording line %d is not JSON; skipped", n)
    return header, lines()


async def replay_events(path: Path, *, speed: float = 0.0, counters: Counters | None = None) -> AsyncIterator[Event]:
    """Yield the events a recording decodes to, in recording order.

    `speed` 0 replays as fast as possible; 1 keeps the recorded pacing; 10 is ten times faster.
    """
    counters = counters or Counters()
    with path.open(encoding="utf-8") as fh:
        header, lines = read_recording(fh)
        try:
            config = parse_config(header["config"], source=f"{path} (header)")
        except (KeyError, ConfigError) as exc:
            raise ValueError(f"{path}: the header's configuration is unusable: {exc}") from None
        clock = _Clock()
        devices: dict[str, _Device] = {}
        for dev in config.devices:
            spec = registry.get(dev.driver)
            factory = EventFactory(site=config.site, gateway=config.gateway_id, device=device_ref(dev, spec.kind),
                                   simulated=dev.simulated, scenario=header.get("scenario"))
            out: list[Event] = []

            async def collect(events: Sequence[Event], out: list[Event] = out, **_: Any) -> None:
                out.extend(events)

            runtime = DeviceRuntime(dev, factory, collect, counters=counters.child(f"device.{dev.id}."),
                                    shared=_no_shared, clock=clock)
            runtime.bind(spec.build_decoder(dev, runtime))
            devices[dev.id] = _Device(runtime, out)
        last: datetime | None = None
        for rec in lines:
            if not isinstance(rec, dict):
                counters.inc("replay.bad_lines")
                continue
            dev_entry = devices.get(str(rec.get("device")))
            if dev_entry is None:
                counters.inc("replay.unknown_device")
                continue
            try:
                t = datetime.fromisoformat(rec["t"])
            except (KeyError, TypeError, ValueError):
                counters.inc("replay.bad_lines")
                continue
            if t.tzinfo is None:  # a recording always carries UTC offsets; a naive time is not ours
                counters.inc("replay.bad_lines")
                continue
            if speed > 0 and last is not None and t > last:
                await asyncio.sleep((t - last).total_seconds() / speed)
            last = t
            clock.t = t
            await dev_entry.runtime.ingest(str(rec.get("channel")), rec.get("data"))
            for event in dev_entry.out:
                yield event
            dev_entry.out.clear()
