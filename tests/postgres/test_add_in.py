"""Enqueue inside the caller's transaction: the task exists iff the transaction commits."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest

from conveyor.model import Status
from conveyor.query import parse_filter
from conveyor.storage.postgres import PostgresStorage, parse_postgres_url
from conveyor.testing.contract import make_spec

from .conftest import listening


async def _user_conn(schema_url: str) -> psycopg.AsyncConnection[Any]:
    conninfo, _, _ = parse_postgres_url(schema_url)
    return await psycopg.AsyncConnection.connect(conninfo)


async def test_rollback_leaves_no_task(storage: Any, schema_url: str) -> None:
    spec = make_spec(payload={"order": 1})
    async with await _user_conn(schema_url) as conn, conn.transaction(force_rollback=True):
        [res] = await storage.add_in(conn, [spec])
        assert res.created
    assert await storage.get(spec.id) is None
    assert await storage.claim("w", ["test:a"], 10, 30) == []


async def test_commit_makes_the_task(storage: Any, schema_url: str) -> None:
    async with await _user_conn(schema_url) as conn:
        await conn.execute("CREATE TEMP TABLE orders (id int)")
        async with conn.transaction():
            await conn.execute("INSERT INTO orders VALUES (1)")
            [res] = await storage.add_in(conn, [("test:a", {"order": 1}, {"priority": 2})])
    task = await storage.get(res.task.id)
    assert task is not None and task.status is Status.QUEUED
    assert task.payload == {"order": 1} and task.priority == 2


@pytest.mark.parametrize("item", [("test:a",), ("test:a", 1, 2, 3), ("test:a", 1, "priority"),
                                  ["test:a", 1], "test:a"])
async def test_items_other_than_the_documented_tuples_are_refused(
        storage: Any, schema_url: str, item: Any) -> None:
    from conveyor import ValidationError

    async with await _user_conn(schema_url) as conn, conn.transaction():
        with pytest.raises(ValidationError, match=r"\(action, payload\)"):
            await storage.add_in(conn, [("test:a", 0), item])
    assert await storage.count(parse_filter({})) == 0


async def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time limit"
        await asyncio.sleep(0.01)


async def test_worker_sees_it_only_after_commit(storage: Any, other: Any,
                                                schema_url: str) -> None:
    seen: list[str] = []
    stream = other.change_batches(include_own=True)

    async def watch() -> None:
        async for batch in stream:
            seen.extend(c.task_id for c in batch if c.event == "added")

    watcher = asyncio.create_task(watch())
    await listening(other)
    try:
        async with await _user_conn(schema_url) as conn:
            async with conn.transaction():
                [res] = await storage.add_in(conn, [make_spec()])
                # a task added and committed after it reaches the other process...
                [later] = await storage.add([make_spec("test:later")])
                await _until(lambda: later.task.id in seen)
                # ...while the one of the open transaction is neither seen nor claimable
                assert res.task.id not in seen
                assert await other.claim("w", ["test:a"], 10, 30) == []
            await _until(lambda: res.task.id in seen)  # the commit woke the other process
            claimed = await other.claim("w", ["test:a"], 10, 30)
            assert [t.id for t in claimed] == [res.task.id]
    finally:
        watcher.cancel()


async def test_unique_keys_inside_the_transaction(storage: Any, schema_url: str) -> None:
    [live] = await storage.add([make_spec(unique_key="k")])
    async with await _user_conn(schema_url) as conn, conn.transaction():
        results = await storage.add_in(conn, [make_spec(unique_key="k"),
                                              make_spec(unique_key="j")])
    assert [r.created for r in results] == [False, True]
    assert results[0].task.id == live.task.id


async def test_app_add_in_validates_and_commits(storage: Any, schema_url: str) -> None:
    from pydantic import BaseModel

    from conveyor import Conveyor, ValidationError

    class Order(BaseModel):
        number: int

    app = Conveyor(storage)
    app.register("orders:ship", _ship, payload_model=Order)
    async with await _user_conn(schema_url) as conn:
        async with conn.transaction():
            task = await app.add_in(conn, "orders:ship", {"number": 7}, priority=1)
            with pytest.raises(ValidationError, match="number"):
                await app.add_in(conn, "orders:ship", {"number": "seven"})
        async with conn.transaction(force_rollback=True):
            [gone] = await app.add_many_in(conn, [("orders:ship", {"number": 8})])
    assert (await app.get(task.id)).payload == {"number": 7}
    assert not await app.exists(gone.id)


async def test_app_add_in_needs_a_backend_that_can(tmp_path: Any) -> None:
    from conveyor import ConfigurationError, Conveyor

    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        await app.add_in(object(), "x")


async def _ship(ctx: Any) -> None:
    return None


# -- a sync psycopg Connection (Django, Flask, scripts, SyncConveyor) ------------------


def _sync_conn(schema_url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    conninfo, _, _ = parse_postgres_url(schema_url)
    return psycopg.Connection.connect(conninfo, **kwargs)


async def test_a_sync_connection_commits_and_rolls_back(storage: Any, schema_url: str) -> None:
    with _sync_conn(schema_url) as conn:
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE orders (id int)")
            conn.execute("INSERT INTO orders VALUES (1)")
            [kept] = await storage.add_in(conn, [("test:a", {"order": 1})])
        with conn.transaction(force_rollback=True):
            [gone] = await storage.add_in(conn, [("test:a", {"order": 2})])
            # visible to the caller's own transaction before the end
            row = conn.execute(f'SELECT status FROM "{storage.schema}".tasks WHERE id = %s',
                               (gone.task.id,)).fetchone()
            assert row == ("queued",)
    got = await storage.get(kept.task.id)
    assert got is not None and got.payload == {"order": 1}
    assert await storage.get(gone.task.id) is None


async def test_a_sync_connection_with_unique_keys_and_many_tasks(storage: Any,
                                                                 schema_url: str) -> None:
    [live] = await storage.add([make_spec(unique_key="k")])
    with _sync_conn(schema_url) as conn, conn.transaction():
        results = await storage.add_in(conn, [make_spec(unique_key="k"), make_spec(unique_key="j")])
        many = await storage.add_in(conn, [("test:a", {"i": i}) for i in range(600)])
    assert [r.created for r in results] == [False, True]
    assert results[0].task.id == live.task.id
    assert len(many) == 600 and all(r.created for r in many)
    assert await storage.count(parse_filter({"action": "test:a"})) == 602


async def test_a_sync_connection_waiting_on_a_lock_does_not_block_the_loop(
        storage: Any, schema_url: str) -> None:
    """The other transaction holds key "k" uncommitted: the sync add waits on it in
    a worker thread while this loop goes on (it polls for the wait below)."""
    async with await _user_conn(schema_url) as holder:
        await holder.execute("BEGIN")
        [first] = await storage.add_in(holder, [make_spec(unique_key="k")])
        with _sync_conn(schema_url) as conn:
            pid = conn.info.backend_pid
            adding = asyncio.ensure_future(storage.add_in(conn, [make_spec(unique_key="k")]))
            async with await _user_conn(schema_url) as probe:
                await probe.set_autocommit(True)
                waiting = False
                for _ in range(500):
                    cur = await probe.execute(
                        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
                    waiting = (await cur.fetchone()) == ("Lock",)
                    if waiting:
                        break
                    await asyncio.sleep(0.01)
            assert waiting and not adding.done()
            await holder.execute("COMMIT")
            [second] = await asyncio.wait_for(adding, 10)
            conn.commit()
    assert second.created is False and second.task.id == first.task.id


def test_sync_conveyor_add_in_on_a_sync_connection(schema_url: str) -> None:
    from conveyor import SyncConveyor

    with SyncConveyor(schema_url) as app, _sync_conn(schema_url) as conn:
        with conn.transaction():
            task = app.add_in(conn, "mail:send", {"to": "ann"}, priority=3)
            [other] = app.add_many_in(conn, [("mail:send", {"to": "bob"})])
        with conn.transaction(force_rollback=True):
            gone = app.add_in(conn, "mail:send", {"to": "eve"})
        assert app.get(task.id).priority == 3
        assert app.exists(other.id)
        assert not app.exists(gone.id)


async def test_add_in_refuses_what_is_not_a_psycopg_connection(storage: Any,
                                                               schema_url: str) -> None:
    import sqlite3

    from conveyor import ConfigurationError

    lite = sqlite3.connect(":memory:")
    try:
        with pytest.raises(ConfigurationError, match=r"psycopg Connection or AsyncConnection, "
                                                     r"not sqlite3\.Connection"):
            await storage.add_in(lite, [make_spec()])
    finally:
        lite.close()
    with (_sync_conn(schema_url, autocommit=True) as conn,
          pytest.raises(ConfigurationError, match=r"use `with conn.transaction\(\):`")):
        await storage.add_in(conn, [make_spec()])
    assert await storage.count(parse_filter({})) == 0


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_failed_transaction_is_refused_in_plain_words(storage: Any, schema_url: str,
                                                              kind: str) -> None:
    """An earlier statement of the caller failed: the add says so (psycopg's own
    error said only that commands are ignored), and after the caller's rollback the
    same connection adds."""
    from conveyor import ConfigurationError

    async def failed_then_add(conn: Any, run: Any) -> None:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await run(conn.execute("SELECT 1/0"))
        with pytest.raises(ConfigurationError, match=r"has not failed.*roll back"):
            await storage.add_in(conn, [make_spec()])
        await run(conn.rollback())
        [res] = await storage.add_in(conn, [make_spec()])
        await run(conn.commit())
        assert (await storage.get(res.task.id)) is not None

    async def awaited(value: Any) -> Any:
        return await value

    async def done(value: Any) -> Any:
        return value

    if kind == "async":
        async with await _user_conn(schema_url) as aconn:
            await failed_then_add(aconn, awaited)
    else:
        with _sync_conn(schema_url) as conn:
            await failed_then_add(conn, done)
    assert await storage.count(parse_filter({})) == 1


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_first_statement_on_a_connection_without_autocommit_rolls_back(
        storage: Any, schema_url: str, kind: str) -> None:
    """No autocommit and nothing run yet (Django's atomic() begins this way): the add
    opens the caller's transaction, so its rollback removes every task, also those of
    the paths that use savepoints (unique keys, more than 250 tasks)."""
    items = [make_spec(unique_key="k"), *(("test:a", {"i": i}) for i in range(600))]
    if kind == "async":
        async with await _user_conn(schema_url) as aconn:
            assert not aconn.autocommit
            results = await storage.add_in(aconn, items[:1])
            results += await storage.add_in(aconn, items[1:])
            await aconn.rollback()
    else:
        with _sync_conn(schema_url) as conn:
            results = await storage.add_in(conn, items[:1])
            results += await storage.add_in(conn, items[1:])
            conn.rollback()
    assert len(results) == 601
    assert await storage.count(parse_filter({})) == 0


# -- connections set up by frameworks; what the adding process announces ---------------


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_connection_that_loads_jsonb_as_text(storage: Any, schema_url: str,
                                                      sync: bool) -> None:
    """Django's psycopg backend loads jsonb as text on its connections; the holder of
    a unique key read on such a connection is still decoded as conveyor does, and
    the caller's connection keeps its own loaders."""
    from psycopg.types.string import TextLoader

    [held] = await storage.add([make_spec(payload={"x": [1]}, unique_key="k")])
    spec = make_spec(payload={"x": [2]}, unique_key="k")
    if sync:
        with _sync_conn(schema_url) as conn:
            conn.adapters.register_loader("jsonb", TextLoader)
            with conn.transaction():
                [res] = await storage.add_in(conn, [spec])
            own = conn.execute("SELECT '{\"a\": 1}'::jsonb").fetchone()
    else:
        async with await _user_conn(schema_url) as aconn:
            aconn.adapters.register_loader("jsonb", TextLoader)
            async with aconn.transaction():
                [res] = await storage.add_in(aconn, [spec])
            cur = await aconn.execute("SELECT '{\"a\": 1}'::jsonb")
            own = await cur.fetchone()
    assert not res.created and res.task.id == held.task.id
    assert res.task.payload == {"x": [1]} and res.task.status is Status.QUEUED
    assert own == ('{"a": 1}',)
    assert await storage.get(spec.id) is None


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("rows", ["dict_row", "namedtuple_row"])
async def test_a_connection_with_its_own_row_factory(storage: Any, schema_url: str,
                                                     sync: bool, rows: str) -> None:
    """Connections made with ``row_factory=dict_row`` (common with FastAPI and
    psycopg_pool): the add reads its rows on cursors of its own (a dict_row
    connection failed with ``KeyError: 0``), on every path: a plain task, a unique
    key held, more than 250 tasks."""
    import psycopg.rows

    factory = getattr(psycopg.rows, rows)
    [held] = await storage.add([make_spec(unique_key="k")])
    items = [make_spec(unique_key="k"), make_spec(),
             *(("test:a", {"i": i}) for i in range(300))]
    conninfo, _, _ = parse_postgres_url(schema_url)
    if sync:
        with psycopg.Connection.connect(conninfo, row_factory=factory) as conn:
            with conn.transaction():
                results = await storage.add_in(conn, items)
            own = conn.execute("SELECT 1 AS one").fetchone()
    else:
        async with await psycopg.AsyncConnection.connect(conninfo,
                                                         row_factory=factory) as aconn:
            async with aconn.transaction():
                results = await storage.add_in(aconn, items)
            cur = await aconn.execute("SELECT 1 AS one")
            own = await cur.fetchone()
    assert [r.created for r in results[:2]] == [False, True]
    assert results[0].task.id == held.task.id
    assert all(r.created for r in results[2:])
    assert await storage.count(parse_filter({})) == 302
    assert (own["one"] if rows == "dict_row" else own.one) == 1  # the caller's rows still


async def test_the_adding_app_announces_add_in_tasks_at_the_commit(schema_url: str) -> None:
    """``task.added`` of a task added in the caller's transaction comes when that
    transaction commits (through the change feed, as from another process), and
    never for one rolled back; tallies count it."""
    from conveyor import Conveyor

    app = Conveyor(schema_url)
    added: list[str] = []
    tallied: list[str] = []
    app.on("task.added", lambda event: added.append(event.task_id or ""))
    app.bus.add_tally(lambda kind, action, *rest: tallied.append(f"{kind} {action}"))
    await app.open()
    try:
        async with await _user_conn(schema_url) as conn:
            async with conn.transaction(force_rollback=True):
                rolled = await app.add_in(conn, "test:a", {"n": 1})
            async with conn.transaction():
                task = await app.add_in(conn, "test:a", {"n": 2})
                [many] = await app.add_many_in(conn, [("test:a", {"n": 3})])
        direct = await app.add("test:a", {"n": 4})
        deadline = asyncio.get_running_loop().time() + 5
        while not {task.id, many.id, direct.id} <= set(added):
            assert asyncio.get_running_loop().time() < deadline, added
            await asyncio.sleep(0.01)
        assert rolled.id not in added
        assert sorted(added) == sorted({task.id, many.id, direct.id})  # each once
        assert tallied.count("added test:a") == 3
    finally:
        await app.close()


async def test_a_connection_to_another_database_is_refused(
        storage: Any, schema_url: str, server: str) -> None:
    """The caller's connection must reach this storage's database: on another one
    (with a conveyor schema of its own) the task was committed where this app's
    workers never look."""
    from conveyor.errors import ConfigurationError

    other_db = f"conveyor_other_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(server, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{other_db}"')
    try:
        parts = psycopg.conninfo.conninfo_to_dict(server)
        other = psycopg.conninfo.make_conninfo(**{**parts, "dbname": other_db})
        twin = PostgresStorage(f"{server.rsplit('/', 1)[0]}/{other_db}"
                               f"?schema={storage.schema}&migrate=true")
        await twin.open()  # the same schema there: nothing else would fail
        await twin.close()
        async with await psycopg.AsyncConnection.connect(other) as conn:
            with pytest.raises(ConfigurationError, match=f"not '{other_db}'"):
                async with conn.transaction():
                    await storage.add_in(conn, [make_spec()])
        assert await storage.count(parse_filter({})) == 0
    finally:
        async with await psycopg.AsyncConnection.connect(server, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE "{other_db}" WITH (FORCE)')
