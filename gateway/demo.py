"""`courtyard demo`: simulators and the gateway in one process, with a live view.

MQTT: the broker named by `MQTT_HOST`/`MQTT_PORT`, else one already listening on
127.0.0.1:1883, else a private mosquitto started on a loopback port (Debian's package), else
none (local history only, and the view says so). History goes to the local SQLite outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import parse_config
from gateway.files import make_private_dirs
from gateway.runtime import Gateway
from schemas.event import Event

ELEVATOR_TIMELINE: tuple[tuple[float, str, str, Any, int | None], ...] = (
    # (second in a 60 s cycle, "inject"/"clear", fault, value, device id)
    (6, "inject", "trapped", True, 1),
    (14, "inject", "fault_code", 41, 2),
    (24, "clear", "trapped", None, 1),
    (30, "clear", "fault_code", None, 2),
    (36, "inject", "disconnect", True, None),
    (46, "clear", "disconnect", None, None),
)


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
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

    @property
    def owned(self) -> bool:
        """True when the demo started this broker (so a scenario may take it down)."""
        return self.binary is not None


def find_broker() -> Broker:
    """Pick the MQTT broker as the module docstring says."""
    if os.environ.get("MQTT_HOST"):
        return Broker(os.environ["MQTT_HOST"], int(os.environ.get("MQTT_PORT", "1883")), origin="MQTT_HOST")
    if _listening("127.0.0.1", 1883):
        return Broker("127.0.0.1", 1883, origin="a broker already listening on 127.0.0.1:1883")
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if binary is None:
        return Broker(None, 0, origin="none found (install mosquitto or set MQTT_HOST)")
    port = _free_port()
    conf = Path(tempfile.mkdtemp(prefix="courtyard-demo-")) / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = Broker("127.0.0.1", port, binary=binary, conf=conf, origin="a private mosquitto on loopback")
    broker.start()
    return broker


@dataclass
class DemoView:
    """What the live view shows, fed by every accepted event."""

    topic_prefix: str
    site: str
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    alarms: dict[str, Event] = field(default_factory=dict)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=10))
    counts: Counter[str] = field(default_factory=Counter)
    window: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    started: float = field(default_factory=time.monotonic)

    def add(self, events: Sequence[Event]) -> list[str]:
        """Update from accepted events; return one log line per event."""
        lines = []
        now = time.monotonic()
        for ev in events:
            self.window.append(now)
            self.counts[ev.class_] += 1
            dev = self.devices.setdefault(ev.device.id, {"kind": ev.device.kind, "online": "?", "state": ""})
            if ev.class_ == "connectivity":
                dev["online"] = "online" if ev.type == "device.online" else "OFFLINE"
            elif ev.quality.status != "rejected":
                dev["state"] = _status_text(ev)
            if ev.alarm_id:
                if ev.state == "raised":
                    self.alarms[ev.alarm_id] = ev
                else:
                    self.alarms.pop(ev.alarm_id, None)
            topic = f"{self.topic_prefix}/{self.site}/{ev.device.kind}/{ev.device.id}/event/{ev.type}"
            extra = f" [{ev.state}]" if ev.state != "momentary" else ""
            line = f"{ev.received:%H:%M:%S} {ev.severity:<8} {topic}{extra}"
            self.recent.append(line)
            lines.append(line)
        return lines

    def rate(self) -> float:
        """Events per second over the last 5 seconds."""
        now = time.monotonic()
        return sum(1 for t in self.window if now - t <= 5) / 5


_QUIET_FIELDS = frozenset({"kind", "raw", "raw_hex", "credential_hash", "image_uri", "plate_raw", "firmware",
                           "device_time", "detail"})


def _status_text(ev: Event) -> str:
    """One line about a device's latest event, for the live view."""
    p = ev.payload.model_dump(exclude_none=True)
    if ev.device.kind == "elevator" and ev.class_ == "status":
        return (f"floor {p.get('floor', '?')} {p.get('direction', '')} door {p.get('door_state', '?')}"
                f"{' occupied' if p.get('occupied') else ''} {p.get('service_mode', '')}")
    facts = " ".join(f"{k}={v}" for k, v in p.items() if k not in _QUIET_FIELDS)
    state = "" if ev.state == "momentary" else f" [{ev.state}]"
    return f"{ev.type}{state} {facts}"[:90]


