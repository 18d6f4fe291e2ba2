"""Black-box tests of the PostgreSQL backend, written from issue 4 and docs/postgres.md:
URL forms and the default schema, ``conveyor migrate`` (output, idempotence, several
processes), ``?migrate=true``, bad input (bad URL, refused connection, wrong password,
missing or newer schema: clear errors, nothing written), enqueue inside the caller's
own psycopg transaction (async and sync), events/logs/wait across processes, and
retention."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg
import pytest

from conveyor import Conveyor, SyncConveyor, TaskFailed
from conveyor.errors import ConfigurationError, SchemaError, StorageError
from conveyor.storage import open_storage
from conveyor.storage.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStorage

from ..cli._support import CLI, assert_error, clean_env, cli
from ..conftest import pg_schema
from .conftest import listening

REPO = Path(__file__).resolve().parents[2]


def _replace(url: str, **parts: Any) -> str:
    return urlunsplit(urlsplit(url)._replace(**parts))


def _schema_exists(server: str, schema: str) -> bool:
    with psycopg.connect(server) as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                           (schema,)).fetchone()
    return row == (1,)


def _versions(server: str, schema: str) -> list[int]:
    with psycopg.connect(server) as conn:
        rows = conn.execute(f'SELECT version FROM "{schema}".migrations ORDER BY version')
        return [r[0] for r in rows.fetchall()]


@pytest.fixture
def fresh_db(server: str) -> Iterator[str]:
    """A URL (no conveyor options) to a database of this test's own, dropped afterwards."""
    name = f"outside_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _replace(server, path=f"/{name}", query="")
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Refused(Exception):
    """Raised inside a transaction block to roll it back."""


