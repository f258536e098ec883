"""Fixtures for the console's browser tests: one headless Debian Chromium,
a fresh context per test, and a record of everything the page complained
about (console errors, uncaught exceptions, dialogs)."""

import os
import pathlib

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("CONSOLE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ROOT = pathlib.Path(__file__).resolve().parents[2]
SHOTS = pathlib.Path(os.environ.get("CONSOLE_SHOTS", ROOT / "target" / "console-shots"))
TIMEOUT_MS = 10_000


@pytest.fixture(scope="session")
def base_url():
    url = os.environ.get("CONSOLE_BASE_URL")
    if not url:
        pytest.fail("CONSOLE_BASE_URL is not set: run tests/console/run.sh")
    return url.rstrip("/")


@pytest.fixture(scope="session")
def shots():
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


class Watched:
    """A page plus what it complained about."""

    def __init__(self, page):
        self.page = page
        self.console_errors = []
        self.page_errors = []
        self.dialogs = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("dialog", self._dialog)

    def _console(self, message):
        if message.type == "error":
            self.console_errors.append(message.text)

    def _dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def csp_violations(self):
        return [m for m in self.console_errors if "Content Security Policy" in m or "Refused to" in m]

    def unexpected_errors(self):
        # A refused login or a 429 is logged by Chromium as "Failed to load
        # resource"; that is the API answering, not the page failing.
        return [m for m in self.console_errors if "Failed to load resource" not in m]


@pytest.fixture
def new_page(browser, base_url):
    """new_page(width=1280, height=900) -> Watched; every page is checked at teardown."""
    made = []

    def make(width=1280, height=900, locale="en-US"):
        context = browser.new_context(viewport={"width": width, "height": height}, locale=locale, base_url=base_url)
        context.set_default_timeout(TIMEOUT_MS)
        watched = Watched(context.new_page())
        made.append((context, watched))
        return watched

    yield make
    for context, watched in made:
        context.close()
    for _, watched in made:
        assert watched.page_errors == [], f"uncaught errors in the page: {watched.page_errors}"
        assert watched.csp_violations() == [], f"CSP violations: {watched.csp_violations()}"
        assert watched.unexpected_errors() == [], f"console errors: {watched.unexpected_errors()}"
        assert watched.dialogs == [], f"dialogs fired: {watched.dialogs}"
