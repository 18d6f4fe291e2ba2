"""``Conveyor.drain()``: run what is due until nothing is, for users' tests, on
every backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor import (
    ConfigurationError,
    Context,
    Conveyor,
    DrainTimeout,
    Reschedule,
    Status,
    SyncConveyor,
    ValidationError,
)

NOTHING = {"succeeded": 0, "failed": 0, "aborted": 0, "retrying": 0, "rescheduled": 0}


async def test_drain_runs_due_tasks_and_those_they_add(app: Conveyor) -> None:
    @app.handler("tree")
    async def tree(ctx: Context[Any]) -> int:
        depth = ctx.payload["depth"]
        if depth:
            for _ in range(2):
                await app.add("tree", {"depth": depth - 1})
        return int(depth)

    await app.open()
    await app.add("tree", {"depth": 3})
    assert app.worker is None
    tally = await app.drain(timeout=60)
    assert tally == {**NOTHING, "succeeded": 15}  # 1 + 2 + 4 + 8
    assert await app.count({"status": "succeeded"}) == 15
    assert await app.count({"status": {"$ne": "succeeded"}}) == 0
    assert app.worker is None  # the worker it started is stopped again


async def test_drain_counts_retries_failures_and_reschedules(app: Conveyor) -> None:
    @app.handler("broken", max_attempts=3, backoff={"base": 0, "jitter": 0})
    async def broken(ctx: Context[Any]) -> None:
        raise RuntimeError("no")

    @app.handler("slow-retry", max_attempts=3, backoff={"base": 3600, "jitter": 0})
    async def slow_retry(ctx: Context[Any]) -> None:
        raise RuntimeError("later")

    polls: list[int] = []

    @app.handler("poll")
    async def poll(ctx: Context[Any]) -> Any:
        polls.append(1)
        return Reschedule(after=0) if len(polls) < 3 else "done"

    await app.open()
    broken_task = await app.add("broken")
    slow = await app.add("slow-retry")
    polled = await app.add("poll")
    tally = await app.drain(timeout=60)
    assert tally == {"succeeded": 1, "failed": 1, "aborted": 0, "retrying": 3,
                     "rescheduled": 2}
    assert (await app.get(broken_task.id)).status is Status.FAILED  # type: ignore[union-attr]
    again = await app.get(slow.id)
    assert again is not None and again.status is Status.QUEUED and again.attempts == 1
    assert await app.wait(polled.id, timeout=1) == "done"


async def test_tasks_due_later_stay_queued(app: Conveyor) -> None:
    ran: list[str] = []

    @app.handler("later")
    async def later(ctx: Context[Any]) -> None:
        ran.append(ctx.task.id)

    await app.open()
    task = await app.add("later", delay=3600)
    assert await app.drain(timeout=10) == NOTHING
    assert ran == []
    assert (await app.get(task.id)).status is Status.QUEUED  # type: ignore[union-attr]


async def test_drain_uses_a_running_worker_and_leaves_it_running(app: Conveyor) -> None:
    @app.handler("echo")
    async def echo(ctx: Context[Any]) -> Any:
        return ctx.payload

    async with app:
        worker = app.worker
        assert worker is not None
        await app.add_many([("echo", i) for i in range(20)])
        tally = await app.drain(timeout=60)
        # counted from the call on: the running worker may have ended some before it
        assert 0 <= tally["succeeded"] <= 20 and tally == {**NOTHING, **tally}
        assert sum(tally.values()) == tally["succeeded"]
        assert await app.count({"status": "succeeded"}) == 20
        assert app.worker is worker and not worker.stopping


async def test_drain_of_some_actions_waits_for_those_only(app: Conveyor) -> None:
    release = asyncio.Event()

    @app.handler("quick")
    async def quick(ctx: Context[Any]) -> str:
        return "ok"

    @app.handler("held")
    async def held(ctx: Context[Any]) -> str:
        await release.wait()
        return "released"

    async with app:
        held_task = await app.add("held")
        await app.add("quick")
        assert await app.drain("quick", timeout=60) == {**NOTHING, "succeeded": 1}
        assert (await app.get(held_task.id)).status is Status.RUNNING  # type: ignore[union-attr]
        release.set()
        assert await app.drain(["held", "quick"], timeout=60) == {**NOTHING, "succeeded": 1}


async def test_drain_gives_up_after_its_timeout(app: Conveyor) -> None:
    @app.handler("stuck")
    async def stuck(ctx: Context[Any]) -> None:
        await asyncio.Event().wait()

    await app.open()
    task = await app.add("stuck")
    with pytest.raises(DrainTimeout, match=r"1 task\(s\) still due or running after 0.5s") as info:
        await app.drain(timeout=0.5)
    assert info.value.left == 1 and isinstance(info.value, TimeoutError)
    assert app.worker is None  # stopped: the task went back to the queue
    assert (await app.get(task.id)).status is Status.QUEUED  # type: ignore[union-attr]


async def test_bad_drain_input_is_refused_before_anything_runs(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="no handlers are registered"):
        await app.drain()

    ran: list[str] = []

    @app.handler("known")
    async def known(ctx: Context[Any]) -> None:
        ran.append(ctx.task.id)

    await app.open()
    await app.add("known")
    for actions in ("unknown", ["known", "unknown"], [], [3], 7):
        with pytest.raises(ValidationError):
            await app.drain(actions)  # type: ignore[arg-type]
    for timeout in (-1, float("nan"), "soon"):
        with pytest.raises(ValidationError):
            await app.drain(timeout=timeout)  # type: ignore[arg-type]
    assert ran == [] and app.worker is None
    assert await app.count({"status": "queued"}) == 1


def test_sync_face_drains(tmp_path: Any) -> None:
    app = SyncConveyor(f"sqlite:///{tmp_path / 'tasks.db'}")

    @app.handler("double")
    def double(ctx: Context[Any]) -> int:
        return int(ctx.payload) * 2

    try:
        tasks = [app.add("double", i) for i in range(5)]
        assert app.drain(timeout=60) == {**NOTHING, "succeeded": 5}
        assert [app.wait(t.id, timeout=1) for t in tasks] == [0, 2, 4, 6, 8]
    finally:
        app.close()
