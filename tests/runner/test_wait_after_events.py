"""``wait()`` returns after the app's listeners have seen the task's end.

A test (or a program) that collects events with ``app.on`` and then waits for a
task expects its end among them. The wait used to wake on the stored end and
return while the worker was still reading the task back for its events: 91 of
200 ``task.succeeded`` callbacks came after ``wait()`` on SQLite, 50 of 200 on
PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from conveyor import Context, Conveyor, TaskFailed

ROUNDS = 60


@pytest.mark.parametrize("mode", ["async", "thread"])
async def test_on_callbacks_have_the_end_when_wait_returns(app: Conveyor, mode: str) -> None:
    if mode == "async":
        @app.handler("ok")
        async def ok(ctx: Context) -> int:
            return 1
    else:
        @app.handler("ok")
        def ok_sync(ctx: Context) -> int:
            return 1

    @app.handler("bad", max_attempts=1)
    async def bad(ctx: Context) -> None:
        raise ValueError("no")

    succeeded: list[str] = []
    ended: list[str] = []
    failed: list[str] = []
    app.on("task.succeeded", lambda e: succeeded.append(e.task_id or ""))
    app.on("task.ended", lambda e: ended.append(e.task_id or ""))
    app.on("task.failed", lambda e: failed.append(e.task_id or ""))
    await app.start()
    missing = []
    for _ in range(ROUNDS):
        task = await app.add("ok", {})
        assert await app.wait(task.id, timeout=30) == 1
        if task.id not in succeeded or task.id not in ended:
            missing.append(task.id)
    assert missing == []
    task = await app.add("bad", {})
    with pytest.raises(TaskFailed):
        await app.wait(task.id, timeout=30)
    assert task.id in failed and task.id in ended
    # a task that ended long ago returns at once, listeners or not
    ended_task = await app.wait_task(task.id, timeout=5)
    assert ended_task.status.value == "failed"


async def test_a_subscription_holds_the_end_when_wait_returns(app: Conveyor) -> None:
    @app.handler("ok")
    async def ok(ctx: Context) -> int:
        return 2

    await app.start()
    async with app.events("task.succeeded") as sub:
        ids = []
        for _ in range(20):
            task = await app.add("ok", {})
            await app.wait(task.id, timeout=30)
            ids.append(task.id)
        got = []
        while len(got) < len(ids):
            got.append((await asyncio.wait_for(sub.__anext__(), 10)).task_id)
    assert got == ids
