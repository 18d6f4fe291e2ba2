"""Handlers in child processes: results, logs, aborts that end the process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor import ConfigurationError, Context, Conveyor, Status, TaskFailed

from ..control._support import status_is, until
from . import process_app


@pytest.fixture
async def papp() -> AsyncIterator[Conveyor]:
    app = process_app.app
    async with app:
        yield app


async def test_result_logs_and_progress(papp: Conveyor) -> None:
    a = await papp.add("proc:square", {"n": 7})
    b = await papp.add("proc:square", {"n": 8})
    ra = await papp.wait(a.id, timeout=30)
    rb = await papp.wait(b.id, timeout=30)
    assert ra["square"] == 49 and rb["square"] == 64
    done = await papp.get(a.id, logs=True)
    assert done.logs is not None and done.logs[0].message.startswith("squaring 7 in ")
    assert done.progress is not None and done.progress.message == "done"
    c = await papp.add("proc:square", {"n": 2})
    rc = await papp.wait(c.id, timeout=30)
    assert rc["pid"] in (ra["pid"], rb["pid"])  # children are reused


async def test_abort_kills_a_process_that_ignores_it(papp: Conveyor) -> None:
    task = await papp.add("proc:spin", {"seconds": 60})
    started = asyncio.Event()
    papp.on("task.started", lambda e: started.set(), task_id=task.id)
    await asyncio.wait_for(started.wait(), 30)
    t0 = time.monotonic()
    await papp.abort(task.id, "enough")
    with pytest.raises(Exception, match="aborted"):
        await papp.wait(task.id, timeout=10)
    # killed after its grace period (0.5 s), far before the 60 s it would spin; the
    # margin absorbs a loaded 2-core machine
    assert time.monotonic() - t0 < 0.5 + 2.5
    final = await papp.get(task.id)
    assert final.status is Status.ABORTED and final.reason == "enough" and final.result is None


async def test_cooperative_abort(papp: Conveyor) -> None:
    task = await papp.add("proc:polite")
    await until(status_is(papp, task.id, Status.RUNNING), 10, "the task to run")
    await papp.abort(task.id, "stop please")
    final = await papp.wait_task(task.id, timeout=10)
    assert final.status is Status.ABORTED and final.reason == "stop please"


async def test_error_retry_timeout_and_death(papp: Conveyor) -> None:
    bad = await papp.add("proc:fail")
    with pytest.raises(TaskFailed, match="ArithmeticError: bad sum"):
        await papp.wait(bad.id, timeout=30)
    failed = await papp.get(bad.id)
    assert failed.error is not None and "bad sum" in (failed.error.traceback or "")
    again = await papp.add("proc:again")
    assert await papp.wait(again.id, timeout=30) == 2
    slow = await papp.add("proc:slow")
    timed = await papp.wait_task(slow.id, timeout=30)
    assert timed.status is Status.ABORTED and timed.reason == "timeout"
    dead = await papp.add("proc:die")
    gone = await papp.wait_task(dead.id, timeout=30)
    assert gone.status is Status.FAILED and gone.error is not None
    assert gone.error.type == "ChildProcessError"


def test_process_handlers_must_be_importable() -> None:
    app = Conveyor("memory://")

    def local(ctx: Context[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="module-level"):
        app.register("x", local, mode="process")
