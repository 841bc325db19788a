"""The duty console in a real browser (Debian's Chromium, headless): log in, see an alarm arrive,
acknowledge it, command a lift and watch the simulator act, the site and device pages, both languages.

Screenshots go to the test's tmp dir and build/console-screenshots/ (docs/console/ holds copies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser import browser, run, shot, until  # noqa: F401  (browser is a fixture)
from tests.console_support import PASSWORDS, client, lift_rig, login
from tests.helpers import eventually
from tests.mqtt_support import retained
from tests.servers import Mosquitto

pytestmark = pytest.mark.slow
ALARM = 'article.alarm[data-type="elevator.alarm_button"]'


def by_css(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, css))


async def log_in(driver: Any, base: str, user: str = "op") -> None:
    await run(driver.get, base + "/")
    await until(lambda: driver.current_url.endswith("/login") and by_css(driver, "#user"))
    (name,) = by_css(driver, "#user")
    (password,) = by_css(driver, "#password")
    await run(name.send_keys, user)
    await run(password.send_keys, PASSWORDS[user])
    await click(driver, "#submit")
    await until(lambda: by_css(driver, "#me") and by_css(driver, "#me")[0].text.startswith(user))


async def click(driver: Any, css: str) -> None:
    """Click the first match; found and clicked in one go, again if a live update replaced it meanwhile."""
    def go() -> bool:
        by_css(driver, css)[0].click()
        return True

    await until(go)


async def confirm(driver: Any, fields: dict[str, str] | None = None) -> None:
    """Fill the confirmation dialog and confirm."""
    await until(lambda: by_css(driver, "dialog#dlg[open]"))
    for name, value in (fields or {}).items():
        (box,) = by_css(driver, f"#dlg-{name}")
        await run(box.clear)
        await run(box.send_keys, value)
    await click(driver, "#dlg-ok")
    await until(lambda: not by_css(driver, "dialog#dlg[open]"))


async def test_duty_console_in_the_browser(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    driver = browser
    async with lift_rig(tmp_path, book=True, lifts=2, missing=1) as (sim, gw, base):
        await log_in(driver, base)
        assert "Asia/Shanghai (UTC+08:00)" in by_css(driver, "#tz")[0].text  # the zone is stated
        await eventually(lambda: gw.devices["lift-1"].online, 10)

        # an alarm raised in the simulator reaches the queue by itself
        await sim.inject("alarm_button", device_id=1)
        await until(lambda: by_css(driver, ALARM), timeout=15)
        text = await until(lambda: by_css(driver, ALARM)[0].text)
        assert "lift alarm button pressed" in text and "Tower 4 lift 1" in text and "Building 4" in text
        assert "unacknowledged" in text
        await until(lambda: "active for 0:0" in by_css(driver, ALARM + " .timer")[0].text)
        await shot(driver, "queue", tmp_path)

        # acknowledge, with a comment, through the confirmation step
        await click(driver, ALARM + " button[data-op=ack]")
        await confirm(driver, {"comment": "going to lift 1"})
        await until(lambda: by_css(driver, ALARM + " .alarm-state")[0].text == "acknowledged")
        book = gw.alarm_book  # type: ignore[attr-defined]
        assert [(op, who, comment) for _, op, who, comment in book.ops] == [("ack", "console:op", "going to lift 1")]

        # the live feed drops (the gateway ends every stream) and an alarm is raised meanwhile: the
        # browser reconnects with the last id it saw and shows the alarm once, nothing repeated
        resumed = gw.console.resumed
        for task in list(gw.console._streams):
            task.cancel()
        await sim.inject("alarm_button", device_id=2)
        await until(lambda: len(by_css(driver, "article.alarm[data-device=lift-2]")) == 1, timeout=15)
        await until(lambda: by_css(driver, "#conn.ok"))
        cards = [c.get_attribute("data-alarm-id") for c in by_css(driver, "article.alarm")]
        assert len(cards) == len(set(cards)) == len(gw.console.live.alarms)
        assert gw.console.resumed == resumed + 1  # the browser came back with Last-Event-ID

        # a command from the alarm card: hold the doors; the simulated lift acts
        assert by_css(driver, ALARM + " button[data-command=hold_door]"), "its commands are offered on the alarm"
        await click(driver, ALARM + " button[data-command=hold_door]")
        await confirm(driver, {"seconds": "30"})
        await eventually(lambda: sim.elevators[1].hold_until is not None, 10)
        assert [c[:3] for c in sim.commands] == [(1, "hold_door", 30)]
        await until(lambda: "succeeded" in by_css(driver, "#toasts")[0].text or
                    "accepted" in by_css(driver, "#toasts")[0].text)

        # cancelling the confirmation sends nothing
        await click(driver, ALARM + " button[data-command=release_door]")
        await until(lambda: by_css(driver, "dialog#dlg[open]"))
        await click(driver, "#dlg-cancel")
        assert len(sim.commands) == 1

        # the site: every lift with its state in words; the one that never answers is OFFLINE
        await eventually(lambda: gw.devices["lift-3"].online is False, 20)
        await run(driver.get, base + "/#site")
        await until(lambda: "OFFLINE" in by_css(driver, ".tile[data-device-id=lift-3].offline")[0].text)
        await until(lambda: "floor 1" in by_css(driver, ".tile[data-device-id=lift-1]")[0].text)
        await until(lambda: "1 offline" in by_css(driver, "#offline-count")[0].text)
        await shot(driver, "site", tmp_path)

        # the device page: recent events and a chart from the local history (lift 2 has travelled)
        await gw.commands.submit("elevator", "lift-2", "call", {"id": "to-6", "args": {"floor": 6}},
                                 requester="console:op")
        await eventually(lambda: sim.elevators[2].floor == 6, 30)
        await click(driver, ".tile[data-device-id=lift-2]")
        await until(lambda: len(by_css(driver, "#device-rows tr")) > 2)
        assert by_css(driver, "canvas#chart")
        await until(lambda: by_css(driver, "#chart-field option")[0].get_attribute("value") == "floor")
        assert by_css(driver, "#device-page button[data-command=call]")
        await shot(driver, "device", tmp_path)

        # the event log, filtered
        await run(driver.get, base + "/#events")
        await until(lambda: len(by_css(driver, "#log-rows tr")) > 0)
        (kind,) = by_css(driver, "#f-type")
        await run(kind.send_keys, "elevator.alarm_button")
        await click(driver, "#filters button[type=submit]")
        await until(lambda: by_css(driver, "#log-rows tr") and all(
            "lift alarm button pressed" in r.text for r in by_css(driver, "#log-rows tr")))
        assert "events.csv?" in by_css(driver, "#csv")[0].get_attribute("href")
        rows = len(by_css(driver, "#log-rows tr"))
        await sim.clear("alarm_button", device_id=2)  # arrives live, on top, as it passes the filter
        await until(lambda: len(by_css(driver, "#log-rows tr")) == rows + 1 and
                    by_css(driver, "#log-rows tr td:nth-child(5)")[0].text == "cleared", timeout=15)

        # Chinese, switched in the page
        await click(driver, "button[data-lang=zh]")
        await until(lambda: by_css(driver, "a[data-tab=alarms] span")[0].text == "报警")
        await run(driver.get, base + "/#alarms")
        await until(lambda: by_css(driver, ALARM + " .alarm-state") and
                    by_css(driver, ALARM + " .alarm-state")[0].text == "已确认")
        await click(driver, "button[data-lang=en]")

        # logging out ends it: the API refuses the old cookie (HttpOnly: only the browser's store has it)
        (cookie,) = [c for c in await run(driver.get_cookies) if c["name"] == "courtyard_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        old = {"Cookie": f"courtyard_session={cookie['value']}"}
        async with client() as s, s.get(base + "/api/state", headers=old) as r:
            assert r.status == 200
        await click(driver, "#logout")
        await until(lambda: driver.current_url.endswith("/login"))
        async with client() as s, s.get(base + "/api/state", headers=old) as r:
            assert r.status == 401


async def test_viewer_sees_but_cannot_act(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    driver = browser
    async with lift_rig(tmp_path, book=True) as (sim, gw, base):
        await log_in(driver, base, "viewer")
        await eventually(lambda: gw.devices["lift-1"].online, 10)
        await sim.inject("alarm_button", device_id=1)
        await until(lambda: by_css(driver, "article.alarm"), timeout=15)
        buttons = by_css(driver, "article.alarm button")
        assert buttons and all(not b.is_enabled() for b in buttons)
        # and the API says no as well, whatever a page would do
        async with client() as s:
            csrf = await login(s, base, "viewer")
            async with s.post(base + "/api/commands", json={"device": "lift-1", "name": "release_door"},
                              headers={"X-CSRF-Token": csrf}) as r:
                assert r.status == 403
        assert sim.commands == []


async def test_ack_in_the_browser_changes_the_retained_alarm(tmp_path: Path, browser: Any,  # noqa: F811
                                                             mosquitto: Mosquitto) -> None:
    """With the real alarm lifecycle: an independent MQTT subscriber sees the acknowledgement."""
    driver = browser
    async with lift_rig(tmp_path, book="real", mqtt=mosquitto) as (sim, gw, base):
        assert gw.alarm_book is not None  # type: ignore[attr-defined]
        await log_in(driver, base)
        await eventually(lambda: gw.devices["lift-1"].online, 10)
        await sim.inject("alarm_button", device_id=1)
        await until(lambda: by_css(driver, ALARM + " button[data-op=ack]:enabled"), timeout=15)
        alarm_id = by_css(driver, ALARM)[0].get_attribute("data-alarm-id")

        async def retained_body() -> Any:
            got = await retained(mosquitto.host, mosquitto.port, f"courtyard/test-site/+/+/alarm/{alarm_id}")
            return next(iter(got.values()), None)

        await eventually(retained_body, 10)
        before = await retained_body()
        assert before["type"] == "elevator.alarm_button"
        await click(driver, ALARM + " button[data-op=ack]")
        await confirm(driver, {"comment": "on the phone with the car"})

        async def acked() -> bool:
            body = await retained_body()
            return bool(body and body["type"] == "alarm.acked")

        await eventually(acked, 10, interval=0.2)
        body = await retained_body()
        assert body["payload"]["lifecycle_state"] == "active_acked"
        assert body["payload"]["acked_by"] == "op" and body["payload"]["requester"] == "console:op"
        assert body["payload"]["comment"] == "on the phone with the car"
        await until(lambda: by_css(driver, ALARM + " .alarm-state")[0].text == "acknowledged")
