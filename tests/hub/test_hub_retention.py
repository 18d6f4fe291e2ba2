"""A hub serving remote services alone (no worker in its process) runs the
retention pass a worker's keeper runs: the change feed's old entries go, and with
an app ``retention`` its finished tasks too (nothing was ever pruned: the feed
grew for ever, 144 of 144 entries over an hour old stayed)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.hub import HubConfig
from conveyor.storage import postgres as pg_storage
from conveyor.storage import sqlite as sqlite_storage

from ._ws_helpers import eventually
from .conftest import hub_db_url, running_hub


def _feed_events(app: Conveyor) -> list[str]:
    """The events the change feed holds, oldest first."""
    storage: Any = app.storage
    if hasattr(storage, "schema"):
        import psycopg

        with psycopg.connect(storage._conninfo) as conn:
            rows = conn.execute(f'SELECT event FROM "{storage.schema}".changes '
                                "ORDER BY ts").fetchall()
    else:
        with sqlite3.connect(storage.path) as conn:
            rows = conn.execute("SELECT event FROM conveyor_changes ORDER BY seq").fetchall()
    return [r[0] for r in rows]


async def test_a_hub_without_a_worker_prunes(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    app = Conveyor(hub_db_url(tmp_path), retention=1)
    async with running_hub(app, HubConfig(port=0, insecure=True), None) as hub:
        assert hub.app.worker is None  # nothing else prunes here
        deleted = hub.app.events("task.deleted")
        task = await hub.app.add("remote:x")
        await hub.app.abort(task.id, "finished")
        assert _feed_events(hub.app)[:2] == ["added", "aborted"]
        # a pass within 4 s of the start, then every second: the task, a second old
        event = await deleted.get(15)
        assert event is not None and event.task_id == task.id
        assert await hub.app.count({}) == 0
        deleted.close()
        # every feed entry is old from now on: a later pass trims them (there is no
        # event for that: the feed is looked at until it is)
        monkeypatch.setattr(sqlite_storage, "FEED_RETENTION", -60.0)
        monkeypatch.setattr(pg_storage, "FEED_RETENTION", -60.0)
        await eventually(lambda: "added" not in _feed_events(hub.app), timeout=15)
