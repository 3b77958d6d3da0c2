"""A real headless Chromium (Debian's `chromium`, driven by Playwright) signed in to a test server's web UI.

`ui_page(server)` yields a Playwright page at 1400×900 already signed in with the server's credentials;
`screenshot(page, name)` keeps a full-page picture under test-artifacts/ui/ for the closing note and for a person
who wants to see what a failing test saw."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CONVEYOR_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "ui"
WIDTH, HEIGHT = 1400, 900


def _require_chromium() -> None:
    from conftest import unavailable

    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        unavailable(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        unavailable("Playwright is not installed (pip install -e '.[test]')")


@contextmanager
def ui_page(server: Any, width: int = WIDTH, height: int = HEIGHT,
            expected_errors: tuple[str, ...] = ()) -> Iterator[Any]:
    """A signed-in page on `server`'s UI. Console errors and failed API calls fail the test at the end, except those
    containing one of `expected_errors` (a refusal the test provokes)."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    key, secret = server.credentials()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(15_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}")
                    if msg.type == "error" else None)
            page.goto(server.url + "/")
            page.fill("#login-key", key)
            page.fill("#login-secret", secret)
            page.click("#login-submit")
            page.wait_for_selector("#shell:not([hidden])")
            yield page
            errors = [e for e in errors if not any(x in e for x in expected_errors)]
            assert not errors, "the page logged errors:\n" + "\n".join(errors)
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # From the top: a full-page picture taken while scrolled shows the sticky top bar in the middle of the page.
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def ui(sqlite_server: Any) -> Iterator[Any]:
    with ui_page(sqlite_server) as page:
        yield page
