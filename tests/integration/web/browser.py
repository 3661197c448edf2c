"""Debian's Chromium, headless, driven by chromedriver through python3-selenium.

A fresh ``--user-data-dir`` per browser; no sandbox (the tests run as root), no GPU, and none of
Chromium's own network traffic (component updates, sync, field trials), so the only requests it
makes are the tests'. Stopped by quitting the driver, which ends the browser it started.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    SELENIUM = True
except ImportError:  # python3-selenium missing
    SELENIUM = False

AVAILABLE = bool(CHROMIUM and CHROMEDRIVER and SELENIUM)
WHY_NOT = "needs chromium, chromium-driver and python3-selenium (scripts/deps)"


def chromium(profile: Path, width: int = 480, height: int = 900) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
