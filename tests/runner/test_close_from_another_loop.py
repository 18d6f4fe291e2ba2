"""``close()`` ends what runs on the app wherever it runs: a ``run()`` in the same
loop returns, and a worker running in another loop (a thread's ``asyncio.run``, a
second SyncConveyor) is stopped gracefully in its own loop (lifecycle audit)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

from conveyor import Context, Conveyor, Status


async def test_close_ends_a_run_in_the_same_loop(tmp_path: Path) -> None:
    """run() waited for ever after close(); cancelled later (a lifespan's task group
    ending), it closed the app again and stopped a worker started since."""
    app = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}", stop_timeout=1.0)

    @app.handler("t:x")
    async def x(ctx: Context[Any]) -> Any:
        return ctx.payload

    started = asyncio.Event()
    app.on("worker.started", lambda event: started.set())
    runner = asyncio.create_task(app.run())
    await asyncio.wait_for(started.wait(), 10)
    await app.close()
    assert await asyncio.wait_for(runner, 10) is None  # it returned with the close
    await app.start()  # used again: the ended run() leaves this worker alone
    try:
        task = await app.add("t:x", 7)
        assert await app.wait(task.id, timeout=10) == 7
    finally:
        await app.close()


async def test_close_from_another_loop_stops_the_worker_in_its_own(tmp_path: Path) -> None:
    """The worker runs in a thread's loop; close() awaited here raised RuntimeError (a
    future of another loop) halfway through the stop: the worker stopped claiming and
    renewing its leases while its run went on, and the task ran a second time at once
    once rescued. Now the stop runs in the worker's loop: the run is handed back."""
    app = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}", stop_timeout=0.2)
    running = threading.Event()

    @app.handler("t:slow")
    async def slow(ctx: Context[Any]) -> None:
        running.set()
        await asyncio.sleep(60)

    result: list[Any] = []

    def thread_main() -> None:
        try:
            asyncio.run(app.run())
            result.append("returned")
        except BaseException as exc:
            result.append(exc)

    task = await app.add("t:slow")
    thread = threading.Thread(target=thread_main, name="worker-thread")
    thread.start()
    try:
        assert await asyncio.to_thread(running.wait, 30)
        await app.close()  # here, in another loop than the worker's
    finally:
        await asyncio.to_thread(thread.join, 30)
    assert result == ["returned"]
    back = await app.get(task.id)
    assert back.status is Status.QUEUED and (back.attempts, back.rescues) == (0, 0)
    await app.close()


async def test_events_of_a_worker_in_another_loop_reach_a_subscriber_here(
        tmp_path: Path) -> None:
    """events() iterated in this loop while the worker runs in a thread's loop: the
    events were put into the subscription's queue from that thread, which did not
    wake this loop (the event came only when something else woke it: 5 s later, at
    the caller's timeout). Woken at once now: well within the 3 s looked for."""
    app = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}", stop_timeout=0.5)

    @app.handler("t:x")
    async def x(ctx: Context[Any]) -> int:
        return 1

    started = threading.Event()
    app.on("worker.started", lambda event: started.set())
    thread = threading.Thread(target=lambda: asyncio.run(app.run()), daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(started.wait, 30)
        async with app.events("task.succeeded") as events:
            clock = asyncio.get_running_loop().time
            begun = clock()
            task = await app.add("t:x")
            async with asyncio.timeout(10):
                event = await events.__anext__()
            took = clock() - begun
        assert event.task_id == task.id
        assert took < 2.5, took  # woken by the event itself, not by a timeout
    finally:
        await app.close()
        await asyncio.to_thread(thread.join, 30)



async def test_a_close_in_another_thread_ends_an_events_read_here(tmp_path: Path) -> None:
    """The app closed from another thread's loop ends the events() iterations of
    this loop at once (the end was put in the queue from that thread, which woke
    nobody here: the reader ended at its own timeout)."""
    from conveyor import ConveyorError

    app = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}")
    await app.open()
    events = app.events("task.*")
    closer = threading.Timer(0.1, lambda: asyncio.run(app.close()))
    clock = asyncio.get_running_loop().time
    begun = clock()
    closer.start()
    try:
        async with asyncio.timeout(10):
            with contextlib.suppress(StopAsyncIteration, ConveyorError):
                await events.__anext__()
        took = clock() - begun
    finally:
        await asyncio.to_thread(closer.join, 30)
    assert took < 2.5, took  # ended by the close itself, not by a timeout
