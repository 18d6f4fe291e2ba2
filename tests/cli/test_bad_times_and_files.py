"""Times out of range: refused on the way in (exit 2), printed without a crash when a
SQLite file already holds one; read commands do not write a schema into an empty file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from conveyor import Context, Conveyor

from ._support import assert_error, cli, count


def _finished_task_with_a_log(url: str) -> str:
    async def go() -> str:
        app = Conveyor(url)

        @app.handler("work")
        async def work(ctx: Context[Any]) -> str:
            ctx.log.info("hello")
            return "done"

        async with app:
            task = await app.add("work")
            await app.wait(task.id, timeout=20)
        return task.id

    return asyncio.run(go())


def test_a_stored_time_out_of_range_is_printed_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    done_id = _finished_task_with_a_log(url)
    queued = cli("add", "later", '{"n": 1}', "--db", url)
    assert queued.code == 0, queued
    queued_id = queued.out.strip()
    # what an older version could write: times no datetime can hold
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE conveyor_tasks SET run_at = 1e300, created_at = -1e300, "
                     "finished_at = 1e300, updated_at = 1e20")
        conn.execute("UPDATE conveyor_logs SET ts = 1e300")
    conn.close()

    listed = cli("ls", "--db", url)
    assert listed.code == 0, listed
    assert "Traceback" not in listed.err
    assert queued_id in listed.out and done_id in listed.out
    assert "-1e+300 (not a valid time)" in listed.out  # created
    assert "1e+300 (not a valid time)" in listed.out  # the queued task's run_at

    shown = cli("show", done_id, "--logs", "--db", url)
    assert shown.code == 0, shown
    assert "Traceback" not in shown.err
    assert "hello" in shown.out
    lines = {line.split()[0]: line for line in shown.out.splitlines() if line.strip()}
    assert "1e+300 (not a valid time)" in lines["finished_at"]
    assert "1e+20 (not a valid time)" in lines["updated_at"]

    tailed = cli("tail", done_id, "--db", url)
    assert tailed.code == 0, tailed
    assert "hello" in tailed.out and "Traceback" not in tailed.err

    as_json = cli("ls", "--json", "--db", url)
    assert as_json.code == 0, as_json
    assert {t["run_at"] for t in json.loads(as_json.out)} == {1e300}


def test_add_refuses_a_time_out_of_range(db: str) -> None:
    result = cli("add", "later", "--delay", "1e12", "--db", db)
    assert_error(result, 2, "'--delay': must be at most 3155760000 seconds (100 years)")
    result = cli("add", "later", "--timeout", "1e12", "--db", db)
    assert_error(result, 2, "'--timeout': must be at most 3155760000 seconds")
    ok = cli("add", "later", "--delay", "3155760000", "--db", db)
    assert ok.code == 0, ok
    assert count(db) == 1
    assert cli("ls", "--db", db).code == 0


def test_read_commands_refuse_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    url = f"sqlite:///{path}"
    some_id = "0190a0b2-0000-7000-8000-000000000000"
    for args in (["ls"], ["stats"], ["workers"], ["show", some_id], ["abort", some_id],
                 ["prune", "--older-than", "1d"]):
        result = cli(*args, "--db", url)
        assert_error(result, 1, "is an empty file, not a conveyor database",
                     "'conveyor migrate'")
        assert path.stat().st_size == 0, args  # nothing was written
    migrated = cli("migrate", "--db", url)
    assert migrated.code == 0, migrated
    listed = cli("ls", "--db", url)
    assert listed.code == 0 and "no tasks" in listed.out, listed


def test_add_makes_an_empty_file_a_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    url = f"sqlite:///{path}"
    added = cli("add", "work", "--db", url)
    assert added.code == 0, added
    assert path.stat().st_size > 0
    listed = cli("ls", "--db", url)
    assert listed.code == 0 and added.out.strip() in listed.out, listed
