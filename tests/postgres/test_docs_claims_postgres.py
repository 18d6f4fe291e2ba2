"""docs/postgres.md, claim by claim: the claims no other test checks.

Defaults and keyword options, schema names, libpq values, a refused connection's
message, the connections a storage opens and what opening writes, the tables,
indexes and autovacuum settings, the migration records, a ``tasks`` table
``migrate`` did not make, no session state left by claims (advisory locks,
settings), ``add_in`` on an autocommit connection inside ``transaction()``,
retention in transactions of at most ``batch`` tasks, the listener's connection
and health, jsonb's limits, and the privileges the roles need (on a server of the
test's own, since the shared one gives no right to create roles).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from conveyor import Conveyor
from conveyor.errors import ConfigurationError, SchemaError, StorageError
from conveyor.model import Condition, Status, Transition
from conveyor.query import parse_filter
from conveyor.storage import ClaimLimits, Completion
from conveyor.storage.postgres import SCHEMA_VERSION, PostgresStorage, migrate, parse_postgres_url
from conveyor.testing.contract import make_spec

from ..conftest import pg_schema
from .conftest import listening


class Refused(Exception):
    """Raised inside a transaction block to roll it back."""


def _conninfo(url: str) -> dict[str, str]:
    conninfo, _, _ = parse_postgres_url(url)
    return {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(conninfo).items()}


async def _eventually(check: Any, timeout: float = 5.0) -> None:
    """Until ``check()`` is true (something the server does on its own time, such as
    a closed connection's backend leaving pg_stat_activity)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.01)


def _sessions(server: str, tag: str) -> int:
    with psycopg.connect(server) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (tag,)).fetchone()
    assert row is not None
    return int(row[0])


# -- URLs and options ----------------------------------------------------------------------


def test_the_options_default_as_documented() -> None:
    """schema conveyor, migrate false, pool 1/10, poll_interval 1, listen and prepare
    true; ``connect_timeout`` 10 unless the URL gives one, which libpq then gets."""
    for scheme in ("postgresql", "postgres"):
        storage = PostgresStorage(f"{scheme}://app:secret@db.example/app")
        o = storage.options
        assert (storage.schema, o.migrate, o.pool_min, o.pool_max, o.poll_interval, o.listen,
                o.prepare) == ("conveyor", False, 1, 10, 1, True, True)
    assert _conninfo("postgresql://app@db.example/app")["connect_timeout"] == "10"
    given = _conninfo("postgresql://app@db.example/app?connect_timeout=5&sslmode=require"
                      "&application_name=my%20app&schema=jobs&listen=false")
    assert given == {"user": "app", "host": "db.example", "dbname": "app",
                     "connect_timeout": "5", "sslmode": "require", "application_name": "my app",
                     "client_encoding": "UTF8"}


def test_keyword_options_override_the_urls() -> None:
    storage = PostgresStorage(
        "postgresql://app@db.example/app?schema=jobs&pool_max=3&listen=false&prepare=true",
        schema="other", migrate=True, pool_min=0, pool_max=5, poll_interval=0.2, listen=True,
        prepare=False)
    o = storage.options
    assert (storage.schema, o.migrate, o.pool_min, o.pool_max, o.poll_interval, o.listen,
            o.prepare) == ("other", True, 0, 5, 0.2, True, False)


@pytest.mark.parametrize(("name", "ok"), [
    ("a" * 48, True), ("_jobs_2", True), ("jobs", True),
    ("a" * 49, False), ("2jobs", False), ("pg_jobs", False), ("Jobs", False),
    ("jo-bs", False), ("", False),
])
def test_schema_names(name: str, ok: bool) -> None:
    """Lower-case letters, digits, ``_``; at most 48; not starting with a digit or pg_."""
    url = f"postgresql://app@db.example/app?schema={name}"
    if ok:
        assert PostgresStorage(url).schema == name
        assert PostgresStorage("postgresql://app@db.example/app", schema=name).schema == name
        return
    with pytest.raises(ConfigurationError, match="schema"):
        PostgresStorage(url)
    with pytest.raises(ConfigurationError, match="schema"):
        PostgresStorage("postgresql://app@db.example/app", schema=name)


