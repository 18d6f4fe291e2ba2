"""The newest tasks first by index on PostgreSQL too (schema version 4,
``tasks_created``): ``conveyor ls``, the dashboard's window and its live query sort
by ``-created_at,-id`` with a limit, and each such read sorted the whole table (740 ms
at 1,500,000 tasks, on every refresh of the window)."""

from __future__ import annotations

import os
from typing import Any

import psycopg

from conveyor.query import parse_query
from conveyor.query._postgres import compile_postgres, compile_sort_postgres
from conveyor.testing import make_spec

from ..conftest import PG_ENV, pg_schema


async def test_the_newest_first_read_by_index(storage: Any, schema_url: str) -> None:
    for start in range(0, 20_000, 5000):
        await storage.add([make_spec("new:x", i) for i in range(start, start + 5000)])
    table = f'"{pg_schema(schema_url)}".tasks'
    plans: dict[str, str] = {}
    with psycopg.connect(os.environ[PG_ENV], autocommit=True) as conn:
        conn.execute(f"ANALYZE {table}")
        for sort in ("-created_at,-id", "-created_at"):
            query = parse_query({}, sort, 100, 0)
            where, params = compile_postgres(query.filter)
            order, order_params = compile_sort_postgres(query.sort)
            text = f"SELECT * FROM {table} WHERE {where} ORDER BY {order} LIMIT %s OFFSET %s"
            plans[sort] = "\n".join(r[0] for r in conn.execute(
                "EXPLAIN " + text, [*params, *order_params, 100, 0]).fetchall())
    for sort, plan in plans.items():
        assert "tasks_created" in plan and "Seq Scan" not in plan, (sort, plan)
    newest = await storage.find(parse_query({}, "-created_at,-id", 3, 0))
    assert [t.payload for t in newest] == [19_999, 19_998, 19_997]
