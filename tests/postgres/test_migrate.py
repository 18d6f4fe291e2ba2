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
