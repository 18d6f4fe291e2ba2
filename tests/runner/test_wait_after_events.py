"""``wait()`` returns after the app's listeners have seen the task's end.

A test (or a program) that collects events with ``app.on`` and then waits for a
task expects its end among them. The wait used to wake on the stored end and
return while the worker was still reading the task back for its events: 91 of
200 ``task.succeeded`` callbacks came after ``wait()`` on SQLite, 50 of 200 on
PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor import Backoff, Context, Conveyor, Event, TaskFailed

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


async def test_a_run_that_ends_before_its_add_returns_is_waited_for(app: Conveyor) -> None:
    """A worker may claim, run and store the end of a task before the add that made
    it returns (PostgreSQL's notification wakes it at the add's commit). The add
    held the task's events, so the writer's hold did not take the task; once the
    add let go, a wait read the stored end with nothing held and returned before
    the writer announced it (1 of 60 in a CI run). The writer's own hold counts
    now: the wait waits for the end's events."""
    @app.handler("ok")
    async def ok(ctx: Context) -> int:
        return 1

    ended: list[str] = []
    app.on("task.ended", lambda e: ended.append(e.task_id or ""))
    stored = asyncio.Event()
    go_on = asyncio.Event()
    finish, add = app.storage.finish, app.storage.add

    async def finish_then_pause(*args: Any, **kwargs: Any) -> Any:
        done = await finish(*args, **kwargs)
        stored.set()
        await go_on.wait()  # the writer's announce waits: the window, held open
        return done

    async def add_until_stored(*args: Any, **kwargs: Any) -> Any:
        done = await add(*args, **kwargs)
        await asyncio.wait_for(stored.wait(), 30)  # the run ended before the add returns
        return done

    app.storage.finish = finish_then_pause  # type: ignore[method-assign]
    app.storage.add = add_until_stored  # type: ignore[method-assign]
    await app.start()
    task = await app.add("ok")
    assert (await app.storage.get(task.id)).status.value == "succeeded"  # stored, not told
    assert app.bus.is_held(task.id)
    get = app.storage.get
    read = asyncio.Event()

    async def get_and_tell(task_id: str) -> Any:
        got = await get(task_id)
        if task_id == task.id:
            read.set()
        return got

    app.storage.get = get_and_tell  # type: ignore[method-assign]
    waiting = asyncio.ensure_future(app.wait(task.id, timeout=30))
    await asyncio.wait_for(read.wait(), 30)  # the wait read the stored end
    assert not waiting.done()
    go_on.set()
    assert await waiting == 1
    assert task.id in ended


async def test_held_events_come_out_in_version_order(app: Conveyor) -> None:
    """A run that fails before its add returns, whose retry is claimed while the
    writer reads the failed run back: the add holds both the retry's task.started
    (v4) and, after it, the run's task.retrying (v3). They come out in version
    order when the add lets go (a first fix dropped the older one as stale)."""
    calls = 0

    @app.handler("flaky", max_attempts=3, backoff=Backoff(base=0.0, jitter=0.0))
    async def flaky(ctx: Context) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first attempt fails")
        return "ok"

    seen: list[tuple[str, int]] = []
    app.on("task.*", lambda e: seen.append((e.type, e.data["version"]))
           if "version" in e.data else None)
    storage = app.storage
    claim, add, get_many = storage.claim, storage.add, storage.get_many
    second_claim = asyncio.Event()
    claims = 0

    async def counted_claim(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        got = await claim(*args, **kwargs)
        claims += len(got)
        if claims >= 2:
            second_claim.set()
        return got

    async def read_back_after_the_retry_starts(ids: Any) -> Any:
        out = await get_many(ids)
        await asyncio.wait_for(second_claim.wait(), 30)
        return out

    async def add_until_both_held(*args: Any, **kwargs: Any) -> Any:
        done = await add(*args, **kwargs)
        task_id = done[0].task.id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not any(isinstance(e, Event) and e.type == "task.retrying"
                      for e in app.bus._held.get(task_id, (None, []))[1]):
            assert loop.time() < deadline, "the run's end was never held"
            await asyncio.sleep(0.005)
        return done

    storage.claim = counted_claim  # type: ignore[method-assign]
    storage.add = add_until_both_held  # type: ignore[method-assign]
    storage.get_many = read_back_after_the_retry_starts  # type: ignore[method-assign]
    await app.start()
    task = await app.add("flaky")
    storage.add, storage.get_many = add, get_many  # type: ignore[method-assign]
    assert await app.wait(task.id, timeout=30) == "ok"
    statuses = [(t, v) for t, v in seen if t != "task.progress"]
    assert statuses[:4] == [("task.added", 1), ("task.started", 2), ("task.retrying", 3),
                            ("task.started", 4)], seen
