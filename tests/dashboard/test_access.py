"""Signing in: the key form, refused keys, the admin right, an insecure hub; page security."""

from __future__ import annotations

import asyncio
import re

import httpx
from playwright.async_api import Page, expect

from ..hub._ws_helpers import Raw, eventually
from ..hub.conftest import RunningHub
from .conftest import Dash, sign_in


async def test_key_form_refuses_a_wrong_key_then_takes_an_admin_key(dash: Dash) -> None:
    page = dash.page
    await page.goto(dash.hub.url + "/")
    await expect(page.get_by_test_id("main")).to_be_hidden()
    await sign_in(page, "cvk_000000000000_wrong")
    await expect(page.get_by_test_id("notice")).to_contain_text("The hub refused this key")
    await expect(page.get_by_test_id("key-form")).to_be_visible()
    await expect(page.get_by_test_id("main")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0

    await sign_in(page, dash.admin)
    await expect(page.get_by_test_id("task-table")).to_be_visible()
    await expect(page.get_by_test_id("notice")).to_be_hidden()
    await expect(page.get_by_test_id("connection")).to_have_text("connected as admin")
    # the key is kept for this tab: a reload signs in again without asking
    await page.reload()
    await expect(page.get_by_test_id("task-table")).to_be_visible()
    await expect(page.get_by_test_id("key-form")).to_be_hidden()


async def test_a_key_without_the_admin_right_shows_only_a_message(dash: Dash) -> None:
    await dash.app.add("mail:send", {"to": "ann"})
    reader = dash.hub.key("reader", publish=["mail:*"], subscribe=["mail:*"])
    page = dash.page
    await page.goto(dash.hub.url + "/")
    await sign_in(page, reader)
    await expect(page.get_by_test_id("notice")).to_contain_text(
        re.compile("this key has no admin right", re.I))
    await expect(page.get_by_test_id("main")).to_be_hidden()
    await expect(page.get_by_test_id("key-form")).to_be_hidden()
    await expect(page.get_by_test_id("task-row")).to_have_count(0)
    await page.get_by_test_id("forget-key").click()
    await expect(page.get_by_test_id("key-form")).to_be_visible()


async def test_an_insecure_hub_asks_for_no_key(insecure_page: tuple[RunningHub, Page]) -> None:
    hub, page = insecure_page
    task = await hub.app.add("mail:send", {"to": "bob"})
    await page.goto(hub.url + "/")
    row = page.locator(f'[data-testid="task-row"][data-task-id="{task.id}"]')
    await expect(row.get_by_test_id("cell-status")).to_have_text("queued")
    await expect(page.get_by_test_id("key-form")).to_be_hidden()
    await expect(page.get_by_test_id("connection")).to_have_text("connected (insecure hub)")


async def test_page_headers_and_payloads_shown_as_text(dash: Dash) -> None:
    # the shell needs no key and holds no data; data routes still need one
    async with httpx.AsyncClient(base_url=dash.hub.url) as http:
        for path in ("/", "/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css"):
            r = await http.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-type"].startswith("text/css")
        assert (await http.get("/dashboard/static/nope.js")).status_code == 404
        assert (await http.get("/dashboard/static/../_dashboard.py")).status_code == 404
        assert (await http.get("/api/v1/stats")).status_code == 401
        assert (await http.post("/")).status_code == 405
        # the API keeps its own answers for methods it does not take
        assert (await http.delete("/api/v1/stats")).status_code == 405

    evil = "<img src=x onerror=document.title='pwned'>"
    task = await dash.app.add("mail:send", {"html": evil}, tags={"x": evil})
    response = await dash.page.goto(dash.hub.url + "/")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    await sign_in(dash.page, dash.admin)
    await dash.row(task.id).click()
    await expect(dash.page.get_by_test_id("task-payload")).to_contain_text(evil)
    await expect(dash.page.locator("img")).to_have_count(0)
    assert await dash.page.title() == "conveyor"


async def test_a_revoked_key_brings_back_the_key_form(dash: Dash) -> None:
    await dash.open()
    assert dash.hub.credentials is not None
    dash.hub.credentials.revoke("admin")
    await expect(dash.page.get_by_test_id("notice")).to_contain_text("no longer valid")
    await expect(dash.page.get_by_test_id("key-form")).to_be_visible()
    await expect(dash.page.get_by_test_id("main")).to_be_hidden()
    assert await dash.page.evaluate("sessionStorage.length") == 0


async def test_a_key_at_its_connection_limit_is_kept_and_connects_once_one_closes(
        dash: Dash) -> None:
    key = dash.hub.key("ops", admin=True, max_instances=1)
    page = dash.page
    async with Raw.opened(dash.hub.url, key):  # the credential's one connection
        await page.goto(dash.hub.url + "/")
        await sign_in(page, key)
        notice = page.get_by_test_id("notice")
        await expect(notice).to_contain_text("refused another connection for this key")
        await expect(notice).to_contain_text("its maximum")
        await expect(page.get_by_test_id("main")).to_be_hidden()
        await expect(page.get_by_test_id("key-form")).to_be_hidden()
        await expect(page.get_by_test_id("forget-key")).to_be_visible()
        await expect(page.get_by_test_id("connection")).to_have_text("not connected")
        # the key is valid: it is kept, not forgotten as a wrong one is
        assert await page.evaluate("sessionStorage.length") == 1
    # the other connection closed (and the hub has let it go): a reload signs in
    # with the kept key
    await eventually(lambda: not dash.hub.hub.connections)
    await page.reload()
    await expect(page.get_by_test_id("task-table")).to_be_visible()
    await expect(page.get_by_test_id("connection")).to_have_text("connected as ops")


EVIL_PAGE = """<!doctype html><script>
window.seen = {messages: [], fetch: null, closed: null};
const ws = new WebSocket("ws://127.0.0.1:PORT/ws");
ws.onmessage = (e) => {
  window.seen.messages.push(e.data);
  ws.send(JSON.stringify({type: "abort", id: 1, task_id: "TASK"}));
  ws.send(JSON.stringify({type: "live", id: 2, filter: {}}));
};
ws.onclose = (e) => { window.seen.closed = e.code; };
fetch("http://127.0.0.1:PORT/api/v1/tasks/TASK/abort", {method: "POST", mode: "no-cors"})
  .then(() => { window.seen.fetch = "answered"; }, () => { window.seen.fetch = "failed"; });
</script>"""


async def test_a_page_of_another_origin_cannot_drive_an_insecure_hub(
        insecure_page: tuple[RunningHub, Page]) -> None:
    """A hub without credentials takes every client as an admin: a web page of another
    origin, opened in the browser of the person running it, read every task and
    aborted them (security audit). The page here is served from another port."""
    hub, page = insecure_page
    task = await hub.app.add("mail:send", {"ssn": "123-45-6789"})
    port = int(hub.url.rsplit(":", 1)[1])
    html = EVIL_PAGE.replace("PORT", str(port)).replace("TASK", task.id).encode()

    async def serve_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nconnection: close\r\n"
                     b"content-length: " + str(len(html)).encode() + b"\r\n\r\n" + html)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve_page, "127.0.0.1", 0)
    evil = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    async with server:
        await page.goto(evil)
        await page.wait_for_function(
            "window.seen.closed !== null && window.seen.fetch !== null")
    seen = await page.evaluate("window.seen")
    assert seen["messages"] == []  # no welcome, no snapshot: refused at the handshake
    assert (await hub.app.get(task.id)).status.value == "queued"
    # the hub's own page still works
    await page.goto(hub.url + "/")
    row = page.locator(f'[data-testid="task-row"][data-task-id="{task.id}"]')
    await expect(row.get_by_test_id("cell-status")).to_have_text("queued")
