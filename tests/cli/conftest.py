from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..conftest import PG_ENV, backend_url, drop_pg_schema
from ._support import Background


@pytest.fixture(params=["sqlite", *(["postgres"] if os.environ.get(PG_ENV) else [])])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh storage URL: a SQLite file in a fresh directory (not created yet) or,
    with ``CONVEYOR_TEST_PG``, also a PostgreSQL schema of its own (created on first
    use with ``?migrate=true``, dropped afterwards)."""
    url = backend_url(request.param, tmp_path)
    yield url
    if request.param == "postgres":
        drop_pg_schema(url)


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    """Start CLI subprocesses in the background; they are killed at teardown."""
    started: list[Background] = []

    def start(*args: str, **kwargs: object) -> Background:
        proc = Background(*args, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
