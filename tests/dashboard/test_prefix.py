"""The dashboard served under a path prefix, as behind
``location /conveyor/ { proxy_pass http://hub/; }``: the page, its assets, its REST
calls and its WebSocket all go through the prefix (they used absolute paths, and
the page stayed on *starting*, its script a 404 of the other site at the root)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore

from ..hub.conftest import running_hub
from .conftest import Dash, Gates, dashboard_app, sign_in

PREFIX = "/conveyor"


def strip_prefix(hub: ASGIApp) -> ASGIApp:
    """What a proxy with a path prefix does: ``/conveyor/x`` goes to the hub as ``/x``
    (which never learns the prefix); anything else is another site's (404)."""

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await hub(scope, receive, send)
            return
        path: str = scope["path"]
        if not path.startswith(PREFIX + "/"):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"another site"})
            return
        raw = scope.get("raw_path") or path.encode()
        inner = {**scope, "path": path[len(PREFIX):], "raw_path": raw[len(PREFIX):]}
        await hub(inner, receive, send)

    return proxy


@pytest.fixture
async def prefixed(tmp_path: Path, browser: Browser) -> AsyncIterator[Dash]:
    gates = Gates()
    store = CredentialStore(tmp_path / "credentials.json")
    app = dashboard_app(f"sqlite:///{tmp_path / 'hub.db'}", gates)
    config = HubConfig(port=0, credentials_path=str(store.path))
    async with running_hub(app, config, store, wrap=strip_prefix) as hub:
        context = await browser.new_context()
        try:
            yield Dash(hub, await context.new_page(), hub.key("admin", admin=True), gates, [])
        finally:
            for event in gates.events.values():
                event.set()
            await context.close()


async def test_the_dashboard_works_under_a_path_prefix(prefixed: Dash) -> None:
    dash, page = prefixed, prefixed.page
    base = dash.hub.url + PREFIX + "/"
    requests: list[str] = []
    failures: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("response", lambda response: failures.append(f"{response.status} {response.url}")
            if response.status >= 400 else None)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))

    task = await dash.app.add("job:steps", {"n": 3})
    queued = await dash.app.add("mail:send", {"to": "ann"})
    await page.goto(base)
    await sign_in(page, dash.admin)
    await expect(page.get_by_test_id("connection")).to_have_text("connected as admin")
    await expect(dash.row(task.id)).to_be_visible()
    await expect(page.get_by_test_id("queue-rows")).to_contain_text("job:steps")

    await dash.row(task.id).click()
    await expect(page.get_by_test_id("task-view")).to_be_visible()
    await expect(page.get_by_test_id("task-progress-text")).to_have_text("1 / 3 first")
    dash.gates["one"].set()  # live, through the prefixed WebSocket
    await expect(page.get_by_test_id("task-progress-text")).to_have_text("2 / 3 second")
    await expect(page.get_by_test_id("log-message")).to_have_text(["step one", "step two"])
    dash.gates["two"].set()
    await expect(page.get_by_test_id("task-status")).to_have_text("succeeded")

    # a button's REST call goes through the prefix too
    await page.get_by_test_id("task-close").click()
    await dash.row(queued.id).click()
    await expect(page.get_by_test_id("task-status")).to_have_text("queued")
    await page.get_by_test_id("task-priority-input").fill("-5")
    await page.get_by_test_id("task-prioritize").click()
    await expect(page.get_by_test_id("task-priority")).to_have_text("-5")
    assert (await dash.app.get(queued.id)).priority == -5

    assert requests and all(url.startswith(base) for url in requests), requests
    ws_base = base.replace("http://", "ws://", 1)
    assert sockets and all(url == ws_base + "ws" for url in sockets), sockets
    # only the first probe, without a key (it tells an insecure hub), is refused
    assert failures == [f"401 {base}healthz"], failures


async def test_the_dashboard_at_the_root_still_uses_root_paths(dash: Dash) -> None:
    sockets: list[str] = []
    dash.page.on("websocket", lambda ws: sockets.append(ws.url))
    await dash.open()
    await expect(dash.page.get_by_test_id("connection")).to_have_text("connected as admin")
    assert sockets == [dash.hub.ws_url + "/ws"], sockets