def _start_cli_worker(folder: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``conveyor worker outside_worker_app:app`` run in ``folder``."""
    return subprocess.Popen([*CLI, "worker", "outside_worker_app:app"], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# -- URLs, the default schema, conveyor migrate --------------------------------------------


def test_the_default_schema_is_conveyor(fresh_db: str) -> None:
    """Without ``?schema=``, ``conveyor migrate`` creates the schema ``conveyor``, and an
    app on the same URL (``postgres://`` works too) uses it."""
    assert PostgresStorage(fresh_db).schema == "conveyor"
    result = cli("migrate", "--db", fresh_db)
    assert result.code == 0, result
    assert result.out.strip().startswith(f"schema version {SCHEMA_VERSION} at postgresql://")
    assert _schema_exists(fresh_db, "conveyor")
    assert _versions(fresh_db, "conveyor") == [m.version for m in MIGRATIONS]
    with psycopg.connect(fresh_db) as conn:  # nothing outside its own schema
        outside = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('conveyor', "
            "'pg_catalog', 'information_schema', 'pg_toast')").fetchall()
        functions = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public'").fetchall()
    assert outside == [] and functions == []

    async def go() -> str:
        app = Conveyor(fresh_db.replace("postgresql://", "postgres://", 1))
        try:
            return (await app.add("outside:noop", {"x": 1})).id
        finally:
            await app.close()

    task_id = asyncio.run(go())
    with psycopg.connect(fresh_db) as conn:
        row = conn.execute("SELECT action FROM conveyor.tasks WHERE id = %s",
                           (task_id,)).fetchone()
    assert row == ("outside:noop",)


def test_several_hosts_as_libpq_takes_them(bare_url: str, server: str) -> None:
    """libpq's list of hosts (``h1:p1,h2:p2``): tried in order, the first that answers
    is used; a bad port in the list is a URL error."""
    parts = urlsplit(bare_url)
    listed = _replace(bare_url, netloc=f"{parts.username}:{parts.password}@127.0.0.1:1,"
                                       f"{parts.hostname}:{parts.port}")
    result = cli("migrate", "--db", listed)
    assert result.code == 0, result
    assert f"@127.0.0.1:1,{parts.hostname}:{parts.port}/" in result.out
    assert f":{parts.password}@" not in result.out
    assert _versions(server, pg_schema(bare_url)) == [m.version for m in MIGRATIONS]
    added = cli("add", "outside:noop", "--db", listed)
    assert added.code == 0, added
    bad = _replace(bare_url, netloc=f"{parts.username}:{parts.password}@h1:5432,h2:x")
    with pytest.raises(ConfigurationError, match="Port"):
        PostgresStorage(bad)
    line = assert_error(cli("ls", "--db", bad), 2)
    assert f":{parts.password}@" not in line


@pytest.mark.parametrize("url", ["postgresql:/tasks", "postgresql:db.example/tasks",
                                 "postgres:ann:Wr0ngSecret@db.example/tasks"])
def test_a_url_without_its_slashes_is_refused(url: str) -> None:
    """Not libpq's form (``postgresql://...``): refused, rather than read as something
    else (a host taken from the path), and the password never shown."""
    with pytest.raises(ConfigurationError, match="postgresql://") as info:
        open_storage(url)
    assert "Wr0ngSecret" not in str(info.value)
    line = assert_error(cli("ls", "--db", url), 2, "bad postgres URL")
    assert "Wr0ngSecret" not in line


def test_the_shown_url_keeps_the_user_as_written() -> None:
    """An encoded user name is shown as written (not encoded twice); the password never."""
    storage = PostgresStorage("postgresql://app%40corp:s%40cret@db.example/tasks")
    assert storage.url == "postgresql://app%40corp:***@db.example/tasks"
    with pytest.raises(ConfigurationError) as info:
        PostgresStorage("postgresql://app%40corp:s%40cret@db.example/tasks?bogus=1")
    assert "app%40corp:***@db.example" in str(info.value)
    assert "cret" not in str(info.value)


def test_cli_migrate_prints_the_version_and_is_idempotent(bare_url: str, server: str) -> None:
    first = cli("migrate", "--db", bare_url)
    second = cli("migrate", "--db", bare_url)
    for result in (first, second):
        assert result.code == 0, result
        assert result.out.startswith(f"schema version {SCHEMA_VERSION} at "), result
        assert "conveyor:conveyor@" not in result.out  # no password
        assert pg_schema(bare_url) in result.out
    assert first.out == second.out
    assert _versions(server, pg_schema(bare_url)) == [m.version for m in MIGRATIONS]


def test_cli_migrate_from_several_processes_at_once(bare_url: str, server: str) -> None:
    procs = [subprocess.Popen([*CLI, "migrate", "--db", bare_url], cwd=REPO, env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert all(o.startswith(f"schema version {SCHEMA_VERSION} at ") for o, _ in outs), outs
    assert _versions(server, pg_schema(bare_url)) == [m.version for m in MIGRATIONS]


def test_workers_opening_with_migrate_true_from_several_processes(bare_url: str,
                                                                  server: str) -> None:
    """``?migrate=true`` in the URL of every process: one migrates, the others find it done."""
    url = f"{bare_url}&migrate=true"
    code = textwrap.dedent("""
        import asyncio, sys
        from conveyor import Conveyor
        async def main():
            app = Conveyor(sys.argv[1])
            try:
                print((await app.add("outside:noop")).id)
            finally:
                await app.close()
        asyncio.run(main())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert _versions(server, pg_schema(bare_url)) == [m.version for m in MIGRATIONS]
    with psycopg.connect(server) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{pg_schema(bare_url)}".tasks').fetchone()
    assert row == (4,)


async def test_migrate_from_python_returns_the_version(bare_url: str, server: str) -> None:
    from conveyor import storage

    assert await storage.migrate(bare_url) == SCHEMA_VERSION
    assert _schema_exists(server, pg_schema(bare_url))


def test_cli_migrate_reads_the_url_from_the_environment_or_before_the_command(
        bare_url: str, server: str) -> None:
    from_env = cli("migrate", env=clean_env(CONVEYOR_DB=bare_url))
    assert from_env.code == 0, from_env
    assert from_env.out.startswith(f"schema version {SCHEMA_VERSION} at ")
    before = cli("--db", bare_url, "migrate")
    assert before.code == 0, before
    assert before.out == from_env.out
    assert _versions(server, pg_schema(bare_url)) == [m.version for m in MIGRATIONS]


def test_migrate_into_a_schema_that_already_exists(bare_url: str, server: str) -> None:
    """A DBA may create the (empty) schema beforehand, or put other tables in it."""
    schema = pg_schema(bare_url)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".orders (id int)')
    assert_error(cli("ls", "--db", bare_url), 1, "conveyor migrate")
    result = cli("migrate", "--db", bare_url)
    assert result.code == 0, result
    assert _versions(server, schema) == [m.version for m in MIGRATIONS]
    assert cli("ls", "--db", bare_url).code == 0


def test_a_failed_migration_leaves_nothing_behind(bare_url: str, server: str) -> None:
    """A schema holding a table of the user's whose name conveyor needs: a clear error,
    and none of conveyor's tables half-created."""
    schema = pg_schema(bare_url)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".changes (id int)')
    assert_error(cli("migrate", "--db", bare_url), 1, schema)
    with psycopg.connect(server) as conn:
        tables = conn.execute("SELECT table_name FROM information_schema.tables "
                              "WHERE table_schema = %s", (schema,)).fetchall()
    assert tables == [("changes",)]


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["ls"], ["stats"], ["add", "outside:noop"]])
def test_cli_on_a_database_without_the_schema_says_to_migrate(bare_url: str, server: str,
                                                             command: list[str]) -> None:
    result = cli(*command, "--db", bare_url)
    assert_error(result, 1, "conveyor migrate")
    assert "conveyor:conveyor@" not in result.err
    assert not _schema_exists(server, pg_schema(bare_url))  # nothing written


def test_a_database_that_is_not_utf8_is_refused(server: str) -> None:
    """docs/postgres.md: conveyor needs a UTF8 database; another one is a clear error,
    and nothing is created in it."""
    name = f"outside_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' TEMPLATE template0 "
                     "LC_COLLATE 'C' LC_CTYPE 'C'")
    try:
        url = _replace(server, path=f"/{name}", query="")
        for command in ("migrate", "ls"):
            assert_error(cli(command, "--db", url), 1, "UTF8", "SQL_ASCII")
        assert not _schema_exists(url, "conveyor")
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_the_app_on_a_database_without_the_schema(bare_url: str, server: str) -> None:
    app = Conveyor(bare_url)
    try:
        with pytest.raises(SchemaError, match="conveyor migrate"):
            await app.add("outside:noop")
    finally:
        await app.close()
    assert not _schema_exists(server, pg_schema(bare_url))


def test_sync_app_on_a_database_without_the_schema(bare_url: str, server: str) -> None:
    app = SyncConveyor(bare_url)
    try:
        with pytest.raises(SchemaError, match="conveyor migrate"):
            app.add("outside:noop")
    finally:
        app.close()
    assert not _schema_exists(server, pg_schema(bare_url))


def test_a_newer_schema_is_refused_with_a_clear_error(bare_url: str, server: str) -> None:
    assert cli("migrate", "--db", bare_url).code == 0
    schema = pg_schema(bare_url)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"INSERT INTO \"{schema}\".migrations (version, name) "
                     f"VALUES ({SCHEMA_VERSION + 1}, 'future')")
    for command in (["migrate"], ["ls"], ["add", "outside:noop"]):
        line = assert_error(cli(*command, "--db", bare_url), 1, "newer")
        assert "upgrade" in line, line
    # nothing was changed or added by the refused commands
    assert _versions(server, schema) == [*(m.version for m in MIGRATIONS), SCHEMA_VERSION + 1]
    with psycopg.connect(server) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{schema}".tasks').fetchone() == (0,)


async def test_an_older_schema_is_refused_until_migrated(bare_url: str, server: str,
                                                        monkeypatch: Any) -> None:
    """A schema left at an older version (made by an older conveyor): opening says to
    run ``conveyor migrate``, which upgrades it; then it opens."""
    from conveyor import storage
    from conveyor.storage import postgres

    monkeypatch.setattr(postgres, "MIGRATIONS", MIGRATIONS[:1])
    monkeypatch.setattr(postgres, "SCHEMA_VERSION", 1)
    assert await storage.migrate(bare_url) == 1
    monkeypatch.undo()
    app = Conveyor(bare_url)
    try:
        with pytest.raises(SchemaError, match="conveyor migrate"):
            await app.open()
    finally:
        await app.close()
    assert_error(cli("ls", "--db", bare_url), 1, "older", "conveyor migrate")
    result = cli("migrate", "--db", bare_url)
    assert result.code == 0, result
    assert result.out.startswith(f"schema version {SCHEMA_VERSION} at ")
    assert _versions(server, pg_schema(bare_url)) == [m.version for m in MIGRATIONS]
    app = Conveyor(bare_url)
    try:
        assert (await app.add("outside:noop")).status == "queued"
    finally:
        await app.close()


async def test_a_newer_schema_is_refused_by_the_app(bare_url: str, server: str) -> None:
    from conveyor import storage

    await storage.migrate(bare_url)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"INSERT INTO \"{pg_schema(bare_url)}\".migrations (version, name) "
                     f"VALUES ({SCHEMA_VERSION + 1}, 'future')")
    for url in (bare_url, f"{bare_url}&migrate=true"):
        app = Conveyor(url)
        try:
            with pytest.raises(SchemaError, match="upgrade conveyor"):
                await app.open()
        finally:
            await app.close()


