"""Requests no well-behaved client sends, found by fuzzing the hub: each gets the
documented answer (a text frame that is not UTF-8, a query parameter that is not
UTF-8, a WebSocket handshake to no route, a Host that is no host)."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conveyor import Conveyor
from conveyor.hub import HubConfig
from conveyor.hub._serve import redact_access_log

from .conftest import RunningHub, hub_db_url, running_hub


class _Records(logging.Handler):
    """The records of a logger, and an event set by the first that holds ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.records: list[logging.LogRecord] = []
        self.seen = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self.text in record.getMessage():
            self.loop.call_soon_threadsafe(self.seen.set)


async def _until_closed(ws: Any) -> None:
    while True:  # the welcome may come first
        await asyncio.wait_for(ws.recv(), 10)


async def test_a_text_frame_that_is_not_utf8_closes_1007_with_one_warning_line(
        insecure_hub: RunningHub) -> None:
    """RFC 6455: the server closes with 1007 before the hub reads the frame; uvicorn
    logged an error with a traceback (a client without a key could fill the log)."""
    redact_access_log()
    logger = logging.getLogger("uvicorn.error")
    records = _Records("UTF-8")
    logger.addHandler(records)
    try:
        async with connect(insecure_hub.ws_url + "/ws") as ws:
            await ws.send(b"\xff", text=True)
            with pytest.raises(ConnectionClosed) as closed:
                await _until_closed(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
        await asyncio.wait_for(records.seen.wait(), 10)  # logged on the server's side
    finally:
        logger.removeHandler(records)
    [record] = [r for r in records.records if "UTF-8" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.exc_info is None


@pytest.mark.parametrize(("query", "status", "code"), [
    ("filter=%7B%22payload.x%22%3A%22%FF%22%7D", 400, "invalid_json"),
    ("sort=%FF", 400, "invalid_json"),
    ("limit=%FF", 422, "invalid"),
])
async def test_a_query_parameter_that_is_not_utf8_is_refused(
        insecure_hub: RunningHub, query: str, status: int, code: str) -> None:
    """Starlette read ``%FF`` as U+FFFD, and the query ran with it."""
    await insecure_hub.app.add("t:x", {"x": "\ufffd"})
    async with httpx.AsyncClient() as client:
        for route in ("/api/v1/tasks", "/api/v1/tasks/count"):
            if route.endswith("count") and not query.startswith("filter"):
                continue
            got = await client.get(f"{insecure_hub.url}{route}?{query}")
            assert got.status_code == status, got.text
            assert got.json()["error"]["code"] == code
            assert "not UTF-8" in got.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/ws/nothing", "/ws/tasks/", "/nope"])
async def test_a_websocket_handshake_to_no_route_is_404(hub: RunningHub, path: str) -> None:
    key = hub.key("admin", admin=True)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(hub.ws_url + path, additional_headers={"X-Conveyor-Key": key}):
            pass
    assert refused.value.response.status_code == 404
    assert b'"not_found"' in refused.value.response.body


async def test_an_insecure_hub_refuses_a_host_that_is_no_host(tmp_path: Path) -> None:
    """``evil.example:80@127.0.0.1`` was read as a user before an address (and
    taken), an empty Host was taken too; no browser sends either."""
    async with running_hub(Conveyor(hub_db_url(tmp_path)), HubConfig(port=0, insecure=True),
                           None) as hub:
        port = int(hub.url.rsplit(":", 1)[1])

        def status(host: str) -> int:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(f"GET /api/v1/tasks/count HTTP/1.1\r\nHost: {host}\r\n"
                             "Connection: close\r\n\r\n".encode("latin-1"))
                return int(sock.recv(64).split(b" ")[1])

        for host in (f"evil.example:{port}@127.0.0.1", "", "127.0.0.1 evil", "a/b"):
            assert await asyncio.to_thread(status, host) == 403, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
            assert await asyncio.to_thread(status, host) == 200, host


async def test_of_two_key_headers_the_bearer_one_is_used(hub: RunningHub) -> None:
    good = hub.key("reader", subscribe=["*"])
    bad = "cvk_000000000000_" + "0" * 40
    async with httpx.AsyncClient() as client:
        async def status(headers: dict[str, str]) -> int:
            got = await client.get(hub.url + "/api/v1/tasks/count", headers=headers)
            return got.status_code

        assert await status({"Authorization": f"Bearer {good}", "X-Conveyor-Key": bad}) == 200
        assert await status({"Authorization": f"Bearer {bad}", "X-Conveyor-Key": good}) == 401
        # another scheme (a proxy's own authentication) leaves X-Conveyor-Key to be read
        assert await status({"Authorization": "Basic dTpw", "X-Conveyor-Key": good}) == 200
