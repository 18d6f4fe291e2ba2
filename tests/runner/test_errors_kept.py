"""``task.errors`` keeps the most recent ``MAX_ERRORS`` errors: a policy that queues
a failing task again for ever grew the record by about 1 KB a run (each claim and
finish rewrites it: SQLite fell from 79 to 7 runs/s after 1,100 errors)."""

from __future__ import annotations

from typing import Any

from conveyor import Backoff, Context, Conveyor
from conveyor.model import MAX_ERRORS

RUNS = MAX_ERRORS + 20


async def test_errors_keep_the_most_recent(app: Conveyor) -> None:
    @app.handler("flaky", max_attempts=RUNS, backoff=Backoff(base=0.0, jitter=0.0))
    async def flaky(ctx: Context[Any]) -> None:
        raise ValueError(f"attempt {ctx.task.attempts}")

    task = await app.add("flaky")
    ended = await app.drain(timeout=120)
    assert ended["failed"] == 1
    done = await app.get(task.id)
    assert done is not None and done.attempts == RUNS
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
