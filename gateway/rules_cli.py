"""CLI for rules and alarms: `courtyard rules test|check|log`, `courtyard alarms`, `courtyard ack|alarm`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError


def _problems(exc: ConfigError, prog: str) -> int:
    for p in exc.problems:
        print(f"{prog}: {p}", file=sys.stderr)
    return 1


def _rules_from(paths: list[str], config: str | None) -> tuple[list[Any], Any]:
    """Rules of the files given (and of the config, when given), and the config (or None)."""
    from gateway.config import load_config
    from gateway.rules import load_rules
    from schemas.rule import RuleFile

    cfg = load_config(config) if config else None
    if cfg is None:
        from gateway.yamlfile import load_model

        rules: list[Any] = []
        problems = []
        for path in paths:
            try:
                rules += load_model(RuleFile, Path(path)).rules
            except ConfigError as exc:
                problems += exc.problems
        if problems:
            raise ConfigError(problems)
        return rules, None
    return load_rules(cfg, extra_files=[Path(p) for p in paths]), cfg


def cmd_rules_test(args: argparse.Namespace) -> int:
    """Replay events through rules on a fake clock; print what would have been sent."""
    from gateway.rules import device_infos, dry_run, infos_from_events, read_events

    try:
        rules, cfg = _rules_from(args.rules, args.config)
    except ConfigError as exc:
        return _problems(exc, "courtyard rules test")
    except FileNotFoundError as exc:
        print(f"courtyard rules test: {exc}", file=sys.stderr)
        return 1
    if args.events:
        try:
            events, problems = read_events(Path(args.events))
        except OSError as exc:
            print(f"courtyard rules test: {exc}", file=sys.stderr)
            return 1
        for p in problems:
            print(p, file=sys.stderr)
        devices = device_infos(cfg) if cfg is not None else infos_from_events(events)
    else:
        try:
            events, devices = asyncio.run(_scenario_events(Path(args.scenario), args.speed))
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 1
    print(f"{len(rules)} rule(s), {len(events)} event(s), {len(devices)} device(s) as targets; nothing is sent",
          file=sys.stderr)
    sender = asyncio.run(dry_run(rules, events, devices, out=print))
    if args.json:
        for item in sender.sent:
            print(json.dumps(item))
    print(f"{len(sender.sent)} command(s) would have been sent", file=sys.stderr)
    return 0


async def _scenario_events(path: Path, speed: float | None) -> tuple[list[Any], list[Any]]:
    """Play a scenario against a gateway that runs no rules; its committed events and devices."""
    from gateway import registry
    from gateway.config import parse_config
    from gateway.history import query
    from gateway.rules import device_infos
    from gateway.runtime import Gateway
    from simulators.scenario.model import load_scenario
    from simulators.scenario.runner import ScenarioRunner

    scenario = load_scenario(path)
    runner = ScenarioRunner(scenario, speed=speed, seed=None)
    with tempfile.TemporaryDirectory(prefix="courtyard-rules-test-") as tmp:
        async with runner:
            data = runner.gateway_config(data_dir=Path(tmp))
            data.pop("rule_files", None)  # the rules under test decide; the scenario's own do not act
            data["commands"] = {"enabled": False}
            cfg = parse_config(data, source=f"{path} (generated)")
            print(f"playing {scenario.scenario} ({scenario.duration:.0f} s at speed {runner.speed}) to collect"
                  " its events...", file=sys.stderr)
            async with Gateway(cfg, scenario=scenario.scenario):
                await runner.play()
        model = registry.event_model()
        events = [model.model_validate_json(r.body) for r in query(cfg.outbox.path)]
    return events, device_infos(cfg)


def cmd_rules_check(args: argparse.Namespace) -> int:
    """Validate rules (file:line errors); list each rule's targets and what the allowlist refuses."""
    from gateway.rules import device_infos, select

    try:
        rules, cfg = _rules_from(args.rules, args.config)
    except ConfigError as exc:
        return _problems(exc, "courtyard rules check")
    devices = device_infos(cfg) if cfg is not None else []
    refused = 0
    for rule in rules:
        print(f"{rule.id}: {len(rule.when)} trigger(s), {len(rule.do)} action(s), mode {rule.mode}"
              + (f", confirm {rule.confirm.count} within {rule.confirm.within_s:g} s" if rule.confirm else ""))
        if cfg is None:
            continue
        for action in [*rule.do, *rule.undo, *rule.on_clear]:
            if action.to.same or action.to.trigger:
                continue  # depends on the trigger
            for dev in select(action.to, devices, devices[0] if devices else None):  # type: ignore[arg-type]
                if not cfg.commands.allows(f"rule:{rule.id}", dev.id, action.command):
                    refused += 1
                    print(f"  {action.command} -> {dev.id}: not allowed by commands.allow (rule:{rule.id})")
    return 1 if refused else 0


