"""Enqueue inside the caller's transaction: the task exists iff the transaction commits."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from conveyor.model import Status
from conveyor.storage.postgres import parse_postgres_url
from conveyor.testing.contract import make_spec

from .conftest import listening


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
    await listening(other)
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


async def test_app_add_in_validates_and_commits(storage: Any, schema_url: str) -> None:
    from pydantic import BaseModel

    from conveyor import Conveyor, ValidationError

    class Order(BaseModel):
        number: int

    app = Conveyor(storage)
    app.register("orders:ship", _ship, payload_model=Order)
    async with await _user_conn(schema_url) as conn:
        async with conn.transaction():
            task = await app.add_in(conn, "orders:ship", {"number": 7}, priority=1)
            with pytest.raises(ValidationError, match="number"):
                await app.add_in(conn, "orders:ship", {"number": "seven"})
        async with conn.transaction(force_rollback=True):
            [gone] = await app.add_many_in(conn, [("orders:ship", {"number": 8})])
    assert (await app.get(task.id)).payload == {"number": 7}
    assert not await app.exists(gone.id)


async def test_app_add_in_needs_a_backend_that_can(tmp_path: Any) -> None:
    from conveyor import ConfigurationError, Conveyor

    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        await app.add_in(object(), "x")


async def _ship(ctx: Any) -> None:
    return None
