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
