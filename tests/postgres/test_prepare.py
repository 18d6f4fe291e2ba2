"""``prepare=false``: no prepared statements (PgBouncer before 1.21 in transaction mode)."""

from __future__ import annotations

import pytest

from conveyor.query import parse_filter
from conveyor.storage.postgres import PostgresStorage, parse_postgres_url
from conveyor.testing.contract import make_spec


async def _prepared_after_work(storage: PostgresStorage) -> int:
    """Run the same statements more than psycopg's threshold (5) on one pooled
    connection, and count what that connection has prepared."""
    async with storage._conn() as conn:
        for _ in range(8):
            await storage._add_on(conn, [make_spec()], storage.instance_id)
            await storage._rows(conn, storage._q["get_task"], {"id": "x"})
        cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("option", "prepared"), [("", True), ("&prepare=false", False)])
async def test_prepare_option(schema_url: str, option: str, prepared: bool) -> None:
    storage = PostgresStorage(schema_url + option)
    await storage.open()
    try:
        assert (await _prepared_after_work(storage) > 0) is prepared
        assert await storage.count(parse_filter({})) == 8
    finally:
        await storage.close()


async def test_prepare_keyword_and_bad_values(schema_url: str) -> None:
    from conveyor.errors import ConfigurationError

    storage = PostgresStorage(schema_url, prepare=False)
    assert storage.options.prepare_threshold is None
    await storage.open()
    try:
        assert await _prepared_after_work(storage) == 0
    finally:
        await storage.close()
    assert parse_postgres_url(schema_url)[1].prepare_threshold == 5
    with pytest.raises(ConfigurationError, match="prepare must be true or false"):
        parse_postgres_url(schema_url + "&prepare=sometimes")