def cmd_rules_log(args: argparse.Namespace) -> int:
    """The rule journal."""
    from gateway.rules import list_firings

    path = Path(args.db) if args.db else Path(_config(args.config).outbox.path)
    rows = list_firings(path, limit=args.limit)
    for r in rows:
        if args.json:
            print(json.dumps(r))
            continue
        stamp = datetime.fromtimestamp(r["started_ns"] / 1e9, UTC).astimezone()
        ok = sum(1 for a in r["results"] if a["state"] == "succeeded")
        print(f"{stamp:%Y-%m-%d %H:%M:%S%z}  {r['id']}  {r['rule']:<20} {r['state']:<10} {r['phase']:<10}"
              f" {ok}/{len(r['results'])} succeeded  triggers={len(r['triggers'])}")
    print(f"{len(rows)} firing(s)", file=sys.stderr)
    return 0


def _config(path: str) -> Any:
    from gateway.config import load_config

    return load_config(path)


def cmd_alarms(args: argparse.Namespace) -> int:
    """The alarm book: alarms not closed (read-only, while the gateway runs)."""
    from gateway.alarm_book import list_book

    try:
        path = Path(args.db) if args.db else Path(_config(args.config).outbox.path)
    except ConfigError as exc:
        return _problems(exc, "courtyard alarms")
    views = list_book(path, include_closed=args.all)
    now = datetime.now(UTC)
    for v in views:
        if args.json:
            print(json.dumps(v.to_json()))
            continue
        age = int((now - v.raised_at).total_seconds())
        flags = " ".join(f for f, on in (("LATCHED", v.latched), ("SHELVED", v.shelved_until is not None),
                                         ("ESCALATED", v.escalated)) if on)
        where = ",".join(f"{k}={val}" for k, val in v.location.items())
        print(f"{v.alarm_id}  {v.severity or '-':<8} {v.state:<15} {v.type:<30} {v.device:<16} {age:>6}s"
              f"  {where}  {flags}" + (f"  acked by {v.acked_by}" if v.acked_by else ""))
    print(f"{len(views)} alarm(s)", file=sys.stderr)
    return 0