@pytest.mark.parametrize("option", ["keepalives=on", "keepalives_idle=1.5",
                                    "keepalives_interval=x", "keepalives_count=",
                                    "connect_timeout=2.5", "port=5432x"])
def test_whole_numbers_libpq_only_checks_when_connecting(option: str) -> None:
    with pytest.raises(ConfigurationError, match=option.partition("=")[0]):
        PostgresStorage(f"postgresql://app:s3cret@db.example/app?{option}")
    fine = _conninfo("postgresql://app@db.example/app?keepalives=1&keepalives_idle=30"
                     "&keepalives_interval=10&keepalives_count=3")
    assert (fine["keepalives"], fine["keepalives_count"]) == ("1", "3")


async def test_a_refused_connection_says_which_server_and_why(server: str) -> None:
    """A StorageError naming the server and the reason, without the password given as
    ``?password=``; nothing is retried for long (connect_timeout)."""
    parts = urlsplit(server)
    url = (f"postgresql://127.0.0.1:1{parts.path}?user={parts.username}"
           "&password=Wr0ngSecret&schema=docs_refused")
    for attempt in (PostgresStorage(url).open, lambda: migrate(url)):
        with pytest.raises(StorageError) as info:
            await attempt()
        message = str(info.value)
        assert "127.0.0.1:1/" in message and "refused" in message.lower(), message
        assert "Wr0ngSecret" not in message


# -- what a storage opens and writes ---------------------------------------------------------


async def test_opening_writes_nothing_and_keeps_pool_min_connections(bare_url: str,
                                                                    server: str) -> None:
    """On a migrated schema, opening (without ``migrate``) writes nothing; the pool
    keeps ``pool_min`` connections open (1 by default), the listener none until
    something wants changes."""
    assert await migrate(bare_url) == SCHEMA_VERSION
    schema = pg_schema(bare_url)
    tables = ("tasks", "logs", "changes", "workers", "migrations")

    def counts() -> list[Any]:
        with psycopg.connect(server) as conn:
            return [conn.execute(f'SELECT count(*) FROM "{schema}".{t}').fetchone()
                    for t in tables]

    before = counts()
    assert before == [(0,), (0,), (0,), (0,), (SCHEMA_VERSION,)]
    for pool_min in (None, 3):
        tag = f"docs_{uuid.uuid4().hex[:12]}"
        url = f"{bare_url}&application_name={tag}"
        if pool_min is not None:
            url += f"&pool_min={pool_min}"
        storage = PostgresStorage(url)
        await storage.open()
        try:
            # the connection that checked the schema is closed; the pool's stay
            await _eventually(lambda tag=tag, n=pool_min or 1: _sessions(server, tag) == n)
            assert storage.feed_health() == {"running": False}
        finally:
            await storage.close()
    assert counts() == before