def test_cli_connection_errors(server: str) -> None:
    parts = urlsplit(server)
    wrong = _replace(server, netloc=f"{parts.username}:Wr0ngSecret@{parts.hostname}:{parts.port}")
    refused = _replace(server, netloc=f"{parts.username}:Wr0ngSecret@127.0.0.1:1")
    in_query = _replace(server, netloc=f"{parts.hostname}:{parts.port}",
                        query=urlencode({"user": parts.username, "password": "Wr0ngSecret"}))
    for url in (wrong, in_query):
        for command in ("migrate", "ls"):
            line = assert_error(cli(command, "--db", url), 1, "password authentication failed")
            assert "Wr0ngSecret" not in line
    line = assert_error(cli("ls", "--db", refused, timeout=30), 1, "cannot connect")
    assert "Wr0ngSecret" not in line
    for bad in (f"postgresql://{parts.username}:Wr0ngSecret@localhost:notaport/db",
                f"{server}?schema=Not-A-Schema", f"{server}?no_such_option=1",
                f"{server}?migrate=perhaps"):
        line = assert_error(cli("ls", "--db", bad), 2)
        assert "Wr0ngSecret" not in line


async def test_app_connection_errors(server: str) -> None:
    parts = urlsplit(server)
    wrong = _replace(server, netloc=f"{parts.username}:Wr0ngSecret@{parts.hostname}:{parts.port}")
    app = Conveyor(wrong)
    try:
        with pytest.raises(StorageError) as info:
            await app.add("outside:noop")
        assert "Wr0ngSecret" not in str(info.value)
    finally:
        await app.close()
    with pytest.raises(ConfigurationError):
        open_storage(f"{server}?pool_max=many")
    with pytest.raises(ConfigurationError):
        Conveyor(f"{server}?schema=two&schema=three")


