"""A task rescued from a dead worker runs alone for a while (``_worker.ALONE_FOR``):
nothing else starts beside it, and it waits (a while at most) for the running tasks
to end before it starts. The poison-pill test in test_crash.py shows why, with real
processes; these show the rules in one process, with a ghost worker's expired claim
standing in for the dead worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor import Context, Conveyor, Task, _worker

from ._support import until

ALONE = 0.5


@pytest.fixture
async def app(local_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Conveyor]:
    monkeypatch.setattr(_worker, "ALONE_FOR", ALONE)
    app = Conveyor(local_url, concurrency=8, lease=5.0, sweep_interval=60.0, stop_timeout=1.0)
    yield app
    await app.close()


async def ghost_claim(app: Conveyor, task: Task, lease: float = 0.05) -> None:
    """Claim ``task`` as a worker that then dies (its lease lasts ``lease`` seconds)."""
    claimed = await app.storage.claim("ghost", [task.action], 1, lease)
    assert [t.id for t in claimed] == [task.id]


async def requeue(app: Conveyor, task: Task) -> None:
    """Rescue ``task`` once the ghost's lease has expired, as a sweeper does."""

    async def requeued() -> bool:
        return task.id in (await app.storage.recover(3)).requeued

    await until(requeued, timeout=10, what="the ghost's lease to expire")
    # a worker of the app may have claimed it again already (woken by the change)
    assert (await app.get(task.id)).rescues == 1


def handlers(app: Conveyor) -> tuple[dict[str, float], dict[str, float], asyncio.Event]:
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    go = asyncio.Event()

    @app.handler("slow")
    async def slow(ctx: Context[Any]) -> None:
        started[ctx.payload] = time.monotonic()
        await go.wait()
        ended[ctx.payload] = time.monotonic()

    @app.handler("quick")
    async def quick(ctx: Context[Any]) -> None:
        started[ctx.payload] = time.monotonic()
        ended[ctx.payload] = time.monotonic()

    return started, ended, go


async def test_nothing_starts_beside_a_rescued_task_for_a_while(app: Conveyor) -> None:
    started, ended, go = handlers(app)
    rescued = await app.add("slow", "rescued")
    await ghost_claim(app, rescued)
    await requeue(app, rescued)
    assert (await app.get(rescued.id)).status.value == "queued"  # no worker runs yet
    quick = await app.add_many([("quick", f"q{i}") for i in range(3)])
    async with app:
        await until(lambda: len(started) == 4, timeout=10, what="every task to start")
        assert "rescued" not in ended  # the quick ones started while it ran...
        for i in range(3):  # ...but only once it had run alone for ALONE seconds
            assert started[f"q{i}"] - started["rescued"] >= ALONE * 0.6, started
        go.set()
        for task in [rescued, *quick]:
            assert (await app.wait_task(task.id, timeout=10)).status.value == "succeeded"
        # the quick ones went back to the queue once, their attempt refunded
        for task in quick:
            assert (await app.get(task.id)).attempts == 1


async def test_a_rescued_task_waits_for_running_ones_a_while(app: Conveyor) -> None:
    started, ended, go = handlers(app)
    rescued = await app.add("slow", "rescued")
    # a lease that outlasts the app's start: its sweeper, which runs at once, must not
    # rescue the task before the busy one runs (the test does, below)
    await ghost_claim(app, rescued, lease=3.0)
    busy = await app.add("slow", "busy")
    async with app:
        await until(lambda: "busy" in started, timeout=10, what="the busy task to start")
        await requeue(app, rescued)
        back_at = time.monotonic()
        app._worker.wake()  # type: ignore[union-attr]  # as the sweeper does
        await until(lambda: "rescued" in started, timeout=10, what="the rescued task")
        # it waited for the busy one (which never ends) ALONE seconds from when this
        # worker first claimed it (on PostgreSQL the requeue's NOTIFY may wake it
        # before back_at), then started beside it
        waited = started["rescued"] - back_at
        assert ALONE * 0.5 <= waited < ALONE + 5, waited
        assert "busy" not in ended
        go.set()
        for task in (rescued, busy):
            assert (await app.wait_task(task.id, timeout=10)).status.value == "succeeded"