async def test_the_tables_indexes_and_autovacuum_settings(schema_url: str, server: str) -> None:
    storage = PostgresStorage(schema_url)
    await storage.open()
    await storage.close()
    schema = pg_schema(schema_url)
    with psycopg.connect(server) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,))}
        columns = {(r[0], r[1]): (r[2], r[3]) for r in conn.execute(
            "SELECT table_name, column_name, data_type, collation_name "
            "FROM information_schema.columns WHERE table_schema = %s", (schema,))}
        indexes = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT indexname, tablename, indexdef FROM pg_indexes WHERE schemaname = %s",
            (schema,))}
        options = conn.execute(
            "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = 'tasks'", (schema,)).fetchone()
        migrations = conn.execute(
            f'SELECT version, name FROM "{schema}".migrations ORDER BY version').fetchall()
    assert tables == {"tasks", "logs", "changes", "workers", "migrations"}
    for column in ("payload", "tags", "result", "error", "progress", "concurrency"):
        assert columns["tasks", column][0] == "jsonb", column
    for column in ("run_at", "created_at", "updated_at", "finished_at", "lease_until"):
        assert columns["tasks", column][0] == "double precision", column
    for column in ("id", "action", "status", "unique_key"):
        assert columns["tasks", column][1] == "C", column
    for column in ("seq", "xid", "status", "event", "origin", "ts", "task_id", "version", "ids",
                   "versions"):
        assert ("changes", column) in columns, column

    def index(name: str, table: str, *parts: str) -> None:
        assert name in indexes, sorted(indexes)
        assert indexes[name][0] == table, indexes[name]
        for part in parts:
            assert part in indexes[name][1], indexes[name]

    index("tasks_ready", "tasks", "(action, priority, run_at, id) WHERE (status = 'queued'")
    index("tasks_unique", "tasks", "CREATE UNIQUE INDEX", "(unique_key) WHERE",
          "unique_key IS NOT NULL", "unique_scope", "status")
    index("tasks_due", "tasks", "(action, run_at)")
    index("tasks_pickup", "tasks", "(pickup_deadline)")
    index("tasks_status", "tasks", "(status, action)")
    index("tasks_finished", "tasks", "(finished_at)")
    index("tasks_parent", "tasks", "(parent_id)")
    index("tasks_created", "tasks", "(created_at DESC NULLS LAST, id DESC NULLS LAST)")
    index("tasks_key_newest", "tasks", "(unique_key, status, created_at, id)",
          "WHERE (unique_key IS NOT NULL)")
    assert "tasks_key" not in indexes  # replaced by tasks_key_newest
    assert any(t == "logs" and "(task_id, seq)" in d for t, d in indexes.values()), indexes
    assert any(t == "changes" and d.endswith("(xid)") for t, d in indexes.values()), indexes
    assert options is not None and options[0] is not None
    assert {"autovacuum_vacuum_scale_factor=0.02", "autovacuum_vacuum_cost_delay=0"} \
        <= set(options[0]), options
    # the migration table of docs/postgres.md: one record per file, named as there
    assert migrations == [(1, "0001_initial.sql"), (2, "0002_ready_hint.sql"),
                          (3, "0003_batched_changes.sql"), (4, "0004_lookups.sql")]


async def test_migrate_refuses_a_tasks_table_it_did_not_make(bare_url: str, server: str) -> None:
    schema = pg_schema(bare_url)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".tasks (id text)')
    for attempt in (lambda: migrate(bare_url),
                    PostgresStorage(bare_url, migrate=True).open):
        with pytest.raises(SchemaError, match=rf'"{schema}".*another schema'):
            await attempt()
    with psycopg.connect(server) as conn:
        tables = conn.execute("SELECT table_name FROM information_schema.tables "
                              "WHERE table_schema = %s", (schema,)).fetchall()
    assert tables == [("tasks",)]  # nothing else created


# -- no session state ----------------------------------------------------------------------