# -- enqueue inside the caller's transaction -----------------------------------------------


async def test_add_in_on_an_async_connection(schema_url: str, server: str) -> None:
    app = Conveyor(schema_url)
    done = asyncio.Event()

    @app.handler("outside:mail")
    async def mail(ctx: Any) -> str:
        done.set()
        return f"sent {ctx.payload['order']}"

    try:
        await app.open()
        async with await psycopg.AsyncConnection.connect(server) as conn:
            await conn.execute("CREATE TEMP TABLE orders (id int)")
            await conn.commit()
            # rolled back by an exception: no task
            with contextlib.suppress(Refused):
                async with conn.transaction():
                    await conn.execute("INSERT INTO orders VALUES (1)")
                    rolled = await app.add_in(conn, "outside:mail", {"order": 1})
                    raise Refused
            assert await app.find_one({"id": rolled.id}) is None
            # rolled back many
            with contextlib.suppress(Refused):
                async with conn.transaction():
                    many = await app.add_many_in(conn, [("outside:mail", {"order": 2}),
                                                        ("outside:mail", {"order": 3})])
                    assert len(many) == 2
                    raise Refused
            assert await app.count() == 0
            # committed: exists, and runs, but not before the commit
            await app.start()
            async with conn.transaction():
                await conn.execute("INSERT INTO orders VALUES (4)")
                task = await app.add_in(conn, "outside:mail", {"order": 4}, priority=1)
                assert task.priority == 1
                assert await app.count() == 0  # not visible outside the transaction yet
                assert not done.is_set()
            assert await app.wait(task.id, timeout=10) == "sent 4"
        assert await app.count() == 1
    finally:
        await app.close()


def test_add_in_on_a_sync_connection(schema_url: str, server: str) -> None:
    with SyncConveyor(schema_url) as app, psycopg.connect(server) as conn:
        with contextlib.suppress(Refused), conn.transaction():
            gone = app.add_in(conn, "outside:mail", {"order": 1})
            raise Refused
        with conn.transaction():
            kept = app.add_in(conn, "outside:mail", {"order": 2})
            assert app.count() == 0
        with contextlib.suppress(Refused), conn.transaction():
            app.add_many_in(conn, [("outside:mail", {"order": 3})])
            raise Refused
        assert app.find_one({"id": gone.id}) is None
        assert app.get(kept.id).payload == {"order": 2}
        assert app.count() == 1


async def test_add_in_unique_key_inside_the_transaction(schema_url: str, server: str) -> None:
    app = Conveyor(schema_url)
    try:
        held = await app.add("outside:mail", {"order": 1}, unique_key="order-1")
        async with (await psycopg.AsyncConnection.connect(server) as conn,
                    conn.transaction()):
            again = await app.add_in(conn, "outside:mail", {"order": 1},
                                     unique_key="order-1")
        assert again.id == held.id
        assert await app.count() == 1
    finally:
        await app.close()


