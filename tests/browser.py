"""Open an HTML file in a real headless Chromium and read it back from the page.

Parsing the markup checks what was written; only a browser shows what a reader gets: whether
a script throws, a resource is missing, or a chart lays out at zero size. Debian's `chromium`
is used through Playwright's `executable_path` because Playwright's own browser download is
not always reachable; `make test` installs it, so a missing browser fails a test (with the
command that fixes it) instead of skipping the check unnoticed.

Usage, one browser per test module since launching costs about a second:

    @pytest.fixture(scope="module")
    def browser() -> Iterator[Browser]:
        with chromium() as b:
            yield b

    def test_page(browser: Browser, tmp_path: Path) -> None:
        count, errors = inspect_html(browser, path, "document.querySelectorAll('svg').length")
        assert errors == [] and count == 2
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request

CHROMIUM = Path("/usr/bin/chromium")
MISSING = "run `make test`, which installs it"


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium for the duration of the block.

    Fails (never skips) when the browser or Playwright is missing, so a machine without them
    cannot pass the suite while silently checking less."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: {MISSING}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed: {MISSING}", pytrace=False)
    # Chromium refuses to start its sandbox as root (containers, CI images).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=args)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class OpenedPage:
    """A loaded page and what went wrong while it loaded and ran.

    The lists fill as events arrive; after any `page.evaluate` call they hold everything the
    page reported up to that call, since events arrive before the evaluation's reply."""

    page: Page
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions
    requests: list[str] = field(default_factory=list)  # every URL fetched besides the file


@contextmanager
def open_page(browser: Browser, path: Path, width: int = 1280,
              height: int = 900) -> Iterator[OpenedPage]:
    """Load `path` as a file:// URL in a fresh page and wait for its load event.

    Failed requests count as errors too: a missing image or script is the classic way a
    "self-contained" page breaks once it is mailed around."""
    page = browser.new_page(viewport={"width": width, "height": height})
    url = path.resolve().as_uri()
    opened = OpenedPage(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location
            opened.errors.append(f"console: {message.text} ({where.get('url')}:"
                                 f"{where.get('lineNumber')})")

    def on_request(request: Request) -> None:
        if request.url != url:
            opened.requests.append(request.url)

    def on_failed(request: Request) -> None:
        opened.errors.append(f"request failed: {request.url} ({request.failure})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: opened.errors.append(f"pageerror: {error}"))
    page.on("request", on_request)
    page.on("requestfailed", on_failed)
    try:
        page.goto(url, wait_until="load")
        yield opened
    finally:
        page.close()


def inspect_html(browser: Browser, path: Path, script: str) -> tuple[Any, list[str]]:
    """Evaluate a JavaScript expression (or function source) on the loaded page; return its
    JSON-able result and the page's errors, in the order they happened."""
    with open_page(browser, path) as opened:
        result = opened.page.evaluate(script)
        return result, list(opened.errors)
