"""The stream errors that only the outside world causes: a watched task deleted
behind the hub's back (an operator's SQL), and a live query that matches more
tasks than the hub keeps."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from conveyor.hub import _live

from ..conftest import PG_ENV, pg_schema
from ._ws_helpers import Raw
from .conftest import RunningHub, hub_db_url


def delete_behind_the_hubs_back(tmp_path: Path, task_id: str) -> None:
    """Delete a task (of any status) with the database's own SQL, as an operator
    would: the storage's delete trigger still records the change."""
    url = hub_db_url(tmp_path)  # the hub fixture's storage
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            with conn:
                cur = conn.execute("DELETE FROM conveyor_tasks WHERE id = ?", (task_id,))
                assert cur.rowcount == 1
        finally:
            conn.close()
        return
    import psycopg

    schema = pg_schema(url)
    with psycopg.connect(os.environ[PG_ENV], autocommit=True) as pg:
        done = pg.execute(f'DELETE FROM "{schema}".tasks WHERE id = %s', (task_id,))
        assert done.rowcount == 1


async def test_a_watched_task_deleted_outside_the_hub_ends_its_stream(hub: RunningHub,
                                                                 tmp_path: Path) -> None:
    task = await hub.app.add("nobody.runs.this", {"n": 1})
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as raw:
        watching = await raw.request({"type": "watch", "id": "w", "task_id": task.id,
                                      "logs": False})
        assert watching["type"] == "watching" and watching["task"]["status"] == "queued"
        delete_behind_the_hubs_back(tmp_path, task.id)
        err = await raw.expect("error", "w")
        assert err["code"] == "deleted" and err["task_id"] == task.id
        # the stream is gone, the connection is not
        gone = await raw.request({"type": "unwatch", "id": 2, "stream": "w"})
        assert gone["type"] == "error" and gone["code"] == "not_found"
        assert (await raw.request({"type": "ping", "id": 3}))["type"] == "pong"


async def test_the_task_endpoint_closes_normally_when_its_task_is_deleted(
        hub: RunningHub, tmp_path: Path) -> None:
    task = await hub.app.add("nobody.runs.this", {"n": 2})
    admin = hub.key("admin", admin=True)
    raw = await Raw.open(hub.url, admin, path=f"/ws/tasks/{task.id}")
    try:
        first = await raw.recv()
        assert first["type"] == "watching" and first["task_id"] == task.id
        delete_behind_the_hubs_back(tmp_path, task.id)
        err = await raw.expect("error")
        assert err["code"] == "deleted" and err["task_id"] == task.id
        assert await raw.closed() == 1000
    finally:
        await raw.close()


async def test_a_live_query_over_the_limit_is_refused_and_a_limit_makes_it_fit(
        hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    # the hub's cap is 100,000 tasks; lowered here so that the test stays small
    monkeypatch.setattr(_live, "MAX_LIVE_RESULT", 5)
    await hub.app.add_many([("report.build", {"n": i}) for i in range(6)])
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as raw:
        err = await raw.request({"type": "live", "id": "all", "filter": {"action": "report.build"}})
        assert err["type"] == "error" and err["code"] == "too_many"
        assert "more than 5 tasks" in err["message"]
        # nothing was left behind under that id: the same id works with a limit
        fits = await raw.request({"type": "live", "id": "all", "filter": {"action": "report.build"},
                                  "limit": 3})
        assert fits["type"] == "snapshot" and len(fits["tasks"]) == 3
        exact = await raw.request({"type": "live", "id": "five",
                                   "filter": {"action": "report.build", "payload.n": {"$lt": 5}}})
        assert exact["type"] == "snapshot" and len(exact["tasks"]) == 5


async def test_a_live_query_that_grows_past_the_limit_ends_with_too_many(
        hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap holds after the snapshot too: a query that grows past it ends with
    ``too_many`` (it went on growing, and the hub's memory with it: 99,990 tasks at
    first, 249,990 later). Another query on the same connection goes on."""
    monkeypatch.setattr(_live, "MAX_LIVE_RESULT", 5)
    await hub.app.add_many([("grow", {"n": i}) for i in range(4)])
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as raw:
        first = await raw.request({"type": "live", "id": "g", "filter": {"action": "grow"}})
        assert first["type"] == "snapshot" and len(first["tasks"]) == 4
        other = await raw.request({"type": "live", "id": "o", "filter": {"action": "other"}})
        assert other["type"] == "snapshot" and other["tasks"] == []
        fifth = await hub.app.add("grow", {"n": 4})
        assert (await raw.expect("added", "g"))["task"]["id"] == fifth.id
        await hub.app.add("grow", {"n": 5})
        err = await raw.expect("error", "g")
        assert err["code"] == "too_many" and "now matches more than 5 tasks" in err["message"]
        # the query is gone (its id free again); the other one still follows
        again = await raw.request({"type": "live", "id": "g", "filter": {"action": "grow"},
                                   "limit": 2})
        assert again["type"] == "snapshot" and len(again["tasks"]) == 2
        mine = await hub.app.add("other", None)
        assert (await raw.expect("added", "o"))["task"]["id"] == mine.id
        assert not [m for m in raw.seen if m.get("id") == "g" and m.get("type") == "added"
                    and m["task"]["payload"] == {"n": 5}]
