"""What an operator sees when the network or the storage fails under an open page, a
double click on a button, and the page from the keyboard."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from conveyor import Conveyor, Status
from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore

from ..hub.conftest import running_hub
from ..postgres._pginstance import PgInstance
from .conftest import Dash, sign_in


class StallingProxy:
    """A TCP proxy in front of the hub whose traffic can be stopped without closing
    anything: a network gone dead, as a browser's socket sees it."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.port = 0
        self.opened: list[asyncio.Event] = []  # each connection's own flow
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> StallingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stall_open_connections(self) -> None:
        """Stop the connections open now; new ones flow."""
        for flow in self.opened:
            flow.clear()

    def resume(self) -> None:
        self.flowing.set()
        for flow in self.opened:
            flow.set()

    async def __aexit__(self, *exc: object) -> None:
        self.resume()
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.flowing.wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers += [writer, up_writer]
        flow = asyncio.Event()
        flow.set()
        self.opened.append(flow)
        await asyncio.gather(self._pump(reader, up_writer, flow),
                             self._pump(up_reader, writer, flow), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    flow: asyncio.Event) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                # stalled: the data waits, nothing closes
                await self.flowing.wait()
                await flow.wait()
                writer.write(data)
                await writer.drain()
        writer.close()


async def test_a_dead_network_is_noticed_and_the_page_reconnects(dash: Dash) -> None:
    """The page said "connected" and showed frozen tasks for as long as a dead network
    lasted; it now pings, and gives a silent connection up after 15 seconds."""
    page = dash.page
    pings: list[float] = []  # when the page sent each ping

    def on_socket(ws: Any) -> None:
        ws.on("framesent", lambda payload: pings.append(time.monotonic())
              if '"ping"' in str(payload) else None)

    page.on("websocket", on_socket)
    async with StallingProxy(int(dash.hub.url.rsplit(":", 1)[1])) as proxy:
        await page.goto(f"http://127.0.0.1:{proxy.port}/")
        await sign_in(page, dash.admin)
        await expect(page.get_by_test_id("connection")).to_have_text("connected as admin")
        # an operator about to re-prioritise a queued task
        viewed = await dash.app.add("mail:send", {"n": 0})
        await dash.row(viewed.id).click()
        priority = page.get_by_test_id("task-priority-input")
        await priority.focus()
        proxy.flowing.clear()
        during = await dash.app.add("mail:send", {"n": 1})
        await expect(page.get_by_test_id("connection")).to_contain_text(
            "no answer from the hub for 15 s; reconnecting", timeout=30_000)
        gave_up = time.monotonic()
        # 15 s after the unanswered ping, not at the 5-second tick after that (up to 20 s)
        unanswered = max(t for t in pings if t < gave_up)
        assert 15.0 <= gave_up - unanswered < 16.5, gave_up - unanswered
        proxy.flowing.set()
        await expect(page.get_by_test_id("connection")).to_have_text("connected as admin",
                                                                     timeout=20_000)
        await expect(priority).to_be_focused()  # the reconnection did not take the focus
        await page.get_by_test_id("task-close").click()
        await expect(dash.row(during.id)).to_be_visible()


async def test_a_key_at_its_limit_connects_again_once_the_hub_lets_go(dash: Dash) -> None:
    """After giving up a silent connection, the hub may still count it against a key's
    connection limit: the page tried once, was refused, and stopped for good."""
    page = dash.page
    key = dash.hub.key("solo", admin=True, max_instances=1)
    async with StallingProxy(int(dash.hub.url.rsplit(":", 1)[1])) as proxy:
        await page.goto(f"http://127.0.0.1:{proxy.port}/")
        await sign_in(page, key)
        header = page.get_by_test_id("connection")
        await expect(header).to_have_text("connected as solo")
        proxy.stall_open_connections()  # the page's socket goes dead; a new one would not
        await expect(header).to_contain_text("still counts the connection given up",
                                             timeout=40_000)
        proxy.resume()  # the old connection's close reaches the hub, which lets it go
        await expect(header).to_have_text("connected as solo", timeout=20_000)
        await expect(page.get_by_test_id("notice")).to_be_hidden()


async def test_a_double_click_sends_one_request(dash: Dash) -> None:
    """The second click's answer (409: already aborted) was shown as an error of an
    abort that had worked."""
    await dash.open()
    task = await dash.app.add("mail:send", {"n": 1})  # no handler: it stays queued
    await dash.row(task.id).click()
    abort = dash.page.get_by_test_id("task-abort")
    await expect(abort).to_be_visible()
    await abort.dblclick()
    await expect(dash.page.get_by_test_id("task-status")).to_have_text("aborted")
    await expect(dash.page.get_by_test_id("task-action-error")).to_be_hidden()
    assert (await dash.app.get(task.id)).status is Status.ABORTED


async def test_the_table_and_the_task_view_from_the_keyboard(dash: Dash) -> None:
    page = dash.page
    await dash.open()
    await expect(page.get_by_test_id("connection")).to_have_attribute("aria-live", "polite")
    task = await dash.app.add("job:steps", {})
    link = dash.row(task.id).get_by_test_id("task-link")
    await expect(link).to_have_text("…" + task.id[-8:])
    await link.focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("task-view")).to_be_visible()
    await expect(page.get_by_test_id("task-heading")).to_be_focused()
    await expect(page.get_by_test_id("task-progress")).to_have_attribute("aria-label",
                                                                         "progress")
    await page.get_by_test_id("task-close").click()
    bar = dash.row(task.id).get_by_test_id("progress-bar")
    await expect(bar).to_have_attribute("aria-label", "progress")


async def test_notices_say_only_what_holds(dash: Dash) -> None:
    """A refused query said "No task matches." as if it had run; the notice of a
    malformed address stayed after going back to the list."""
    page = dash.page
    await dash.app.add("mail:send", {"n": 1})
    await dash.open()
    await expect(page.get_by_test_id("task-count")).to_have_text("1 task, newest first")
    await page.get_by_test_id("filter-query").fill('{"priority": {"$gt": "x"}}')
    await page.get_by_test_id("filter-query").press("Enter")
    await expect(page.get_by_test_id("filter-error")).to_contain_text("priority")
    await expect(page.get_by_test_id("task-count")).to_have_text("")
    await page.goto(dash.hub.url + "/#/tasks/%E0%A4%A")
    await expect(page.get_by_test_id("notice")).to_have_text("that address names no task")
    await page.goto(dash.hub.url + "/#/")
    await expect(page.get_by_test_id("notice")).to_be_hidden()


@pytest.mark.serial
async def test_the_header_recovers_with_the_storage(tmp_path: Path, browser: Browser) -> None:
    """A panel's failed read (the storage down) took the header's place for good: it
    said "storage unavailable" long after the storage was back."""
    with PgInstance() as pg:
        store = CredentialStore(tmp_path / "credentials.json")
        app = Conveyor(pg.url(schema="dash", migrate="true", pool_timeout="1"))
        async with running_hub(app, HubConfig(port=0, credentials_path=str(store.path)),
                               store) as hub:
            context = await browser.new_context()
            try:
                page = await context.new_page()
                await page.goto(hub.url + "/")
                await sign_in(page, hub.key("admin", admin=True))
                header = page.get_by_test_id("connection")
                await expect(header).to_have_text("connected as admin")
                await asyncio.to_thread(pg.stop)
                await expect(header).to_contain_text("storage unavailable", timeout=20_000)
                await asyncio.to_thread(pg.start)
                await expect(header).to_have_text("connected as admin", timeout=60_000)
            finally:
                await context.close()

