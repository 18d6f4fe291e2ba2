"""Another program holding the SQLite write lock (a ``sqlite3`` shell in ``BEGIN
IMMEDIATE``, a backup) for longer than a lease, under the busy timeout: no write
fails, and no task is rescued and run twice for it (for a moment after a write waited
for the lock, sweeps rescue nothing: the heartbeats queued behind the lock land
first). From the SQLite operations audit and the review of its first fix (which
skipped only a sweep that waited over 5 s: a shorter hold, or the sweep right after,
still ran a task twice)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor, Status


@pytest.mark.serial  # holds a lock for seconds: alone
@pytest.mark.parametrize("hold", [4.0, 7.0])
async def test_a_lock_held_past_the_lease_rescues_nothing(tmp_path: Path, hold: float) -> None:
    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}"
    runner = Conveyor(url, lease=2.0, sweep_interval=30.0, stop_timeout=5.0)
    sweeper = Conveyor(url, lease=2.0, sweep_interval=0.5, stop_timeout=5.0)
    runs: list[int] = []
    started, finish = asyncio.Event(), asyncio.Event()

    @runner.handler("long")
    async def long(ctx: Context[Any]) -> str:
        runs.append(ctx.attempt)
        started.set()
        await finish.wait()
        return "once"

    @sweeper.handler("other")  # a worker of another app: its sweeps judge the leases
    async def other(ctx: Context[Any]) -> None: ...

    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            holding.set()
            release.wait(30)
            conn.execute("COMMIT")
        finally:
            conn.close()

    async with runner, sweeper:
        task = await runner.add("long")
        await asyncio.wait_for(started.wait(), 30)
        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        assert await asyncio.to_thread(holding.wait, 10)
        await asyncio.sleep(hold)  # the lock held past the lease (2 s)
        release.set()
        await asyncio.to_thread(holder.join, 30)
        # a few sweeps after the lock: the heartbeats have renewed the lease meanwhile
        for _ in range(4):
            await asyncio.sleep(0.5)
            assert (await runner.get(task.id)).status is Status.RUNNING  # type: ignore[union-attr]
        finish.set()
        assert await runner.wait(task.id, timeout=30) == "once"
    done = await runner.get(task.id)
    await runner.close()
    assert done is not None and done.rescues == 0 and runs == [1]
