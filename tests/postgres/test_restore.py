"""A schema restored from a dump: into another cluster (the change feed's xids come
from that cluster's counter) and under another name (ALTER SCHEMA ... RENAME).

Restoring into a cluster whose transaction counter is behind the source's is
simulated as the audit did: the restored feed rows get their xid moved ahead
of this cluster's counter (what pg_dump copies verbatim from a busier server).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from conveyor import Conveyor
from conveyor.errors import SchemaError
from conveyor.storage.postgres import PostgresStorage, migrate
from conveyor.testing.contract import make_spec

from ..conftest import drop_pg_schema, pg_schema, pg_url
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


@contextlib.asynccontextmanager
async def _reading(schema_url: str) -> AsyncIterator[tuple[PostgresStorage, Collector]]:
    """A second storage on the schema (polling every 50 ms) and a collector of its
    feed, ready."""
    reader = PostgresStorage(schema_url, poll_interval=0.05)
    await reader.open()
    feed = Collector(reader)
    try:
        await feed.ready()
        yield reader, feed
    finally:
        feed.stop()
        await reader.close()


def _times(feed: Collector, task_ids: list[str]) -> dict[str, int]:
    return {t: sum(1 for c in feed.seen if c.task_id == t) for t in task_ids}


# -- finding 1: feed rows whose xid is ahead of this cluster's counter ------------------


async def test_restored_rows_of_a_cluster_ahead_are_not_delivered_at_every_read(
        schema_url: str, storage: Any, server: str) -> None:
    restored = [r.task.id for r in await storage.add([make_spec() for _ in range(3)])]
    _move_xids(server, pg_schema(schema_url), f"xid::text::bigint + {AHEAD}")
    async with _reading(schema_url) as (reader, feed):
        await _reads(reader, 6)
        # before the fix: each of them once per read (6 times or more)
        assert _times(feed, restored) == dict.fromkeys(restored, 0)
        # the feed still delivers what is written now, once
        [new] = await storage.add([make_spec()])
        await feed.until(lambda s: any(c.task_id == new.task.id for c in s))
        await _reads(reader, 3)
        assert _times(feed, [new.task.id]) == {new.task.id: 1}
        assert _times(feed, restored) == dict.fromkeys(restored, 0)


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
    async with _reading(schema_url) as (reader, feed):
        await _reads(reader, 4)
        assert _times(feed, restored) == dict.fromkeys(restored, 0)
        with _admin(server) as conn:  # this cluster's transactions catch up with the dump's
            while int(conn.execute("SELECT pg_current_xact_id()::text::bigint"
                                   ).fetchone()[0]) <= target:  # type: ignore[index]
                pass
        await feed.until(lambda s: set(restored) <= {c.task_id for c in s})
        await _reads(reader, 6)
        assert _times(feed, restored) == dict.fromkeys(restored, 1)


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
        async with _reading(schema_url) as (reader, feed):
            await _reads(reader, 6)
            assert _times(feed, [res.task.id]) == {res.task.id: 0}
            running.execute("ROLLBACK")
            await _reads(reader, 6)
            assert _times(feed, [res.task.id]) == {res.task.id: 1}


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


# -- finding 2: a schema renamed (a dump restored under another name) --------------------


@pytest.fixture
def renamed(bare_url: str) -> Iterator[tuple[str, str]]:
    """(the URL of a migrated schema, the URL of the name it will be renamed to)."""
    new_url = pg_url()
    yield bare_url, new_url
    drop_pg_schema(new_url)


def _rename(server: str, old_url: str, new_url: str) -> None:
    with _admin(server) as conn:
        conn.execute(f'ALTER SCHEMA "{pg_schema(old_url)}" RENAME TO "{pg_schema(new_url)}"')


def _bindings(server: str, schema: str) -> tuple[list[str], list[bytes]]:
    """The schema names in its trigger functions' bodies, and its changes_notify
    triggers' arguments."""
    with _admin(server) as conn:
        bodies = conn.execute(
            "SELECT prosrc FROM pg_proc WHERE pronamespace = to_regnamespace(%s)",
            (f'"{schema}"',)).fetchall()
        args = conn.execute(
            "SELECT tgargs FROM pg_trigger WHERE tgrelid = to_regclass(%s) "
            "AND tgname = 'changes_notify'", (f'"{schema}".changes',)).fetchall()
    names = sorted({n for (b,) in bodies for n in re.findall(r'"([^"]+)"\.', b)})
    return names, [bytes(a) for (a,) in args]


