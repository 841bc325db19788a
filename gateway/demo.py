"""`courtyard demo`: simulators and the gateway in one process, with a live view.

MQTT: by default a private mosquitto the demo starts on a free loopback port and stops on
exit, so nothing it publishes outlives it. `MQTT_HOST` and/or `MQTT_PORT` (each honoured
alone; the other defaults to 127.0.0.1 / 1883) point it at a broker of yours instead: the
demo then clears every retained topic under its site (`courtyard/jinxiu-garden/#`) at start
and on exit, Ctrl-C included. With neither set and no mosquitto installed, events go to the
local history only. The first line printed names the broker.

Secrets (camera tokens, the gates' credential-hash key) are generated for each run and never
printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import parse_config
from gateway.files import make_private_dirs
from gateway.runtime import Gateway
from schemas.event import Event

if TYPE_CHECKING:
    from simulators.scenario.model import Scenario


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def plural(n: int, word: str) -> str:
    """`1 device`, `2 devices`."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass
class Broker:
    """Where the demo publishes; a private mosquitto can be stopped and restarted (broker outages)."""

    host: str | None
    port: int
    binary: str | None = None
    conf: Path | None = None
    origin: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the private broker and wait until it listens."""
        if self.binary is None or self.conf is None or self.proc is not None:
            return
        # Its own session: a terminal's Ctrl-C (or `timeout`, systemd) signals the whole process
        # group, and a broker dying with the demo would cut the gateway off before its clean stop
        # (paho logs broken pipes, the offline status never goes out). The demo stops it itself.
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 5
        while not _listening("127.0.0.1", self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the private broker (no-op for a broker the demo does not own)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self.proc = None

    def close(self) -> None:
        """Stop the private broker for good and remove its configuration folder."""
        self.stop()
        if self.conf is not None:
            shutil.rmtree(self.conf.parent, ignore_errors=True)

    @property
    def owned(self) -> bool:
        """True when the demo started this broker (so a scenario may take it down)."""
        return self.binary is not None

    @property
    def external(self) -> bool:
        """True for a broker the user named: the demo must leave no retained topics on it."""
        return self.host is not None and not self.owned


def find_broker(env: Mapping[str, str] | None = None) -> Broker:
    """Pick the MQTT broker as the module docstring says (a private one unless told otherwise)."""
    env = os.environ if env is None else env
    host, port_text = env.get("MQTT_HOST", ""), env.get("MQTT_PORT", "")
    if host or port_text:
        try:
            port = int(port_text or "1883")
        except ValueError:
            raise ValueError(f"MQTT_PORT must be a port number, not {port_text!r}") from None
        host = host or "127.0.0.1"
        named = " and ".join(n for n, v in (("MQTT_HOST", env.get("MQTT_HOST")), ("MQTT_PORT", port_text)) if v)
        return Broker(host, port, origin=f"your broker at {host}:{port} (from {named}); the demo clears "
                                         "its retained topics there on exit")
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if binary is None:
        return Broker(None, 0, origin="none (mosquitto is not installed and MQTT_HOST/MQTT_PORT are not set); "
                                      "events go to the local history only")
    port = _free_port()
    conf = Path(tempfile.mkdtemp(prefix="courtyard-demo-")) / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = Broker("127.0.0.1", port, binary=binary, conf=conf,
                    origin=f"a private mosquitto on 127.0.0.1:{port}, stopped on exit")
    broker.start()
    if not _listening("127.0.0.1", port):  # say so now rather than show a gateway retrying forever
        broker.origin = f"{binary} did not start on 127.0.0.1:{port}; events go to the local history only"
        broker.close()
        return Broker(None, 0, origin=broker.origin)
    return broker


async def clear_retained(host: str, port: int, topic_filter: str, *, quiet_s: float = 0.5,
                         max_s: float = 10.0) -> int:
    """Empty every retained topic under `topic_filter`; return how many there were.

    The broker sends the retained messages right after the subscription is granted, so a
    short quiet period after the last one means all have arrived.
    """
    import aiomqtt

    found: set[str] = set()
    async with aiomqtt.Client(host, port, identifier=f"courtyard-demo-sweep-{secrets.token_hex(4)}") as client:
        await client.subscribe(topic_filter, qos=1)
        messages = aiter(client.messages)
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            try:
                msg = await asyncio.wait_for(anext(messages), quiet_s)
            except TimeoutError:
                break
            if msg.retain and msg.payload:
                found.add(str(msg.topic))
        await client.unsubscribe(topic_filter)
        for topic in sorted(found):
            await client.publish(topic, b"", qos=1, retain=True)
    return len(found)


# --- live view: human text per device kind ---------------------------------------------------


def _local(when: datetime) -> str:
    return f"{when.astimezone():%H:%M:%S}"


def _words(token: str) -> str:
    return token.replace("_", " ")


def event_title(ev: Event) -> str:
    """`elevator.passenger_trapped` -> `passenger trapped`."""
    return _words(ev.type.split(".", 1)[1])


def event_detail(ev: Event) -> str:
    """A few words about an event's payload, per kind (no Python reprs)."""
    p = ev.payload.model_dump(exclude_none=True)
    parts: list[str] = []
    kind = p.get("kind")
    if kind == "elevator":
        if "floor" in p:
            parts.append(f"floor {p['floor']}")
        if p.get("fault_code"):
            parts.append(f"fault code {p['fault_code']}")
        if "trap" in p:
            parts.append(_words(p["trap"]))
        if "mode_to" in p:
            parts.append(f"{_words(p.get('mode_from', '?'))} -> {_words(p['mode_to'])}")
    elif kind == "access":
        if "door_no" in p:
            parts.append(f"door {p['door_no']}")
        if "direction" in p and p["direction"] != "unknown":
            parts.append(p["direction"])
        if "credential_type" in p and p["credential_type"] != "none":
            parts.append(p["credential_type"])
        if "reason" in p:
            parts.append(_words(p["reason"]))
    elif kind == "pa":
        where = p.get("zone_name") or p.get("zone")
        if where:
            parts.append(str(where))
        for key in ("line", "amplifier"):
            if key in p:
                parts.append(f"{key} {p[key]}")
        if "fault" in p:
            parts.append(_words(str(p["fault"])))
        if "zone_state" in p and ev.class_ == "status":
            parts.append(_words(p["zone_state"]))
        if "source" in p and ev.class_ == "status":
            parts.append(str(p["source"]))
    elif kind == "lpr":
        for key in ("plate", "direction"):
            if key in p and p[key] != "unknown":
                parts.append(str(p[key]))
        if "decision" in p:
            parts.append(("opened" if p["decision"] == "open" else "denied") + f" ({_words(p.get('reason', '?'))})")
        if "gate_state" in p:
            parts.append(f"barrier {p['gate_state']}")
        if "detail" in p:
            parts.append(str(p["detail"]))
    elif kind == "camera":
        parts += _camera_detail(p)
    elif kind == "connectivity" and p.get("reason"):
        parts.append(str(p["reason"]))
    elif kind == "rule":  # the gateway's own linkage (docs/rules.md)
        done = [a for a in p.get("actions", []) if a["phase"] in ("do", "clear")]
        ok = sum(1 for a in done if a["state"] == "succeeded")
        parts.append(f"{p['rule']} ({p['phase']})")
        if done:
            parts.append(f"{ok}/{len(done)} commands succeeded")
        if p.get("reason"):
            parts.append(_words(str(p["reason"])))
    elif kind == "alarm_lifecycle":
        parts.append(_words(p["lifecycle_state"]))
        if p.get("user"):
            parts.append(f"by {p['user']}")
    if ev.quality.status != "valid":
        parts.append(f"{ev.quality.status}: {', '.join(ev.quality.reasons)}")
    return ", ".join(parts)


