"""A task cancelled while it waits for a pooled connection ends cancelled.

On Python 3.11 psycopg_pool waits for a free connection with ``asyncio.wait_for``,
which loses a cancellation that arrives as the connection is handed over
(CPython gh-86296): the task would go on as if nothing happened. A stopping relay
then awaited its task forever (``conveyor add --wait`` hung after printing the
result). The storage delivers such a cancellation itself.
"""

from __future__ import annotations

import asyncio
import sys

from conveyor.storage.postgres import PostgresStorage


async def _hold(storage: PostgresStorage, holding: asyncio.Event,
                release: asyncio.Event) -> None:
    """Hold the pool's only connection until ``release`` is set."""
    async with storage._conn():
        holding.set()
        await release.wait()


async def test_a_cancel_during_the_connection_handover_is_not_lost(schema_url: str) -> None:
    storage = PostgresStorage(schema_url, pool_min=1, pool_max=1)
    await storage.open()
    outcomes = {"cancelled": 0, "lost": 0}
    attempts = 300
    try:
        for attempt in range(attempts):
            holding = asyncio.Event()
            release = asyncio.Event()
            holder = asyncio.create_task(_hold(storage, holding, release))
            await holding.wait()
            waiter = asyncio.create_task(storage.get_many(["x"]))
            for _ in range(3):  # the waiter now queues for the only connection
                await asyncio.sleep(0)
            release.set()
            for _ in range(attempt % 12):  # cancel at a different step of the handover
                await asyncio.sleep(0)
            if waiter.done():  # it got the connection and its answer already: too late
                await holder
                await waiter
                continue
            waiter.cancel()
            await holder
            try:
                await asyncio.wait_for(waiter, 10)
                outcomes["lost"] += 1
            except asyncio.CancelledError:
                outcomes["cancelled"] += 1
    finally:
        await storage.close()
    assert outcomes["lost"] == 0, (outcomes, sys.version)
    assert outcomes["cancelled"] > attempts // 2, outcomes
