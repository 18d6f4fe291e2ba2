"""A log followed while its task is deleted (retention, ``prune``, ``delete``)
before the reader has read to the end: the reader is told, rather than given part
of the log as if it were the whole (1 line of 20, ending normally)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor import Context, Conveyor, TaskNotFound


async def test_a_follow_of_a_task_deleted_before_its_end_was_read_raises(
        app: Conveyor) -> None:
    gate = asyncio.Event()

    @app.handler("chatty")
    async def chatty(ctx: Context[Any]) -> None:
        ctx.log.info("line 0")
        await gate.wait()
        for i in range(1, 20):
            ctx.log.info(f"line {i}")

    async with app:
        task = await app.add("chatty")
        lines = app.logs(task.id, follow=True)
        first = await anext(lines)
        assert first.message == "line 0"
        gate.set()
        await app.wait_task(task.id, timeout=10)
        assert await app.delete(task.id) == [task.id]  # before the reader went on
        with pytest.raises(TaskNotFound, match="deleted while its log was read"):
            async for _ in lines:
                pass
        # a task that is gone from the start: as before
        with pytest.raises(TaskNotFound):
            await anext(app.logs(task.id))
