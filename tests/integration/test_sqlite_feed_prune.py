"""The SQLite change feed (which carries events between processes) is trimmed by
the retention pass: entries older than ``FEED_RETENTION`` go in batches, recent ones
stay, and the newest always stays so that a sequence number is never handed out
twice (a reader's cursor past a trimmed feed must not see new entries as old)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.storage import sqlite as sqlite_storage


def _seqs(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT seq FROM conveyor_changes ORDER BY seq")]


async def test_retention_trims_old_feed_entries_and_keeps_the_newest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tasks.db"
    async with Conveyor(f"sqlite:///{path}") as app:
        for i in range(12):
            await app.add("feed:x", i)
        before = _seqs(path)
        assert len(before) >= 12
        assert await app.storage.prune(None, batch=5) == 0
        assert _seqs(path) == before  # all younger than an hour: kept
        monkeypatch.setattr(sqlite_storage, "FEED_RETENTION", -60.0)  # all old now
        assert await app.storage.prune(None, batch=5) == 0
        assert _seqs(path) == [before[-1]]
        await app.add("feed:x", 12)
        after = _seqs(path)
        assert len(after) >= 2 and after[0] == before[-1] and min(after[1:]) > before[-1]


async def test_a_feed_with_nothing_old_is_not_read_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retention pass over a feed with nothing old enough read every row under the
    write lock (0.5-0.9 s at 1,000,000 rows, each minute in each worker): it now
    looks at the oldest batch only. Old rows still all go, batch after batch."""
    import time

    from conveyor.storage._sqlfile import load_queries  # the statement the pass runs

    path = tmp_path / "tasks.db"
    async with Conveyor(f"sqlite:///{path}"):
        pass  # the schema
    now = time.time()
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO conveyor_changes (task_id, version, status, event, origin, ts) "
            "VALUES (?, 1, 'queued', 'task.added', 'o', ?)",
            [(f"t{i}", now - 7200 if i < 1200 else now) for i in range(100_000)])
    statement = load_queries("sqlite")["prune_changes"]
    with sqlite3.connect(path) as conn:
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        conn.set_progress_handler(count, 100)
        deleted = []
        while True:
            n = conn.execute(statement, {"before": now - 3600, "batch": 500}).rowcount
            deleted.append(n)
            if n < 500:
                break
        conn.commit()
        assert deleted == [500, 500, 200]  # the old rows, in three batches
        # 100 VM steps a tick: reading 100,000 rows is thousands of ticks
        assert steps < 500, steps
        left = conn.execute("SELECT count(*), min(ts) FROM conveyor_changes").fetchone()
    assert left == (100_000 - 1200, now)
