"""Several real processes on one database."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor

from ..conftest import BACKENDS, backend_url, drop_pg_schema
from .procs import read_ledger, stop_worker, workers

# slow; and alone: 100 ms bounds across processes
pytestmark = [pytest.mark.slow, pytest.mark.serial]


@pytest.fixture(params=[b for b in BACKENDS if b != "memory"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A storage URL that worker processes share: a SQLite file, or a PostgreSQL
    schema of this test's own when CONVEYOR_TEST_PG is set."""
    url = backend_url(request.param, tmp_path)
    yield url
    if request.param == "postgres":
        drop_pg_schema(url)


async def wait_for(predicate, timeout: float, interval: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(interval)


async def test_two_workers_run_each_task_once(db: str, tmp_path: Path) -> None:
    n = 10_000
    ledger = tmp_path / "ledger.txt"
    app = Conveyor(db)
    try:
        for start in range(0, n, 1000):
            await app.add_many([("ledger", {"i": i}) for i in range(start, start + 1000)])
        with workers(2, {"CONVEYOR_DB": db, "LEDGER": str(ledger)}) as procs:
            await wait_for(lambda: _count(app, "succeeded", n), timeout=240, interval=0.25)
            for proc in procs:
                assert stop_worker(proc) == 0
        lines = read_ledger(ledger)
        runs = Counter(task_id for task_id, _, _ in lines)
        lost = n - await app.count({"status": "succeeded"})
        duplicated = sum(1 for c in runs.values() if c > 1)
        print(f"tasks={n} lost={lost} duplicated={duplicated} "
              f"per-process={Counter(pid for _, _, pid in lines)}")
        assert lost == 0 and duplicated == 0 and len(runs) == n
        assert len({pid for _, _, pid in lines}) == 2  # both workers took part
        assert await app.workers() == []  # both unregistered on a clean stop
    finally:
        await app.close()


async def _count(app: Conveyor, status: str, n: int) -> bool:
    return await app.count({"status": status}) >= n


async def test_tasks_from_another_process_start_within_100ms(db: str, tmp_path: Path) -> None:
    app = Conveyor(db)
    try:
        with workers(1, {"CONVEYOR_DB": db, "LEDGER": str(tmp_path / "l.txt")}):
            delays = []
            for i in range(30):
                task = await app.add("ledger", {"i": i})
                await app.wait(task.id, timeout=10)
                done = await app.get(task.id)
                assert done.started_at is not None
                delays.append(done.started_at - done.created_at)
                await asyncio.sleep(0.02)
        median = statistics.median(delays)
        print(f"enqueue-to-start across processes: median {median * 1000:.1f} ms, "
              f"max {max(delays) * 1000:.1f} ms")
        assert median < 0.1
    finally:
        await app.close()


async def test_wait_events_and_logs_across_processes(db: str, tmp_path: Path) -> None:
    app = Conveyor(db)
    try:
        with workers(1, {"CONVEYOR_DB": db, "LEDGER": str(tmp_path / "l.txt")}):
            progress: list[float] = []
            app.on("task.progress", lambda e: progress.append(e.data["progress"].current))
            started = asyncio.Event()
            app.on("task.started", lambda e: started.set())
            task = await app.add("chatty", {"steps": 6, "pause": 0.1})
            lines = [r.message async for r in app.logs(task.id)]
            assert lines == [f"line {i}" for i in range(6)]
            assert await app.wait(task.id, timeout=10) == "chatted"
            assert started.is_set()
            # across processes progress events carry the stored snapshots (throttled);
            # the last value is stored with the result
            assert progress and progress == sorted(progress)
            final = await app.get(task.id)
            assert final.progress is not None and final.progress.current == 6
    finally:
        await app.close()


async def test_progress_stored_with_the_result_is_reported_before_the_end(
        db: str, tmp_path: Path) -> None:
    """A handler that reports progress and returns before the next progress write
    (progress_interval): the other process still gets a task.progress, then the end."""
    app = Conveyor(db)
    try:
        with workers(1, {"CONVEYOR_DB": db, "LEDGER": str(tmp_path / "l.txt")}):
            seen: list[tuple[str, Any]] = []
            app.on("task.progress", lambda e: seen.append((e.type, e.data["progress"].current)))
            app.on("task.succeeded", lambda e: seen.append((e.type, None)))
            task = await app.add("chatty", {"steps": 3, "pause": 0})
            assert await app.wait(task.id, timeout=10) == "chatted"
            await wait_for(lambda: _seen_end(seen), timeout=10, interval=0.02)
            assert seen[-2:] == [("task.progress", 3), ("task.succeeded", None)]
    finally:
        await app.close()


async def _seen_end(seen: list[tuple[str, Any]]) -> bool:
    return any(kind == "task.succeeded" for kind, _ in seen)


_STATUS_OF = {"task.started": "running", "task.retrying": "queued",
              "task.rescheduled": "queued", "task.succeeded": "succeeded"}


@pytest.mark.parametrize("action", ["retry_thrice", "reschedule_thrice"])
async def test_events_from_another_process_show_each_change(
        db: str, tmp_path: Path, action: str) -> None:
    """Changes relayed from another process: each event's task is the change's
    status and version, even when the task moved on before it was read (a retried
    task claimed again at once). The relay attached the task as read to every change
    of a batch: ``task.retrying`` showed it running or succeeded, versions repeated."""
    app = Conveyor(db)
    try:
        with workers(1, {"CONVEYOR_DB": db, "LEDGER": str(tmp_path / "l.txt")}):
            for _ in range(3):
                seen: list[tuple[str, str, int, int]] = []
                async with app.events(list(_STATUS_OF)) as events:
                    task = await app.add(action)
                    async for event in events:
                        if event.task_id != task.id:
                            continue
                        assert event.task is not None
                        seen.append((event.type, event.task.status.value,
                                     event.task.version, event.data["version"]))
                        if event.type == "task.succeeded":
                            break
                assert [s[0] for s in seen] == [
                    "task.started", f"task.{'retrying' if 'retry' in action else 'rescheduled'}",
                ] * 3 + ["task.started", "task.succeeded"]
                assert all(status == _STATUS_OF[kind] for kind, status, _, _ in seen), seen
                versions = [v for _, _, v, _ in seen]
                assert versions == [d for _, _, _, d in seen]
                assert versions == sorted(set(versions)), seen
    finally:
        await app.close()
