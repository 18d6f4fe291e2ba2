"""docs/postgres.md, "Enqueue in your own transaction": both examples run as written.

The examples insert into the reader's own ``orders`` table: it lives in a schema
of its own (:func:`orders_dsn`), found through the DSN's ``search_path``, and
the tasks go to the test's conveyor schema.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from conveyor import Conveyor, Status

from .._docs import exec_module, find_block, run_fragment

EXAMPLES = {
    "psycopg.AsyncConnection.connect(DSN)": "test_add_in_async_example",
    'SyncConveyor("postgresql://app@db/app")': "test_add_in_sync_example",
}


@pytest.fixture
def orders_dsn(server: str) -> Iterator[str]:
    """A DSN whose ``search_path`` is a fresh schema holding an empty ``orders`` table."""
    schema = f"o_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".orders (id int PRIMARY KEY, total numeric)')
    try:
        yield make_conninfo(server, options=f"-c search_path={schema}")
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def orders(dsn: str) -> list[tuple[int, Decimal]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id, total FROM orders ORDER BY id").fetchall()


async def test_add_in_async_example(schema_url: str, orders_dsn: str) -> None:
    app = Conveyor(schema_url)
    try:
        out = await run_fragment(
            find_block("psycopg.AsyncConnection.connect(DSN)"),
            {"DSN": orders_dsn, "order_id": 42, "total": Decimal("19.90"), "app": app})
        assert out["conn"].closed
        task = await app.get(out["task"].id)
    finally:
        await app.close()
    assert (task.action, task.payload, task.priority) == ("mail:send", {"order": 42}, 1)
    assert task.status is Status.QUEUED
    assert orders(orders_dsn) == [(42, Decimal("19.90"))]


def test_add_in_sync_example(schema_url: str, orders_dsn: str) -> None:
    # "postgresql://app@db/app" stands for the application's database: here the
    # test server, with the test's own schema
    block = find_block('SyncConveyor("postgresql://app@db/app")').replace(
        "postgresql://app@db/app", schema_url)
    ns = exec_module(block, {"DSN": orders_dsn, "order_id": 7, "total": Decimal("5.00")})
    app = ns["app"]
    try:
        task = app.get(ns["task"].id)
    finally:
        app.close()
    assert (task.action, task.payload, task.status) == ("mail:send", {"order": 7},
                                                        Status.QUEUED)
    assert orders(orders_dsn) == [(7, Decimal("5.00"))]
