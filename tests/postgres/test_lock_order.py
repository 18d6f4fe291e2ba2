"""A worker's statements on its running tasks lock them in one order (by id), so
a heartbeat and a finish of the same tasks, given them in different orders,
wait for each other instead of deadlocking.

The scene is set by hand: a third session holds the first task's row; a
heartbeat (given the tasks first to last) queues behind it; a finish or a
progress update given them last to first comes next. Locking in its input
order, the second would take the other tasks and wait for the first, which the
heartbeat gets next and then waits for the second task: ``deadlock detected``
for one of them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from conveyor.model import Progress, Status, Task, Transition
from conveyor.storage import Completion, Lease
from conveyor.testing.contract import make_spec

from ..conftest import PG_ENV, pg_schema


async def _waiting_on_locks(schema: str, count: int) -> None:
    """Until ``count`` sessions wait for a lock on a row of this schema's tasks."""
    deadline = time.monotonic() + 10
    async with await psycopg.AsyncConnection.connect(os.environ[PG_ENV],
                                                     autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE %s", (f"%{schema}%tasks%",))
            row = await cur.fetchone()
            assert row is not None
            if row[0] >= count:
                return
            assert time.monotonic() < deadline, f"{row[0]} of {count} sessions wait"
            await asyncio.sleep(0.01)


async def _beat_then(storage: Any, schema_url: str,
                     second: Callable[[list[Task]], Awaitable[Any]]) -> tuple[list[Task], Any, Any]:
    """Six running tasks; a third session holds the first one's row; a heartbeat of
    all six (first to last) queues behind it, then ``second(tasks)``; the row is let
    go. The running tasks, the heartbeat's reply and what ``second`` returned."""
    schema = pg_schema(schema_url)
    await storage.add([make_spec(action="a") for _ in range(6)])
    tasks = sorted(await storage.claim("w", ["a"], 6, 30), key=lambda t: t.id)
    assert len(tasks) == 6
    async with await psycopg.AsyncConnection.connect(os.environ[PG_ENV]) as holder:
        await holder.execute(
            f'SELECT 1 FROM "{schema}".tasks WHERE id = %s FOR UPDATE', (tasks[0].id,))
        beat = asyncio.create_task(storage.heartbeat(
            "w", [Lease(t.id, t.token) for t in tasks], 30))
        await _waiting_on_locks(schema, 1)
        then = asyncio.create_task(second(tasks))
        await _waiting_on_locks(schema, 2)
        await holder.rollback()
        return tasks, await beat, await then


async def test_heartbeat_and_finish_in_opposite_orders_do_not_deadlock(
        storage: Any, schema_url: str) -> None:
    tasks, reply, not_done = await _beat_then(storage, schema_url, lambda tasks: storage.finish(
        "w", [Completion(t.id, t.token, Transition(Status.SUCCEEDED)) for t in tasks[::-1]]))
    assert reply.lost == frozenset()
    assert not_done == []
    assert [t.status for t in await storage.get_many([t.id for t in tasks])] == [
        Status.SUCCEEDED] * 6


async def test_progress_and_heartbeat_in_opposite_orders_do_not_deadlock(
        storage: Any, schema_url: str) -> None:
    tasks, reply, lost = await _beat_then(storage, schema_url, lambda tasks: (
        storage.update_progress([(Lease(t.id, t.token), Progress(1, 2)) for t in tasks[::-1]])))
    assert reply.lost == frozenset()
    assert lost == []
    assert all(t.progress is not None and t.progress.current == 1
               for t in await storage.get_many([t.id for t in tasks]))
