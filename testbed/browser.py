"""Debian's headless Chromium driven by selenium (chromium + chromium-driver), for the
dashboard tests. Skips (or fails under NETBOOTD_REQUIRE_E2E=1) when either is missing."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from testbed.skips import unavailable


def chromium(prefix: str = "nbdtest") -> Any:
    """A new browser with its own profile directory, removed again by its quit(). It accepts
    netbootd's own CA (the CLI's pinning is tested elsewhere)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    browser, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver_bin is None:
        unavailable("no chromium / chromedriver (Debian: chromium, chromium-driver)")
    profile = tempfile.mkdtemp(prefix=f"{prefix}-chromium-")
    o = webdriver.ChromeOptions()
    o.binary_location = browser
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={profile}", "--window-size=1400,900"):
        o.add_argument(a)
    o.accept_insecure_certs = True
    driver = webdriver.Chrome(service=Service(driver_bin), options=o)
    quit_ = driver.quit

    def quit() -> None:
        try:
            quit_()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    driver.quit = quit
    return driver