async def test_add_in_on_a_pooled_connection(schema_url: str, server: str) -> None:
    """A connection from the user's own psycopg_pool: the pool's block is the
    transaction (committed at its end, rolled back on an error)."""
    from psycopg_pool import AsyncConnectionPool

    app = Conveyor(schema_url)
    try:
        async with AsyncConnectionPool(server, min_size=1, max_size=2, open=False) as pool:
            with contextlib.suppress(Refused):
                async with pool.connection() as conn:
                    rolled = await app.add_in(conn, "outside:mail", {"n": 1})
                    raise Refused
            async with pool.connection() as conn:
                kept = await app.add_in(conn, "outside:mail", {"n": 2})
        assert [t.id for t in await app.find()] == [kept.id]
        assert await app.find_one({"id": rolled.id}) is None
    finally:
        await app.close()


def test_a_cli_worker_on_a_database_without_the_schema(bare_url: str, server: str,
                                                      tmp_path: Path) -> None:
    (tmp_path / "outside_worker_app.py").write_text(WORKER_APP)
    result = cli("worker", "outside_worker_app:app", "--db", bare_url, cwd=tmp_path,
                 env=clean_env(OUTSIDE_DB=bare_url, PYTHONPATH=str(tmp_path)))
    assert_error(result, 1, "conveyor migrate")
    assert not _schema_exists(server, pg_schema(bare_url))


async def test_add_in_refuses_other_connections(schema_url: str, server: str) -> None:
    app = Conveyor(schema_url)
    try:
        with pytest.raises(ConfigurationError):
            await app.add_in(object(), "outside:mail", {})
        async with await psycopg.AsyncConnection.connect(server, autocommit=True) as conn:
            with pytest.raises(ConfigurationError):
                await app.add_in(conn, "outside:mail", {})
        assert await app.count() == 0
    finally:
        await app.close()


async def test_add_in_commit_wakes_idle_workers_at_once(schema_url: str, server: str) -> None:
    """Workers are notified at the commit: with ``idle_poll`` at 30 s, only the
    notification can make them run the task within seconds (another app, as another
    process would be, and a worker of the adding app itself)."""
    worker = Conveyor(schema_url, idle_poll=30)
    adder = Conveyor(schema_url, idle_poll=30)
    for app in (worker, adder):
        @app.handler("outside:woken")
        async def woken(ctx: Any) -> str:
            return "woken"

    try:
        await worker.start()
        async with await psycopg.AsyncConnection.connect(server) as conn:
            async with conn.transaction():
                first = await adder.add_in(conn, "outside:woken", {})
            assert await adder.wait(first.id, timeout=5) == "woken"
            await adder.start()
            for _ in range(3):
                async with conn.transaction():
                    task = await adder.add_in(conn, "outside:woken", {})
                assert await adder.wait(task.id, timeout=5) == "woken"
    finally:
        await worker.close()
        await adder.close()


async def test_add_in_on_a_connection_without_autocommit(schema_url: str, server: str) -> None:
    """No ``conn.transaction()`` block: the connection's own transaction decides."""
    app = Conveyor(schema_url)
    try:
        async with await psycopg.AsyncConnection.connect(server) as conn:
            rolled = await app.add_in(conn, "outside:mail", {"n": 1})
            await conn.rollback()
            kept = await app.add_in(conn, "outside:mail", {"n": 2})
            assert await app.count() == 0
            await conn.commit()
        assert [t.id for t in await app.find()] == [kept.id]
        assert await app.find_one({"id": rolled.id}) is None
    finally:
        await app.close()


async def test_async_app_add_in_on_a_sync_connection(schema_url: str, server: str) -> None:
    app = Conveyor(schema_url)
    try:
        with psycopg.connect(server) as conn:
            with contextlib.suppress(Refused), conn.transaction():
                await app.add_in(conn, "outside:mail", {"n": 1})
                raise Refused
            assert await app.count() == 0
            with conn.transaction():
                tasks = await app.add_many_in(conn, [("outside:mail", {"n": 2}),
                                                     ("outside:mail", {"n": 3})])
        assert sorted(t.payload["n"] for t in await app.find()) == [2, 3]
        assert {t.id for t in tasks} == {t.id for t in await app.find()}
    finally:
        await app.close()


