"""A live Jobsprint (embedded default, its own SQLite file) and Debian's headless Chromium."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from app import create_app
from app.workers import stop_in_process
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def live_server(tmp_path, request):
    settings = make_settings("embedded", tmp_path, request)
    application = create_app(settings)
    server = make_server("127.0.0.1", 0, application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)
    # Stop its in-process workers and clock: they would otherwise go on using the process's
    # one database handle after a later test points it elsewhere.
    stop_in_process(application)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                              args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live_server, request):
    """A fresh browser context; every request it makes must go to the app itself."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    foreign: list[str] = []
    context.on("request",
               lambda r: None if r.url.startswith(live_server) else foreign.append(r.url))
    tab = context.new_page()
    # Script errors, and sub-resources (scripts, styles, icons) that fail to load; a page
    # answering 4xx on purpose (a form error) is not one.
    console_errors: list[str] = []
    tab.on("pageerror", lambda e: console_errors.append(str(e)))
    tab.on("response", lambda r: console_errors.append(f"{r.status} {r.url}")
           if r.status >= 400 and r.request.resource_type != "document" else None)
    tab.base_url = live_server
    yield tab
    context.close()
    assert foreign == [], f"requests left the app: {foreign}"
    assert console_errors == [], f"browser console errors: {console_errors}"


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
