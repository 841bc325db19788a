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
    """Where the demo publishes, and the child process if the demo started one."""

    host: str | None
    port: int
    proc: subprocess.Popen[bytes] | None = None
    origin: str = ""

    def stop(self) -> None:
        """Stop a broker the demo started."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


def find_broker() -> Broker:
    """Pick the MQTT broker as the module docstring says."""
    if os.environ.get("MQTT_HOST"):
        return Broker(os.environ["MQTT_HOST"], int(os.environ.get("MQTT_PORT", "1883")), origin="MQTT_HOST")
    if _listening("127.0.0.1", 1883):
        return Broker("127.0.0.1", 1883, origin="already listening on loopback")
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if binary is None:
        return Broker(None, 0, origin="no broker: install mosquitto or set MQTT_HOST")
    port = 1883 if not _listening("127.0.0.1", 1883) else _free_port()
    conf = Path(tempfile.mkdtemp(prefix="courtyard-demo-")) / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while not _listening("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    return Broker("127.0.0.1", port, proc, origin="private mosquitto on loopback")


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
            elif ev.class_ == "status" and ev.quality.status != "rejected":
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


def _status_text(ev: Event) -> str:
    p = ev.payload.model_dump(exclude_none=True)
    if ev.device.kind == "elevator":
        return (f"floor {p.get('floor', '?')} {p.get('direction', '')} door {p.get('door_state', '?')}"
                f"{' occupied' if p.get('occupied') else ''} {p.get('service_mode', '')}")
    return " ".join(f"{k}={v}" for k, v in p.items() if k != "kind")[:60]


def _render(view: DemoView, broker: Broker, db: Path) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    devices = Table("device", "kind", "link", "state", expand=True, title="Devices")
    for dev_id, d in sorted(view.devices.items()):
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


def demo_config(data_dir: Path, broker: Broker, elevator_ports: tuple[int, int]) -> dict[str, Any]:
    """The gateway config the demo runs with."""
    gb_port, vendor_port = elevator_ports
    lifts = []
    for building, port, map_name in (("1", gb_port, "gbt24476"), ("2", vendor_port, "monarch_vendor")):
        for car in (1, 2):
            lifts.append({
                "id": f"lift-b{building}-{car}", "driver": "modbus_elevator", "port": port, "unit_id": car,
                "map": map_name, "poll_interval_s": 0.5, "timeout_s": 0.4, "simulated": True,
                "location": {"building": building}, "lowest_floor": -2, "highest_floor": 18,
                "offline_after": 2, "thresholds": {"trapped_s": 5, "outside_door_zone_s": 10},
            })
    return {
        "site": "demo-community",
        "gateway_id": "gw-demo",
        "outbox": {"path": str(data_dir / "outbox.db"), "synchronous": "normal"},
        "mqtt": {"host": broker.host, "port": broker.port} if broker.host else {"enabled": False},
        "devices": lifts,
    }


async def run_demo(*, duration: float | None, headless: bool, data_dir: Path) -> int:
    """Run the demo until Ctrl-C / SIGTERM or `duration` seconds."""
    from simulators.elevator import ElevatorModel, ElevatorSimulator

    data_dir.mkdir(parents=True, exist_ok=True)
    broker = find_broker()
    ports = (_free_port(), _free_port())
    sims = [
        ElevatorSimulator(port=ports[0], regmap="gbt24476",
                          elevators={1: ElevatorModel(seed=11, call_rate_per_s=0.2),
                                     2: ElevatorModel(seed=12, call_rate_per_s=0.2)}),
        ElevatorSimulator(port=ports[1], regmap="monarch_vendor",
                          elevators={1: ElevatorModel(seed=21, call_rate_per_s=0.2),
                                     2: ElevatorModel(seed=22, call_rate_per_s=0.2)}),
    ]
    cfg = parse_config(demo_config(data_dir, broker, ports), source="<demo>")
    gw = Gateway(cfg)
    view = DemoView(cfg.mqtt.topic_prefix, cfg.site)
    append = gw.outbox.append

    async def tapped(events: Sequence[Event]) -> None:
        await append(events)  # accepted first; only then shown
        for line in view.add(events):
            if headless:
                print(line, flush=True)

    gw.outbox.append = tapped  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)

    async def timeline() -> None:
        start = loop.time()
        done: set[tuple[int, int]] = set()
        while True:
            t = loop.time() - start
            cycle, at = int(t // 60), t % 60
            for i, (when, action, fault, value, dev) in enumerate(ELEVATOR_TIMELINE):
                if at >= when and (cycle, i) not in done:
                    done.add((cycle, i))
                    sim = sims[1] if fault in ("fault_code", "disconnect") else sims[0]
                    if action == "inject":
                        await sim.inject(fault, value, device_id=dev)
                    else:
                        await sim.clear(fault, device_id=dev)
            await asyncio.sleep(0.2)

    try:
        for sim in sims:
            await sim.start()
        async with gw:
            tl = asyncio.create_task(timeline())
            if headless:
                print(f"courtyard demo: {len(cfg.devices)} devices; MQTT: {broker.origin}"
                      + (f" (mosquitto_sub -h {broker.host} -p {broker.port} -t 'courtyard/#' -v)"
                         if broker.host else ""), flush=True)
                await stop.wait()
            else:
                from rich.live import Live

                with Live(_render(view, broker, cfg.outbox.path), refresh_per_second=4, screen=False) as live:
                    while not stop.is_set():
                        live.update(_render(view, broker, cfg.outbox.path))
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 0.25)
            tl.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tl
    finally:
        for sim in sims:
            await sim.stop()
        broker.stop()
    print(f"stopped cleanly: {sum(view.counts.values())} events accepted; "
          f"see them with: courtyard events --db {cfg.outbox.path}", flush=True)
    return 0