async def test_claims_leave_no_session_level_locks_or_settings(schema_url: str,
                                                              server: str) -> None:
    """Careful claims (a per-action limit, a concurrency condition) hold
    transaction-level advisory locks and set their settings for their transaction
    only: afterwards the pool's connection holds no advisory lock and has the
    server's settings (what PgBouncer's transaction mode needs)."""
    tag = f"docs_{uuid.uuid4().hex[:12]}"
    storage = PostgresStorage(f"{schema_url}&pool_min=1&pool_max=1&application_name={tag}")
    await storage.open()
    try:
        with psycopg.connect(server) as conn:
            defaults = conn.execute(
                "SELECT current_setting('idle_in_transaction_session_timeout'), "
                "current_setting('synchronous_commit')").fetchone()
        await storage.add([make_spec(payload=i) for i in range(3)])
        await storage.add([make_spec(action="test:c", payload={"book": "A"},
                                     concurrency=(Condition({"payload.book": "A"}, limit=1),))
                           for _ in range(2)])
        limited = await storage.claim("w1", ["test:a"], 3, 30, ClaimLimits({"test:a": 1}))
        assert len(limited) == 1  # the limit held: the careful path ran
        conditional = await storage.claim("w1", ["test:c"], 2, 30)
        assert len(conditional) == 1  # the condition held
        with psycopg.connect(server) as conn:
            held = conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND a.application_name = %s", (tag,)).fetchone()
        assert held == (0,)
        async with storage._conn() as conn:  # the pool's only connection: the claims' one
            cur = await conn.execute(
                "SELECT current_setting('idle_in_transaction_session_timeout'), "
                "current_setting('synchronous_commit')")
            assert await cur.fetchone() == defaults
        refused = await storage.finish("w1", [Completion(t.id, t.token or "", Transition(
            Status.SUCCEEDED)) for t in limited + conditional])
        assert refused == []
        assert len(await storage.claim("w1", ["test:a"], 3, 30, ClaimLimits({"test:a": 1}))) == 1
        # a delete names its origin for its own transaction only
        done = [t.id for t in limited + conditional]
        assert sorted(await storage.delete(done)) == sorted(done)
        async with storage._conn() as conn:
            cur = await conn.execute("SELECT current_setting('conveyor.origin', true)")
            assert await cur.fetchone() in ((None,), ("",))
        with psycopg.connect(server) as conn:
            origins = conn.execute(
                f'SELECT DISTINCT origin FROM "{storage.schema}".changes '
                "WHERE event = 'deleted'").fetchall()
        assert origins == [(storage.instance_id,)]
    finally:
        await storage.close()


# -- when a connection drops ---------------------------------------------------------------


async def test_a_pooled_connection_the_server_ended_fails_once(schema_url: str,
                                                              server: str) -> None:
    """A statement on a pooled connection the server closed fails once, as a
    StorageError; the pool throws the connection away and the next statement runs on
    a new one."""
    tag = f"docs_{uuid.uuid4().hex[:12]}"
    storage = PostgresStorage(f"{schema_url}&pool_min=1&pool_max=1&application_name={tag}")
    await storage.open()
    try:
        await storage.add([make_spec()])
        await _eventually(lambda: _sessions(server, tag) == 1)
        with psycopg.connect(server, autocommit=True) as conn:
            [(pid, ended)] = conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s", (tag,)).fetchall()
        assert ended
        await _eventually(lambda: _sessions(server, tag) == 0)
        with pytest.raises(StorageError, match=schema_url.split("@")[1].split("/")[0]):
            await storage.count(parse_filter({}))
        assert await storage.count(parse_filter({})) == 1
        with psycopg.connect(server) as conn:
            now = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                               (tag,)).fetchall()
        assert len(now) == 1 and now[0][0] != pid
    finally:
        await storage.close()


# -- enqueue in your own transaction ---------------------------------------------------------


