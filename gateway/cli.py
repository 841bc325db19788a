"""`courtyard` command line: run, replay, validate, drivers, schema, simulate, events, dead-letters, command,
commands, demo, users."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.errors import ConfigError, OutboxError


def _setup_logging(level: str, fmt: str = "text") -> None:
    from gateway.logs import setup_logging

    setup_logging(level, fmt)  # text or JSON lines on stderr; secrets masked either way
    # pymodbus dumps raw frames at ERROR on every failed request: the supervisor reports those.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if level != "debug":  # asyncua narrates every session and node at INFO; drivers report what matters
        logging.getLogger("asyncua").setLevel(logging.ERROR)


def _load(path: str) -> Any:
    from gateway.config import load_config
    from gateway.logs import register_secrets, secrets_of

    config = load_config(path)
    register_secrets(secrets_of(config))  # never in a log line, whatever a library echoes back
    return config


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a config file; print every problem with file, line and path, and name unusable plugins."""
    from gateway import registry
    from gateway.config import check_config

    try:
        report = check_config(args.config)
    except ConfigError as exc:
        return _print_problems(exc)
    for problem in report.warnings:
        print(f"warning: {problem}", file=sys.stderr)
    used = {d.driver for d in report.config.devices}
    for name, why in registry.problems().items():
        if name not in used:  # used ones are errors in `report`, at their device's line
            print(f"warning: driver plugin {name} is unusable: {why}", file=sys.stderr)
    if report.errors:
        return _print_problems(ConfigError(report.errors))
    cfg = report.config
    n = len(cfg.devices)
    print(f"{args.config}: OK ({n} device{'' if n == 1 else 's'}, site {cfg.site})")
    return 0


