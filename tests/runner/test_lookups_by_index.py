"""Reads that every app makes often go by index, not through the whole store:
looking up the task that holds a unique key (every occurrence of a schedule and
every ``unique_fields`` add: a keyed add took 53 ms at 100,000 stored tasks on
SQLite, 26 times a plain one), and the newest tasks first (the dashboard's
table and its live query: 1.26 s at 384,000 tasks on SQLite, re-read on every
add). And the in-memory backend's key index follows every change of a task's
key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conveyor import Conveyor, DuplicateTask, Status, SyncConveyor
from conveyor.query import compile_sort_sqlite, parse_sort
from conveyor.storage import sqlite as sqlite_storage


def test_sqlite_reads_the_holder_of_a_key_by_index(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    with SyncConveyor(f"sqlite:///{path}") as app:
        app.add("a", 1, unique_key="k")
    conn = sqlite3.connect(path)
    plan = conn.execute("EXPLAIN QUERY PLAN " + sqlite_storage.Q["find_live_duplicate"],
                        {"unique_key": "k", "scope": "|queued|running|"}).fetchall()
    steps = " / ".join(row[3] for row in plan)
    assert "USING INDEX conveyor_tasks_unique (unique_key=?)" in steps, steps
    assert "USING COVERING INDEX conveyor_tasks_key_newest (unique_key=? AND status=?)" \
        in steps, steps
    assert "SCAN conveyor_tasks" not in steps, steps


def test_sqlite_reads_the_newest_tasks_by_index(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    with SyncConveyor(f"sqlite:///{path}") as app:
        app.add("a", 1)
    conn = sqlite3.connect(path)
    for sort, where in ((["-created_at", "-id"], ""), (["-created_at", "-id"], "action = 'a'"),
                        (["created_at"], "")):
        order, _ = compile_sort_sqlite(parse_sort(sort))
        sql = (f"SELECT * FROM conveyor_tasks {'WHERE ' + where if where else ''} "
               f"ORDER BY {order} LIMIT 100")
        steps = " / ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql))
        assert "USING INDEX conveyor_tasks_created" in steps, (sort, steps)
        assert "TEMP B-TREE" not in steps, (sort, steps)


def test_a_database_of_schema_version_1_gets_the_key_index(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in sqlite_storage._split_statements(sqlite_storage.MIGRATIONS[0].sql):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    with SyncConveyor(f"sqlite:///{path}") as app:
        first = app.add("a", 1, unique_key="k")
        assert app.add_checked("a", 2, unique_key="k") == (first, False)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_storage.SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name IN ("
                        "'conveyor_tasks_key_newest', 'conveyor_tasks_created')"
                        ).fetchone()[0] == 2


async def test_the_memory_key_index_follows_deletes_retries_and_key_hand_overs() -> None:
    async with Conveyor("memory://") as app:
        done = await app.add("a", 1, unique_key="k")
        await app.abort(done.id, "made room")  # out of the key's default scope
        second = await app.add("a", 2, unique_key="k")  # so the key is free again
        assert second.id != done.id
        with pytest.raises(DuplicateTask):  # the first may not take it back
            await app.retry(done.id)
        await app.abort(second.id, "made room")
        assert set(await app.delete([done.id, second.id])) == {done.id, second.id}
        third, created = await app.add_checked("a", 3, unique_key="k")
        assert created and (await app.get(third.id)).status is Status.QUEUED
        assert app.storage._keyed == {"k": {third.id: None}}  # type: ignore[attr-defined]


def test_a_database_of_the_first_version_2_gets_the_created_index(tmp_path: Path) -> None:
    """Version 2 first held the key index alone (commit 8776854; the created index
    joined it in the same file later): such a file gets it from version 3."""
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in sqlite_storage._split_statements(sqlite_storage.MIGRATIONS[0].sql):
        conn.execute(statement)
    conn.execute("CREATE INDEX conveyor_tasks_key ON conveyor_tasks (unique_key) "
                 "WHERE unique_key IS NOT NULL")
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with SyncConveyor(f"sqlite:///{path}") as app:
        app.add("a", 1)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_storage.SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = "
                        "'conveyor_tasks_created'").fetchone()[0] == 1
    plan = " / ".join(row[3] for row in conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM conveyor_tasks ORDER BY created_at DESC, id DESC "
        "LIMIT 100"))
    assert "conveyor_tasks_created" in plan and "TEMP B-TREE" not in plan, plan


async def test_sqlite_a_key_used_many_times_keeps_the_holder_rule(tmp_path: Path) -> None:
    """Schema version 4 picks the holder among the key's holder and the newest task
    of each status (it read every task that ever held the key: 70-145 ms for a key
    100,000 ended tasks had used); the rule is the same: the holder, else the
    newest in the asked scope."""
    from conveyor.model import Transition
    from conveyor.storage import Completion
    from conveyor.testing import make_spec

    storage = sqlite_storage.SQLiteStorage(str(tmp_path / "tasks.db"))
    await storage.open()
    try:
        ended = []
        for n in range(12):
            [res] = await storage.add([make_spec("key:x", unique_key="k")])
            assert res.created
            [task] = await storage.claim("w", ["key:x"], 1, 60.0)
            status = Status.FAILED if n % 2 else Status.SUCCEEDED
            await storage.finish("w", [Completion(task.id, task.token, Transition(status))])
            ended.append(task.id)
        [live] = await storage.add([make_spec("key:x", unique_key="k")])
        [again] = await storage.add([make_spec("key:y", unique_key="k", unique_scope=(
            Status.QUEUED, Status.SUCCEEDED))])
        assert not again.created and again.task.id == live.task.id  # the holder first
        [task] = await storage.claim("w", ["key:x"], 1, 60.0)
        await storage.finish("w", [Completion(task.id, task.token, Transition(Status.ABORTED))])
        for status, newest in ((Status.SUCCEEDED, ended[-2]), (Status.FAILED, ended[-1]),
                               (Status.ABORTED, live.task.id)):
            [got] = await storage.add([make_spec("key:y", unique_key="k",
                                                 unique_scope=(Status.QUEUED, status))])
            assert not got.created and got.task.id == newest, status
    finally:
        await storage.close()