async def _someone_waits_for_a_lock(server: str, schema: str) -> None:
    """Until a statement on ``schema`` waits for a lock (in pg_stat_activity)."""
    async with await psycopg.AsyncConnection.connect(server, autocommit=True) as conn:
        for _ in range(1000):
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND position(%s in query) > 0",
                (f'"{schema}".',))
            row = await cur.fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("nobody waits for the uncommitted key")


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_a_key_held_by_an_open_transaction(schema_url: str, server: str,
                                                 outcome: str) -> None:
    """An ``add`` of a key that an uncommitted ``add_in`` holds waits for that
    transaction: after its commit it gets the committed task (not new); after its
    rollback it creates its own."""
    app, other = Conveyor(schema_url), Conveyor(schema_url)
    key = f"order-{outcome}"
    try:
        await other.open()
        async with await psycopg.AsyncConnection.connect(server) as conn:
            held = await app.add_in(conn, "outside:mail", {"n": 1}, unique_key=key)
            racing = asyncio.create_task(other.add_checked("outside:mail", {"n": 2},
                                                           unique_key=key))
            await _someone_waits_for_a_lock(server, pg_schema(schema_url))
            assert not racing.done()
            await (conn.commit() if outcome == "commit" else conn.rollback())
            task, created = await asyncio.wait_for(racing, 10)
        if outcome == "commit":
            assert (task.id, created) == (held.id, False)
        else:
            assert created and task.id != held.id and task.payload == {"n": 2}
        assert await app.count() == 1
    finally:
        await app.close()
        await other.close()


async def test_the_same_app_opens_after_the_migration(bare_url: str) -> None:
    """An app that met a missing schema works once ``conveyor migrate`` has run."""
    app = Conveyor(bare_url)
    try:
        with pytest.raises(SchemaError):
            await app.add("outside:noop")
        assert cli("migrate", "--db", bare_url).code == 0
        assert (await app.add("outside:noop")).status == "queued"
    finally:
        await app.close()


# -- events, logs and wait across processes ------------------------------------------------


WORKER_APP = '''
import asyncio
import os
import time
from conveyor import Context, Conveyor

app = Conveyor(os.environ["OUTSIDE_DB"])


@app.handler("outside:chatty")
async def chatty(ctx: Context) -> dict:
    for i in range(3):
        ctx.log.info("step %d", i)
        await ctx.progress(i + 1, total=3)
        await asyncio.sleep(0.05)
    return {"pid": os.getpid(), "n": ctx.payload["n"]}


@app.handler("outside:paced")
async def paced(ctx: Context) -> None:
    for i in range(8):
        await ctx.progress(i + 1, total=8, sent=time.time())
        await asyncio.sleep(0.15)


@app.handler("outside:boom", max_attempts=1)
async def boom(ctx: Context) -> None:
    ctx.log.error("about to fail")
    raise ValueError("no luck")
'''


async def test_events_logs_and_wait_from_a_cli_worker(schema_url: str, tmp_path: Path) -> None:
    (tmp_path / "outside_worker_app.py").write_text(WORKER_APP)
    env = clean_env(OUTSIDE_DB=schema_url, PYTHONPATH=str(tmp_path))
    worker = _start_cli_worker(tmp_path, env)
    app = Conveyor(schema_url)
    try:
        async with app.events("task.*") as events:
            task = await app.add("outside:chatty", {"n": 7})
            result = await app.wait(task.id, timeout=30)
            assert result["n"] == 7 and result["pid"] == worker.pid
            seen: list[str] = []
            while "task.succeeded" not in seen:
                event = await events.get(timeout=10)
                assert event is not None, seen
                if event.task_id == task.id:
                    seen.append(event.type)
                    if event.type == "task.progress":
                        assert event.data["progress"].total == 3
        for kind in ("task.added", "task.started", "task.progress", "task.log",
                     "task.succeeded"):
            assert kind in seen, seen
        # progress from another process comes as the stored snapshots (progress_interval)
        assert seen.count("task.log") == 3, seen
        lines = [r.message async for r in app.logs(task.id)]
        assert lines == ["step 0", "step 1", "step 2"]
        finished = await app.get(task.id)
        assert finished.status == "succeeded"
        failing = await app.add("outside:boom")
        with pytest.raises(TaskFailed) as info:
            await app.wait(failing.id, timeout=30)
        assert info.value.task.error is not None
        assert "no luck" in info.value.task.error.message
        assert [r.message async for r in app.logs(failing.id)] == ["about to fail"]
    finally:
        await app.close()
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err


