"""Retention: finished tasks and their logs go in small batches; the feed is trimmed."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from conveyor.model import LogLevel
from conveyor.query import parse_filter
from conveyor.storage import NewLog
from conveyor.testing.contract import make_spec


async def test_prune_in_batches(storage: Any, server: str) -> None:
    old = [r.task.id for r in await storage.add([make_spec() for _ in range(25)])]
    live = [r.task.id for r in await storage.add([make_spec() for _ in range(3)])]
    for task_id in old:
        await storage.abort(task_id, "done with it")
    await storage.append_logs([NewLog(i, LogLevel.INFO, "x", time.time()) for i in old + live])
    assert await storage.prune(time.time() + 1, batch=10) == 25
    assert await storage.count(parse_filter({})) == 3
    assert [await storage.read_logs(i) for i in old] == [[] for _ in old]
    assert [len(await storage.read_logs(i)) for i in live] == [1, 1, 1]


async def test_prune_trims_the_feed(storage: Any, server: str, monkeypatch: Any) -> None:
    from conveyor.storage import postgres

    await storage.add([make_spec() for _ in range(12)])
    monkeypatch.setattr(postgres, "FEED_RETENTION", -60.0)  # everything is old
    assert await storage.prune(None, batch=5) == 0
    with psycopg.connect(server) as conn:
        n = conn.execute(f'SELECT count(*) FROM "{storage.schema}".changes').fetchone()
    assert n == (0,)
