"""Browser tests of the dashboard: a real hub (SQLite) and Debian's Chromium, headless.

Playwright's async API runs in the test's event loop, beside the hub (uvicorn
in the same loop, see :func:`tests.hub.conftest.running_hub`). The browser is
``/usr/bin/chromium`` (``apt-get install chromium``; scripts/test installs it):
Playwright never downloads one, and a missing browser fails the tests.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from conveyor import Context, Conveyor
from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore

from ..hub.conftest import RunningHub, running_hub

CHROMIUM = "/usr/bin/chromium"

expect.set_options(timeout=10_000)


@dataclass
class Gates:
    """Events the test sets to move the ``job:steps`` handler on."""

    events: dict[str, asyncio.Event] = field(default_factory=dict)
    stubborn: threading.Event = field(default_factory=threading.Event)
    """Ends ``job:stubborn``, a sync handler that ignores aborts."""

    def __getitem__(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())


def dashboard_app(db: str, gates: Gates) -> Conveyor:
    """Handlers run by the hub's own worker. ``mail:*`` has none: its tasks stay queued."""
    app = Conveyor(db, stop_timeout=1.0, lease=6.0)

    @app.handler("job:steps")
    async def steps(ctx: Context) -> dict[str, Any]:
        await ctx.progress(1, total=3, message="first")
        ctx.log.info("step one")
        await gates["one"].wait()
        await ctx.progress(2, total=3, message="second")
        ctx.log.warning("step two")
        await gates["two"].wait()
        return {"done": True}

    @app.handler("job:quick")
    async def quick(ctx: Context) -> Any:
        return ctx.payload

    @app.handler("job:fail")
    async def fail(ctx: Context) -> None:
        raise RuntimeError("boom")

    @app.handler("job:stubborn", abort_grace=60)
    def stubborn(ctx: Context) -> str:
        ctx.log.info("stubborn")
        gates.stubborn.wait(30)
        return "late"

    @app.handler("job:hang")
    async def hang(ctx: Context) -> str:
        ctx.log.info("hanging")
        await ctx.sleep(30)
        return "late"

    return app


@dataclass
class Dash:
    """A running hub, its admin key, a browser page and the gates of ``job:steps``."""

    hub: RunningHub
    page: Page
    admin: str
    gates: Gates
    csp_violations: list[str]

    @property
    def app(self) -> Conveyor:
        return self.hub.app

    async def open(self, key: str | None = None) -> None:
        """Load the page and sign in with ``key`` (the admin key by default)."""
        await self.page.goto(self.hub.url + "/")
        await sign_in(self.page, key or self.admin)
        await expect(self.page.get_by_test_id("task-table")).to_be_visible()

    def row(self, task_id: str) -> Any:
        return self.page.locator(f'[data-testid="task-row"][data-task-id="{task_id}"]')


async def sign_in(page: Page, key: str) -> None:
    await expect(page.get_by_test_id("key-form")).to_be_visible()
    await page.get_by_test_id("key-input").fill(key)
    await page.get_by_test_id("key-submit").click()


@pytest.fixture
def chromium() -> str:
    """The browser's path; a missing browser fails the test (it is never skipped)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: the dashboard tests need Debian's Chromium "
                    "(apt-get install -y chromium chromium-driver; scripts/test does it)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def dash(tmp_path: Path, browser: Browser) -> AsyncIterator[Dash]:
    gates = Gates()
    store = CredentialStore(tmp_path / "credentials.json")
    app = dashboard_app(f"sqlite:///{tmp_path / 'hub.db'}", gates)
    config = HubConfig(port=0, credentials_path=str(store.path))
    async with running_hub(app, config, store) as hub:
        context = await browser.new_context()
        page = await context.new_page()
        violations: list[str] = []
        page.on("console", lambda msg: violations.append(msg.text)
                if re.search("Content Security Policy", msg.text) else None)
        try:
            yield Dash(hub, page, hub.key("admin", admin=True), gates, violations)
            assert violations == [], violations
        finally:
            for event in gates.events.values():
                event.set()  # let a waiting handler end before the hub stops
            await context.close()


@pytest.fixture
async def insecure_page(tmp_path: Path, browser: Browser) -> AsyncIterator[tuple[RunningHub, Page]]:
    app = Conveyor(f"sqlite:///{tmp_path / 'hub.db'}")
    async with running_hub(app, HubConfig(port=0, insecure=True), None) as hub:
        context = await browser.new_context()
        try:
            yield hub, await context.new_page()
        finally:
            await context.close()
