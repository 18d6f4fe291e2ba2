"""Fixtures of the control and crash-safety tests: fresh storage URLs per backend.

- ``shared_url``: backends that several processes can share: a fresh SQLite
  file, and a fresh PostgreSQL database when ``CONVEYOR_TEST_PG`` is set (a
  server URL such as ``postgresql://user:pw@host/postgres``; each test gets a
  new database created on that server and dropped afterwards).
- ``local_url``: the same plus ``memory://``, for tests that run in this process.
- ``opened_app``: an app with default options, opened on ``local_url``.

Without ``CONVEYOR_TEST_PG`` no postgres parameter is generated at all.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from conveyor import Conveyor

PG_ENV = "CONVEYOR_TEST_PG"
SHARED = ["sqlite", *(["postgres"] if os.environ.get(PG_ENV) else [])]
LOCAL = ["memory", *SHARED]


@contextmanager
def fresh_pg_database(server_url: str) -> Iterator[str]:
    """Create an empty database on the server of ``server_url``; yield its URL; drop it."""
    import psycopg  # the [postgres] extra; a missing driver is an error, not a skip

    name = f"conveyor_ctl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    query = "&".join(q for q in (parts.query, "migrate=true") if q)  # conveyor creates its schema
    try:
        yield urlunsplit(parts._replace(path=f"/{name}", query=query))
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def backend(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'x.db'}"
    elif kind == "postgres":
        with fresh_pg_database(os.environ[PG_ENV]) as url:
            yield url
    else:  # pragma: no cover
        raise ValueError(kind)


@pytest.fixture(params=SHARED)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh storage URL that other processes can open too."""
    with backend(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=LOCAL)
def local_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh storage URL for tests that run in this process (memory included)."""
    with backend(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def opened_app(local_url: str) -> AsyncIterator[Conveyor]:
    """An app with default options, opened on ``local_url`` and closed after the test."""
    app = Conveyor(local_url)
    await app.open()
    yield app
    await app.close()
