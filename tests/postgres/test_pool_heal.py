"""A pool whose connections are all out while no call holds one has lost them (a
connection psycopg_pool hands to a waiter in the instant it is cancelled, never
given back: seen once in a hub under churn, which then failed every call with
"no PostgreSQL connection available" for good). The call that waited replaces
the pool and goes on; a pool whose connections calls hold is left alone."""

from __future__ import annotations

import logging

import pytest

from conveyor import Conveyor, StorageError


async def test_a_pool_that_lost_its_connections_is_replaced(
        schema_url: str, caplog: pytest.LogCaptureFixture) -> None:
    app = Conveyor(f"{schema_url}&pool_min=0&pool_max=2&pool_timeout=0.5")
    async with app:
        await app.add("a", 1)
        pool = app.storage._loop_pool()  # type: ignore[attr-defined]
        # the library's loss, done by hand: both connections taken, never given back
        lost = [await pool.getconn(), await pool.getconn()]
        with caplog.at_level(logging.ERROR, logger="conveyor"):
            task = await app.add("a", 2)  # waited pool_timeout, then a new pool
        assert "they were lost; replacing the pool" in caplog.text
        assert (await app.get(task.id)) is not None
        assert app.storage._loop_pool() is not pool  # type: ignore[attr-defined]
        assert await app.count({}) == 2
        for conn in lost:
            await conn.close()


async def test_a_pool_whose_connections_calls_hold_is_kept(schema_url: str) -> None:
    app = Conveyor(f"{schema_url}&pool_min=0&pool_max=1&pool_timeout=0.5")
    async with app:
        await app.add("a", 1)
        pool = app.storage._loop_pool()  # type: ignore[attr-defined]
        async with app.storage._conn():  # type: ignore[attr-defined]  # a long call
            with pytest.raises(StorageError, match="no PostgreSQL connection available"):
                await app.add("a", 2)
        assert app.storage._loop_pool() is pool  # type: ignore[attr-defined]
        assert await app.count({}) == 1
