"""A schema restored from a dump into another cluster (the change feed's xids come
from that cluster's counter).

Restoring into a cluster whose transaction counter is behind the source's is
simulated as the audit did: the restored feed rows get their xid moved ahead
of this cluster's counter (what pg_dump copies verbatim from a busier server).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from conveyor import Conveyor
from conveyor.storage.postgres import PostgresStorage
from conveyor.testing.contract import make_spec

from ..conftest import pg_schema
from .test_feed import Collector, _read_since

AHEAD = 5_000_000  # the audit's exp14: a dump of a cluster 5 M transactions ahead


def _admin(server: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server, autocommit=True)


def _move_xids(server: str, schema: str, to: str) -> None:
    """Give every row of the schema's change feed the xid ``to`` (an SQL expression
    of the row's ``xid``), as a restore from another cluster would have it."""
    with _admin(server) as conn:
        conn.execute(f'UPDATE "{schema}".changes SET xid = ({to})::text::xid8')


async def _reads(storage: Any, n: int) -> None:
    """Until ``storage``'s listener has read the feed ``n`` more times."""
    for _ in range(n):
        await _read_since(storage, time.time())


def _times(feed: Collector, task_ids: list[str]) -> dict[str, int]:
    return {t: sum(1 for c in feed.seen if c.task_id == t) for t in task_ids}


# -- finding 1: feed rows whose xid is ahead of this cluster's counter ------------------


async def test_restored_rows_of_a_cluster_ahead_are_not_delivered_at_every_read(
        schema_url: str, storage: Any, server: str) -> None:
    restored = [r.task.id for r in await storage.add([make_spec() for _ in range(3)])]
    _move_xids(server, pg_schema(schema_url), f"xid::text::bigint + {AHEAD}")
    reader = PostgresStorage(schema_url, poll_interval=0.05)
    await reader.open()
    feed = Collector(reader)
    try:
        await feed.ready()
        await _reads(reader, 6)
        # before the fix: each of them once per read (6 times or more)
        assert _times(feed, restored) == dict.fromkeys(restored, 0)
        # the feed still delivers what is written now, once
        [new] = await storage.add([make_spec()])
        await feed.until(lambda s: any(c.task_id == new.task.id for c in s))
        await _reads(reader, 3)
        assert _times(feed, [new.task.id]) == {new.task.id: 1}
        assert _times(feed, restored) == dict.fromkeys(restored, 0)
    finally:
        feed.stop()
        await reader.close()


async def test_a_restored_row_is_delivered_once_when_the_counter_passes_its_xid(
        schema_url: str, storage: Any, server: str) -> None:
    """At most once: a row still in the feed when this cluster's counter reaches its
    xid is delivered by the one read whose snapshot first sees that xid completed."""
    restored = [r.task.id for r in await storage.add([make_spec() for _ in range(2)])]
    ahead = "pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 3000"
    _move_xids(server, pg_schema(schema_url), ahead)
    with _admin(server) as conn:
        row = conn.execute(f'SELECT max(xid)::text::bigint FROM "{pg_schema(schema_url)}".changes'
                           ).fetchone()
    assert row is not None
    target = int(row[0])
    reader = PostgresStorage(schema_url, poll_interval=0.05)
    await reader.open()
    feed = Collector(reader)
    try:
        await feed.ready()
        await _reads(reader, 4)
        assert _times(feed, restored) == dict.fromkeys(restored, 0)
        with _admin(server) as conn:  # this cluster's transactions catch up with the dump's
            while int(conn.execute("SELECT pg_current_xact_id()::text::bigint"
                                   ).fetchone()[0]) <= target:  # type: ignore[index]
                pass
        await feed.until(lambda s: set(restored) <= {c.task_id for c in s})
        await _reads(reader, 6)
        assert _times(feed, restored) == dict.fromkeys(restored, 1)
    finally:
        feed.stop()
        await reader.close()


async def test_a_restored_row_whose_xid_runs_here_waits_for_its_end(
        schema_url: str, storage: Any, server: str) -> None:
    """A restored xid that happens to be a transaction still running in this cluster:
    every snapshot sees it in progress, so "xid IN (the previous snapshot's running
    ones)" matched it at every read while it ran."""
    [res] = await storage.add([make_spec()])
    with _admin(server) as running:
        running.execute("BEGIN")
        row = running.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert row is not None
        _move_xids(server, pg_schema(schema_url), f"{row[0]}::bigint")
        reader = PostgresStorage(schema_url, poll_interval=0.05)
        await reader.open()
        feed = Collector(reader)
        try:
            await feed.ready()
            await _reads(reader, 6)
            assert _times(feed, [res.task.id]) == {res.task.id: 0}
            running.execute("ROLLBACK")
            await _reads(reader, 6)
            assert _times(feed, [res.task.id]) == {res.task.id: 1}
        finally:
            feed.stop()
            await reader.close()


async def test_an_app_on_a_restore_from_a_cluster_ahead_gets_each_event_once(
        schema_url: str, storage: Any, server: str) -> None:
    """The audit's listener: an app that only reads events() on the restored database
    got every restored task's task.added once a second; now it gets only new ones."""
    restored = [r.task.id for r in await storage.add([make_spec() for _ in range(3)])]
    _move_xids(server, pg_schema(schema_url), f"xid::text::bigint + {AHEAD}")
    app = Conveyor(schema_url + "&poll_interval=0.05")
    seen: list[tuple[str, str]] = []

    async def read() -> None:
        async with app.events("task.*") as sub:
            async for event in sub:
                seen.append((event.type, event.task_id or ""))

    reading = asyncio.create_task(read())
    try:
        await asyncio.sleep(0.3)  # the app opens and subscribes
        [new] = await storage.add([make_spec()])
        await asyncio.sleep(0.7)  # about 10 polls more
        assert [t for t in seen if t[1] in restored] == []
        assert seen.count(("task.added", new.task.id)) == 1
    finally:
        reading.cancel()
        await app.close()
