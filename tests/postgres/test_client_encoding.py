"""conveyor's connections speak UTF-8 whatever the database or the role sets as the
default ``client_encoding``: with a LATIN1 default, an add of a character LATIN1
lacks raised ``UnicodeEncodeError``, and one such task (added over a UTF-8
connection) failed every claim of its action; with ``SQL_ASCII`` the schema check
took conveyor's own migrations table for a foreign one."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from conveyor import ConfigurationError, Conveyor, Status
from conveyor.storage.postgres import parse_postgres_url

from .test_faults import fresh_database


async def test_a_database_whose_default_client_encoding_is_not_utf8(server: str) -> None:
    with fresh_database(server) as (url, name):
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE \"{name}\" SET client_encoding = 'LATIN1'")
        app = Conveyor(f"{url}?migrate=true")

        @app.handler("echo")
        async def echo(ctx: Any) -> Any:
            return ctx.payload

        async with app:
            first = await app.add("echo", {"s": "☃ é"})
            assert await app.wait(first.id, timeout=20) == {"s": "☃ é"}
        # the same database through a URL asking SQL_ASCII in its options: UTF8 wins
        again = Conveyor(f"{url}?options=-c%20client_encoding%3DSQL_ASCII")
        async with again:
            assert (await again.get(first.id)).status is Status.SUCCEEDED
            assert (await again.add("echo", {"s": "☃"})).payload == {"s": "☃"}


def test_a_url_asking_another_client_encoding_is_refused(server: str) -> None:
    with pytest.raises(ConfigurationError, match=r"client_encoding='LATIN1'.*use UTF8"):
        parse_postgres_url(f"{server}?client_encoding=LATIN1")
    for name in ("UTF8", "utf8", "UTF-8", "unicode"):
        conninfo, _, _ = parse_postgres_url(f"{server}?client_encoding={name}")
        assert conninfo.count("client_encoding") == 1


async def test_add_in_on_a_connection_of_another_encoding_is_refused(storage: Any,
                                                                     schema_url: str) -> None:
    conninfo, _, _ = parse_postgres_url(schema_url)
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        await conn.execute("SET client_encoding TO 'LATIN1'")
        async with conn.transaction():
            with pytest.raises(ConfigurationError, match="client_encoding is UTF8, not 'LATIN1'"):
                await storage.add_in(conn, [("test:a", {"s": "☃"})])
