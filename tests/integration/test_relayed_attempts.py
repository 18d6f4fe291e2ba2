"""Events relayed from another process's worker carry each run's ``attempts`` in
the process that added the task too. Its own ``added`` change is not relayed to
it, so the count along the feed had no start; and counting back from the task as
read stopped at a log line (a change that does not bump the version): the busy
adder saw ``task.started`` of attempt 1 with ``attempts`` 2 (4 of 5 runs on
SQLite)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from conveyor import Conveyor, Event

from .procs import start_worker, stop_worker


async def test_the_adding_process_sees_each_runs_attempts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    app = Conveyor(url)
    await app.open()  # the schema, before the worker opens the file
    worker = start_worker({"CONVEYOR_DB": url})
    seen: list[tuple[str, int, int]] = []
    ended = asyncio.Event()

    def record(event: Event) -> None:
        if event.task is not None and event.type in ("task.started", "task.retrying",
                                                     "task.succeeded"):
            seen.append((event.type, event.data["version"], event.task.attempts))
        if event.type == "task.ended":
            ended.set()

    app.on("*", record)
    try:
        await app.add("log_and_retry")
        # this process is busy while the other runs the task: its changes come in
        # one batch, read after the task has moved on (a scenario, not a wait)
        time.sleep(1.0)  # noqa: ASYNC251 - the busy loop is the scenario
        await asyncio.wait_for(ended.wait(), 30)
    finally:
        stop_worker(worker)
        await app.close()
    runs = [(t, a) for t, _, a in seen]
    assert runs == [("task.started", 1), ("task.retrying", 1), ("task.started", 2),
                    ("task.retrying", 2), ("task.started", 3), ("task.succeeded", 3)], seen