async def test_a_renamed_schema_is_refused_until_migrate_binds_it(
        renamed: tuple[str, str], server: str) -> None:
    old_url, new_url = renamed
    old, new = pg_schema(old_url), pg_schema(new_url)
    await migrate(old_url)
    before = PostgresStorage(old_url)
    await before.open()
    [kept] = await before.add([make_spec()])
    await before.close()
    _rename(server, old_url, new_url)

    storage = PostgresStorage(new_url)
    with pytest.raises(SchemaError) as err:  # before the fix: opened, and every add failed
        await storage.open()
    assert "conveyor migrate" in str(err.value) and f'"{old}"' in str(err.value)

    await migrate(new_url)  # binds it
    await migrate(new_url)  # finds it bound
    assert _bindings(server, new) == ([new], [f"conveyor:{new}".encode() + b"\0"])
    a, b = PostgresStorage(new_url), PostgresStorage(new_url)
    await a.open()
    await b.open()
    feed = Collector(b, include_own=False)
    try:
        await feed.ready()
        assert (await a.get(kept.task.id)) is not None
        [res] = await a.add([make_spec()])
        await feed.until(lambda s: any(c.task_id == res.task.id for c in s), timeout=2)
        [claimed] = await a.claim("w", ["test:a"], 1, 30)
        await feed.until(lambda s: any(c.task_id == claimed.id and c.event == "started"
                                       for c in s), timeout=2)
    finally:
        feed.stop()
        await a.close()
        await b.close()


async def test_a_schema_set_aside_in_the_same_database_no_longer_writes_into_the_fresh_one(
        renamed: tuple[str, str], server: str) -> None:
    """The audit's exp4: conveyor -> conveyor_old, then a fresh conveyor migrated;
    conveyor_old's changes went into the fresh schema's feed and on its channel."""
    fresh_url, aside_url = renamed
    fresh, aside = pg_schema(fresh_url), pg_schema(aside_url)
    await migrate(fresh_url)
    _rename(server, fresh_url, aside_url)
    await migrate(fresh_url)  # a fresh schema of the first name

    with pytest.raises(SchemaError, match="conveyor migrate"):
        await PostgresStorage(aside_url).open()
    await migrate(aside_url)

    on_fresh, on_aside = PostgresStorage(fresh_url), PostgresStorage(aside_url)
    writer = PostgresStorage(aside_url)
    for s in (on_fresh, on_aside, writer):
        await s.open()
    fresh_feed, aside_feed = Collector(on_fresh), Collector(on_aside)
    try:
        await fresh_feed.ready()
        await aside_feed.ready()
        [res] = await writer.add([make_spec()])
        await aside_feed.until(lambda s: any(c.task_id == res.task.id for c in s), timeout=2)
        await _reads(on_fresh, 2)
        assert fresh_feed.seen == []
        with _admin(server) as conn:
            counts = [conn.execute(f'SELECT count(*) FROM "{s}".changes').fetchone()
                      for s in (fresh, aside)]
        assert counts == [(0,), (1,)]
    finally:
        fresh_feed.stop()
        aside_feed.stop()
        for s in (on_fresh, on_aside, writer):
            await s.close()


async def test_open_with_migrate_true_binds_a_renamed_schema_from_many_processes_at_once(
        renamed: tuple[str, str], server: str) -> None:
    old_url, new_url = renamed
    await migrate(old_url)
    _rename(server, old_url, new_url)
    storages = [PostgresStorage(new_url, migrate=True) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in storages))
        [res] = await storages[0].add([make_spec()])
        assert (await storages[1].get(res.task.id)) is not None
    finally:
        for s in storages:
            await s.close()
    new = pg_schema(new_url)
    assert _bindings(server, new) == ([new], [f"conveyor:{new}".encode() + b"\0"])


async def test_bound_definitions_are_the_migrations_word_for_word(
        renamed: tuple[str, str], server: str) -> None:
    """bound.sql holds what the migrations leave: a schema made under one name and
    bound by migrate under another has the definitions a fresh migrate makes."""
    old_url, new_url = renamed
    twin_url = pg_url()
    try:
        await migrate(old_url)
        _rename(server, old_url, new_url)
        await migrate(new_url)
        await migrate(twin_url)
        new, twin = pg_schema(new_url), pg_schema(twin_url)

        def definitions(schema: str) -> list[tuple[Any, ...]]:
            with _admin(server) as conn:
                funcs = conn.execute(
                    "SELECT proname::text, replace(prosrc, %s, '<s>') FROM pg_proc "
                    "WHERE pronamespace = to_regnamespace(%s) ORDER BY proname",
                    (f'"{schema}"', f'"{schema}"')).fetchall()
                triggers = conn.execute(
                    "SELECT c.relname::text, t.tgname::text, "
                    "replace(pg_get_triggerdef(t.oid), %s, '<s>') "
                    "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                    "WHERE c.relnamespace = to_regnamespace(%s) AND NOT t.tgisinternal "
                    "ORDER BY 1, 2", (schema, f'"{schema}"')).fetchall()
            return funcs + triggers

        assert definitions(new) == definitions(twin)
    finally:
        drop_pg_schema(twin_url)

