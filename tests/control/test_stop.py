"""Graceful stop in this process: running tasks get the stop deadline, then go
back to the queue at once with their attempt refunded."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from conveyor import Context, Conveyor, Status


@pytest.mark.serial  # a bound of about a second: alone
async def test_stop_hands_back_long_tasks_and_lets_short_ones_finish(local_url: str) -> None:
    app = Conveyor(local_url, concurrency=4, lease=30.0)
    started = {"long": asyncio.Event(), "short": asyncio.Event()}
    sync_started = threading.Event()
    sync_stopped = threading.Event()

    @app.handler("long")
    async def long(ctx: Context[Any]) -> str:
        started["long"].set()
        await asyncio.sleep(60)
        return "never"

    @app.handler("long_sync")
    def long_sync(ctx: Context[Any]) -> str:
        sync_started.set()
        ctx.wait_aborted(60)
        sync_stopped.set()
        return "never"

    @app.handler("short")
    async def short(ctx: Context[Any]) -> str:
        started["short"].set()
        await asyncio.sleep(0.1)
        return "short"

    try:
        await app.start()
        slow = await app.add("long")
        slow_sync = await app.add("long_sync")
        await asyncio.wait_for(started["long"].wait(), 10)
        assert await asyncio.to_thread(sync_started.wait, 10)
        quick = await app.add("short")
        await asyncio.wait_for(started["short"].wait(), 10)
        t0 = time.monotonic()
        await app.stop(timeout=0.4)
        took = time.monotonic() - t0
        assert 0.4 <= took < 1.5, took
        # right after stop: no lease to wait for (the lease is 30 s)
        for task_id in (slow.id, slow_sync.id):
            back = await app.get(task_id)
            assert back.status is Status.QUEUED, back
            assert back.attempts == 0 and back.rescues == 0 and back.errors == ()
            assert back.worker is None and back.token is None and back.lease_until is None
        done = await app.get(quick.id)
        assert done.status is Status.SUCCEEDED and done.result == "short"
        assert sync_stopped.is_set()  # the sync handler was told to stop
    finally:
        await app.close()


@pytest.mark.serial  # a bound of about a second: alone
async def test_stop_returns_as_soon_as_running_tasks_finish(local_url: str) -> None:
    app = Conveyor(local_url, concurrency=4)
    started = asyncio.Event()

    @app.handler("short")
    async def short(ctx: Context[Any]) -> str:
        started.set()
        await asyncio.sleep(0.2)
        return "done"

    try:
        await app.start()
        task = await app.add("short")
        await asyncio.wait_for(started.wait(), 10)
        t0 = time.monotonic()
        await app.stop(timeout=10)
        took = time.monotonic() - t0
        assert took < 1.5, took  # not the whole 10 s deadline
        done = await app.get(task.id)
        assert done.status is Status.SUCCEEDED and done.result == "done" and done.attempts == 1
    finally:
        await app.close()


async def test_a_stopped_task_runs_again_on_the_next_start(local_url: str) -> None:
    app = Conveyor(local_url, concurrency=2, lease=30.0)
    runs: list[int] = []
    first_run = asyncio.Event()

    @app.handler("resumable")
    async def resumable(ctx: Context[Any]) -> int:
        runs.append(ctx.attempt)
        if len(runs) == 1:
            first_run.set()
            await asyncio.sleep(60)
        return len(runs)

    try:
        await app.start()
        task = await app.add("resumable")
        await asyncio.wait_for(first_run.wait(), 10)
        await app.stop(timeout=0.1)
        assert (await app.get(task.id)).status is Status.QUEUED
        await app.start()
        assert await app.wait(task.id, timeout=10) == 2
        done = await app.get(task.id)
        assert runs == [1, 1] and done.attempts == 1 and done.rescues == 0
    finally:
        await app.close()
