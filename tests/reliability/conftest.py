"""Fixtures of the reliability tests that start real dashboards and drive them in Debian's Chromium."""
from __future__ import annotations

import subprocess

import pytest

from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS

STOP_TIMEOUT_S = 20


@pytest.fixture
def browser_page(tmp_path):
    """A Chromium page (1400x1000); a full-page screenshot of where it ended goes to tmp_path/last.png."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(60_000)
        yield page
        page.screenshot(path=str(tmp_path / "last.png"), full_page=True)
        browser.close()


@pytest.fixture
def servers():
    """Every dashboard the test starts is gone after it, whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for server in started:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=STOP_TIMEOUT_S)
