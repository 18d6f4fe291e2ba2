"""Shared pieces of the REST tests: a hub whose process runs handlers, keys, a client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor import Context, Conveyor
from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore

from .conftest import RunningHub, hub_db_url, running_hub

API = "/api/v1"


def handler_app(db: str) -> Conveyor:
    """An app with handlers for a few actions (the hub runs its worker)."""
    app = Conveyor(db, stop_timeout=1.0, lease=6.0)

    @app.handler("mail:send")
    async def send(ctx: Context) -> dict[str, Any]:
        payload = ctx.payload if isinstance(ctx.payload, dict) else {}
        ctx.log.debug("connecting")
        ctx.log.info("sending to %s", payload.get("to"))
        ctx.log.warning("slow server")
        await asyncio.sleep(float(payload.get("sleep", 0)))
        return {"sent": payload.get("to")}

    @app.handler("geo:code")
    async def code(ctx: Context) -> list[float]:
        await ctx.progress(1, total=2, message="half")
        payload = ctx.payload if isinstance(ctx.payload, dict) else {}
        await asyncio.sleep(float(payload.get("sleep", 0)))
        return [1.5, 2.5]

    @app.handler("job:fail")
    async def fail(ctx: Context) -> None:
        raise RuntimeError("boom")

    @app.handler("job:slow")
    async def slow(ctx: Context) -> str:
        await ctx.sleep(30)
        return "late"

    return app


@dataclass
class Keys:
    admin: str
    publisher: str   # publish mail:*
    subscriber: str  # subscribe geo:*
    nobody: str      # no rights at all


def make_keys(hub: RunningHub) -> Keys:
    return Keys(admin=hub.key("admin", admin=True),
                publisher=hub.key("publisher", publish=["mail:*"]),
                subscriber=hub.key("subscriber", subscribe=["geo:*"]),
                nobody=hub.key("nobody"))


@pytest.fixture
async def worker_hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    """A hub with credentials whose process runs the handlers of :func:`handler_app`."""
    store = CredentialStore(tmp_path / "credentials.json")
    app = handler_app(hub_db_url(tmp_path))
    async with running_hub(app, HubConfig(port=0, credentials_path=str(store.path)),
                           store) as running:
        yield running


def client(hub: RunningHub, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=hub.url, headers=headers, timeout=30)


def error_of(response: httpx.Response, status: int, code: str | None = None,
             *needles: str) -> str:
    """The response is an error of ``status`` (and ``code``) whose message holds every needle."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"], body
    if code is not None:
        assert error["code"] == code, body
    for needle in needles:
        assert needle in error["message"], (needle, body)
    return str(error["message"])


async def eventually(check: Callable[[], Any], timeout: float = 15.0,
                     interval: float = 0.05) -> Any:
    """Await ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        await asyncio.sleep(interval)
