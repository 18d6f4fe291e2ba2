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
