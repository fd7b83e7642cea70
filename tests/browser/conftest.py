"""The admin panel in a real headless browser: Debian's ``chromium`` driven by
Playwright through its ``executable_path`` (never ``playwright install``).

Outside CI, without a browser, these tests skip and say how to install one; with
``CI=true`` a missing browser fails them (``.ci/run`` installs it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.environment import unavailable

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
HOW_TO_INSTALL = ("install Debian's chromium (`apt-get install -y chromium`) and the test "
                  "extra (`pip install -e '.[test]'`, for playwright); `.ci/run` does both")


def _chromium() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _unavailable(reason: str) -> None:
    unavailable(f"browser tests need a browser: {reason}; {HOW_TO_INSTALL}")


# Module scope, not session: Playwright's sync API keeps an event loop running in the
# main thread while it is open, which breaks every later test that runs a loop of its own
# (asyncio.run) or opens Playwright again.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    executable = _chromium()
    if executable is None:
        _unavailable("no chromium on PATH or at /usr/bin/chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page; ``page.problems`` collects CSP
    violations, script errors and dialogs (tests assert it stays empty)."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    # A refused request (401/403) is logged by Chrome as "Failed to load resource": the
    # panel expects those. Anything else (a CSP violation, a script error) is a problem.
    page.on("console", lambda m: problems.append(m.text) if m.type == "error"
            and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.problems = problems
    try:
        yield page
    finally:
        context.close()


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"panel-{name}.png"), full_page=True)
