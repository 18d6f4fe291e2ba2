"""HTTPClient through a reverse proxy: a proxy's own answers (an HTML page, not
the hub's JSON) are named as such, a wait polls again past a proxy's gateway
timeout, and a wrong path to the hub is not "no task with id ...".

The proxy here is a small real HTTP server (uvicorn) in front of a real hub,
forwarding with httpx as nginx would, told to answer some requests itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from conveyor import TaskNotFound, WaitTimeout
from conveyor.client import HTTPClient, HubError

from .conftest import RunningHub, free_port

PAGE = ("<html><head><title>{status} {reason}</title></head><body><center><h1>{status} "
        "{reason}</h1></center><hr><center>nginx</center></body></html>")


class Proxy:
    """Forwards every request to ``upstream``; ``refuse`` maps a path part to the
    status the proxy answers itself (as many times as ``times`` says)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.refuse: dict[str, tuple[int, str]] = {}
        self.times: dict[str, int] = {}
        self.refused = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        for part, (status, reason) in self.refuse.items():
            if part in request.url.path and self.times.get(part, 0) > 0:
                self.times[part] -= 1
                self.refused += 1
                page = PAGE.format(status=status, reason=reason)
                await HTMLResponse(page, status_code=status)(scope, receive, send)
                return
        async with httpx.AsyncClient(base_url=self.upstream, timeout=90) as http:
            upstream = await http.request(
                request.method, request.url.path, params=request.query_params,
                content=await request.body(),
                headers={k: v for k, v in request.headers.items() if k != "host"})
        headers = {k: v for k, v in upstream.headers.items()
                   if k not in ("content-length", "transfer-encoding", "content-encoding")}
        await Response(upstream.content, upstream.status_code, headers)(scope, receive, send)


@contextlib.asynccontextmanager
async def proxy_in_front(hub: RunningHub) -> AsyncIterator[tuple[Proxy, str]]:
    proxy = Proxy(hub.url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(proxy, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn offers no event for it (as tests/hub/conftest)
        if task.done():
            task.result()
            raise AssertionError("the proxy ended before it started")
        await asyncio.sleep(0.01)
    try:
        yield proxy, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_a_wait_polls_again_past_a_proxys_gateway_timeout(hub: RunningHub) -> None:
    key = hub.key("ops", admin=True)
    task = await hub.app.add("nobody:runs")
    async with proxy_in_front(hub) as (proxy, url), HTTPClient(url, key) as http:
        proxy.refuse["/wait"] = (504, "Gateway Time-out")
        proxy.times["/wait"] = 2
        with pytest.raises(WaitTimeout):  # not HubError: the proxy's 504s were polled past
            await http.wait(task.id, timeout=1.0)
        assert proxy.refused == 2
        await hub.app.abort(task.id, "done")
        proxy.times["/wait"] = 1
        assert (await http.wait_task(task.id, timeout=10)).status.value == "aborted"


async def test_a_proxys_own_answers_are_named(hub: RunningHub) -> None:
    key = hub.key("ops", admin=True)
    async with proxy_in_front(hub) as (proxy, url), HTTPClient(url, key) as http:
        proxy.refuse["/batch"] = (413, "Request Entity Too Large")
        proxy.times["/batch"] = 1
        with pytest.raises(HubError) as caught:  # a ValidationError holding HTML before
            await http.add_many([("x:y", {"n": 1})])
        assert caught.value.status == 413
        text = str(caught.value)
        assert "not from the hub" in text and "413 Request Entity Too Large" in text
        assert "<html" not in text
        assert await hub.app.count({}) == 0


async def test_a_wrong_path_to_the_hub_is_not_a_missing_task(hub: RunningHub) -> None:
    key = hub.key("ops", admin=True)
    task = await hub.app.add("x:y")
    async with HTTPClient(f"{hub.url}/nothere", key) as wrong:
        with pytest.raises(HubError, match="no route /nothere/api/v1/tasks/") as caught:
            await wrong.get(task.id)
        assert not isinstance(caught.value, TaskNotFound)
    async with HTTPClient(hub.url, key) as right:
        assert (await right.get(task.id)).id == task.id
        with pytest.raises(TaskNotFound):
            await right.get(task.id[:-4] + "0000")
