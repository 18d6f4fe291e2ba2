"""A real hub (uvicorn on 127.0.0.1, a free port) for each test that asks for one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import uvicorn

from conveyor import Conveyor
from conveyor.hub import Hub, HubConfig, create_hub
from conveyor.hub._credentials import CredentialStore


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
                      credentials: CredentialStore | None) -> AsyncIterator[RunningHub]:
    port = config.port or free_port()
    config = replace(config, port=port)
    asgi = create_hub(app, config, credentials=credentials)
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, lifespan="on",
                                           log_level="warning", ws_max_size=config.ws_max_size))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield RunningHub(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}",
                         asgi.state.hub, app, credentials, server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    """A hub with credentials on a SQLite file (no in-process handlers)."""
    app = Conveyor(f"sqlite:///{tmp_path / 'hub.db'}")
    store = CredentialStore(tmp_path / "credentials.json")
    async with running_hub(app, HubConfig(port=0, credentials_path=str(store.path)),
                           store) as running:
        yield running


@pytest.fixture
async def insecure_hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    app = Conveyor(f"sqlite:///{tmp_path / 'hub.db'}")
    async with running_hub(app, HubConfig(port=0, insecure=True), None) as running:
        yield running
