"""A remote service working in the background of a test: ``HubClient.work`` run
as a task until the block ends, then stopped and the client closed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from conveyor.client import HubClient


@contextlib.asynccontextmanager
async def working(client: HubClient, service: str, concurrency: int = 8,
                  prefetch: int | None = None) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(client.work(service, concurrency=concurrency, prefetch=prefetch,
                                           stop_timeout=1.0))
    await client.wait_working(10)
    try:
        yield task
    finally:
        client.stop()
        await asyncio.wait_for(task, 20)
        await client.close()
