"""Apps run by worker processes in the integration tests.

Configured from the environment: CONVEYOR_DB (storage URL), LEDGER (a file
each run appends ``task_id attempt pid`` to), CONCURRENCY, LEASE.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from conveyor import Context, Conveyor

app = Conveyor(
    os.environ.get("CONVEYOR_DB", "sqlite:///conveyor-test.db"),
    concurrency=int(os.environ.get("CONCURRENCY", "50")),
    lease=float(os.environ.get("LEASE", "30")),
    sweep_interval=float(os.environ["SWEEP"]) if "SWEEP" in os.environ else None,
    stop_timeout=float(os.environ.get("STOP_TIMEOUT", "5")),
)
_ledger_fd: int | None = None


def record(ctx: Context[Any]) -> None:
    """Append one line to the ledger: one write() on an O_APPEND file is atomic."""
    global _ledger_fd
    if _ledger_fd is None:
        _ledger_fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = f"{ctx.id} {ctx.attempt + ctx.task.rescues} {os.getpid()}\n"
    os.write(_ledger_fd, line.encode())


@app.handler("ledger")
async def ledger(ctx: Context[Any]) -> int:
    record(ctx)
    if ctx.payload and ctx.payload.get("sleep"):
        await asyncio.sleep(float(ctx.payload["sleep"]))
    return os.getpid()


@app.handler("chatty")
async def chatty(ctx: Context[Any]) -> str:
    steps = int(ctx.payload.get("steps", 5))
    for i in range(steps):
        ctx.log.info("line %d", i)
        await ctx.progress(i + 1, total=steps)
        await asyncio.sleep(float(ctx.payload.get("pause", 0.05)))
    return "chatted"
