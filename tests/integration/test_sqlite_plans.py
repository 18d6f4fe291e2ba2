"""Query plans of SQLite statements that run over the whole table: each must go
through the index made for it (a scale audit found retention's batches going
through the status index: 425 s to prune 500,000 of 1,000,000 tasks, with
workers' claims stalled meanwhile)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from conveyor import Conveyor
from conveyor.storage.sqlite import Q


def _plan(db: Path, query: str, params: dict[str, object]) -> str:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("EXPLAIN QUERY PLAN " + query, params).fetchall()
    return " | ".join(str(row[-1]) for row in rows)


async def test_retention_batches_read_the_finished_index(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with Conveyor(f"sqlite:///{db}") as app:
        tasks = await app.add_many([("a:x", i) for i in range(50)])
        for task in tasks[:25]:
            await app.abort(task.id)
    plan = _plan(db, Q["old_finished"], {"before": time.time(), "batch": 500})
    assert "conveyor_tasks_finished" in plan, plan


async def test_a_narrowed_filter_with_a_regex_keeps_its_index(tmp_path: Path) -> None:
    """A credential's scope guards the client's ``$regex`` through a CASE; the client's
    plain terms stay outside it, where the status index serves them (a review found
    such finds scanning the whole table)."""
    from conveyor.query import compile_sqlite, parse_filter, register_sqlite_functions
    from conveyor.query._tree import scoped

    db = tmp_path / "tasks.db"
    async with Conveyor(f"sqlite:///{db}") as app:
        await app.add("spy:x", {"pw": "zz"})
    where = scoped(parse_filter({"action": {"$regex": "^spy:.*$"}}),
                   parse_filter({"status": "queued", "payload.pw": {"$regex": "^z"}}))
    sql, params = compile_sqlite(where)
    assert "CASE WHEN" in sql
    with sqlite3.connect(db) as conn:
        register_sqlite_functions(conn)
        rows = conn.execute("EXPLAIN QUERY PLAN SELECT id FROM conveyor_tasks WHERE " + sql,
                            params).fetchall()
        assert conn.execute("SELECT count(*) FROM conveyor_tasks WHERE " + sql,
                            params).fetchone() == (1,)
    plan = " | ".join(str(row[-1]) for row in rows)
    assert "conveyor_tasks_status" in plan, plan