def _camera_detail(p: dict[str, Any]) -> list[str]:
    """Where a camera saw it ("B1 garage, column 14"), on which channel, and how sure it was."""
    loc = p.get("location") or {}
    place = [f"{loc['garage']} garage" if loc.get("garage") else "",
             f"building {loc['building']}" if loc.get("building") and not loc.get("garage") else "",
             f"unit {loc['unit']}" if loc.get("unit") else "", str(loc.get("zone") or "")]
    parts = [", ".join(x for x in place if x)] if any(place) else []
    redundant = {loc.get("zone"), "other", "garage" if loc.get("garage") else None}
    if p.get("where") and p["where"] not in redundant:
        parts.append(_words(p["where"]))
    channel = p.get("channel_name") or (f"channel {p['channel']}" if p.get("channel") else None)
    if channel and channel != loc.get("zone"):
        parts.append(str(channel))
    if p.get("region"):
        parts.append(str(p["region"]))
    if "confidence" in p:
        parts.append(f"{round(p['confidence'] * 100)}%")
    if p.get("code") or p.get("detail"):
        parts.append(str(p.get("detail") or p.get("code")))
    return parts


@dataclass
class DeviceRow:
    """What the device table knows about one device: link, and the facts its kind shows."""

    kind: str
    link: str = "?"
    facts: dict[str, Any] = field(default_factory=dict)
    zones: dict[str, dict[str, Any]] = field(default_factory=dict)
    alarms: dict[str, str] = field(default_factory=dict)  # alarm_id -> short description

    def update(self, ev: Event) -> None:
        """Fold one accepted event into the row."""
        if ev.class_ == "connectivity":
            self.link = "online" if ev.type == "device.online" else "offline"
            return
        if ev.alarm_id:
            if ev.state == "raised":
                detail = event_detail(ev) if ev.device.kind in ("pa", "camera") else ""
                self.alarms[ev.alarm_id] = event_title(ev) + (f" ({detail})" if detail else "")
            else:
                self.alarms.pop(ev.alarm_id, None)
        if ev.quality.status == "rejected":
            return
        p = ev.payload.model_dump(exclude_none=True)
        if ev.type == "elevator.status":
            self.facts.update(p)
        elif ev.type == "gate.status":
            self.facts.update({k: p[k] for k in ("open_doors", "mode", "on_battery", "battery_pct", "tamper")
                               if k in p})
        elif ev.type in ("door.opened", "door.closed") and "door_no" in p:
            doors = set(self.facts.get("open_doors", ()))
            (doors.add if ev.type == "door.opened" else doors.discard)(p["door_no"])
            self.facts["open_doors"] = tuple(sorted(doors))
        elif ev.type.startswith(("access.", "gate.")) and ev.class_ == "event":
            self.facts["last_pass"] = f"{_local(ev.time)} {event_title(ev)}" + (
                f" ({event_detail(ev)})" if event_detail(ev) else "")
        elif ev.device.kind == "pa" and "zone" in p and ev.class_ == "status":
            self.zones.setdefault(p["zone"], {}).update(
                {k: p[k] for k in ("zone_name", "zone_state", "source") if k in p})
        elif ev.type == "lpr.plate_read":
            self.facts["last_plate"] = f"{_local(ev.time)} {p.get('plate', '?')} {p.get('direction', '')}".rstrip()
            self.facts.pop("decision", None)
        elif ev.type == "lpr.gate_decision":
            self.facts["decision"] = ("opened" if p.get("decision") == "open" else "denied") + (
                f" ({_words(p['reason'])})" if "reason" in p else "")
        elif ev.type == "lpr.gate_state" and "gate_state" in p:
            self.facts["barrier"] = p["gate_state"]
        elif ev.device.kind == "camera" and ev.state != "cleared" and ev.type.startswith("camera."):
            detail = event_detail(ev)
            self.facts["last_detection"] = f"{_local(ev.time)} {event_title(ev)}" + (f" ({detail})" if detail else "")

    def text(self) -> str:
        """The device's current state in words."""
        f = self.facts
        parts: list[str] = []
        if self.kind == "elevator" and "floor" in f:
            moving = {"up": "going up", "down": "going down"}.get(f.get("direction", ""), "stopped")
            parts.append(f"floor {f['floor']}, {moving}, doors {f.get('door_state', '?')}")
            if f.get("occupied"):
                parts.append("occupied")
            if f.get("service_mode") not in (None, "normal"):
                parts.append(_words(f["service_mode"]))
        elif self.kind == "access_gate":
            if "open_doors" in f:
                doors = f["open_doors"]
                parts.append(f"doors open: {', '.join(map(str, doors))}" if doors else "doors closed")
            if f.get("mode") not in (None, "normal"):
                parts.append(_words(f["mode"]))
            if f.get("on_battery"):
                parts.append(f"on battery {f.get('battery_pct', '?')}%")
            if f.get("tamper"):
                parts.append("tamper")
            if "last_pass" in f:
                parts.append(f"last pass {f['last_pass']}")
        elif self.kind == "pa":
            for zone, z in sorted(self.zones.items()):
                state = _words(z.get("zone_state", "?"))
                source = f" ({z['source']})" if z.get("source") and z.get("zone_state") != "idle" else ""
                parts.append(f"{z.get('zone_name') or zone}: {state}{source}")
        elif self.kind == "plate_reader":
            if "last_plate" in f:
                parts.append(f"last {f['last_plate']}" + (f" -> {f['decision']}" if "decision" in f else ""))
            if "barrier" in f:
                parts.append(f"barrier {f['barrier']}")
        elif self.kind == "camera":
            parts.append(f"last {f['last_detection']}" if "last_detection" in f else "watching")
        text = "; ".join(parts)
        if self.alarms:
            text = "ALARM " + ", ".join(self.alarms.values()) + ("; " + text if text else "")
        return text


