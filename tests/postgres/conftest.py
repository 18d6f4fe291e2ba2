"""Fixtures of the PostgreSQL tests: a schema of each test's own on CONVEYOR_TEST_PG.

Without ``CONVEYOR_TEST_PG`` these tests are skipped (scripts/test always sets it).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ..conftest import PG_ENV, drop_pg_schema, pg_url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="CONVEYOR_TEST_PG is not set")
    for item in items:
        if "tests/postgres" in str(item.fspath):
            item.add_marker(pytest.mark.postgres)
            if not os.environ.get(PG_ENV):
                item.add_marker(skip)


@pytest.fixture
def server() -> str:
    """The test server's plain URL (no conveyor options)."""
    return os.environ[PG_ENV]


@pytest.fixture
def schema_url() -> Iterator[str]:
    """A URL naming a fresh schema (created on open: ``migrate=true``), dropped afterwards."""
    url = pg_url(migrate="true")
    yield url
    drop_pg_schema(url)


@pytest.fixture
def bare_url() -> Iterator[str]:
    """A URL naming a schema that does not exist yet (no migrate option)."""
    url = pg_url()
    yield url
    drop_pg_schema(url)


@pytest.fixture
async def storage(schema_url: str) -> AsyncIterator[Any]:
    from conveyor.storage.postgres import PostgresStorage

    s = PostgresStorage(schema_url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def other(schema_url: str, storage: Any) -> AsyncIterator[Any]:
    """A second storage object on the same schema (another process, as far as it knows)."""
    from conveyor.storage.postgres import PostgresStorage

    s = PostgresStorage(schema_url)
    await s.open()
    yield s
    await s.close()


async def listening(storage: Any, timeout: float = 10) -> None:
    """Wait until ``storage``'s change listener is connected: a NOTIFY sent before
    its LISTEN is not heard (it would only be caught by the next poll)."""
    deadline = time.monotonic() + timeout
    while not storage.feed_health().get("connected"):
        assert time.monotonic() < deadline, storage.feed_health()
        await asyncio.sleep(0.01)
