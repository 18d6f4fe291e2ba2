"""Helpers shared by the query tests: a real SQLite table and a task builder."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from conveyor.model import Status, Task
from conveyor.query import (
    Filter,
    SortKey,
    compile_sort_sqlite,
    compile_sqlite,
    register_sqlite_functions,
)
from conveyor.storage._codec import COLUMNS, task_to_row

MIGRATION = (
    Path(__file__).resolve().parents[2]
    / "src" / "conveyor" / "storage" / "sql" / "sqlite" / "migrations" / "0001_initial.sql"
)
_SCHEMA = MIGRATION.read_text(encoding="utf-8")
_INSERT = (
    f"INSERT INTO conveyor_tasks ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in COLUMNS)})"
)


def new_db(tasks: Iterable[Task] = ()) -> sqlite3.Connection:
    """A fresh in-memory database with the real schema, holding ``tasks``."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(_SCHEMA)
    register_sqlite_functions(conn)
    conn.executemany(_INSERT, [task_to_row(t) for t in tasks])
    return conn


def sql_ids(conn: sqlite3.Connection, f: Filter, sort: Sequence[SortKey] = (),
            limit: int | None = None, skip: int = 0) -> list[str]:
    """Ids selected by the compiled filter and sort, in SQL's order."""
    where, params = compile_sqlite(f)
    order, order_params = compile_sort_sqlite(sort)
    sql = f"SELECT id FROM conveyor_tasks WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?"
    args = [*params, *order_params, -1 if limit is None else limit, skip]
    return [row[0] for row in conn.execute(sql, args)]


def task(id: str = "t1", **fields: Any) -> Task:
    """A task with sensible defaults; ``unique_scope`` empty so unique keys never collide."""
    fields.setdefault("action", "demo")
    fields.setdefault("payload", {})
    fields.setdefault("status", Status.QUEUED)
    fields.setdefault("unique_scope", ())
    return Task(id=id, **fields)
