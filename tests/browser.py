"""Debian's Chromium, headless, driven by selenium through Debian's chromedriver (no browser download).

Selenium is blocking and the gateway runs on the test's event loop, so every browser call
goes through `run()` (a thread): a page load waits for the gateway, which must keep serving.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[1]
#: Screenshots of the last run (build/ is not committed; docs/console/ holds the published ones).
SHOTS = ROOT / "build" / "console-screenshots"

T = TypeVar("T")


def have_browser() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


def make_driver(width: int = 1400, height: int = 1000, lang: str = "en-US") -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", f"--lang={lang}", "--no-first-run",
                "--disable-background-networking", "--disable-extensions"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"intl.accept_languages": lang})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not have_browser():
        pytest.skip("chromium and chromium-driver are not installed (make deps-test installs them)")
    driver = make_driver()
    try:
        yield driver
    finally:
        driver.quit()


async def run(fn: Callable[..., T], *args: Any) -> T:
    """A blocking browser call, off the event loop."""
    return await asyncio.to_thread(fn, *args)


async def until(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Poll a (blocking) browser check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await run(check)
        except Exception as exc:  # stale elements while the page re-renders: try again
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(interval)
    raise TimeoutError(f"browser condition not met within {timeout}s (last: {last!r})")


async def shot(driver: Any, name: str, tmp_path: Path) -> Path:
    """Save a screenshot in the test's tmp dir and in build/console-screenshots/."""
    path = tmp_path / f"{name}.png"
    await run(driver.save_screenshot, str(path))
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    return path
