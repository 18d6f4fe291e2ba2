"""SQLite reads run on reader threads of their own, beside the writes and beside
each other: a long read (a filtered count or search over a large store, a
dashboard's query) holds up neither a worker's claims and finishes, nor adds,
nor a second read."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor, Status, StorageError
from conveyor.storage import _sqlthread
from conveyor.storage import sqlite as sqlite_storage


async def test_a_long_read_holds_up_neither_writes_nor_another_read(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}", concurrency=2)
    release = threading.Event()
    inside = threading.Event()

    def long_read(conn: sqlite3.Connection) -> int:
        count = int(conn.execute("SELECT count(*) FROM conveyor_tasks").fetchone()[0])
        inside.set()
        release.wait(30)  # a read that takes as long as the test needs
        return count

    @app.handler("work")
    async def work(ctx: Context[Any]) -> int:
        return int(ctx.payload) * 2

    async with app:
        first = await app.add("work", 1)
        await app.wait_task(first.id, timeout=10)
        storage = app.storage
        reading = asyncio.ensure_future(storage._run(long_read))  # type: ignore[attr-defined]
        try:
            assert await asyncio.to_thread(inside.wait, 10)
            # meanwhile: adds, a worker's claim, run and finish, and other reads
            added = await asyncio.wait_for(app.add_many([("work", i) for i in range(20)]), 10)
            done = [await app.wait_task(t.id, timeout=10) for t in added]
            assert [t.result for t in done] == [i * 2 for i in range(20)]
            assert await asyncio.wait_for(app.count({"status": "succeeded"}), 10) == 21
            assert not reading.done()
        finally:
            release.set()
        assert await reading == 1  # it read the store as it was when it began
        # the long read held one reader thread, the others went to a second
        assert storage._readers.threads == sqlite_storage.READERS == 2  # type: ignore[attr-defined]
    assert storage._readers is None  # type: ignore[attr-defined]  # closed with the storage
    reopened = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}")
    async with reopened:
        assert (await reopened.stats())["work"]["succeeded"] == 21
        assert (await reopened.get(first.id)).status is Status.SUCCEEDED


def test_a_reader_thread_that_cannot_start_is_a_storage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's thread limit reached: the read is refused with StorageError
    and nothing is left behind (the pool counted a thread that never ran, and its
    close then failed, leaving the writer open)."""
    path = tmp_path / "tasks.db"
    sqlite3.connect(path).close()
    pool = _sqlthread.ReaderPool(lambda: sqlite3.connect(path, check_same_thread=False),
                                 1.0, 2)
    start = threading.Thread.start

    def refused(thread: threading.Thread) -> None:
        if thread.name == "conveyor-sqlite-read":
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refused)
    with pytest.raises(StorageError, match="cannot start a reader thread"):
        pool.submit(lambda conn: 1)
    assert pool.threads == 0
    monkeypatch.setattr(threading.Thread, "start", start)
    assert pool.submit(lambda conn: conn.execute("SELECT 2").fetchone()[0]).result(10) == 2
    pool.close()
    assert pool.threads == 1
    with pytest.raises(StorageError, match="closed"):
        pool.submit(lambda conn: 3)
