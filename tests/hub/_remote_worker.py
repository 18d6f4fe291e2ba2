"""A remote worker process for the crash tests: ``python -m tests.hub._remote_worker URL KEY``.

Handlers: ``job:sleep`` (sleeps ``payload["sleep"]`` seconds, then returns the
payload's ``n``), ``job:noop`` (returns the payload). Prints ``ready`` once
subscribed, and ``stopped`` when ``work()`` returned (SIGTERM stops it gracefully).
An optional fifth argument is ``work()``'s ``stop_timeout`` (default 10).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from conveyor import Context
from conveyor.client import HubClient


async def main(url: str, key: str, service: str, concurrency: int,
               stop_timeout: float) -> None:
    client = HubClient(url, key or None)

    @client.handler("job:sleep")
    async def sleep(ctx: Context) -> Any:
        ctx.log.info("running in %s", service)
        await asyncio.sleep(float(ctx.payload.get("sleep", 0)))
        return ctx.payload.get("n")

    @client.handler("job:noop")
    async def noop(ctx: Context) -> Any:
        return ctx.payload

    work = asyncio.create_task(client.work(service, concurrency=concurrency, max_backoff=0.5,
                                           stop_timeout=stop_timeout))
    await client.wait_working(30)
    print("ready", flush=True)
    await work
    print("stopped", flush=True)


if __name__ == "__main__":
    url, key = sys.argv[1], sys.argv[2]
    service = sys.argv[3] if len(sys.argv) > 3 else "crashy"
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    stop_timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
    asyncio.run(main(url, key, service, concurrency, stop_timeout))
