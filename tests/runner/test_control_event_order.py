"""A process that retries (aborts, prioritizes) a task announces that change
before any later event of the task: the ``task.started`` of a worker in another
process that claimed the retried task at once, relayed through the change feed
while this process's ``retry()`` was still waiting for its storage call, came
before this process's own ``task.retried`` (seen under load on PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor, Event, Task

from ..conftest import BACKENDS, backend_url, drop_pg_schema


@pytest.mark.parametrize("kind", [b for b in BACKENDS if b != "memory"])
async def test_retried_comes_before_the_next_start(kind: str, tmp_path: Path) -> None:
    url = backend_url(kind, tmp_path)
    controller = Conveyor(url)
    worker = Conveyor(url)
    started = asyncio.Event()
    runs = 0

    @worker.handler("job")
    async def job(ctx: Context[Any]) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ValueError("first run fails")
        started.set()

    seen: list[tuple[str, int]] = []
    relayed = asyncio.Event()
    failed = asyncio.Event()

    def record(event: Event) -> None:
        seen.append((event.type, event.data["version"]))
        if event.type == "task.started" and started.is_set():  # the second run
            relayed.set()
        if event.type == "task.failed":
            failed.set()

    controller.on(["task.started", "task.retried", "task.failed"], record)
    try:
        await controller.open()
        await worker.start()
        task = await controller.add("job")
        await asyncio.wait_for(failed.wait(), 30)  # relayed from the other app
        retry = controller.storage.retry

        async def slow_retry(task_id: str, run_at: float) -> Task:
            done = await retry(task_id, run_at)
            await started.wait()  # the other process has claimed it again
            # and this process's change relay has had it (held, or delivered)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not (relayed.is_set() or (controller.bus.is_held(task_id)
                       and controller.bus._held[task_id][1])):
                assert loop.time() < deadline, "the relay never brought the start"
                await asyncio.sleep(0.005)
            return done

        controller.storage.retry = slow_retry  # type: ignore[method-assign]
        await controller.retry(task.id)
        await controller.wait_task(task.id, timeout=30)
        await asyncio.wait_for(relayed.wait(), 10)
    finally:
        await worker.close()
        await controller.close()
        if kind == "postgres":
            drop_pg_schema(url)
    versions = [v for _, v in seen]
    assert versions == sorted(versions), seen
    assert [t for t, _ in seen][-2:] == ["task.retried", "task.started"], seen
