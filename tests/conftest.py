"""Shared fixtures: apps on every backend this machine has."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor import Conveyor

BACKENDS = ["memory", "sqlite"]


def backend_url(kind: str, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.db'}"
    if kind == "postgres":
        return os.environ["CONVEYOR_TEST_PG"]
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request.param, tmp_path)


@pytest.fixture
async def app(url: str) -> AsyncIterator[Conveyor]:
    """An app with short leases and fast sweeps, closed after the test."""
    app = Conveyor(url, concurrency=8, lease=5.0, stop_timeout=2.0)
    yield app
    await app.close()