def _print_problems(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    return 1


def _env_mqtt() -> dict[str, Any]:
    return {"host": os.environ.get("MQTT_HOST", "127.0.0.1"), "port": int(os.environ.get("MQTT_PORT", "1883"))}


def cmd_run(args: argparse.Namespace) -> int:
    """Run the gateway until SIGINT/SIGTERM (or, with --scenario, until the scenario ends)."""
    if args.scenario:
        from gateway.scenario_run import run_scenario

        return asyncio.run(run_scenario(
            Path(args.scenario), speed=args.speed, seed=args.seed, record=Path(args.record) if args.record else None,
            data_dir=Path(os.environ.get("COURTYARD_DATA", "./courtyard-data")), mqtt=_env_mqtt(),
        ))
    from gateway.recorder import JsonlRecorder
    from gateway.replay import recording_header
    from gateway.runtime import Gateway, run_fast, run_until_signal

    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        return _print_problems(exc)
    recorder = JsonlRecorder(Path(args.record), recording_header(cfg, None)) if args.record else None
    try:
        run_fast(run_until_signal(Gateway(cfg, recorder=recorder)))
    except OutboxError as exc:  # e.g. another gateway holds the outbox: one line, no traceback
        print(f"courtyard run: {exc}", file=sys.stderr)
        return 1
    finally:
        if recorder is not None:
            recorder.close()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a recording through the decoders; print events, or deliver them with -c."""
    from gateway.scenario_run import replay_to

    try:
        cfg = _load(args.config) if args.config else None
    except ConfigError as exc:
        return _print_problems(exc)
    try:
        return asyncio.run(replay_to(Path(args.file), speed=args.speed, config=cfg, quiet=args.quiet))
    except (ValueError, OSError) as exc:
        print(f"courtyard replay: {exc}", file=sys.stderr)
        return 1


def cmd_drivers(args: argparse.Namespace) -> int:
    """List the drivers this installation knows."""
    from gateway.registry import drivers

    specs = sorted(drivers().values(), key=lambda s: s.name)
    if args.json:
        for s in specs:
            print(json.dumps({"name": s.name, "kind": s.kind, "transport": s.transport, "shape": s.shape,
                              "simulator": s.simulator, "summary": s.summary}))
        return 0
    rows = [("NAME", "DEVICE KIND", "TRANSPORT", "SHAPE", "SIMULATOR")]
    rows += [(s.name, s.kind, s.transport, s.shape, s.simulator or "-") for s in specs]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    from gateway.registry import problems

    for name, why in problems().items():
        print(f"unusable driver {name}: {why}", file=sys.stderr)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the event JSON Schema (the config's with --config, the MQTT contract's AsyncAPI with --asyncapi)."""
    from schemas.export import event_json_schema, render

    if args.asyncapi:
        from gateway.asyncapi import asyncapi_document

        print(render(asyncapi_document()), end="")
    elif args.config:
        from gateway.config import config_json_schema

        print(render(config_json_schema()), end="")
    else:
        print(render(event_json_schema()), end="")
    return 0


def cmd_new_driver(args: argparse.Namespace) -> int:
    """Write a driver plugin package (gateway/scaffold); a bad name or an existing folder exits 2."""
    from gateway.scaffold import ScaffoldError, new_driver

    try:
        target = new_driver(args.name, args.kind, args.shape, Path(args.dest))
    except ScaffoldError as exc:
        print(f"courtyard new-driver: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target}; next: pip install --no-build-isolation {target}  (see its README.md)")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run one simulator standalone (its module is imported only now: some pull in big stacks)."""
    from simulators import SIMULATOR_ALIASES, SIMULATORS

    if args.scenario:
        from gateway.scenario_run import simulate_scenario

        return asyncio.run(simulate_scenario(Path(args.scenario), speed=args.speed, seed=args.seed,
                                             print_config=args.print_config, loop=args.loop, mqtt=_env_mqtt()))
    if not args.simulator:
        print("courtyard simulate: name a simulator or give --scenario FILE", file=sys.stderr)
        return 2

    name = args.simulator
    if name not in SIMULATORS and name in SIMULATOR_ALIASES:
        name = SIMULATOR_ALIASES[name]
        print(f"courtyard simulate {args.simulator}: deprecated name, use `courtyard simulate {name}`",
              file=sys.stderr)
    module = importlib.import_module(SIMULATORS[name])
    parser = argparse.ArgumentParser(prog=f"courtyard simulate {name}",
                                     description=(module.__doc__ or "").strip().split("\n\n")[0])
    module.add_arguments(parser)
    sim_args = parser.parse_args(args.options)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(module.serve(sim_args))
    return 0


def _db_path(args: argparse.Namespace) -> Path:
    if args.db:
        return Path(args.db)
    return Path(_load(args.config).outbox.path)


def cmd_events(args: argparse.Namespace) -> int:
    """Show the local history."""
    from gateway.history import parse_duration, query

    try:
        since = parse_duration(args.since) if args.since else None
        rows = list(query(_db_path(args), since_s=since, device=args.device, type_glob=args.type, limit=args.limit))
    except (ValueError, FileNotFoundError) as exc:
        print(f"courtyard events: {exc}", file=sys.stderr)
        return 1
    if args.json:
        out = sys.stdout
        for r in rows:
            out.write(r.body + "\n")
        return 0
    # Plain, greppable lines in local time with its UTC offset; --json gives the exact published bodies.
    for r in rows:
        ev = json.loads(r.body)
        stamp = datetime.fromtimestamp(r.received_ns / 1e9, UTC).astimezone()
        when = f"{stamp:%Y-%m-%d %H:%M:%S}.{stamp.microsecond // 1000:03d}{stamp:%z}"
        payload = {k: v for k, v in ev["payload"].items() if v is not None and k != "kind"}
        summary = " ".join(f"{k}={v}" for k, v in list(payload.items())[:6])
        q = ev["quality"]
        quality = q["status"] + (f" ({', '.join(q['reasons'])})" if q["reasons"] else "")
        state = "" if ev["state"] == "momentary" else ev["state"]
        print(f"{when}  {r.device:<14} {r.cls:<12} {r.type:<34} {ev['severity']:<8} {state:<8} {quality:<8} {summary}")
    print(f"{len(rows)} event{'' if len(rows) == 1 else 's'}", file=sys.stderr)
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """Show batches a database rejected."""
    from gateway.history import dead_letters

    try:
        rows = dead_letters(_db_path(args))
    except Exception as exc:
        print(f"courtyard dead-letters: {exc}", file=sys.stderr)
        return 1
    for r in rows:
        when = datetime.fromtimestamp(int(str(r["at_ns"])) / 1e9, UTC).isoformat(timespec="seconds")
        print(f"#{r['id']} {when} sink={r['sink']} status={r['status']} events={r['count']} "
              f"seq={r['first_seq']}..{r['last_seq']}\n  reason: {r['reason']}")
        if args.verbose:
            print("  " + str(r["body"]).replace("\n", "\n  "))
    print(f"{len(rows)} dead-lettered batch{'' if len(rows) == 1 else 'es'}", file=sys.stderr)
    return 0


def _arg_value(text: str) -> Any:
    """`k=v` values: JSON when they parse (numbers, true/false), else the text itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float | bool | str) else text


