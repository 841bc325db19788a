"""The driver test kit: fake contexts, a controllable clock, recorded input and golden cases.

* `FakeContext` (with `FakeClock`) is a `DeviceContext` with no runtime: a transport or decoder
  test moves the clock by hand and reads the drafts from `ctx.emitted`.
* `feed_all` runs a decoder over `(channel, raw, received)` inputs; `decode_recording` runs
  recorded input lines through the same path as `courtyard replay` (and so as live input).
* Golden cases are data, `tests/cases/<driver>/<case>/{config.yaml, input.jsonl,
  expected.jsonl}`, run by one parametrized test (tests/test_golden.py) or by
  `python -m gateway.testing check [DIR...]`; `regen` (or `COURTYARD_REGEN_GOLDEN=1` for the
  test) rewrites expected.jsonl, which must then be reviewed. docs/drivers.md has the how-to.

`IngestingContext` gives a fake `DeviceContext` the runtime's `bind`/`ingest` behaviour on
top of three things the fake provides: `now()`, `emit(drafts)` and, optionally,
`record(channel, raw)`. Drafts reach `emit` with `time` set to the receipt time when the
decoder left it empty, as the runtime's envelopes would carry it.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import importlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from gateway.driver import BeforeCommit, Decoder, DeviceConfig, DriverSpec, EventDraft, Ingested
from gateway.errors import OutboxFull
from gateway.metrics import Counters


class IngestingContext:
    """Mixin: the one ingest path (decode at receipt time, commit, forget on failure) for fakes."""

    decoder: Decoder | None = None

    def now(self) -> datetime:
        raise NotImplementedError

    async def emit(self, drafts: Sequence[EventDraft]) -> None:
        raise NotImplementedError

    def bind(self, decoder: Decoder) -> None:
        """The decoder `ingest` feeds."""
        self.decoder = decoder

    async def ingest(self, channel: str, raw: Any, *, before_commit: BeforeCommit | None = None,
                     wait_s: float | None = None) -> Ingested:
        """Like `DeviceRuntime.ingest`, with `emit` as the commit."""
        (done,) = await self.ingest_many([(channel, raw)], before_commit=before_commit, wait_s=wait_s)
        return done

    async def ingest_many(self, inputs: Sequence[tuple[str, Any]], *, before_commit: BeforeCommit | None = None,
                          wait_s: float | None = None) -> list[Ingested]:
        """Like `DeviceRuntime.ingest_many`: decode each input at its receipt time, one `emit` (no `wait_s`)."""
        assert self.decoder is not None, "no decoder bound"
        record = getattr(self, "record", None)
        done = []
        for channel, raw in inputs:
            now = self.now()
            if record is not None:
                record(channel, raw)
            drafts = self.decoder.feed(channel, raw, now)
            drafts[:] = [d if d.time else replace(d, time=now) for d in drafts]  # in place: keeps a list subclass
            done.append(Ingested(drafts, now))
        drafts = [d for i in done for d in i.drafts]
        try:
            if before_commit is not None:
                await before_commit(done)
            if drafts:
                await self.emit(drafts)
        except OutboxFull:  # only lane-1 events are refused for room: the decoder keeps its state
            raise
        except BaseException:
            self.decoder.forget()
            raise
        return done


# --- a fake context with a controllable clock -------------------------------------------------

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


class FakeClock:
    """A clock a test moves by hand: `clock()` is now, `advance(s)` moves it on."""

    def __init__(self, start: datetime = T0) -> None:
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> datetime:
        """Move on by `seconds` and return the new time."""
        self.t += timedelta(seconds=seconds)
        return self.t


class FakeContext(IngestingContext):
    """A `DeviceContext` for one device with no runtime: a `FakeClock`, real counters, drafts in `emitted`.

    `fail_next` makes the next commit raise it (the decoder is then told to `forget`, as by the
    runtime); `online` follows `set_online`; `shared` builds each key once, like the runtime.
    """

    def __init__(self, config: DeviceConfig, *, clock: FakeClock | None = None, recording: bool = False) -> None:
        self.config = config
        self.clock = clock or FakeClock()
        self.counters = Counters()
        self.log = logging.getLogger(f"courtyard.test.{config.id}")
        self.recording = recording
        self.emitted: list[EventDraft] = []
        self.recorded: list[tuple[str, Any, datetime]] = []
        self.online: bool | None = None
        self.fail_next: BaseException | None = None
        self._shared: dict[str, Any] = {}

    def now(self) -> datetime:
        return self.clock()

    def record(self, channel: str, raw: Any) -> None:
        """Keep what `ingest` was given, when recording (a test can write it as a case's input)."""
        if self.recording:
            self.recorded.append((channel, raw, self.clock()))

    async def emit(self, drafts: Sequence[EventDraft], *, wait_s: float | None = None) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.emitted.extend(d if d.time else replace(d, time=self.clock()) for d in drafts)

    async def set_online(self, online: bool, *, reason: str | None = None, misses: int = 0) -> None:
        self.online = online

    async def shared(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        if key not in self._shared:
            self._shared[key] = await factory()
        return self._shared[key]


def feed_all(decoder: Decoder, inputs: Iterable[tuple[str, Any, datetime]]) -> list[EventDraft]:
    """A decoder's drafts for `(channel, raw, received)` inputs, in order, with no runtime at all."""
    out: list[EventDraft] = []
    for channel, raw, now in inputs:
        out += [d if d.time else replace(d, time=now) for d in decoder.feed(channel, raw, now)]
    return out


# --- recorded input and golden cases -------------------------------------------------------------

#: Fields of an event a case does not compare: they differ on every run.
NONDETERMINISTIC = frozenset({"id", "received"})
REGEN_ENV = "COURTYARD_REGEN_GOLDEN"
CASES_DIR = Path(__file__).resolve().parent.parent / "tests" / "cases"


def read_inputs(path: Path) -> list[dict[str, Any]]:
    """A case's input lines (`{"t", "device", "channel", "data"}`); a recording's header line is skipped."""
    lines = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if n == 1 and isinstance(rec, dict) and "courtyard_recording" in rec:
            continue
        lines.append(rec)
    return lines


def comparable(event: BaseModel) -> dict[str, Any]:
    """An event as a case's expected.jsonl holds it: JSON form, without `NONDETERMINISTIC` fields."""
    data: dict[str, Any] = event.model_dump(mode="json", by_alias=True, exclude=set(NONDETERMINISTIC))
    return data


async def decode_recording(config: dict[str, Any], inputs: Sequence[dict[str, Any]], *,
                           scenario: str | None = None) -> list[dict[str, Any]]:
    """Events (as `comparable`) that `courtyard replay` gives for these inputs under this config.

    The same path as live input: each line goes through `DeviceRuntime.ingest` at its recorded time.
    """
    from gateway.config import parse_config
    from gateway.replay import recording_header, replay_events

    cfg = parse_config(config, source="<case config>")
    with tempfile.TemporaryDirectory(prefix="courtyard-case-") as tmp:
        path = Path(tmp) / "input.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for line in (recording_header(cfg, scenario), *inputs):
                fh.write(json.dumps(line, default=str) + "\n")
        return [comparable(e) async for e in replay_events(path)]


@dataclass(frozen=True)
class GoldenCase:
    """`<root>/<driver>/<case>/{config.yaml, input.jsonl, expected.jsonl}`."""

    path: Path

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"

    def config(self) -> dict[str, Any]:
        data = yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}/config.yaml is not a mapping")
        return data

    def actual(self) -> list[dict[str, Any]]:
        """The events this case's input decodes to now."""
        return asyncio.run(decode_recording(self.config(), read_inputs(self.path / "input.jsonl")))

    def expected(self) -> list[dict[str, Any]]:
        path = self.path / "expected.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def write_expected(self, events: Sequence[dict[str, Any]]) -> None:
        """Write expected.jsonl: one event a line, keys sorted, so reviews diff line by line."""
        text = "".join(json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n" for e in events)
        (self.path / "expected.jsonl").write_text(text, encoding="utf-8")

    def check(self, *, regen: bool = False) -> list[str]:
        """What differs from expected.jsonl (empty: the case passes); `regen` rewrites it instead."""
        actual = self.actual()
        if regen:
            self.write_expected(actual)
            return []
        expected = self.expected()
        if actual == expected:
            return []
        def dump(events: Sequence[dict[str, Any]]) -> list[str]:
            return [json.dumps(e, sort_keys=True, ensure_ascii=False) for e in events]
        diff = difflib.unified_diff(dump(expected), dump(actual), "expected.jsonl", "actual", lineterm="", n=1)
        return [f"{self.name}: {len(expected)} events expected, {len(actual)} decoded", *diff]


def golden_cases(*roots: Path) -> list[GoldenCase]:
    """Every case under the roots (default: this repository's tests/cases), sorted."""
    found = []
    for root in roots or (CASES_DIR,):
        found += [GoldenCase(p.parent) for p in sorted(root.glob("*/*/input.jsonl"))]
    return found


def check_golden(case: GoldenCase) -> None:
    """Assert a case decodes to its expected.jsonl; with `COURTYARD_REGEN_GOLDEN=1`, rewrite it instead."""
    problems = case.check(regen=os.environ.get(REGEN_ENV) == "1")
    assert not problems, "\n".join(problems)


def register_plugin(ref: str) -> DriverSpec:
    """Register the `DriverSpec` at "module:ATTR", as its entry point would once installed."""
    from gateway import registry

    module, _, attr = ref.partition(":")
    spec = getattr(importlib.import_module(module), attr or "DRIVER")
    if not isinstance(spec, DriverSpec):
        raise TypeError(f"{ref} is not a DriverSpec")
    registry.register(spec, f"--plugin {ref}")
    if (problem := registry.problems().get(spec.name)) is not None:
        raise ValueError(problem)
    return spec


def case_from_recording(recording: Path, case_dir: Path, *, lines: Sequence[int] | None = None,
                        device: str | None = None) -> GoldenCase:
    """Start a case from a `--record` file: config.yaml from its header, input.jsonl from its lines.

    `lines` are 1-based line numbers of the recording to keep (default: all); `device` keeps one
    device (default: the only one). Review the input, then write expected.jsonl with `regen`.
    """
    text = recording.read_text(encoding="utf-8").splitlines()
    header = json.loads(text[0])
    config = header["config"]
    devices = config["devices"]
    if device is None and len(devices) != 1:
        raise ValueError(f"{recording} has {len(devices)} devices: name one")
    devices = [_no_nulls(d) for d in devices if device is None or d["id"] == device]
    config = {"site": config["site"], "gateway_id": config["gateway_id"], "devices": devices}
    ids = {d["id"] for d in devices}
    keep = [text[n - 1] for n in (lines or range(2, len(text) + 1))]
    keep = [line for line in keep if line.strip() and json.loads(line).get("device") in ids]
    case_dir.mkdir(parents=True, exist_ok=True)
    (case_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    (case_dir / "input.jsonl").write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    return GoldenCase(case_dir)


def _no_nulls(value: Any) -> Any:
    """A config without its null settings (they are the defaults), so a case's config stays short."""
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    return value


def _line_numbers(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += range(int(a), int(b or a) + 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gateway.testing {check,regen} [ROOT_OR_CASE...]`: run or rewrite golden cases;
    `python -m gateway.testing new CASE_DIR --from RECORDING [--lines 2-9,14]`: start one."""
    parser = argparse.ArgumentParser(prog="python -m gateway.testing", description=main.__doc__)
    parser.add_argument("action", choices=("check", "regen", "new"))
    parser.add_argument("paths", nargs="*", type=Path, help="case directories or roots of <driver>/<case>")
    parser.add_argument("--from", dest="recording", type=Path, help="new: the recording to take input from")
    parser.add_argument("--lines", type=_line_numbers, help="new: recording lines to keep, e.g. 2-9,14")
    parser.add_argument("--device", help="new: the device to keep, when the recording has several")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE:ATTR",
                        help="register this DriverSpec first (a plugin not installed yet; repeatable)")
    args = parser.parse_intermixed_args(argv)
    for ref in args.plugin:
        register_plugin(ref)
    if args.action == "new":
        if len(args.paths) != 1 or args.recording is None:
            parser.error("new takes one CASE_DIR and --from RECORDING")
        case = case_from_recording(args.recording, args.paths[0], lines=args.lines, device=args.device)
        print(f"{case.name}: input written; review it, then: python -m gateway.testing regen {case.path}")
        return 0
    cases: list[GoldenCase] = []
    for p in args.paths or [CASES_DIR]:
        if (p / "input.jsonl").exists():
            cases.append(GoldenCase(p))
        else:  # a driver's folder of cases, or a root of them
            cases += [GoldenCase(c.parent) for c in sorted(p.glob("*/input.jsonl"))] or golden_cases(p)
    failed = 0
    for case in cases:
        problems = case.check(regen=args.action == "regen")
        failed += bool(problems)
        print("\n".join(problems) if problems else f"{case.name}: {'written' if args.action == 'regen' else 'ok'}")
    print(f"{len(cases)} case(s), {failed} failed")
    return 1 if failed or not cases else 0


if __name__ == "__main__":
    sys.exit(main())
