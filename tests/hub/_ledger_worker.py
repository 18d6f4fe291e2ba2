"""A remote worker that writes a ledger line as each run starts:
``python -m tests.hub._ledger_worker URL LEDGER SERVICE PROBE_ACTION``.

Handlers: ``ledger:work`` (writes ``<task id> <pid>`` to LEDGER, sleeps
``payload["sleep"]`` seconds, returns the pid) and PROBE_ACTION (returns the
pid). One run at a time with 3 offers prefetched. Prints ``ready`` once
subscribed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from conveyor import Context
from conveyor.client import HubClient


async def main(url: str, ledger: str, service: str, probe: str) -> None:
    client = HubClient(url)

    @client.handler("ledger:work")
    async def work(ctx: Context) -> Any:
        with open(ledger, "a") as f:  # noqa: ASYNC230 - before the first await, on purpose
            f.write(f"{ctx.id} {os.getpid()}\n")
        await asyncio.sleep(float(ctx.payload["sleep"]))
        return os.getpid()

    @client.handler(probe)
    async def probe_(ctx: Context) -> Any:
        return os.getpid()

    running = asyncio.create_task(client.work(service, concurrency=1, prefetch=3,
                                              max_backoff=0.2))
    await client.wait_working(30)
    print("ready", flush=True)
    await running


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
