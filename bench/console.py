"""The duty console with 1,000 devices and 50 active alarms, in headless Chromium: render and update times.

A gateway with 1,000 plate readers (push devices sharing one listener: no polling load) across
20 buildings and 5 garages; events go the real way (device context -> outbox -> observer ->
SSE -> page). Prints:

* render: from navigation to the site view showing 1,000 tiles and the queue 50 alarms;
* alarm latency: from the commit call of a new alarm to its card in the queue (p50/p95/max);
* update latency: a burst of 200 device changes, from the commit call to the last tile changed;
* main-thread long tasks (over 50 ms) in the page while the updates arrive;
* first, without a browser: what the live model costs the gateway per status event.

Run: .venv/bin/python bench/console.py  (needs chromium and chromium-driver: make deps-test)
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.config import parse_config  # noqa: E402
from gateway.console.auth import hash_password  # noqa: E402
from gateway.driver import EventDraft  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402
from schemas.lpr import LprPayload  # noqa: E402
from simulators.net import free_port  # noqa: E402
from tests.browser import make_driver, run, until  # noqa: E402

DEVICES = 1000
ALARMS = 50
PASSWORD = "bench-password-1"

OBSERVE = """
window.__seen = {};
window.__long = [];
new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__long.push(e.duration); })
  .observe({type: "longtask", buffered: false});