def _render(view: DemoView, broker: Broker, db: Path) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    devices = Table(expand=True, title="Devices by kind")
    devices.add_column("device", no_wrap=True)
    devices.add_column("kind", no_wrap=True)
    devices.add_column("link", no_wrap=True)
    devices.add_column("latest", no_wrap=True, overflow="ellipsis", ratio=1)
    for dev_id, d in sorted(view.devices.items(), key=lambda kv: (kv[1]["kind"], kv[0])):
        link = f"[green]{d['online']}[/]" if d["online"] == "online" else f"[red]{d['online']}[/]"
        devices.add_row(dev_id, d["kind"], link, d["state"])
    alarms = Table("since", "device", "type", "severity", expand=True, title=f"Active alarms ({len(view.alarms)})")
    for ev in view.alarms.values():
        alarms.add_row(f"{ev.received:%H:%M:%S}", ev.device.id, ev.type, f"[bold red]{ev.severity}[/]")
    sub = (f"mosquitto_sub -h {broker.host} -p {broker.port} -t '{view.topic_prefix}/#' -v"
           if broker.host else "no MQTT broker: events go to local history only")
    head = (f"[bold]Courtyard demo[/]  {view.rate():.1f} events/s  "
            f"status {view.counts['status']}  alarms+faults {view.counts['alarm'] + view.counts['fault']}  "
            f"connectivity {view.counts['connectivity']}\nMQTT: {broker.origin}.  Subscribe: {sub}\n"
            f"History: courtyard events --db {db}")
    recent = Panel("\n".join(view.recent) or "(waiting)", title="What the platform receives (latest)")
    return Group(Panel(head), devices, alarms, recent)


def community_scenario() -> Path:
    """The shipped sample community."""
    from scenarios import files

    return files()["community"]


async def run_demo(*, duration: float | None, headless: bool, data_dir: Path, speed: float | None = None) -> int:
    """Run the demo until Ctrl-C / SIGTERM or `duration` seconds."""
    from simulators.scenario.model import load_scenario
    from simulators.scenario.runner import Infra, ScenarioRunner

    make_private_dirs(data_dir)  # 0700: the history holds plates in clear
    scenario = load_scenario(community_scenario())
    broker = find_broker()
    runner = ScenarioRunner(scenario, speed=speed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    view: DemoView | None = None
    try:
        await runner.start()
        mqtt = {"host": broker.host, "port": broker.port, "backoff_max_s": 2.0} if broker.host else None
        cfg = parse_config(runner.gateway_config(data_dir=data_dir, mqtt=mqtt, gateway_id="gw-demo"),
                           source="<demo>")
        gw = Gateway(cfg, scenario=scenario.scenario)
        view = DemoView(cfg.mqtt.topic_prefix, cfg.site)
        append = gw.outbox.append

        async def tapped(events: Sequence[Event], *, wait_s: float | None = None) -> None:
            await append(events, wait_s=wait_s)  # accepted first; only then shown
            assert view is not None
            for line in view.add(events):
                if headless:
                    print(line, flush=True)

        gw.outbox.append = tapped  # type: ignore[method-assign]
        async with gw:
            infra = Infra(broker=broker if broker.owned else None)
            play = asyncio.create_task(runner.play(infra, loop_forever=True))
            sub = (f"mosquitto_sub -h {broker.host} -p {broker.port} -t '{cfg.mqtt.topic_prefix}/#' -v"
                   if broker.host else "")
            if headless:
                print(f"courtyard demo: {scenario.site.name or scenario.site.id}, {len(cfg.devices)} simulated "
                      f"devices; MQTT: {broker.origin}" + (f"; subscribe: {sub}" if sub else ""), flush=True)
                await stop.wait()
            else:
                from rich.live import Live

                with Live(_render(view, broker, cfg.outbox.path), refresh_per_second=4) as live:
                    while not stop.is_set():
                        live.update(_render(view, broker, cfg.outbox.path))
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 0.25)
            play.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await play
            if broker.owned and broker.proc is None:
                await asyncio.to_thread(broker.start)  # stopped mid-outage: bring it back to flush
            await gw.drain(15)
    finally:
        await runner.stop()
        broker.stop()
    total = sum(view.counts.values()) if view else 0
    print(f"stopped cleanly: {total} events accepted and kept; see them with: "
          f"courtyard events --db {data_dir / 'outbox.db'}", flush=True)
    return 0
