"""The change relay reads the new log lines of the tasks in a batch of changes
once per task and all at the same time: they were read one after another, one
read per log change, and under a slow storage other processes' lines lagged by
the sum of the reads (25 s in an audit with reads of 0-100 ms)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

from conveyor import Context, Conveyor
from conveyor.model import Status
from conveyor.storage import Change


async def test_a_batch_reads_each_tasks_lines_once_and_together(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    writer = Conveyor(url)

    @writer.handler("log:three")
    async def three(ctx: Context[Any]) -> None:
        for i in range(3):
            ctx.log.info("line %d of %s", i, ctx.payload)

    async with writer:
        tasks = [await writer.add("log:three", name) for name in "xyz"]
        for task in tasks:
            await writer.wait(task.id, timeout=10)
    reader = Conveyor(url)
    await reader.open()
    try:
        reads: Counter[str] = Counter()
        in_flight = 0
        most = 0
        all_in = asyncio.Event()
        read_logs = reader.storage.read_logs

        async def counted(task_id: str, *args: Any, **kwargs: Any) -> Any:
            nonlocal in_flight, most
            reads[task_id] += 1
            in_flight += 1
            most = max(most, in_flight)
            if in_flight == len(tasks):
                all_in.set()
            with contextlib.suppress(TimeoutError):  # one after another: each waits 1 s
                await asyncio.wait_for(all_in.wait(), 1.0)
            in_flight -= 1
            return await read_logs(task_id, *args, **kwargs)

        reader.storage.read_logs = counted  # type: ignore[method-assign]
        lines = reader.events("task.log")
        x, y, z = (t.id for t in tasks)
        batch = [Change(1, x, 5, Status.SUCCEEDED, "log", "elsewhere", 0.0),
                 Change(2, y, 5, Status.SUCCEEDED, "log", "elsewhere", 0.0),
                 Change(3, x, 5, Status.SUCCEEDED, "log", "elsewhere", 0.0),
                 Change(4, z, 5, Status.SUCCEEDED, "log", "elsewhere", 0.0)]
        assert reader._relay is not None
        await reader._relay._handle(batch)
        assert most == 3 and reads == {x: 1, y: 1, z: 1}, (most, reads)
        got: dict[str, list[str]] = {}
        for _ in range(9):
            event = await asyncio.wait_for(lines.get(), 5)
            got.setdefault(event.task_id, []).append(event.data["log"].message)
        assert got == {t.id: [f"line {i} of {t.payload}" for i in range(3)] for t in tasks}
    finally:
        await reader.close()