#: Event classes the recent panel shows (status lives in the device table); rule firings too.
NOTABLE_CLASSES = frozenset({"alarm", "fault", "connectivity", "command"})


def is_notable(ev: Event) -> bool:
    """Alarms, faults, link changes and anything above `info`: what the recent panel lists."""
    return ev.class_ in NOTABLE_CLASSES or ev.severity != "info" or ev.type.startswith("rule.")


@dataclass
class DemoView:
    """What the live view shows, fed by every accepted event."""

    topic_prefix: str
    site: str
    devices: dict[str, DeviceRow] = field(default_factory=dict)
    alarms: dict[str, Event] = field(default_factory=dict)
    recent: deque[Event] = field(default_factory=lambda: deque(maxlen=500))
    counts: Counter[str] = field(default_factory=Counter)
    window: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    started: float = field(default_factory=time.monotonic)

    def add(self, events: Sequence[Event]) -> list[str]:
        """Update from accepted events; return one log line per event (the headless output)."""
        lines = []
        now = time.monotonic()
        for ev in events:
            self.window.append(now)
            self.counts[ev.class_] += 1
            self.devices.setdefault(ev.device.id, DeviceRow(ev.device.kind)).update(ev)
            if ev.alarm_id:
                if ev.state == "raised":
                    self.alarms[ev.alarm_id] = ev
                elif ev.state == "cleared":  # the alarm book's transitions (momentary) keep it listed
                    self.alarms.pop(ev.alarm_id, None)
            if is_notable(ev):
                self.recent.append(ev)
            topic = f"{self.topic_prefix}/{self.site}/{ev.device.kind}/{ev.device.id}/event/{ev.type}"
            extra = f" [{ev.state}]" if ev.state != "momentary" else ""
            lines.append(f"{_local(ev.received)} {ev.severity:<8} {topic}{extra}")
        return lines

    def rate(self) -> float:
        """Events per second over the last 5 seconds."""
        now = time.monotonic()
        return sum(1 for t in self.window if now - t <= 5) / 5


