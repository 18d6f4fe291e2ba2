"""An abort asked by another process while a worker's claim of the task returns.

The claim has committed (the task is running in storage) but the worker does not
hold the run yet: the change feed's ``abort_requested`` found nothing to stop, and
the handler ran until the next heartbeat (lease / 3, 10 s). The worker looks again
once the claim returns."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor, Status
from conveyor.errors import TaskAborted


@pytest.mark.parametrize("where", ["other process", "same process"])
async def test_an_abort_during_the_claim_stops_the_run(tmp_path: Path, where: str) -> None:
    """From another process the abort comes through the change feed; from the worker's
    own app it is handed to the worker directly (which found no run to stop)."""
    url = f"sqlite:///{tmp_path / 'abort.db'}"
    app, other = Conveyor(url), Conveyor(url)
    aborter = other if where == "other process" else app

    @app.handler("slow:x")
    async def slow(ctx: Context[Any]) -> str:
        await asyncio.Event().wait()  # until the abort cancels it
        return "never"

    claim = app.storage.claim
    asked: list[str] = []

    async def claim_then_abort(*args: Any, **kwargs: Any) -> Any:
        tasks = await claim(*args, **kwargs)
        if tasks and not asked:
            asked.append(tasks[0].id)
            if aborter is app:  # handed to the worker at once (nobody listens to events)
                await app.abort(tasks[0].id, "asked early")
            else:
                seen = app.events("task.abort_requested", task_id=tasks[0].id)
                await other.abort(tasks[0].id, "asked early")
                assert await seen.get(timeout=10) is not None  # the worker was told
                seen.close()
        return tasks

    app.storage.claim = claim_then_abort  # type: ignore[method-assign]
    try:
        task = await other.add("slow:x")
        await app.start()
        with pytest.raises(TaskAborted):  # no wait for a heartbeat (`other` waits: the
            await other.wait(task.id, timeout=5)  # worker's app has no listener)
        assert asked == [task.id]
        ended = await app.get(task.id)
        assert ended is not None and ended.status is Status.ABORTED
    finally:
        app.storage.claim = claim  # type: ignore[method-assign]
        await app.close()
        await other.close()
