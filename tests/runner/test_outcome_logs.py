"""The worker logs each run's outcome (docs/guide.md, "Logging"): a task that
failed for good at ERROR, an aborted run (a timeout too) at WARNING, a failed
attempt queued again at INFO, a success at DEBUG; and the sweeper's rescues,
with the tasks it failed for good at ERROR. One line per run, no more."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest

from conveyor import Context, Conveyor, TaskAborted, TaskFailed

from ..control._support import until


def _lines(caplog: pytest.LogCaptureFixture, task_id: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name == "conveyor.worker" and task_id in r.getMessage()]


async def test_each_run_outcome_is_one_line_at_its_level(
        app: Conveyor, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="conveyor")
    started = asyncio.Event()

    @app.handler("ok")
    async def ok(ctx: Context[Any]) -> int:
        return 1

    @app.handler("bad", max_attempts=2, backoff=0)
    async def bad(ctx: Context[Any]) -> None:
        raise ValueError(f"attempt {ctx.task.attempts} went wrong")

    @app.handler("slow", timeout=0.2)
    async def slow(ctx: Context[Any]) -> None:
        await asyncio.sleep(30)

    @app.handler("held")
    async def held(ctx: Context[Any]) -> None:
        started.set()
        await asyncio.sleep(30)

    async with app:
        good = await app.add("ok")
        failing = await app.add("bad")
        timing_out = await app.add("slow")
        aborting = await app.add("held")
        assert await app.wait(good.id, timeout=10) == 1
        with pytest.raises(TaskFailed):
            await app.wait(failing.id, timeout=10)
        with pytest.raises(TaskAborted):
            await app.wait(timing_out.id, timeout=10)
        await asyncio.wait_for(started.wait(), 10)
        await app.abort(aborting.id, "no longer wanted")
        with pytest.raises(TaskAborted):
            await app.wait(aborting.id, timeout=10)
        await until(lambda: _lines(caplog, aborting.id), timeout=10,
                    what="the aborted run's line")

    assert _lines(caplog, good.id) == [(logging.DEBUG, f"task {good.id} (ok) succeeded")]
    [(level1, text1), (level2, text2)] = _lines(caplog, failing.id)
    assert level1 == logging.INFO
    assert re.fullmatch(rf"task {failing.id} \(bad\) failed attempt 1 of 2, queued again "
                        r"for \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ: ValueError: attempt 1 went wrong",
                        text1), text1
    assert (level2, text2) == (logging.ERROR, f"task {failing.id} (bad) failed after 2 "
                               "attempt(s): ValueError: attempt 2 went wrong")
    [(level, text)] = _lines(caplog, timing_out.id)
    assert level == logging.WARNING
    assert text == (f"task {timing_out.id} (slow) aborted: timeout "
                    "(TimeoutError: run timeout of 0.2s exceeded)")
    [(level, text)] = _lines(caplog, aborting.id)
    assert level == logging.WARNING
    assert text == f"task {aborting.id} (held) aborted: no longer wanted"


async def test_sweeper_names_the_tasks_it_fails_for_good(
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    app = Conveyor(url, lease=5.0, sweep_interval=0.05, max_rescues=0)

    @app.handler("poison")
    async def poison(ctx: Context[Any]) -> None:
        raise AssertionError("a task failed for good by the sweeper never runs")

    try:
        await app.open()
        task = await app.add("poison")
        # a worker that claimed it and died: its lease ends at once
        assert [t.id for t in await app.storage.claim("ghost", ["poison"], 1, 0.01)] == [
            task.id]
        async with app:
            await until(lambda: any("worker_lost" in text for _, text in _lines(caplog, task.id)),
                        timeout=10, what="the sweeper's line")
        assert (await app.get(task.id)).reason == "worker_lost"
    finally:
        await app.close()
    errors = [text for level, text in _lines(caplog, task.id) if level == logging.ERROR]
    assert errors == [f"sweeper: 1 task(s) failed, their worker lost too many times "
                      f"(reason worker_lost): {task.id}"]


async def test_a_retry_line_without_max_attempts(
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A task with no ``max_attempts`` (a custom policy queues it again): the
    line leaves the 'of N' out instead of failing to format."""
    from dataclasses import replace

    from conveyor._logging import log_outcome
    from conveyor.model import ErrorInfo, Status, Transition

    caplog.set_level(logging.INFO, logger="test")
    app = Conveyor(url)
    try:
        task = replace(await app.add("a"), max_attempts=None, attempts=2)
    finally:
        await app.close()
    log_outcome(logging.getLogger("test"), task, Transition(
        Status.QUEUED, run_at=1.0, error=ErrorInfo("ValueError", "no")))
    assert [r.getMessage() for r in caplog.records] == [
        f"task {task.id} (a) failed attempt 2, queued again for 1970-01-01T00:00:01Z: "
        "ValueError: no"]
