"""A SQLite database that cannot grow (its disk full: here its ``max_page_count``
reached, SQLite's own SQLITE_FULL): writes fail with :class:`StorageError`
(the hub answers 503 ``storage_unavailable``), nothing half-written, and work
goes on once there is room; a worker's stop does not wait for the room for
ever."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor import Context, Conveyor, Status, StorageError, _batched
from conveyor.hub import HubConfig

from ..hub.conftest import running_hub


async def _pages(app: Conveyor, limit: int | None) -> int:
    """Cap the database at its present size (``limit`` None), or at ``limit``
    pages; the cap in force comes back. Set on the storage's own connection (the
    pragma is per connection), the one that writes."""
    def cap(conn: sqlite3.Connection) -> int:
        pages = limit if limit is not None else conn.execute("PRAGMA page_count").fetchone()[0]
        return int(conn.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()[0])

    db = app.storage._db  # type: ignore[attr-defined]
    return int(await asyncio.wrap_future(db.submit(cap)))


async def _fill(app: Conveyor) -> StorageError:
    """Add tasks until the database is full; the error that said so."""
    for _ in range(10_000):
        try:
            await app.add_many([("a", {"pad": "x" * 2000})] * 20)
        except StorageError as exc:
            return exc
    raise AssertionError("the database never filled up")


async def test_a_full_database_is_a_storage_error_and_nothing_half_written(
        tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'full.db'}")
    try:
        await app.open()
        before = await _pages(app, None)
        error = await _fill(app)
        assert "database or disk is full" in str(error)
        count = await app.count()
        assert count % 20 == 0  # whole batches only
        with pytest.raises(StorageError, match="database or disk is full"):
            await app.add("a", {"pad": "y" * 50_000})
        assert await app.count() == count
        await _pages(app, before * 100)  # room again
        task = await app.add("a", {"pad": "z"})
        assert (await app.get(task.id)).status is Status.QUEUED
        assert await app.count() == count + 1
    finally:
        await app.close()


async def test_the_hub_answers_503_while_the_database_is_full(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'hub.db'}")
    async with running_hub(app, HubConfig(port=0, insecure=True), None) as hub, \
            httpx.AsyncClient(base_url=hub.url) as http:
        assert (await http.post("/api/v1/tasks", json={"action": "a"})).status_code == 201
        before = await _pages(app, None)
        await _fill(app)
        r = await http.post("/api/v1/tasks", json={"action": "a", "payload": "x" * 50_000})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "storage_unavailable"
        assert "database or disk is full" in r.json()["error"]["message"]
        await _pages(app, before * 100)
        assert (await http.post("/api/v1/tasks", json={"action": "a"})).status_code == 201


async def test_a_stop_gives_up_storing_outcomes_the_full_database_refuses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's end cannot be written: the stop still ends (after
    ``CLOSE_TIMEOUT``: 15 s, 0.3 s here) instead of retrying until there is room;
    the task, its outcome unstored, stays ``running`` until its lease ends."""
    monkeypatch.setattr(_batched, "CLOSE_TIMEOUT", 0.3)
    app = Conveyor(f"sqlite:///{tmp_path / 'stop.db'}", lease=30.0)
    started, go = asyncio.Event(), asyncio.Event()

    @app.handler("job")
    async def job(ctx: Context[Any]) -> str:
        started.set()
        await go.wait()
        return "x" * 100_000  # a result the full database has no room for

    try:
        await app.start()
        task = await app.add("job")
        await asyncio.wait_for(started.wait(), 10)
        await _pages(app, None)
        go.set()
        await asyncio.wait_for(app.stop(), 10)
        await _pages(app, 1_000_000)
        stored = await app.get(task.id)
        assert stored.status is Status.RUNNING and stored.result is None
    finally:
        await app.close()