async def test_add_in_on_an_autocommit_connection_inside_transaction(schema_url: str,
                                                                     server: str) -> None:
    """Autocommit outside a block is refused; inside ``conn.transaction()`` the
    block decides (async and sync connections)."""
    app = Conveyor(schema_url)
    try:
        async with await psycopg.AsyncConnection.connect(server, autocommit=True) as aconn:
            with pytest.raises(ConfigurationError, match="transaction"):
                await app.add_in(aconn, "docs:mail", {"n": 0})
            with contextlib.suppress(Refused):
                async with aconn.transaction():
                    rolled = await app.add_in(aconn, "docs:mail", {"n": 1})
                    raise Refused
            async with aconn.transaction():
                kept = await app.add_in(aconn, "docs:mail", {"n": 2})
                assert await app.count() == 0  # not before the commit
        with psycopg.connect(server, autocommit=True) as conn:
            with contextlib.suppress(Refused), conn.transaction():
                await app.add_many_in(conn, [("docs:mail", {"n": 3}), ("docs:mail", {"n": 4})])
                raise Refused
            with conn.transaction():
                [also] = await app.add_many_in(conn, [("docs:mail", {"n": 5})])
        assert sorted(t.id for t in await app.find()) == sorted([kept.id, also.id])
        assert not await app.exists(rolled.id)
        # their change rows name the storage's instance_id followed by -tx
        with psycopg.connect(server) as conn:
            origins = conn.execute(
                f'SELECT DISTINCT origin FROM "{pg_schema(schema_url)}".changes '
                "WHERE event = 'added'").fetchall()
        assert origins == [(f"{app.storage.instance_id}-tx",)]
    finally:
        await app.close()


# -- retention -----------------------------------------------------------------------------


async def _finish_all(storage: Any, n: int) -> None:
    await storage.add([make_spec() for _ in range(n)])
    claimed = await storage.claim("w1", ["test:a"], n, 30)
    assert len(claimed) == n
    assert await storage.finish("w1", [Completion(t.id, t.token or "", Transition(
        Status.SUCCEEDED)) for t in claimed]) == []


async def test_prune_deletes_in_transactions_of_at_most_batch_tasks(storage: Any,
                                                                   server: str) -> None:
    """``prune(older_than, batch=500)``: one transaction per ``batch`` tasks (seen in the
    change feed: one ``deleted`` row per task, with its transaction's xid and no
    origin); only tasks finished before ``older_than``."""
    await _finish_all(storage, 25)
    cut = time.time()
    await _finish_all(storage, 600)
    schema = storage.schema

    def deleted() -> list[tuple[int, int]]:
        with psycopg.connect(server) as conn:
            rows = conn.execute(
                f'SELECT count(*), count(origin) FROM "{schema}".changes '
                "WHERE event = 'deleted' GROUP BY xid ORDER BY min(seq)").fetchall()
        return [(int(a), int(b)) for a, b in rows]

    assert await storage.prune(cut, batch=10) == 25
    assert deleted() == [(10, 0), (10, 0), (5, 0)]
    assert await storage.prune(time.time() + 1) == 600  # the default batch: 500
    assert deleted()[3:] == [(500, 0), (100, 0)]
    assert await storage.prune(time.time() + 1) == 0


# -- the listener --------------------------------------------------------------------------


async def test_the_listener_has_a_connection_of_its_own(schema_url: str, server: str) -> None:
    """One listener connection outside the pool (``application_name`` conveyor-listener),
    and ``feed_health()`` with its documented keys."""
    tag = f"docs_{uuid.uuid4().hex[:12]}"
    app = Conveyor(f"{schema_url}&application_name={tag}")
    try:
        async with app.events("task.added") as events:
            await app.open()
            storage = app.storage
            assert isinstance(storage, PostgresStorage)
            await listening(storage)
            health = storage.feed_health()
            assert {"connected", "listening", "failures", "last_read", "backend_pid"} <= set(health)
            assert health["connected"] and health["failures"] == 0
            with psycopg.connect(server) as conn:
                row = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s",
                                   (health["backend_pid"],)).fetchone()
                pooled = conn.execute("SELECT pid FROM pg_stat_activity "
                                      "WHERE application_name = %s", (tag,)).fetchall()
            assert row == ("conveyor-listener",)
            assert pooled and (health["backend_pid"],) not in pooled
            task = await app.add("docs:noop")
            event = await events.get(timeout=10)
            assert event is not None and event.task_id == task.id
            await _eventually(lambda: storage.feed_health()["listening"] is True)
            assert storage.feed_health()["last_read"] > 0
    finally:
        await app.close()