def cmd_alarm_op(args: argparse.Namespace) -> int:
    """ack/shelve/unshelve/reset an alarm through the broker (requester `mqtt:<user>`)."""
    import aiomqtt

    from gateway.command_bus import NODELAY
    from gateway.history import parse_duration
    from gateway.sinks.mqtt import tls_context

    op = getattr(args, "op", None) or "ack"
    try:
        cfg = _config(args.config)
    except ConfigError as exc:
        return _problems(exc, f"courtyard {op}")
    user = args.user or getpass.getuser()
    body: dict[str, Any] = {"id": str(uuid.uuid4()), "user": user, "comment": args.comment}
    if op == "shelve":
        if not args.until:
            print("courtyard alarm shelve: --for DURATION is required (e.g. --for 2h)", file=sys.stderr)
            return 2
        body["until"] = (datetime.now(UTC) + timedelta(seconds=parse_duration(args.until))).isoformat()
    topic = f"{cfg.mqtt.topic_prefix}/{cfg.site}/alarm/{args.alarm_id}/cmd/{op}"

    async def run() -> int:
        m = cfg.mqtt
        async with aiomqtt.Client(m.host, m.port, username=m.username,
                                  password=m.password.get_secret_value() if m.password else None,
                                  tls_context=tls_context(m), timeout=10, socket_options=NODELAY) as client:
            await client.subscribe(f"{topic}/result", qos=1)
            await client.publish(topic, json.dumps(body), qos=1)
            async with asyncio.timeout(args.timeout):
                async for msg in client.messages:
                    with contextlib.suppress(ValueError):
                        res = json.loads(msg.payload if isinstance(msg.payload, bytes | str) else b"")
                        if isinstance(res, dict) and res.get("id") == body["id"]:
                            print(json.dumps(res) if args.json else
                                  f"{args.alarm_id}  {op}  " + (f"ok: {res['state']}" if res["ok"]
                                                                  else f"rejected: {res['reason']}"))
                            return 0 if res["ok"] else 1
        return 3

    try:
        return asyncio.run(run())
    except TimeoutError:
        print(f"courtyard {op}: no result in {args.timeout:.0f} s (is the gateway running, subscribed to this"
              " broker?)", file=sys.stderr)
        return 3
    except Exception as exc:
        print(f"courtyard {op}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3


def add_parsers(sub: Any) -> None:
    """Add `rules`, `alarms`, `ack` and `alarm` to the CLI."""
    s = sub.add_parser("rules", help="linkage rules: dry-run, check, journal (docs/rules.md)")
    rsub = s.add_subparsers(dest="rules_cmd", required=True)
    t = rsub.add_parser("test", help="replay events through rules on a fake clock; print what would be sent")
    t.add_argument("rules", nargs="*", help="rule files (`rules: [...]`)")
    t.add_argument("-c", "--config", help="a gateway config: its rules too, and its devices as targets")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--events", help="JSON lines of events (`courtyard events --json`)")
    src.add_argument("--scenario", help="play this scenario (simulators and a gateway) and use its events")
    t.add_argument("--speed", type=float, help="scenario speed (default: the file's)")
    t.add_argument("--json", action="store_true", help="also print each command as JSON")
    t.set_defaults(func=cmd_rules_test)
    c = rsub.add_parser("check", help="validate rules; with -c, show what commands.allow refuses")
    c.add_argument("rules", nargs="*")
    c.add_argument("-c", "--config")
    c.set_defaults(func=cmd_rules_check)
    lg = rsub.add_parser("log", help="the rule journal (firings, their commands and outcomes)")
    src = lg.add_mutually_exclusive_group()
    src.add_argument("-c", "--config", default="examples/elevator.yaml", help="config naming the outbox")
    src.add_argument("--db", help="outbox database path")
    lg.add_argument("--limit", type=int, default=100)
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(func=cmd_rules_log)

    s = sub.add_parser("alarms", help="alarms not closed: state, latched, shelved, escalated")
    src = s.add_mutually_exclusive_group()
    src.add_argument("-c", "--config", default="examples/elevator.yaml", help="config naming the outbox")
    src.add_argument("--db", help="outbox database path")
    s.add_argument("--all", action="store_true", help="closed ones too")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_alarms)

    for name, hlp in (("ack", "acknowledge an alarm (through the broker)"),
                      ("alarm", "ack, shelve, unshelve or reset an alarm (through the broker)")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("-c", "--config", default="examples/elevator.yaml", help="the gateway's config (broker, site)")
        if name == "alarm":
            s.add_argument("op", choices=["ack", "shelve", "unshelve", "reset"])
        s.add_argument("alarm_id")
        s.add_argument("--user", help="who acts (default: your login); the requester is mqtt:<user>")
        s.add_argument("--comment", "-m")
        s.add_argument("--for", dest="until", help="shelve: how long, e.g. 2h")
        s.add_argument("--timeout", type=float, default=10.0)
        s.add_argument("--json", action="store_true")
        s.set_defaults(func=cmd_alarm_op)
