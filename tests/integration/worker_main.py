"""Run an app's worker in this process until SIGTERM or SIGINT, then stop gracefully.

Usage: python -m tests.integration.worker_main MODULE:ATTR
Prints "ready" once the worker runs.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys


async def run(target: str) -> None:
    module, _, attr = target.partition(":")
    app = getattr(importlib.import_module(module), attr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    print("ready", flush=True)
    await stop.wait()
    await app.close()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1]))