_SEVERITY_STYLE = {"critical": "bold red", "major": "red", "minor": "yellow", "warning": "yellow"}


def render(view: DemoView, broker: Broker, db: Path, *, width: int, height: int) -> Any:
    """The live view, fitted to `width` x `height`: devices first, the recent panel takes the rest."""
    from rich import box
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    measure = Console(width=width, height=height, file=open(os.devnull, "w"), force_terminal=True)  # noqa: SIM115
    try:
        def lines_of(renderable: Any) -> int:
            return len(measure.render_lines(renderable, measure.options, pad=False))

        sub = (f"mosquitto_sub -h {broker.host} -p {broker.port} -t '{view.topic_prefix}/#' -v"
               if broker.host else "no MQTT broker: events go to the local history only")
        head = Panel(Text.from_markup(
            f"[bold]Courtyard demo[/]  {view.rate():.1f} events/s  status {view.counts['status']}  "
            f"alarms+faults {view.counts['alarm'] + view.counts['fault']}  "
            f"connectivity {view.counts['connectivity']}  (times: local)\n"
            f"MQTT: {broker.origin}\nSubscribe: {sub}\nHistory: courtyard events --db {db}"), box=box.ROUNDED)

        alarms = Table(box=box.SIMPLE_HEAD, show_edge=False, expand=True,
                       title=f"Active alarms ({len(view.alarms)})", title_justify="left")
        for column in ("since", "device"):
            alarms.add_column(column, no_wrap=True)
        alarms.add_column("alarm", no_wrap=True, overflow="ellipsis", ratio=1)
        alarms.add_column("severity", no_wrap=True)
        shown_alarms = list(view.alarms.values())[-max(1, height // 6):]
        for ev in shown_alarms:
            alarms.add_row(_local(ev.received), ev.device.id, event_title(ev) + (
                f" ({event_detail(ev)})" if ev.device.kind in ("pa", "camera") else ""),
                f"[{_SEVERITY_STYLE.get(ev.severity, '')}]{ev.severity}[/]")
        if len(view.alarms) > len(shown_alarms):
            alarms.add_row("", f"... {len(view.alarms) - len(shown_alarms)} more", "", "")

        rows = sorted(view.devices.items(), key=lambda kv: (kv[1].kind, kv[0]))

        def device_table(limit: int) -> Table:
            table = Table(box=box.SIMPLE_HEAD, show_edge=False, expand=True, title=f"Devices ({len(rows)})",
                          title_justify="left")
            table.add_column("device", no_wrap=True)
            table.add_column("kind", no_wrap=True)
            table.add_column("link", no_wrap=True)
            table.add_column("state", no_wrap=True, overflow="ellipsis", ratio=1)
            # When the terminal is short, devices with alarms or a lost link come first.
            ordered = sorted(rows, key=lambda kv: (not kv[1].alarms and kv[1].link != "offline")) \
                if limit < len(rows) else rows
            visible = ordered[:limit] if limit < len(rows) else ordered
            for dev_id, d in visible:
                style = "green" if d.link == "online" else "red" if d.link == "offline" else ""
                state = Text(d.text(), style="bold red" if d.alarms else "")
                table.add_row(dev_id, d.kind, Text(d.link, style=style), state)
            if limit < len(rows):
                table.add_row(f"... {len(rows) - limit} more", "", "", "(a taller terminal shows them all)")
            return table

        min_recent = 5  # the recent panel's border plus three lines
        fixed = lines_of(head) + lines_of(alarms)
        devices = device_table(len(rows))
        spare = height - fixed - lines_of(devices)
        if spare < min_recent and rows:
            overhead = lines_of(device_table(0)) - 1  # without the "... more" row
            devices = device_table(max(1, height - fixed - min_recent - overhead - 1))
            spare = height - fixed - lines_of(devices)
        recent_rows = max(1, spare - 2)
        recent = Table.grid(expand=True, padding=(0, 1))
        for column in ("time", "severity", "device", "what"):
            recent.add_column(column, no_wrap=True)
        recent.add_column("detail", no_wrap=True, overflow="ellipsis", ratio=1)
        for ev in list(view.recent)[-recent_rows:]:
            state = f" {ev.state}" if ev.state != "momentary" else ""
            recent.add_row(_local(ev.received), Text(ev.severity, style=_SEVERITY_STYLE.get(ev.severity, "")),
                           ev.device.id, event_title(ev) + state, event_detail(ev))
        body: Any = recent if view.recent else Text("(no alarms or faults yet)")
        panel = Panel(body, title="Alarms, faults and link changes the platform received (latest last)",
                      title_align="left", height=recent_rows + 2, box=box.ROUNDED)
        return Group(head, devices, alarms, panel)
    finally:
        measure.file.close()


def generate_secrets(scenario: Scenario) -> list[str]:
    """Give every camera a fresh token and every gate a fresh credential key; return them.

    Nothing public (a default in a file, a seed-derived value) can then authenticate to the
    demo's listeners or reverse its credential hashes.
    """
    made = []
    for dev in scenario.devices:
        if dev.kind == "plate_reader":
            dev.settings["token"] = secrets.token_urlsafe(24)
            made.append(dev.settings["token"])
        elif dev.kind == "access_gate":
            dev.settings["credential_key"] = secrets.token_urlsafe(32)
            made.append(dev.settings["credential_key"])
    return made


def community_scenario() -> Path:
    """The shipped sample community."""
    from scenarios import files

    return files()["community"]


def _quiet_logging_for_live_view() -> list[tuple[logging.Handler, int]]:
    """Raise stream handlers to WARNING while the live view owns the terminal; return what to restore."""
    saved: list[tuple[logging.Handler, int]] = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            saved.append((handler, handler.level))
            handler.setLevel(max(handler.level, logging.WARNING))
    return saved


def demo_console(port: int) -> tuple[dict[str, Any], str, str]:
    """The demo's console section (loopback) with a generated operator login: (section, user, password).

    The demo's allowlist lets that operator command every device (a real site lists its own).
    """
    from gateway.console.auth import hash_password

    user, password = "operator", secrets.token_urlsafe(12)
    section = {"host": "127.0.0.1", "port": port,
               "users": [{"name": user, "role": "operator", "password_hash": hash_password(password)}]}
    return section, user, password


async def run_demo(*, duration: float | None, headless: bool, data_dir: Path, speed: float | None = None,
                   console_port: int | None = 8080) -> int:
    """Run the demo until Ctrl-C / SIGTERM or `duration` seconds (with the duty console unless port is None)."""
    from simulators.scenario.model import load_scenario
    from simulators.scenario.runner import Infra, ScenarioRunner

    if not headless and not sys.stdout.isatty():
        headless = True  # a pipe or a file gets the plain log; the live view needs a terminal
    if console_port and _listening("127.0.0.1", console_port):
        print(f"courtyard demo: 127.0.0.1:{console_port} is taken, so the console cannot serve there: pass"
              " --console-port P (0: any free port, -1: no console)", file=sys.stderr)
        return 2
    make_private_dirs(data_dir)  # 0700: the history holds plates in clear
    scenario = load_scenario(community_scenario())
    generate_secrets(scenario)
    try:
        broker = find_broker()
    except ValueError as exc:
        print(f"courtyard demo: {exc}", file=sys.stderr)
        return 2
    print(f"courtyard demo: MQTT broker: {broker.origin}", flush=True)
    runner = ScenarioRunner(scenario, speed=speed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    view: DemoView | None = None
    sweep = f"courtyard/{scenario.site.id}/#"
    quieted = [] if headless else _quiet_logging_for_live_view()  # INFO chatter would scroll the view away
    try:
        if broker.external:
            assert broker.host is not None
            await _sweep(broker, sweep, "left by an earlier run")
        await runner.start()
        mqtt = {"host": broker.host, "port": broker.port, "backoff_max_s": 2.0} if broker.host else None
        raw = runner.gateway_config(data_dir=data_dir, mqtt=mqtt, gateway_id="gw-demo")
        login = None
        if console_port is not None:
            raw["console"], *login = demo_console(console_port)
            # Added to what the scenario allows (its rules keep their own entries).
            raw.setdefault("commands", {}).setdefault("allow", []).append(
                {"requesters": ["console:*"], "devices": ["*"], "commands": ["*"], "note": "the demo's operator"})
            # and may acknowledge, shelve and reset alarms (the alarm book's own allowlist)
            raw.setdefault("alarms", {}).setdefault("lifecycle", {}).setdefault("allow", []).append(
                {"requesters": ["console:*"], "devices": ["*"], "ops": ["*"]})
        cfg = parse_config(raw, source="<demo>")
        sweep = f"{cfg.mqtt.topic_prefix}/{cfg.site}/#"
        gw = Gateway(cfg, scenario=scenario.scenario)
        view = DemoView(cfg.mqtt.topic_prefix, cfg.site)
        append = gw.outbox.append

        async def tapped(events: Sequence[Event], *, wait_s: float | None = None, linger: float = 0.0) -> None:
            await append(events, wait_s=wait_s, linger=linger)  # accepted first; only then shown
            assert view is not None
            for line in view.add(events):
                if headless:
                    print(line, flush=True)

        gw.outbox.append = tapped  # type: ignore[method-assign]
        # Said before the gateway starts: its devices begin reporting while it is still starting.
        sub = (f"mosquitto_sub -h {broker.host} -p {broker.port} -t '{cfg.mqtt.topic_prefix}/#' -v"
               if broker.host else "no subscription: no broker")
        print(f"courtyard demo: {scenario.site.name or scenario.site.id}, "
              f"{plural(len(cfg.devices), 'simulated device')}; subscribe: {sub}; "
              "camera tokens and the credential key are generated for this run", flush=True)
        async with gw:
            if gw.console is not None and login:
                print(f"courtyard demo: duty console at {gw.console.url} (user {login[0]}, password {login[1]};"
                      " generated for this run)", flush=True)
            infra = Infra(broker=broker if broker.owned else None)
            play = asyncio.create_task(runner.play(infra, loop_forever=True))
            if headless:
                await stop.wait()
            else:
                await _live(view, broker, cfg.outbox.path, stop)
            play.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await play
            if broker.owned and broker.proc is None:
                await asyncio.to_thread(broker.start)  # stopped mid-outage: bring it back to flush
            await gw.drain(15)
    finally:
        await runner.stop()
        if broker.external:
            await _sweep(broker, sweep, "published by the demo")
        broker.close()
        for handler, level in quieted:
            handler.setLevel(level)
    total = sum(view.counts.values()) if view else 0
    print(f"stopped cleanly: {plural(total, 'event')} accepted and kept; see them with: "
          f"courtyard events --db {data_dir / 'outbox.db'}", flush=True)
    return 0


async def _sweep(broker: Broker, topic_filter: str, what: str) -> None:
    """Clear the demo's retained topics on a broker it does not own, and say so."""
    assert broker.host is not None
    try:
        n = await clear_retained(broker.host, broker.port, topic_filter)
    except Exception as exc:  # the broker may be gone: say so, never hide it
        print(f"courtyard demo: could not clear retained topics under {topic_filter} on "
              f"{broker.host}:{broker.port}: {exc}", file=sys.stderr, flush=True)
        return
    if n:
        print(f"courtyard demo: cleared {plural(n, 'retained topic')} under {topic_filter} ({what})", flush=True)


async def _live(view: DemoView, broker: Broker, db: Path, stop: asyncio.Event) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()

    def frame() -> Any:
        width, height = console.size
        return render(view, broker, db, width=width, height=height)

    with Live(frame(), console=console, auto_refresh=False, screen=False) as live:
        while not stop.is_set():
            live.update(frame(), refresh=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
