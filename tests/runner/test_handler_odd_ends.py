"""Handlers that end in odd ways end their task like any error, and the worker
goes on: an exception whose ``str()`` fails, a ``BaseException`` that is not an
``Exception`` (``SystemExit`` included), a ``CancelledError`` raised by the
handler's own code. A sync run asked to end by a stop gets its grace period
before its task goes back to the queue."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest

from conveyor import Context, Conveyor, Status, TaskFailed


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class Fatal(BaseException):
    pass


def _raise(kind: str) -> None:
    if kind == "badstr":
        raise BadStr()
    if kind == "base":
        raise Fatal("fatal")
    if kind == "exit":
        sys.exit(3)
    if kind == "kbd":
        raise KeyboardInterrupt("not a signal")
    raise AssertionError(kind)


ERRORS = {"badstr": ("BadStr", "<BadStr: str() failed>"), "base": ("Fatal", "fatal"),
          "exit": ("SystemExit", "3"), "kbd": ("KeyboardInterrupt", "not a signal")}


# a KeyboardInterrupt in an async handler may be the user's Ctrl-C (asyncio raises
# the second one wherever the loop is): it ends the program as before, not tested
# here (it would end pytest's session too)
@pytest.mark.parametrize(("kind", "mode"), [
    ("badstr", "async"), ("badstr", "thread"), ("base", "async"), ("base", "thread"),
    ("exit", "async"), ("exit", "thread"), ("kbd", "thread")])
async def test_an_odd_exception_fails_its_task_and_the_worker_goes_on(
        url: str, kind: str, mode: str) -> None:
    app = Conveyor(url, concurrency=1, lease=5.0)

    if mode == "async":
        @app.handler("odd")
        async def odd(ctx: Context[Any]) -> None:
            _raise(ctx.payload)
    else:
        @app.handler("odd")
        def odd_sync(ctx: Context[Any]) -> None:
            _raise(ctx.payload)

    @app.handler("next")
    async def after(ctx: Context[Any]) -> str:
        return "ran"

    try:
        async with app:
            task = await app.add("odd", kind)
            with pytest.raises(TaskFailed):
                await app.wait(task.id, timeout=10)
            # the one slot is free again: the next task runs
            assert await app.wait((await app.add("next")).id, timeout=10) == "ran"
        done = await app.get(task.id)
        assert done.status is Status.FAILED and done.rescues == 0 and done.attempts == 1
        assert done.error is not None
        assert (done.error.type, done.error.message) == ERRORS[kind]
    finally:
        await app.close()


async def test_a_cancelled_error_raised_by_the_handler_is_its_error(url: str) -> None:
    """Not a lost worker (rescued again and again until ``worker_lost``): the
    run's error; not retried, as ``retry_on`` is ``Exception`` by default."""
    app = Conveyor(url, lease=5.0)
    runs = 0

    @app.handler("leaky", max_attempts=2, backoff=0)
    async def leaky(ctx: Context[Any]) -> None:
        nonlocal runs
        runs += 1
        inner = asyncio.get_running_loop().create_future()
        inner.cancel()
        await inner  # a library's cancelled future, leaking its CancelledError

    try:
        async with app:
            task = await app.add("leaky")
            with pytest.raises(TaskFailed):
                await app.wait(task.id, timeout=10)
        done = await app.get(task.id)
        assert (done.status, done.attempts, done.rescues, runs) == (Status.FAILED, 1, 0, 1)
        assert done.error is not None and done.error.type == "CancelledError"
        assert done.reason != "worker_lost"
    finally:
        await app.close()


@pytest.mark.parametrize("ends", ["raises", "returns"])
async def test_a_sync_run_gets_its_grace_to_end_at_a_stop(url: str, ends: str) -> None:
    """A sync handler sees ``ctx.aborted`` (``worker stopping``) and gets its
    ``abort_grace`` to end before its task goes back to the queue (it would start
    elsewhere while the thread still unwinds); what it returns then is
    discarded, as after an abort."""
    app = Conveyor(url, lease=5.0)
    started = threading.Event()
    unwound = threading.Event()

    @app.handler("careful", abort_grace=10)
    def careful(ctx: Context[Any]) -> str:
        started.set()
        assert ctx.wait_aborted(30)
        assert ctx.abort_reason == "worker stopping"
        time.sleep(0.3)  # the handler's own cleanup
        unwound.set()
        if ends == "raises":
            ctx.check_aborted()
        return "partial"

    try:
        await app.start()
        task = await app.add("careful")
        assert await asyncio.to_thread(started.wait, 10)
        await app.stop(timeout=0.1)
        assert unwound.is_set()  # before the stop returned
        done = await app.get(task.id)
        assert (done.status, done.attempts, done.result) == (Status.QUEUED, 0, None)
    finally:
        await app.close()