# -- limits --------------------------------------------------------------------------------


async def test_what_jsonb_does_to_json(storage: Any) -> None:
    """Keys in jsonb's order (by length, then bytes); ``1.0`` stays a float; ``-0.0``
    comes back as ``0.0``; an integer beyond 64 bits stays one unless it is a float's
    shortest form."""
    spec = make_spec(payload={"zz": 1, "a": 2, "one": 1.0, "nz": -0.0, "big": 2**70,
                              "round": 10**20, "list": [1.0, 2]})
    await storage.add([spec])
    task = await storage.get(spec.id)
    assert list(task.payload) == ["a", "nz", "zz", "big", "one", "list", "round"]
    assert task.payload["one"] == 1.0 and type(task.payload["one"]) is float
    assert [type(v) for v in task.payload["list"]] == [float, int]
    assert task.payload["nz"] == 0.0 and math.copysign(1.0, task.payload["nz"]) == 1.0
    assert task.payload["big"] == 2**70 and type(task.payload["big"]) is int
    assert task.payload["round"] == 1e20 and type(task.payload["round"]) is float


# -- privileges ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_documented_privileges_are_enough() -> None:
    """The role that migrates needs CREATE on the database; a worker's role needs USAGE
    on the schema, SELECT, INSERT, UPDATE, DELETE on its tables and USAGE on its
    sequences, and nothing more, for everything a worker and an app do. (A server of
    the test's own: creating roles needs rights the shared one does not give.)"""
    from ._pginstance import PgInstance

    with PgInstance() as pg:
        with pg.admin() as admin:
            admin.execute("CREATE ROLE migrator LOGIN")
            admin.execute("CREATE ROLE worker LOGIN")
            admin.execute("CREATE DATABASE app")
            admin.execute("REVOKE ALL ON DATABASE app FROM PUBLIC")
            admin.execute("GRANT CONNECT ON DATABASE app TO worker")
            admin.execute("GRANT CONNECT, CREATE ON DATABASE app TO migrator")
        base = f"postgresql://{{}}@127.0.0.1:{pg.port}/app?schema=jobs"
        assert await migrate(base.format("migrator")) == SCHEMA_VERSION
        with psycopg.connect(base.format("migrator").partition("?")[0],
                             autocommit=True) as owner:
            owner.execute("GRANT USAGE ON SCHEMA jobs TO worker")
            owner.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA jobs "
                          "TO worker")
            owner.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA jobs TO worker")
        with psycopg.connect(base.format("worker").partition("?")[0]) as conn, \
                pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE jobs.mine (id int)")  # no more than that
        url = base.format("worker")
        app = Conveyor(url)
        watcher = Conveyor(url)

        @app.handler("docs:work", limit=1)
        async def work(ctx: Any) -> str:
            ctx.log.info("working")
            await ctx.progress(1, total=1)
            return "done"

        try:
            async with watcher.events("task.*") as events:
                await watcher.open()
                tasks = [await app.add("docs:work", {"i": i}, unique_key=f"k{i}",
                                       concurrency=[{"query": {"payload.i": i}}])
                         for i in range(3)]
                await app.start()
                for task in tasks:
                    assert await watcher.wait(task.id, timeout=10) == "done"
                assert [r.message async for r in watcher.logs(tasks[0].id)] == ["working"]
                [seen] = await watcher.workers()
                assert seen.actions == ("docs:work",)
                assert await app.prune(0) == 3
                gone: set[str] = set()
                while len(gone) < 3:
                    event = await events.get(timeout=10)
                    assert event is not None, gone
                    if event.type == "task.deleted":
                        gone.add(str(event.task_id))
                assert gone == {t.id for t in tasks}
            late = await app.add("docs:later", delay=3600)
            await app.abort(late.id, "no")
            assert await app.delete(late.id) == [late.id]
            assert await app.count() == 0
        finally:
            await app.close()
            await watcher.close()
