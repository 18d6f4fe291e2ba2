"""``task.errors`` keeps the most recent ``MAX_ERRORS`` errors: a policy that queues
a failing task again for ever grew the record by about 1 KB a run (each claim and
finish rewrites it: SQLite fell from 79 to 7 runs/s after 1,100 errors)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conveyor import Backoff, Context, Conveyor, Retry
from conveyor.model import MAX_ERROR_MESSAGE, MAX_ERRORS, MAX_TRACEBACK

from ..conftest import BACKENDS, PG_ENV, backend_url, drop_pg_schema, pg_schema
from . import process_app

RUNS = MAX_ERRORS + 20


async def test_errors_keep_the_most_recent(app: Conveyor) -> None:
    @app.handler("flaky", max_attempts=RUNS, backoff=Backoff(base=0.0, jitter=0.0))
    async def flaky(ctx: Context[Any]) -> None:
        raise ValueError(f"attempt {ctx.task.attempts}")

    task = await app.add("flaky")
    await app.start()
    done = await app.wait_task(task.id, timeout=120)
    await app.stop()  # the retry below stays queued
    assert done.status.value == "failed" and done.attempts == RUNS
    assert len(done.errors) == MAX_ERRORS
    messages = [e.message for e in done.errors]
    assert messages == [f"attempt {n}" for n in range(RUNS - MAX_ERRORS + 1, RUNS + 1)]
    assert done.error is not None and done.error.message == f"attempt {RUNS}"
    # the task's own end (an abort of the queued task) appends through the other path
    again = await app.retry(task.id)
    aborted = await app.abort(again.id, "enough")
    assert len(aborted.errors) == MAX_ERRORS
    assert "enough" in aborted.errors[-1].message
    assert aborted.errors[0].message == f"attempt {RUNS - MAX_ERRORS + 2}"


@pytest.mark.parametrize("kind", [b for b in BACKENDS if b != "memory"])
async def test_a_record_from_before_the_bound_comes_down_to_it(kind: str,
                                                              tmp_path: Path) -> None:
    """A task stored with more errors (before the bound) loses one more at each
    failure, down to MAX_ERRORS: the SQL of a run's end kept it at its length."""
    url = backend_url(kind, tmp_path)
    app = Conveyor(url)

    @app.handler("flaky", max_attempts=10, backoff=Backoff(base=0.0, jitter=0.0))
    async def flaky(ctx: Context[Any]) -> None:
        raise ValueError(f"attempt {ctx.task.attempts}")

    try:
        task = await app.add("flaky")
        old = json.dumps([{"type": "ValueError", "message": f"old {i}", "attempt": i, "at": 1.0}
                          for i in range(MAX_ERRORS + 3)])
        # as an older release left it, written by hand
        if kind == "sqlite":
            with sqlite3.connect(tmp_path / "tasks.db") as db:
                db.execute("UPDATE conveyor_tasks SET errors = ? WHERE id = ?", (old, task.id))
        else:
            schema = pg_schema(url)
            with psycopg.connect(os.environ[PG_ENV], autocommit=True) as db:
                db.execute(f'UPDATE "{schema}".tasks SET errors = %s::jsonb WHERE id = %s',
                           (old, task.id))
        assert len((await app.get(task.id)).errors) == MAX_ERRORS + 3
        await app.drain(timeout=60)
        done = await app.get(task.id)
    finally:
        await app.close()
        if kind == "postgres":
            drop_pg_schema(url)
    assert len(done.errors) == MAX_ERRORS  # 103, 102, 101, 100, then 100 for good
    assert done.errors[-1].message == "attempt 10"


async def test_a_long_error_message_is_cut(app: Conveyor) -> None:
    @app.handler("wordy", max_attempts=1)
    async def wordy(ctx: Context[Any]) -> None:
        raise ValueError("x" * (MAX_ERROR_MESSAGE * 3))

    task = await app.add("wordy")
    assert (await app.drain(timeout=30))["failed"] == 1
    done = await app.get(task.id)
    assert done.error is not None
    assert done.error.message.startswith("x" * MAX_ERROR_MESSAGE)
    assert done.error.message.endswith(f"[cut: {MAX_ERROR_MESSAGE * 2} more characters]")
    assert done.error.traceback is not None and len(done.error.traceback) < MAX_TRACEBACK + 100


async def test_a_process_handlers_long_error_and_a_retry_reason_are_cut(app: Conveyor) -> None:
    @app.handler("again", max_attempts=1)
    async def again(ctx: Context[Any]) -> Retry:
        return Retry(reason="y" * (MAX_ERROR_MESSAGE + 5))

    task = await app.add("again")
    assert (await app.drain(timeout=30))["failed"] == 1
    error = (await app.get(task.id)).error
    assert error is not None and error.message.endswith("[cut: 5 more characters]")
    async with process_app.app as papp:
        wordy = await papp.add("proc:wordy")
        done = await papp.wait_task(wordy.id, timeout=60)
    assert done.error is not None
    assert done.error.message.endswith(f"[cut: {300_000 - MAX_ERROR_MESSAGE} more characters]")
    assert done.error.traceback is not None and len(done.error.traceback) < MAX_TRACEBACK + 100
