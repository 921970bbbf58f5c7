"""A headless Chromium driven by Selenium, for the page tests and the docs' screenshots (dev extra: selenium).

Uses Debian's ``chromium`` and ``chromedriver`` (no download): Selenium Manager is kept offline, and the flags
keep Chromium from reaching for Google's services on a machine with no network."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) if both are installed."""
    browser = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return (browser, driver) if Path(browser).exists() and Path(driver).exists() else None


def headless_chromium(width: int = 1400, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError(
            "chromium and chromedriver are not installed; apt-get install chromium chromium-driver"
        )
    os.environ.setdefault("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = paths[0]
    for flag in (*FLAGS, f"--window-size={width},{height}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(paths[1]), options=opts)
    driver.set_page_load_timeout(60)
    return driver
