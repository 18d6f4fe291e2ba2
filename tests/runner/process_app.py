"""Handlers that run in child processes (mode="process"), for tests."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from conveyor import Context, Conveyor, PermanentFailure, Retry, ValidationError

app = Conveyor(os.environ.get("CONVEYOR_DB", "memory://"), concurrency=4)


@app.handler("proc:square", mode="process")
def square(ctx: Context[Any]) -> dict[str, int]:
    n = int(ctx.payload["n"])
    ctx.log.info("squaring %d in %d", n, os.getpid())
    ctx.progress(1, total=1, message="done")
    print("handler output goes to stderr, not the protocol")
    return {"square": n * n, "pid": os.getpid()}


@app.handler("proc:spin", mode="process", abort_grace=0.5)
def spin(ctx: Context[Any]) -> str:
    """Burns CPU and never looks at ctx.aborted: only killing the process stops it."""
    end = time.time() + float(ctx.payload.get("seconds", 60))
    x = 0
    while time.time() < end:
        x += 1
    return "finished"


@app.handler("proc:polite", mode="process")
def polite(ctx: Context[Any]) -> str:
    while not ctx.wait_aborted(0.01):
        pass
    ctx.check_aborted()
    return "unreachable"


@app.handler("proc:fail", mode="process", max_attempts=1)
def fail(ctx: Context[Any]) -> None:
    raise ArithmeticError("bad sum")


@app.handler("proc:again", mode="process", max_attempts=2, backoff=0.01)
def again(ctx: Context[Any]) -> Any:
    if ctx.attempt == 1:
        return Retry(after=0.01)
    return ctx.attempt


@app.handler("proc:slow", mode="process", timeout=0.3, abort_grace=0.3)
def slow(ctx: Context[Any]) -> str:
    time.sleep(30)
    return "late"


@app.handler("proc:die", mode="process", max_attempts=1)
def die(ctx: Context[Any]) -> None:
    os._exit(3)


@app.handler("proc:nap", mode="process", abort_grace=60)
async def nap(ctx: Context[Any]) -> str:
    """Sleeps long in its process; an abort cancels it there (far within the grace).
    asyncio.sleep, not ctx.sleep: only the cancellation can end it early."""
    ctx.log.info("napping in %d", os.getpid())
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        ctx.log.info("cancelled in %d", os.getpid())
        raise
    return "rested"


@app.handler("proc:overtime", mode="process", timeout=0.3, abort_grace=60, max_attempts=1)
async def overtime(ctx: Context[Any]) -> str:
    await asyncio.sleep(60)
    return "late"


@app.handler("proc:big", mode="process", max_attempts=1)
def big(ctx: Context[Any]) -> dict[str, Any]:
    """Messages over asyncio's default line limit (64 KiB): a log line, a progress
    message and a result of ``size`` characters each."""
    size = int(ctx.payload["size"])
    ctx.log.info("%s", "l" * size)
    ctx.progress(1, total=1, message="p" * size)
    return {"n": ctx.payload["n"], "pid": os.getpid(), "text": "r" * size}


@app.handler("proc:one", mode="process")
def one(ctx: Context[Any]) -> int:
    return 1


@app.handler("proc:two", mode="process")
def two(ctx: Context[Any]) -> int:
    return 2


@app.handler("proc:pid", mode="process", max_runs=2)
def pid(ctx: Context[Any]) -> int:
    return os.getpid()


@app.handler("proc:nan", mode="process", max_attempts=3)
def nan(ctx: Context[Any]) -> float:
    return float("nan")  # not JSON: the run fails, not retried


@app.handler("proc:exit", mode="process", max_attempts=3)
def leave(ctx: Context[Any]) -> None:
    raise SystemExit(3)  # ends the run, not the child


@app.handler("proc:history", mode="process", max_attempts=2, backoff={"base": 0, "jitter": 0})
def history(ctx: Context[Any]) -> dict[str, Any]:
    if ctx.attempt == 1:
        raise ValueError("first")
    task = ctx.task
    return {"errors": [e.type for e in task.errors], "error": task.error and task.error.type,
            "backoff": task.backoff and task.backoff.base}


@app.handler("proc:emit_big", mode="process")
def emit_big(ctx: Context[Any]) -> str:
    try:
        ctx.emit("x" * (2 << 20))  # over max_payload (1 MiB): refused, as in-process
    except ValidationError as exc:
        ctx.emit(str(exc))
    return "ok"


class BadInput(PermanentFailure):
    """A user's error that no retry can fix."""


@app.handler("proc:permanent", mode="process", max_attempts=5)
def permanent(ctx: Context[Any]) -> None:
    raise BadInput(f"no such user {ctx.payload['user']}")


@app.handler("proc:argv", mode="process")
def argv(ctx: Context[Any]) -> list[str]:
    import sys

    return sys.argv[1:4]


@app.handler("proc:wordy", mode="process", max_attempts=1)
def wordy(ctx: Context[Any]) -> None:
    raise ValueError("x" * 300_000)
