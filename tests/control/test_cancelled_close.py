"""A caller cancelled while the app closes or stops (a lifespan cancelled, Ctrl-C twice,
a timeout around ``close()``) does not cut the stop short: it goes on in the background
and the next ``close()`` waits for it. A cancelled close left the worker half-stopped
for good: its handler running, its keeper thread renewing leases, its registration."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor, Status


async def _until(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0)  # the stop advances step by step: look at each


async def test_a_cancelled_close_still_stops_the_worker(local_url: str) -> None:
    app = Conveyor(local_url, stop_timeout=30)
    started, release = asyncio.Event(), asyncio.Event()

    @app.handler("hold")
    async def hold(ctx: Context[Any]) -> str:
        started.set()
        await release.wait()
        return "done"

    try:
        await app.start()
        worker = app.worker
        assert worker is not None
        task = await app.add("hold")
        await asyncio.wait_for(started.wait(), 10)
        closing = asyncio.create_task(app.close())
        await _until(lambda: worker.stopping, "the stop began")
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        # the stop goes on: the worker is still the app's, waiting for its run
        assert app.worker is worker
        release.set()
        await app.close()  # waits for that stop
        assert app.worker is None
        assert worker._keeper is not None and not worker._keeper.is_alive()
        done = await app.get(task.id)
        assert done.status is Status.SUCCEEDED and done.result == "done"
        assert await app.workers() == []
    finally:
        release.set()
        await app.close()


async def test_run_cancelled_twice_still_hands_the_running_task_back(local_url: str) -> None:
    app = Conveyor(local_url, stop_timeout=0.3)
    started = asyncio.Event()

    @app.handler("hold")
    async def hold(ctx: Context[Any]) -> str:
        started.set()
        await asyncio.sleep(3600)
        return "never"

    try:
        task = await app.add("hold")
        running = asyncio.create_task(app.run())
        await asyncio.wait_for(started.wait(), 10)
        worker = app.worker
        assert worker is not None
        running.cancel()
        await _until(lambda: worker.stopping, "the graceful stop began")
        running.cancel()  # a second Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await running
        await app.close()
        back = await app.get(task.id)
        assert back.status is Status.QUEUED and back.attempts == 0, back
        assert worker._keeper is not None and not worker._keeper.is_alive()
        assert await app.workers() == []
    finally:
        await app.close()


@pytest.mark.parametrize("closing", [True, False], ids=["closing", "left-open"])
def test_a_loop_that_ends_under_a_running_worker_leaves_its_leases_to_expire(
        tmp_path: Path, closing: bool) -> None:
    """``asyncio.run()`` returning with the worker running (its close under way, or no
    close at all) ends the runs with the loop: the worker's lease keeper, a thread,
    stops renewing their leases (it went on for as long as the process lived, and the
    tasks stayed running), so another worker rescues them."""
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    ids: list[str] = []
    keepers: list[threading.Thread] = []

    async def main() -> None:
        app = Conveyor(url, stop_timeout=3600, lease=1.0)
        started = asyncio.Event()

        @app.handler("hold")
        async def hold(ctx: Context[Any]) -> str:
            started.set()
            await asyncio.sleep(3600)
            return "never"

        await app.start()
        worker = app.worker
        assert worker is not None and worker._keeper is not None
        keepers.append(worker._keeper)
        ids.append((await app.add("hold")).id)
        await asyncio.wait_for(started.wait(), 10)
        if closing:
            close = asyncio.create_task(app.close())
            await _until(lambda: worker._claim_task is not None and worker._claim_task.done(),
                         "the claims stopped")
            assert not close.done()  # left to asyncio.run's end, which cancels it

    asyncio.run(main())
    keepers[0].join(10)
    assert not keepers[0].is_alive()

    async def rescue() -> None:
        app = Conveyor(url, sweep_interval=0.2)

        @app.handler("hold")
        async def hold(ctx: Context[Any]) -> str:
            return "rescued"

        async with app:
            assert await app.wait(ids[0], timeout=20) == "rescued"
            done = await app.get(ids[0])
            assert done.rescues == 1, done

    asyncio.run(rescue())
