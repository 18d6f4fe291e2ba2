"""A real hub (uvicorn on 127.0.0.1, a free port) for each test that asks for one.

Every hub test runs on SQLite and, when ``CONVEYOR_TEST_PG`` is set, again on
PostgreSQL (a schema of its own): the hub's storage URL comes from
:func:`hub_db_url`. The fuzzing modules (``SQLITE_ONLY``) test the hub's input
handling, which does not depend on the storage, and run on SQLite only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import uvicorn
from starlette.types import ASGIApp

from conveyor import Conveyor
from conveyor.hub import Hub, HubConfig, create_hub
from conveyor.hub._credentials import CredentialStore
from conveyor.hub._serve import server_config

from ..conftest import PG_ENV, drop_pg_schema, pg_url

START_TIMEOUT = 30.0  # seconds for uvicorn to listen

HUB_BACKENDS = ["sqlite", *(["postgres"] if os.environ.get(PG_ENV) else [])]
SQLITE_ONLY = ("test_ws_fuzz", "test_openapi_schemathesis", "test_openapi_docs_command",
               "test_http_guard")
_backend = {"kind": "sqlite"}
_schemas: list[str] = []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hub_backend" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        kinds = ["sqlite"] if module in SQLITE_ONLY else HUB_BACKENDS
        metafunc.parametrize("hub_backend", kinds, indirect=True)


@pytest.fixture(autouse=True)
def hub_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The storage of this test's hubs (see :func:`hub_db_url`)."""
    kind = getattr(request, "param", "sqlite")
    _backend["kind"] = kind
    try:
        yield kind
    finally:
        _backend["kind"] = "sqlite"
        while _schemas:
            drop_pg_schema(_schemas.pop())


def hub_db_url(tmp_path: Path, name: str = "hub.db") -> str:
    """The storage URL named ``name`` for this test: a SQLite file in ``tmp_path``,
    or on PostgreSQL a schema named after both (the same URL on every call)."""
    if _backend["kind"] == "postgres":
        digest = hashlib.sha1(f"{tmp_path}/{name}".encode()).hexdigest()[:16]
        url = pg_url(f"h_{digest}", migrate="true")
        if url not in _schemas:
            _schemas.append(url)
        return url
    return f"sqlite:///{tmp_path / name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningHub:
    """A hub serving in this test's event loop."""

    url: str          # http://127.0.0.1:PORT
    ws_url: str       # ws://127.0.0.1:PORT
    hub: Hub
    app: Conveyor
    credentials: CredentialStore | None
    server: uvicorn.Server

    def key(self, name: str, **rights: object) -> str:
        """Create a credential and return its key."""
        assert self.credentials is not None
        _, key = self.credentials.add(name, **rights)  # type: ignore[arg-type]
        return key


@contextlib.asynccontextmanager
async def running_hub(app: Conveyor, config: HubConfig,
                      credentials: CredentialStore | None, *,
                      wrap: Callable[[ASGIApp], ASGIApp] | None = None,
                      ) -> AsyncIterator[RunningHub]:
    """The hub of ``app``, served by uvicorn as ``conveyor serve`` serves it; ``wrap``,
    when given, puts an ASGI app in front of it (a proxy's path prefix, say)."""
    port = config.port or free_port()
    config = replace(config, port=port)
    asgi = create_hub(app, config, credentials=credentials)
    settings = server_config(asgi, replace(config, host="127.0.0.1"), log_level="warning")
    if wrap is not None:
        settings.app = wrap(asgi)
    server = uvicorn.Server(settings)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it, if anything did
            raise AssertionError(f"the hub on port {port} ended before it started")
        if time.monotonic() > deadline:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise AssertionError(f"the hub on port {port} did not start within "
                                 f"{START_TIMEOUT} s")
        await asyncio.sleep(0.01)
    try:
        yield RunningHub(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}",
                         asgi.state.hub, app, credentials, server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    """A hub with credentials (no in-process handlers)."""
    app = Conveyor(hub_db_url(tmp_path))
    store = CredentialStore(tmp_path / "credentials.json")
    async with running_hub(app, HubConfig(port=0, credentials_path=str(store.path)),
                           store) as running:
        yield running


@pytest.fixture
async def insecure_hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    app = Conveyor(hub_db_url(tmp_path))
    async with running_hub(app, HubConfig(port=0, insecure=True), None) as running:
        yield running
