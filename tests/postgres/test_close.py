"""Closing a PostgreSQL storage with calls under way."""

from __future__ import annotations

import asyncio

from conveyor.query import parse_filter
from conveyor.storage.postgres import PostgresStorage


async def test_a_call_made_while_close_drains_does_not_open_it_again(schema_url: str) -> None:
    """close() lets the calls under way end first; one made meanwhile (the next step of
    some work) ran on a new pool that close() did not know of: the storage was open
    again when close() returned, with a pool nobody would close."""
    storage = PostgresStorage(schema_url)
    await storage.open()
    busy = asyncio.Event()

    async def long_call() -> None:
        async with storage._conn() as conn:
            busy.set()
            await conn.execute("SELECT pg_sleep(0.5)")
        # the next step, made while close() waits for this one
        assert await storage.count(parse_filter({})) == 0

    work = asyncio.create_task(long_call())
    await busy.wait()
    await storage.close()
    await work
    assert not storage._opened and not storage._pools
    await storage.close()