def cmd_command(args: argparse.Namespace) -> int:
    """Send one command through the broker, as any requester would; print its results."""
    import getpass

    from gateway import registry
    from gateway.command_bus import CommandClient

    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        return _print_problems(exc)
    dev = next((d for d in cfg.devices if d.id == args.device), None)
    if dev is None:
        print(f"courtyard command: no device {args.device!r} in {args.config}", file=sys.stderr)
        return 2
    kv: dict[str, Any] = {}
    for item in args.args:
        key, eq, value = item.partition("=")
        if not eq or not key:
            print(f"courtyard command: arguments are key=value, not {item!r}", file=sys.stderr)
            return 2
        kv[key] = _arg_value(value)
    kind = registry.get(dev.driver).kind
    requester = args.requested_by or f"cli:{getpass.getuser()}"

    async def run() -> int:
        async with CommandClient(cfg.mqtt, cfg.site) as client:
            cid = await client.send(kind, dev.id, args.name, args=kv, ttl_s=args.ttl, requested_by=requester)
            try:
                first = await client.wait(cid, final=False, timeout=args.timeout)
                last = await client.wait(cid, timeout=args.timeout) if args.wait and not first["final"] else first
            except TimeoutError as exc:
                print(f"courtyard command: {exc} (is the gateway running, subscribed to this broker?)",
                      file=sys.stderr)
                return 3
            for res in client.results.get(cid, []):
                print(json.dumps(res) if args.json else
                      f"{res['id']}  {res['device']}  {res['name']}  {res['state']}"
                      + (f"  ({res['reason']})" if res["reason"] else "")
                      + (f"  {res['latency_ms']:.0f} ms" if res.get("latency_ms") is not None else ""))
            return 0 if last["state"] in ("accepted", "sent", "succeeded") else 1

    try:
        return asyncio.run(run())
    except Exception as exc:  # the broker refused or is not there: one line
        print(f"courtyard command: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3


def cmd_commands(args: argparse.Namespace) -> int:
    """List the command journal."""
    from gateway.commands import list_journal
    from gateway.history import parse_duration

    try:
        since = parse_duration(args.since) if args.since else None
        since_ns = int((datetime.now(UTC).timestamp() - since) * 1e9) if since is not None else None
        rows = list_journal(_db_path(args), device=args.device, state=args.state, since_ns=since_ns,
                            limit=args.limit)
    except (ValueError, FileNotFoundError) as exc:
        print(f"courtyard commands: {exc}", file=sys.stderr)
        return 1
    for r in rows:
        if args.json:
            print(json.dumps({"id": r.id, "device": r.device, "kind": r.kind, "name": r.name, "args": r.args,
                              "state": r.state, "reason": r.reason, "requester": r.requester,
                              "requested_by": r.requested_by, "latency_ms": r.latency_ms,
                              "accepted_ns": r.accepted_ns, "updated_ns": r.updated_ns}))
            continue
        stamp = datetime.fromtimestamp(r.accepted_ns / 1e9, UTC).astimezone()
        args_text = " ".join(f"{k}={v}" for k, v in r.args.items())
        print(f"{stamp:%Y-%m-%d %H:%M:%S%z}  {r.id:<36}  {r.device:<14} {r.name:<16} {r.state:<9} "
              f"{r.latency_ms:>8.0f} ms  {r.requester or '':<20} {args_text}" + (f"  ({r.reason})" if r.reason else ""))
    print(f"{len(rows)} command{'' if len(rows) == 1 else 's'}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the embedded demo: simulators plus gateway, nothing to configure."""
    from gateway.demo import run_demo

    return asyncio.run(run_demo(duration=args.duration, headless=args.headless, data_dir=Path(args.data),
                                speed=args.speed, console_port=None if args.console_port < 0 else args.console_port))


def _users_file(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    from gateway.config import load_config

    cfg = load_config(args.config)
    if cfg.console is None or cfg.console.users_file is None:
        raise SystemExit(f"courtyard users: {args.config} has no console.users_file; name one, or use --file")
    return cfg.console.users_file


def _new_password(name: str) -> str:
    """From COURTYARD_PASSWORD (scripts), else asked twice on the terminal; never an argument."""
    import getpass

    from gateway.console.auth import MAX_PASSWORD, MIN_PASSWORD

    password = os.environ.get("COURTYARD_PASSWORD")
    if password is None:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise SystemExit("courtyard users: the passwords differ")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise SystemExit(f"courtyard users: a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def cmd_users(args: argparse.Namespace) -> int:
    """Console logins in a users file (0600): add, passwd, remove, list."""
    from pydantic import SecretStr

    from gateway.config import ConsoleUser
    from gateway.console.auth import hash_password, load_users_file, save_users_file, valid_user_name

    path = _users_file(args)
    users = load_users_file(path)
    by_name = {u.name: u for u in users}
    if args.action == "list":
        for u in users:
            print(f"{u.name}\t{u.role}")
        return 0
    name = args.name
    if not name or not valid_user_name(name):
        print("courtyard users: a user name is letters, digits and _.@- (at most 64)", file=sys.stderr)
        return 2
    if args.action == "add":
        if name in by_name:
            print(f"courtyard users: {name} exists (use passwd)", file=sys.stderr)
            return 1
        by_name[name] = ConsoleUser(name=name, role=args.role or "operator",
                                    password_hash=SecretStr(hash_password(_new_password(name))))
    elif args.action == "passwd":
        if name not in by_name:
            print(f"courtyard users: no user {name}", file=sys.stderr)
            return 1
        old = by_name[name]
        by_name[name] = ConsoleUser(name=name, role=args.role or old.role,
                                    password_hash=SecretStr(hash_password(_new_password(name))))
    elif args.action == "remove" and by_name.pop(name, None) is None:
        print(f"courtyard users: no user {name}", file=sys.stderr)
        return 1
    save_users_file(path, list(by_name.values()))
    print(f"courtyard users: {args.action} {name}: done ({path}); a running gateway reads it at the next login")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    from simulators import SIMULATOR_ALIASES, SIMULATORS

    aliases = {old: new for old, new in SIMULATOR_ALIASES.items() if old not in SIMULATORS}
    deprecated = "".join(f" ({old}: deprecated name of {new})" for old, new in sorted(aliases.items()))

    p = argparse.ArgumentParser(prog="courtyard", description="Courtyard IoT gateway for residential communities")
    p.add_argument("--version", action="version", version=f"courtyard {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="json: one object per line (time, level, logger, message, device, sink, event_id)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="run the gateway until SIGINT/SIGTERM")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("-c", "--config", help="gateway configuration file")
    src.add_argument("--scenario", metavar="FILE",
                     help="start the scenario's simulators in this process, connect to them, play the timeline")
    s.add_argument("--record", metavar="FILE", help="record every driver's raw inputs (JSON lines)")
    s.add_argument("--speed", type=float, help="scenario speed factor (overrides the file's)")
    s.add_argument("--seed", type=int, help="scenario seed (overrides the file's)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("replay", help="feed a recording through the same decoders")
    s.add_argument("file")
    s.add_argument("--speed", type=float, default=0.0, help="0: as fast as possible (default); 1: recorded pace")
    s.add_argument("-c", "--config", help="also deliver the events through this config's outbox and sinks")
    s.add_argument("-q", "--quiet", action="store_true", help="do not print events")
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("validate", help="check a config file")
    s.add_argument("-c", "--config", required=True)
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("drivers", help="list drivers: name, device kind, transport")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_drivers)

    s = sub.add_parser("schema", help="print the event JSON Schema")
    kind = s.add_mutually_exclusive_group()
    kind.add_argument("--config", action="store_true", help="print the configuration's JSON Schema instead")
    kind.add_argument("--asyncapi", action="store_true",
                      help="print the AsyncAPI 3 document of the MQTT contract (schemas/asyncapi.json)")
    s.set_defaults(func=cmd_schema)

    s = sub.add_parser("new-driver", help="write a driver plugin package to start from (docs/drivers.md)")
    s.add_argument("name", help="driver name, a lowercase identifier (the package is courtyard_NAME)")
    s.add_argument("--kind", required=True, help="device kind of its events, a lowercase identifier")
    s.add_argument("--shape", required=True, choices=["polling", "push"],
                   help="polling: Modbus TCP, polled; push: HTTP posts to the shared listener")
    s.add_argument("--dest", default=".", help="folder to write courtyard-NAME/ in")
    s.set_defaults(func=cmd_new_driver)

    s = sub.add_parser("simulate", help="run a device simulator, or a whole scenario, standalone",
                       description=f"simulators: {', '.join(SIMULATORS)}{deprecated}; "
                       "`courtyard simulate NAME --help`; "
                       "or `courtyard simulate --scenario FILE [--print-config]`")
    s.add_argument("--scenario", metavar="FILE", help="start every simulator of a scenario and play its timeline")
    s.add_argument("--print-config", action="store_true", help="print the gateway config that reaches them")
    s.add_argument("--speed", type=float, help="scenario speed factor")
    s.add_argument("--seed", type=int, help="scenario seed")
    s.add_argument("--loop", action="store_true", help="replay the timeline until interrupted")
    s.add_argument("simulator", nargs="?", choices=sorted([*SIMULATORS, *aliases]))
    s.add_argument("options", nargs=argparse.REMAINDER, help="the simulator's own options")
    s.set_defaults(func=cmd_simulate)

    for name, func, hlp in (("events", cmd_events, "show the local event history"),
                            ("dead-letters", cmd_dead_letters, "show batches a database rejected")):
        s = sub.add_parser(name, help=hlp)
        src = s.add_mutually_exclusive_group()
        src.add_argument("-c", "--config", default="examples/elevator.yaml", help="config naming the outbox")
        src.add_argument("--db", help="outbox database path")
        if name == "events":
            s.add_argument("--since", help="e.g. 10m, 2h, 7d")
            s.add_argument("--device")
            s.add_argument("--type", help="glob, e.g. 'elevator.*'")
            s.add_argument("--limit", type=int, help="only the last N")
            s.add_argument("--json", action="store_true", help="one event per line, exactly as published")
        else:
            s.add_argument("-v", "--verbose", action="store_true", help="print the rejected lines")
        s.set_defaults(func=func)

    s = sub.add_parser("command", help="send a command to a device through the broker (docs/commands.md)")
    s.add_argument("-c", "--config", default="examples/elevator.yaml", help="the gateway's config (broker, site)")
    s.add_argument("device")
    s.add_argument("name", help="e.g. call, hold_door, return_to_floor")
    s.add_argument("args", nargs="*", metavar="KEY=VALUE", help="e.g. floor=1 seconds=60")
    s.add_argument("--wait", action="store_true", help="wait for the outcome, not only acceptance")
    s.add_argument("--ttl", type=float, default=30.0, help="seconds after which it is never executed (default 30)")
    s.add_argument("--timeout", type=float, default=30.0, help="how long to wait for results")
    s.add_argument("--requested-by", help="who asks (default: cli:<login>)")
    s.add_argument("--json", action="store_true", help="print the result messages as published")
    s.set_defaults(func=cmd_command)

    s = sub.add_parser("commands", help="list the command journal")
    src = s.add_mutually_exclusive_group()
    src.add_argument("-c", "--config", default="examples/elevator.yaml", help="config naming the outbox")
    src.add_argument("--db", help="outbox database path")
    s.add_argument("--device")
    s.add_argument("--state", choices=["accepted", "sent", "succeeded", "failed", "expired", "rejected"])
    s.add_argument("--since", help="e.g. 10m, 2h, 7d")
    s.add_argument("--limit", type=int, default=1000, help="only the last N (default 1000)")
    s.add_argument("--json", action="store_true", help="one command per line")
    s.set_defaults(func=cmd_commands)

    s = sub.add_parser("demo", help="run simulators and the gateway together, nothing to configure")
    s.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    s.add_argument("--headless", action="store_true",
                   help="plain log instead of the live view (automatic when stdout is not a terminal)")
    s.add_argument("--data", default="./courtyard-data/demo", help="where the demo keeps its history")
    s.add_argument("--speed", type=float, help="scenario speed factor (default: the community file's)")
    s.add_argument("--console-port", type=int, default=8080,
                   help="serve the duty console on 127.0.0.1:PORT (default 8080; 0: a free port; -1: none)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("users", help="console logins in a users file: add, passwd, remove, list (docs/console.md)",
                       description="Passwords come from COURTYARD_PASSWORD or are asked on the terminal, never"
                       " from an argument (arguments show in `ps` and shell history).")
    s.add_argument("action", choices=["add", "passwd", "remove", "list"])
    s.add_argument("name", nargs="?", help="the login")
    s.add_argument("--role", choices=["viewer", "operator", "admin"], help="for add (default operator) and passwd")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("-c", "--config", help="the gateway config naming console.users_file")
    src.add_argument("--file", help="the users file itself")
    s.set_defaults(func=cmd_users)
    from gateway.rules_cli import add_parsers

    add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `courtyard` command."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
