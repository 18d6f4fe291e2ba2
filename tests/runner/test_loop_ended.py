"""An app whose worker's event loop ended without a stop (an ``asyncio.run()`` that
returned with the app open) starts a new worker in the next loop: ``start()``
returned the dead one, so nothing ran, and ``drain()`` waited for ever."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from conveyor import Context, Conveyor


def test_a_worker_of_an_ended_loop_is_replaced(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}")

    @app.handler("job")
    async def job(ctx: Context[Any]) -> str:
        return "ran"

    async def run_once() -> tuple[str, object]:
        await app.start()
        task = await app.add("job")
        return await app.wait(task.id, timeout=30), app.worker  # and the loop ends

    async def drain_once() -> dict[str, int]:
        await app.add("job")
        return await app.drain(timeout=30)

    async def close() -> None:
        await app.close()

    first, first_worker = asyncio.run(run_once())
    second, second_worker = asyncio.run(run_once())
    assert (first, second) == ("ran", "ran")
    assert second_worker is not first_worker
    assert asyncio.run(drain_once())["succeeded"] == 1
    asyncio.run(close())


def test_close_after_the_workers_loop_ended(tmp_path: Path) -> None:
    """close() in a new loop raised 'Event loop is closed' (the stop of a worker
    whose loop had ended), before it closed the storage."""
    app = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}")

    @app.handler("job", mode="thread")
    def job(ctx: Context[Any]) -> str:
        return "ran"

    async def run_once() -> str:
        await app.start()
        task = await app.add("job")
        return await app.wait(task.id, timeout=30)

    async def close() -> None:
        await app.close()

    assert asyncio.run(run_once()) == "ran"
    asyncio.run(close())
    assert app.worker is None


def test_a_thread_handler_is_told_when_its_loop_ends_without_a_close(tmp_path: Path) -> None:
    """An asyncio.run() that returned with a thread handler running (a test's loop,
    a script without close()): the handler went on unaware, and the next start()
    rescued its task and ran it a second time at once (lifecycle audit). It is asked
    to abort, reason ``worker stopping``, as at a stop."""
    app = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}")
    started, ended = threading.Event(), threading.Event()
    seen: list[str | None] = []

    @app.handler("t:sync")
    def sync(ctx: Context[Any]) -> None:
        started.set()
        told = ctx.wait_aborted(10)
        seen.append(ctx.abort_reason if told else None)
        ended.set()

    async def first() -> None:
        await app.start()
        await app.add("t:sync")
        assert await asyncio.to_thread(started.wait, 30)
        # returns without close(): the loop ends with the run under way

    asyncio.run(first())
    assert ended.wait(30)
    assert seen == ["worker stopping"]
    asyncio.run(app.close())