new MutationObserver((muts) => {
  const now = Date.now();
  for (const m of muts) for (const n of m.addedNodes) {
    if (n.nodeType !== 1) continue;
    const key = n.dataset.alarmId ? "a:" + n.dataset.alarmId
      : n.dataset.deviceId ? "d:" + n.dataset.deviceId + ":" + n.textContent : null;
    if (key && !(key in window.__seen)) window.__seen[key] = now;
  }
}).observe(document.querySelector("main"), {childList: true, subtree: true});
"""


def config(tmp: Path) -> Any:
    port = free_port()
    devices = []
    for i in range(DEVICES):
        place = {"garage": f"B{i % 5 + 1}"} if i % 4 == 0 else {"building": str(i % 20 + 1), "unit": str(i % 3 + 1)}
        devices.append({"id": f"lpr-{i:04d}", "driver": "http_plate_reader", "name": f"Lane {i}", "location": place,
                        "protocol": "zhenshi", "listen_port": port, "heartbeat_interval_s": 3600,
                        "auth": {"mode": "token", "token": "bench-token-bench-token"}})
    return parse_config({
        "site": "bench-site", "outbox": {"path": str(tmp / "outbox.db"), "synchronous": "normal"},
        "mqtt": {"enabled": False}, "devices": devices,
        "console": {"port": free_port(), "timezone": "Asia/Shanghai",
                    "users": [{"name": "op", "role": "operator", "password_hash": hash_password(PASSWORD)}]},
    })


def alarm(i: int) -> EventDraft:
    return EventDraft(type="lpr.barrier_stuck", cls="fault", severity="critical" if i % 5 == 0 else "major",
                      state="raised", alarm_id=str(uuid.uuid4()), payload=LprPayload(gate_state="up"))


def read(i: int, n: int) -> EventDraft:
    return EventDraft(type="lpr.plate_read", cls="event", payload=LprPayload(
        plate=f"京A{n:05d}", decision="open" if i % 2 else "deny", direction="entry"))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def model_cost() -> None:
    """Status events of 1,000 lifts through the live model alone (the gateway's share of the console)."""
    from datetime import UTC, datetime

    from gateway.console.live import LiveModel
    from gateway.runtime import EventFactory, device_ref
    from schemas.elevator import ElevatorPayload

    with tempfile.TemporaryDirectory() as tmp:
        devices = [{"id": f"lift-{i}", "driver": "modbus_elevator", "port": 1, "enabled": False,
                    "location": {"building": str(i % 20)}} for i in range(DEVICES)]
        cfg = parse_config({"site": "bench-site", "outbox": {"path": str(Path(tmp) / "o.db")},
                            "mqtt": {"enabled": False}, "devices": devices})
        gw = Gateway(cfg)
        live = LiveModel(gw)
        factories = [EventFactory(site="bench-site", gateway="gw", device=device_ref(d, "elevator"), simulated=True,
                                  scenario=None) for d in cfg.devices]
        now = datetime.now(UTC)
        n = 20_000
        events = [factories[i % DEVICES].build(EventDraft(
            type="elevator.status", cls="status", payload=ElevatorPayload(
                floor=i % 30, direction="up", door_state="closed", car_running=True)), now) for i in range(n)]
        started = time.perf_counter()
        for i in range(0, n, 100):
            live._committed(events[i:i + 100])
        per = (time.perf_counter() - started) / n
        print(f"live model: {per * 1e6:.1f} us per status event that changes a lift "
              f"({DEVICES} lifts reporting every second: {per * DEVICES * 100:.1f} % of a core)")


async def main() -> None:
    await model_cost()
    with tempfile.TemporaryDirectory() as tmp:
        gw = Gateway(config(Path(tmp)))
        driver = await run(make_driver)
        try:
            async with gw:
                ids = list(gw.devices)
                for dev in ids:
                    await gw.devices[dev].set_online(True)
                for i in range(ALARMS):
                    await gw.devices[ids[i * 7]].emit([alarm(i)])
                base = f"http://127.0.0.1:{gw.console.port}"
                await run(driver.get, base + "/login")
                await until(lambda: driver.find_elements("css selector", "#user"))
                await run(lambda: driver.find_element("css selector", "#user").send_keys("op"))
                await run(lambda: driver.find_element("css selector", "#password").send_keys(PASSWORD))
                await run(lambda: driver.find_element("css selector", "#submit").click())
                await until(lambda: driver.current_url.rstrip("/") == base)

                renders = []
                for _ in range(3):
                    await run(driver.get, base + "/#site")
                    ms = await until(lambda: driver.execute_script(
                        "return document.querySelectorAll('.tile').length === arguments[0] &&"
                        " document.querySelectorAll('article.alarm').length === arguments[1] &&"
                        " performance.now()", DEVICES, ALARMS), timeout=60, interval=0.02)
                    renders.append(float(ms))
                print(f"render: navigation -> {DEVICES} tiles and {ALARMS} alarms: "
                      f"median {statistics.median(renders):.0f} ms (runs: {', '.join(f'{r:.0f}' for r in renders)})")
                await run(driver.get, base + "/#alarms")
                await until(lambda: len(driver.find_elements("css selector", "article.alarm")) == ALARMS, 60)
                await run(driver.execute_script, OBSERVE)

                latencies = []
                for i in range(20):
                    draft = alarm(1000 + i)
                    t0 = time.time() * 1000
                    await gw.devices[ids[-1 - i]].emit([draft])
                    key = f"a:{draft.alarm_id}"
                    seen = await until(lambda key=key: driver.execute_script("return window.__seen[arguments[0]]", key),
                                       timeout=30, interval=0.02)
                    latencies.append(float(seen) - t0)
                print(f"alarm latency (commit call -> card in the queue, {ALARMS}+ alarms shown, n=20): "
                      f"p50 {pct(latencies, 0.5):.0f} ms, p95 {pct(latencies, 0.95):.0f} ms, "
                      f"max {max(latencies):.0f} ms")

                await run(driver.get, base + "/#site")
                await until(lambda: driver.execute_script("return document.querySelectorAll('.tile').length") ==
                            DEVICES, 60)
                await run(driver.execute_script, OBSERVE)
                bursts = []
                for b in range(5):
                    n0 = 10_000 * (b + 1)
                    t0 = time.time() * 1000
                    for i in range(200):
                        await gw.devices[ids[(i * 5 + b) % DEVICES]].emit([read(i, n0 + i)])
                    last = ids[(199 * 5 + b) % DEVICES]
                    plate = f"京A{n0 + 199:05d}"
                    seen = await until(lambda last=last, plate=plate: driver.execute_script(
                        "for (const [k, v] of Object.entries(window.__seen))"
                        " if (k.startsWith('d:' + arguments[0] + ':') && k.includes(arguments[1])) return v;"
                        " return 0;", last, plate), timeout=60, interval=0.02)
                    bursts.append(float(seen) - t0)
                long_tasks = await run(driver.execute_script, "return window.__long")
                print(f"update latency (200 device changes, commit calls -> last tile changed, 5 bursts): "
                      f"median {statistics.median(bursts):.0f} ms, max {max(bursts):.0f} ms")
                print(f"page long tasks (>50 ms) during the bursts: {len(long_tasks)}"
                      + (f", longest {max(long_tasks):.0f} ms" if long_tasks else ""))
        finally:
            await run(driver.quit)


if __name__ == "__main__":
    asyncio.run(main())
