"""Screenshots of the duty console on the demo community (`courtyard demo`), for docs/console.md.

Starts `courtyard demo --headless` with the console on a free port, logs in with the printed
credentials in headless Chromium and, while the scenario's incidents are on (about 50 s in),
saves the alarm queue, the site view and a lift's device page to build/console-screenshots/
(demo-*.png); with --docs, also to docs/console/. Prints what the queue showed.

Run: .venv/bin/python bench/console_demo.py [--docs] [--lang en|zh]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulators.net import free_port  # noqa: E402
from tests.browser import SHOTS, make_driver  # noqa: E402

AT_S = 50.0  # the scenario's smoke, trapped passenger and e-bike are all on by then


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", action="store_true", help="copy the screenshots to docs/console/")
    ap.add_argument("--lang", default="en", choices=["en", "zh"])
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--headless", "--data", data,
                                 "--console-port", str(port), "--duration", str(AT_S + 30)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        started = time.monotonic()
        assert proc.stdout is not None
        login = None
        for line in proc.stdout:
            m = re.search(r"duty console at (\S+) \(user (\S+), password (\S+);", line)
            if m:
                login = m.groups()
                break
        if login is None:
            raise SystemExit("the demo did not print its console")
        url, user, password = login
        driver = make_driver(height=1500, lang="zh-CN" if args.lang == "zh" else "en-US")
        try:
            driver.get(url + "login")
            driver.execute_script(f"localStorage.setItem('courtyard.lang', '{args.lang}')")
            driver.find_element("css selector", "#user").send_keys(user)
            driver.find_element("css selector", "#password").send_keys(password)
            driver.find_element("css selector", "#submit").click()
            time.sleep(max(0.0, AT_S - (time.monotonic() - started)))
            SHOTS.mkdir(parents=True, exist_ok=True)
            suffix = "" if args.lang == "en" else "-zh"
            for name, hash_ in (("queue", "#alarms"), ("site", "#site"), ("device", "#device/lift-b4-2")):
                driver.get(url + hash_)
                time.sleep(2.5)
                if name == "queue":
                    for card in driver.find_elements("css selector", "article.alarm"):
                        print(card.text.replace("\n", " | ")[:160])
                path = SHOTS / f"demo-{name}{suffix}.png"
                driver.save_screenshot(str(path))
                if args.docs and (args.lang == "en" or name == "queue"):  # docs show the queue in Chinese
                    (ROOT / "docs" / "console").mkdir(exist_ok=True)
                    shutil.copy(path, ROOT / "docs" / "console" / f"{name}{suffix}.png")
                print(f"saved {path}")
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    main()
