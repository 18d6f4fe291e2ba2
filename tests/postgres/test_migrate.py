"""Migrations: versioned, idempotent, safe to run from several processes at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conveyor.storage.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStorage, migrate
from conveyor.testing.contract import make_spec

from ..conftest import pg_schema

REPO = Path(__file__).resolve().parents[2]


async def test_migrate_creates_and_is_idempotent(bare_url: str, server: str) -> None:
    assert await migrate(bare_url) == SCHEMA_VERSION
    assert await migrate(bare_url) == SCHEMA_VERSION
    with psycopg.connect(server) as conn:
        rows = conn.execute(f'SELECT version, name FROM "{pg_schema(bare_url)}".migrations '
                            "ORDER BY version").fetchall()
    assert rows == [(m.version, m.name) for m in MIGRATIONS]
    storage = PostgresStorage(bare_url)  # no migrate option needed now
    await storage.open()
    try:
        [res] = await storage.add([make_spec()])
        assert res.created
    finally:
        await storage.close()


async def test_concurrent_migrations_in_one_process(bare_url: str) -> None:
    versions = await asyncio.gather(*(migrate(bare_url) for _ in range(6)))
    assert versions == [SCHEMA_VERSION] * 6


def test_concurrent_migrations_from_processes(bare_url: str, server: str) -> None:
    code = ("import asyncio, sys; from conveyor.storage.postgres import migrate; "
            "print(asyncio.run(migrate(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, bare_url], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert [o.strip() for o, _ in outs] == [str(SCHEMA_VERSION)] * 4
    with psycopg.connect(server) as conn:
        n = conn.execute(f'SELECT count(*) FROM "{pg_schema(bare_url)}".migrations').fetchone()
    assert n == (len(MIGRATIONS),)


async def test_open_with_migrate_from_many_storages(bare_url: str) -> None:
    storages = [PostgresStorage(bare_url, migrate=True) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in storages))
    for s in storages:
        await s.close()


async def test_schemas_are_isolated(schema_url: str) -> None:
    from ..conftest import drop_pg_schema, pg_url

    other_url = pg_url(migrate="true")
    a, b = PostgresStorage(schema_url), PostgresStorage(other_url)
    await a.open()
    await b.open()
    try:
        await a.add([make_spec()])
        assert await b.claim("w", ["test:a"], 10, 30) == []
        assert len(await a.claim("w", ["test:a"], 10, 30)) == 1
    finally:
        await a.close()
        await b.close()
        drop_pg_schema(other_url)


async def test_upgrade_from_version_2_keeps_the_feed(bare_url: str, server: str,
                                                     monkeypatch: Any) -> None:
    """A schema made by the code of version 2 (one change row per task) upgrades to
    version 3 (one row per statement) with its rows; both kinds read back."""
    from conveyor.storage import postgres
    from conveyor.storage._pgfeed import _changes

    monkeypatch.setattr(postgres, "MIGRATIONS", MIGRATIONS[:2])
    monkeypatch.setattr(postgres, "SCHEMA_VERSION", 2)
    assert await migrate(bare_url) == 2
    schema = pg_schema(bare_url)
    with psycopg.connect(server) as conn:
        conn.execute(f'INSERT INTO "{schema}".tasks (id, action, payload, status, run_at, '
                     "created_at, updated_at) SELECT 'old-' || i, 'test:a', 'null', 'queued', "
                     "0, 0, 0 FROM generate_series(1, 3) AS i")
    monkeypatch.undo()
    assert await migrate(bare_url) == SCHEMA_VERSION == 4
    storage = PostgresStorage(bare_url)
    await storage.open()
    try:
        await storage.add([make_spec() for _ in range(4)])
    finally:
        await storage.close()
    with psycopg.connect(server) as conn:
        rows = conn.execute(f'SELECT seq, task_id, version, status, event, origin, ts, ids, '
                            f'versions FROM "{schema}".changes ORDER BY seq').fetchall()
    assert [(r[1], r[7]) for r in rows[:3]] == [(f"old-{i}", None) for i in (1, 2, 3)]
    assert len(rows) == 4 and rows[3][1] is None and len(rows[3][7]) == 4
    with psycopg.connect(server) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(f'INSERT INTO "{schema}".changes (task_id, version, status, event, ts, '
                     "ids, versions) VALUES ('x', 1, 'queued', 'added', 0, '{x}', '{1}')")
    changes = _changes(rows)
    assert [c.task_id for c in changes][:3] == ["old-1", "old-2", "old-3"]
    assert len(changes) == 7 and {c.seq for c in changes[3:]} == {rows[3][0]}


async def test_a_migration_that_meets_a_deadlock_with_a_worker_runs_again(
        bare_url: str, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """0004 builds indexes (SHARE on tasks), then drops one (ACCESS EXCLUSIVE). A
    worker's transaction that locked a row of tasks, then writes it while the build
    runs, waits for the SHARE lock, and the drop waits for the worker: ``deadlock
    detected`` failed 7 of 10 migrations beside busy workers of the version before.
    The migration is rolled back, the worker goes on, and the migration runs again."""
    import time

    from conveyor.storage import postgres

    monkeypatch.setattr(postgres, "MIGRATIONS", MIGRATIONS[:3])
    assert await migrate(bare_url) == 3
    monkeypatch.setattr(postgres, "MIGRATIONS", MIGRATIONS)
    schema = pg_schema(bare_url)
    task_id = "01a25000-0000-7000-8000-000000000001"
    async with await psycopg.AsyncConnection.connect(server) as worker:
        columns = "id, action, payload, status, priority, run_at, created_at, updated_at"
        await worker.execute(f'INSERT INTO "{schema}".tasks ({columns}) '
                             "VALUES (%s, 'a', 'null', 'queued', 0, 0, 0, 0)", (task_id,))
        # enough ended tasks that the index builds take a while
        await worker.execute(f'INSERT INTO "{schema}".tasks ({columns}) SELECT %s || g, '
                             "'a', 'null', 'succeeded', 0, 0, g, 0 "
                             "FROM generate_series(1, 300000) AS g", ("old-",))
        await worker.commit()
        # a claim's first statement: a row locked (ROW SHARE on the table)
        await worker.execute(f'SELECT id FROM "{schema}".tasks WHERE id = %s FOR UPDATE',
                             (task_id,))
        migrating = asyncio.ensure_future(migrate(bare_url))
        deadline = time.monotonic() + 20
        async with await psycopg.AsyncConnection.connect(server, autocommit=True) as watch:
            while True:  # until the migration builds its indexes (SHARE granted)
                cur = await watch.execute(
                    "SELECT count(*) FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation "
                    "JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE n.nspname = %s "
                    "AND c.relname = 'tasks' AND l.mode = 'ShareLock' AND l.granted", (schema,))
                row = await cur.fetchone()
                if row is not None and row[0] >= 1:
                    break
                assert time.monotonic() < deadline and not migrating.done()
                await asyncio.sleep(0.005)
        # its next statement waits for the build; the drop then waits for it: the
        # migration is cancelled by PostgreSQL, and this statement goes on
        await worker.execute(f'UPDATE "{schema}".tasks SET priority = 1 WHERE id = %s',
                             (task_id,))
        await worker.commit()
    assert await asyncio.wait_for(migrating, 60) == SCHEMA_VERSION
    async with await psycopg.AsyncConnection.connect(server) as conn:
        cur = await conn.execute(f'SELECT max(version) FROM "{schema}".migrations')
        assert await cur.fetchone() == (SCHEMA_VERSION,)
