"""Apps run by worker processes in the integration tests.

Configured from the environment: CONVEYOR_DB (storage URL), LEDGER (a file
each run appends ``task_id attempt pid`` to), CONCURRENCY, LEASE.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
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


# -- handlers of the control and crash-safety tests (tests/control) ----------------


def record_interval(ctx: Context[Any], group: str, start: float, end: float) -> None:
    """Append ``task_id group start end pid`` to the ledger (one atomic write)."""
    global _ledger_fd
    if _ledger_fd is None:
        _ledger_fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_ledger_fd, f"{ctx.id} {group} {start!r} {end!r} {os.getpid()}\n".encode())


@app.handler("suicide")
async def suicide(ctx: Context[Any]) -> None:
    """A poison pill: records its run, then kills its own worker process."""
    record(ctx)
    os.kill(os.getpid(), signal.SIGKILL)


@app.handler("book")
async def book(ctx: Context[Any]) -> int:
    """Runs under a per-book concurrency condition; records its run interval."""
    start = time.time()
    await asyncio.sleep(float(ctx.payload.get("sleep", 0.005)))
    end = time.time()
    record_interval(ctx, str(ctx.payload["book"]), start, end)
    return os.getpid()


@app.handler("limited", limit=2)
async def limited(ctx: Context[Any]) -> int:
    """At most two running at once across all workers; records its run interval."""
    start = time.time()
    await asyncio.sleep(float(ctx.payload.get("sleep", 0.02)))
    end = time.time()
    record_interval(ctx, "limited", start, end)
    return os.getpid()


@app.handler("first_run_slow")
async def first_run_slow(ctx: Context[Any]) -> int:
    """Records its run; the first run (no marker file yet) creates the marker and
    sleeps ``payload.sleep`` seconds, later runs return at once."""
    record(ctx)
    try:
        os.close(os.open(ctx.payload["marker"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return os.getpid()
    await asyncio.sleep(float(ctx.payload.get("sleep", 30)))
    return os.getpid()


@app.handler("log_after")
async def log_after(ctx: Context[Any]) -> int:
    """Records its run, sleeps ``payload.sleep`` seconds, then writes one log line."""
    record(ctx)
    await asyncio.sleep(float(ctx.payload.get("sleep", 0)))
    ctx.log.info("after the sleep, pid %d", os.getpid())
    return os.getpid()


@app.handler("block_loop")
async def block_loop(ctx: Context[Any]) -> int:
    """Records its run, then blocks the worker's event loop (not just itself) for
    ``payload.sleep`` seconds: the runs claimed with it cannot start meanwhile."""
    record(ctx)
    time.sleep(float(ctx.payload.get("sleep", 1)))  # noqa: ASYNC251 (the point)
    return os.getpid()


@app.handler("stuck_sync", abort_grace=0.2)
def stuck_sync(ctx: Context[Any]) -> int:
    """A sync handler that ignores aborts and stops: records its run, then blocks
    for ``payload.sleep`` seconds (think of a network call without a timeout)."""
    record(ctx)
    time.sleep(float(ctx.payload.get("sleep", 30)))
    return os.getpid()


@app.handler("retry_thrice", max_attempts=4)
async def retry_thrice(ctx: Context[Any]) -> Any:
    """Retried at once three times, then done: run ends that another process sees
    after the task has moved on."""
    from conveyor import Retry

    return Retry(after=0) if ctx.attempt < 4 else ctx.attempt


@app.handler("reschedule_thrice")
async def reschedule_thrice(ctx: Context[Any]) -> Any:
    from conveyor import Reschedule

    rounds = (ctx.task.result or 0) + 1
    return Reschedule(after=0, result=rounds) if rounds < 4 else "done"


@app.handler("log_and_retry", max_attempts=3)
async def log_and_retry(ctx: Context[Any]) -> Any:
    """A log line, then retried at once twice: the changes of a run with the log
    lines between them, as another process's feed brings them."""
    from conveyor import Retry

    ctx.log.info("attempt %d", ctx.attempt)
    return Retry(after=0) if ctx.attempt < 3 else ctx.attempt