async def test_listen_false_still_delivers_events_by_polling(schema_url: str) -> None:
    """``?listen=false`` (for poolers in transaction mode): no LISTEN, the change table
    is polled every ``poll_interval``; events of other processes still arrive."""
    quiet = Conveyor(f"{schema_url}&listen=false&poll_interval=0.1")
    writer = Conveyor(schema_url)
    try:
        await quiet.open()
        async with quiet.events("task.added") as events:
            task = await writer.add("outside:noop", {"n": 1})
            event = await events.get(timeout=10)
        assert event is not None and event.task_id == task.id
        storage = quiet.storage
        assert isinstance(storage, PostgresStorage)
        assert not storage.feed_health().get("listening")
    finally:
        await quiet.close()
        await writer.close()


@pytest.mark.serial  # a 100 ms bound across processes: alone
async def test_another_process_starts_a_task_within_100ms(schema_url: str,
                                                         tmp_path: Path) -> None:
    """Across processes on loopback: an idle worker process (``idle_poll`` 30 s, so only
    the notification can wake it) starts each added task, and the adder sees its
    ``task.started``, within 100 ms (median)."""
    import statistics
    import time

    (tmp_path / "outside_worker_app.py").write_text(
        WORKER_APP.replace('Conveyor(os.environ["OUTSIDE_DB"])',
                           'Conveyor(os.environ["OUTSIDE_DB"], idle_poll=30)'))
    env = clean_env(OUTSIDE_DB=schema_url, PYTHONPATH=str(tmp_path))
    worker = _start_cli_worker(tmp_path, env)
    app = Conveyor(schema_url)
    try:
        # the first task waits for the worker process to be up (the claim at its start)
        warm = await app.add("outside:chatty", {"n": -1})
        assert (await app.wait(warm.id, timeout=30))["n"] == -1
        lags = []
        async with app.events("task.started") as events:
            for i in range(7):
                added = time.monotonic()
                task = await app.add("outside:chatty", {"n": i})
                event = await events.get(timeout=10)
                assert event is not None and event.task_id == task.id
                lags.append(time.monotonic() - added)
                await app.wait(task.id, timeout=10)
        assert statistics.median(lags) < 0.1, lags
    finally:
        await app.close()
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err


@pytest.mark.serial  # a 100 ms bound across processes: alone
async def test_progress_from_another_process_within_100ms(schema_url: str,
                                                         tmp_path: Path) -> None:
    """Issue 4: a handler's progress, seen by ``events()`` in another process within
    100 ms on loopback. Updates 150 ms apart are each stored (``progress_interval``
    is 50 ms) and each reaches this process; the median lag is under 100 ms."""
    import statistics
    import time

    (tmp_path / "outside_worker_app.py").write_text(WORKER_APP)
    env = clean_env(OUTSIDE_DB=schema_url, PYTHONPATH=str(tmp_path))
    worker = _start_cli_worker(tmp_path, env)
    app = Conveyor(schema_url)
    try:
        lags: dict[float, float] = {}
        async with app.events("task.*") as events:
            task = await app.add("outside:paced")
            while True:
                event = await events.get(timeout=30)
                assert event is not None, lags
                if event.task_id != task.id:
                    continue
                if event.type == "task.succeeded":
                    break
                progress = event.data.get("progress")
                if event.type == "task.progress" and progress.current not in lags:
                    lags[progress.current] = time.time() - progress.data["sent"]
        # each is stored unless the worker stalled for 150 ms (a loaded machine)
        assert len(lags) >= 6 and max(lags) == 8, lags
        assert statistics.median(lags.values()) < 0.1, lags
    finally:
        await app.close()
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err


async def test_each_schema_notifies_on_its_own_channel(schema_url: str, server: str) -> None:
    """NOTIFY on ``conveyor:<schema>``, with the writer's origin and `` q`` when a task
    became queued."""
    app = Conveyor(schema_url)
    try:
        await app.open()
        async with await psycopg.AsyncConnection.connect(server, autocommit=True) as conn:
            await conn.execute(f'LISTEN "conveyor:{pg_schema(schema_url)}"')
            task = await app.add("outside:noop")
            await app.abort(task.id, "no")
            payloads = []
            async for note in conn.notifies(timeout=10, stop_after=2):
                assert note.channel == f"conveyor:{pg_schema(schema_url)}"
                payloads.append(note.payload)
        origin = app.storage.instance_id
        assert payloads == [f"{origin} q", origin]
    finally:
        await app.close()


