"""Enqueue inside the caller's transaction: the task exists iff the transaction commits."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from conveyor.model import Status
from conveyor.storage.postgres import parse_postgres_url
from conveyor.testing.contract import make_spec


async def _user_conn(schema_url: str) -> psycopg.AsyncConnection[Any]:
    conninfo, _, _ = parse_postgres_url(schema_url)
    return await psycopg.AsyncConnection.connect(conninfo)


async def test_rollback_leaves_no_task(storage: Any, schema_url: str) -> None:
    spec = make_spec(payload={"order": 1})
    async with await _user_conn(schema_url) as conn, conn.transaction(force_rollback=True):
        [res] = await storage.add_in(conn, [spec])
        assert res.created
    assert await storage.get(spec.id) is None
    assert await storage.claim("w", ["test:a"], 10, 30) == []


async def test_commit_makes_the_task(storage: Any, schema_url: str) -> None:
    async with await _user_conn(schema_url) as conn:
        await conn.execute("CREATE TEMP TABLE orders (id int)")
        async with conn.transaction():
            await conn.execute("INSERT INTO orders VALUES (1)")
            [res] = await storage.add_in(conn, [("test:a", {"order": 1}, {"priority": 2})])
    task = await storage.get(res.task.id)
    assert task is not None and task.status is Status.QUEUED
    assert task.payload == {"order": 1} and task.priority == 2


async def test_worker_sees_it_only_after_commit(storage: Any, other: Any,
                                                schema_url: str) -> None:
    seen: list[str] = []
    stream = other.change_batches(include_own=True)

    async def watch() -> None:
        async for batch in stream:
            seen.extend(c.task_id for c in batch if c.event == "added")

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    try:
        async with await _user_conn(schema_url) as conn:
            async with conn.transaction():
                [res] = await storage.add_in(conn, [make_spec()])
                await asyncio.sleep(0.3)  # several listener polls and notifications
                assert await other.claim("w", ["test:a"], 10, 30) == []
                assert res.task.id not in seen
            for _ in range(100):
                if res.task.id in seen:
                    break
                await asyncio.sleep(0.01)
            assert res.task.id in seen  # the commit woke the other process
            claimed = await other.claim("w", ["test:a"], 10, 30)
            assert [t.id for t in claimed] == [res.task.id]
    finally:
        watcher.cancel()


async def test_unique_keys_inside_the_transaction(storage: Any, schema_url: str) -> None:
    [live] = await storage.add([make_spec(unique_key="k")])
    async with await _user_conn(schema_url) as conn, conn.transaction():
        results = await storage.add_in(conn, [make_spec(unique_key="k"),
                                              make_spec(unique_key="j")])
    assert [r.created for r in results] == [False, True]
    assert results[0].task.id == live.task.id