async def test_a_killed_listener_is_replaced_and_catches_up(schema_url: str,
                                                            server: str) -> None:
    """The listener's connection ended by the server (``pg_terminate_backend``): a new
    one is connected, and a task added meanwhile is still announced."""
    watcher, adder = Conveyor(schema_url), Conveyor(schema_url)
    try:
        async with watcher.events("task.added") as events:
            await watcher.open()
            feed = watcher.storage
            assert isinstance(feed, PostgresStorage)
            await listening(feed)
            old = feed.feed_health()["backend_pid"]
            assert isinstance(old, int)
            async with await psycopg.AsyncConnection.connect(server, autocommit=True) as conn:
                await conn.execute("SELECT pg_terminate_backend(%s)", (old,))
            task = await adder.add("outside:noop")
            event = await events.get(timeout=10)
            assert event is not None and event.task_id == task.id
            # the event may come from the new connection's catch-up read, which comes
            # just before the listener counts itself connected
            await listening(feed)
            health = feed.feed_health()
            assert health["connected"] and health["backend_pid"] not in (None, old), health
    finally:
        await watcher.close()
        await adder.close()


# -- retention --------------------------------------------------------------------------


async def test_prune_deletes_finished_tasks_and_their_logs(schema_url: str,
                                                           server: str) -> None:
    app = Conveyor(schema_url)

    @app.handler("outside:log")
    async def log(ctx: Any) -> None:
        ctx.log.info("hello")

    try:
        finished = [await app.add("outside:log") for _ in range(3)]
        await app.start()
        for task in finished:
            await app.wait(task.id, timeout=10)
        await app.stop()
        queued = await app.add("outside:log", delay=3600)
        # a minute's age keeps everything that just finished
        assert await app.prune(60) == 0
        assert await app.count() == 4
        await asyncio.sleep(0.01)
        assert await app.prune(0.001) == 3
        assert [t.id for t in await app.find()] == [queued.id]
        with psycopg.connect(server) as conn:
            n = conn.execute(f'SELECT count(*) FROM "{pg_schema(schema_url)}".logs').fetchone()
        assert n == (0,)
    finally:
        await app.close()


def test_cli_prune(schema_url: str) -> None:
    async def finish_one() -> None:
        app = Conveyor(schema_url)
        try:
            task = await app.add("outside:noop")
            await app.abort(task.id, "no")
            await app.add("outside:noop")
        finally:
            await app.close()

    asyncio.run(finish_one())
    result = cli("prune", "--older-than", "0", "--json", "--db", schema_url)
    assert result.code == 0, result
    assert '"pruned": 1' in result.out, result
    listed = cli("stats", "--json", "--db", schema_url)
    assert listed.code == 0, listed
    assert '"queued": 1' in listed.out and "aborted" not in listed.out, listed



async def test_workers_prune_by_retention(schema_url: str) -> None:
    """A worker with ``retention=`` prunes finished tasks by itself (the first time a few
    seconds after it starts); each deleted task is announced as ``task.deleted``."""
    app = Conveyor(schema_url, retention=0.5)

    @app.handler("outside:quick")
    async def quick(ctx: Any) -> None:
        ctx.log.info("done")

    observer = Conveyor(schema_url)
    try:
        async with observer.events("task.deleted") as deleted:
            done = [await app.add("outside:quick") for _ in range(2)]
            later = await app.add("outside:quick", delay=3600)
            await app.start()
            for task in done:
                await app.wait(task.id, timeout=10)
            gone: set[str] = set()
            while len(gone) < 2:
                event = await deleted.get(timeout=20)
                assert event is not None, gone
                gone.add(str(event.task_id))
        assert gone == {t.id for t in done}
        assert [t.id for t in await observer.find()] == [later.id]
    finally:
        await app.close()
        await observer.close()


async def test_prune_skips_rows_someone_else_holds(schema_url: str, server: str) -> None:
    """Pruners pick with SKIP LOCKED: a finished task locked by another transaction is
    passed over (not waited for), the others are deleted."""
    app = Conveyor(schema_url)
    try:
        tasks = [await app.add("outside:noop") for _ in range(5)]
        for task in tasks:
            await app.abort(task.id, "done")
        schema = pg_schema(schema_url)
        async with await psycopg.AsyncConnection.connect(server) as holder:
            await holder.execute(f'SELECT id FROM "{schema}".tasks WHERE id = %s FOR UPDATE',
                                 (tasks[0].id,))
            await asyncio.sleep(0.01)
            assert await asyncio.wait_for(app.prune(0.001), 10) == 4
            await holder.rollback()
        assert [t.id for t in await app.find()] == [tasks[0].id]
        assert await app.prune(0.001) == 1
        assert await app.count() == 0
    finally:
        await app.close()
