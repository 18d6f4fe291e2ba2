"""Bad URLs, unreachable servers, wrong passwords, missing or newer schemas: clear errors,
nothing half-written."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from conveyor.errors import (
    ConfigurationError,
    QueryError,
    SchemaError,
    StorageError,
    ValidationError,
)
from conveyor.query import parse_filter
from conveyor.storage import open_storage
from conveyor.storage.postgres import SCHEMA_VERSION, PostgresStorage, migrate
from conveyor.testing.contract import make_spec


def _with(url: str, **parts: Any) -> str:
    return urlunsplit(urlsplit(url)._replace(**parts))


@pytest.mark.parametrize("url", [
    "postgresql://u:p@localhost:notaport/db",
    "postgresql://u:p@localhost/db?schema=Bad-Name",
    "postgresql://u:p@localhost/db?schema=1abc",
    "postgresql://u:p@localhost/db?migrate=maybe",
    "postgresql://u:p@localhost/db?pool_max=lots",
    "postgresql://u:p@localhost/db?pool_min=5&pool_max=2",
    "postgresql://u:p@localhost/db?poll_interval=0",
    "postgresql://u:p@localhost/db?poll_interval=1e10",  # the feed read once in 300 years
    "postgresql://u:p@localhost/db?pool_timeout=0",
    "postgresql://u:p@localhost/db?pool_timeout=-1",
    "postgresql://u:p@localhost/db?pool_timeout=soon",
    "postgresql://u:p@localhost/db?pool_timeout=inf",
    "postgresql://u:p@localhost/db?no_such_libpq_option=1",
    "postgresql://u:p@localhost/db?gssencmode=bogus",
    "postgresql://u:p@localhost/db?channel_binding=bogus",
    "postgresql://u:p@localhost/db?tcp_user_timeout=soon",
])
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_storage(url)


def test_both_schemes_dispatch_and_password_is_hidden() -> None:
    for scheme in ("postgres", "postgresql"):
        storage = open_storage(f"{scheme}://ann:s3cret@db.example:5433/tasks?schema=jobs")
        assert isinstance(storage, PostgresStorage)
        assert "s3cret" not in storage.url and "ann" in storage.url
        assert storage.schema == "jobs"


async def test_a_url_without_a_host_keeps_its_form(schema_url: str) -> None:
    """``postgresql:///db`` (libpq's default host: the local socket) with the host,
    user and password as query parameters, as libpq takes them."""
    from conveyor.storage.postgres import parse_postgres_url

    conninfo, _, display = parse_postgres_url("postgresql:///tasks?host=/run/pg&schema=jobs")
    assert psycopg.conninfo.conninfo_to_dict(conninfo) == {
        "dbname": "tasks", "host": "/run/pg", "connect_timeout": "10",
        "client_encoding": "UTF8"}
    assert display == "postgresql:///tasks?host=%2Frun%2Fpg&schema=jobs"
    parts = urlsplit(schema_url)
    query = (f"{parts.query}&host={parts.hostname}&port={parts.port}"
             f"&user={parts.username}&password={parts.password}")
    url = f"postgresql://{parts.path}?{query}"  # urlunsplit would drop the "//"
    storage = PostgresStorage(url)
    await storage.open()
    try:
        [res] = await storage.add([make_spec()])
        assert (await storage.get(res.task.id)) is not None
        assert "password" not in storage.url
    finally:
        await storage.close()


async def test_refused_connection(server: str) -> None:
    url = _with(server, netloc=f"{urlsplit(server).username}:x@127.0.0.1:1")
    storage = PostgresStorage(url)
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot connect to PostgreSQL") as info:
        await storage.open()
    assert time.monotonic() - started < 10
    assert "x@" not in str(info.value)  # no password in messages


async def test_wrong_password(server: str) -> None:
    parts = urlsplit(server)
    url = _with(server, netloc=f"{parts.username}:wrong-password@{parts.hostname}:{parts.port}")
    with pytest.raises(StorageError, match="password authentication failed") as info:
        await PostgresStorage(url).open()
    assert "wrong-password" not in str(info.value)


async def test_unknown_database(server: str) -> None:
    url = _with(server, path="/no_such_database_here")
    with pytest.raises(StorageError, match="no_such_database_here"):
        await PostgresStorage(url).open()


async def test_missing_schema_says_to_migrate(bare_url: str, server: str) -> None:
    storage = PostgresStorage(bare_url)
    with pytest.raises(SchemaError, match="conveyor migrate"):
        await storage.open()
    # nothing was created
    schema = dict(p.split("=") for p in urlsplit(bare_url).query.split("&"))["schema"]
    with psycopg.connect(server) as conn:
        found = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                             (schema,)).fetchone()
    assert found == (0,)


async def test_newer_schema_is_refused(bare_url: str, server: str) -> None:
    assert await migrate(bare_url) == SCHEMA_VERSION
    schema = dict(p.split("=") for p in urlsplit(bare_url).query.split("&"))["schema"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{schema}".migrations (version, name) VALUES (999, \'future\')')
    with pytest.raises(SchemaError, match="newer than this conveyor"):
        await PostgresStorage(bare_url).open()
    with pytest.raises(SchemaError, match="newer than this conveyor"):
        await migrate(bare_url)
    with pytest.raises(SchemaError, match="newer than this conveyor"):
        await PostgresStorage(bare_url, migrate=True).open()


async def test_nul_in_payload_is_refused_and_nothing_written(storage: Any) -> None:
    good = make_spec(payload={"ok": 1})
    bad = make_spec(payload={"text": "a\x00b"})
    with pytest.raises(ValidationError, match="NUL"):
        await storage.add([good, bad])
    assert await storage.get(good.id) is None


async def test_nul_in_results_and_logs_is_replaced(storage: Any) -> None:
    from conveyor.model import LogLevel, Status, Transition
    from conveyor.storage import Completion, NewLog

    await storage.add([make_spec()])
    [task] = await storage.claim("w", ["test:a"], 1, 30)
    await storage.append_logs([NewLog(task.id, LogLevel.INFO, "nul\x00here", time.time(),
                                      {"k": "v\x00"})])
    refused = await storage.finish("w", [Completion(task.id, task.token, Transition(
        Status.SUCCEEDED, result={"r": "x\x00y"}))])
    assert refused == []
    done = await storage.get(task.id)
    assert done.status is Status.SUCCEEDED and done.result == {"r": "x\ufffdy"}
    [line] = await storage.read_logs(task.id)
    assert line.message == "nul\ufffdhere" and line.data == {"k": "v\ufffd"}


async def test_unsupported_regex_is_a_query_error(storage: Any) -> None:
    with pytest.raises(QueryError, match="PostgreSQL"):
        await storage.count(parse_filter({"payload.a": {"$regex": "(?>a)"}}))
    with pytest.raises(QueryError, match="PostgreSQL"):
        await storage.count(parse_filter({"payload.a": {"$regex": "a{300}"}}))


async def test_add_in_refuses_an_autocommit_connection(storage: Any, schema_url: str) -> None:
    from conveyor.storage.postgres import parse_postgres_url

    conninfo, _, _ = parse_postgres_url(schema_url)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        with pytest.raises(ConfigurationError, match="transaction"):
            await storage.add_in(conn, [make_spec()])


async def test_a_clock_off_the_servers_is_a_warning(storage: Any, caplog: Any) -> None:
    """Leases, delays and timeouts use each process's clock: opening says when this
    host's is off the server's by more than CLOCK_TOLERANCE."""
    import logging

    from conveyor.storage.postgres import CLOCK_TOLERANCE, _check_clock

    async with storage._conn() as conn:
        with caplog.at_level(logging.WARNING, logger="conveyor.storage.postgres"):
            assert abs(await _check_clock(conn, "db")) < CLOCK_TOLERANCE  # same host
            assert not caplog.records
            offset = await _check_clock(conn, "db", clock=lambda: time.time() + 30)
    assert -31 < offset < -29
    [record] = caplog.records
    assert "30.0 s ahead of the clock of PostgreSQL at db" in record.getMessage()
    assert "NTP" in record.getMessage()


async def test_libpq_options_with_spaces_reach_the_server(schema_url: str) -> None:
    """The query string is passed on percent-encoded (not with ``+`` for spaces, which
    libpq would read as itself)."""
    from conveyor.storage.postgres import parse_postgres_url

    url = f"{schema_url}&application_name=my%20app&options=-c%20statement_timeout%3D4321"
    conninfo, _, _ = parse_postgres_url(url)
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    assert params["application_name"] == "my app"
    assert params["options"] == "-c statement_timeout=4321"
    storage = PostgresStorage(url)
    await storage.open()
    try:
        [res] = await storage.add([make_spec()])
        assert await storage.get(res.task.id) is not None
    finally:
        await storage.close()
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("4321ms",)
        assert conn.execute("SHOW application_name").fetchone() == ("my app",)


@pytest.mark.parametrize("url", [
    "postgresql://ann@db.example/db?password=s3cret&bogus=1",
    "postgresql://ann@db.example:abc/db?password=s3cret",
    "mysql://db.example/db?password=s3cret",
    "postgresql://ann:s3cret@db.example/db?password=s3cret&bogus=1",
])
def test_no_password_in_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        PostgresStorage(url)
    assert "s3cret" not in str(err.value) and "***" in str(err.value)


def test_unknown_and_repeated_options_are_named() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option 'bogus'.*schema"):
        PostgresStorage("postgresql://ann@db.example/db?bogus=1")
    with pytest.raises(ConfigurationError, match="'schema' given twice"):
        PostgresStorage("postgresql://ann@db.example/db?schema=a&schema=b")
    with pytest.raises(ConfigurationError, match="'sslmode' given twice"):
        PostgresStorage("postgresql://ann@db.example/db?sslmode=require&sslmode=disable")


async def test_tables_not_made_by_migrate_are_named(bare_url: str, server: str) -> None:
    schema = dict(p.split("=") for p in urlsplit(bare_url).query.split("&"))["schema"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".tasks (id text)')
    with pytest.raises(SchemaError, match=rf'"{schema}".*conveyor migrate.*another schema'):
        await PostgresStorage(bare_url).open()


@pytest.mark.parametrize(("tables", "named"), [
    (["CREATE TABLE {s}.logs (id int)"], "a logs table"),
    (["CREATE TABLE {s}.workers (id int)", "CREATE TABLE {s}.changes (id int)"],
     "tables changes, workers"),
    (["CREATE TABLE {s}.migrations (id int, timestamp bigint, name text)"],
     "unlike conveyor's"),
    (["CREATE TABLE {s}.migrations (version int, name text, applied_at timestamptz)",
      "INSERT INTO {s}.migrations VALUES (1, 'create_users', now())"], "did not write"),
    (["CREATE TABLE {s}.migrations (version int, name text, applied_at timestamptz)",
      "CREATE TABLE {s}.tasks (id text)"], "did not write"),
    # another tool's empty migrations table, with conveyor's two columns among its own
    (["CREATE TABLE {s}.migrations (id serial, version bigint, name text, run_on timestamp)"],
     "unlike conveyor's"),
    (["CREATE TABLE {s}.migrations (version int, name text)"], "unlike conveyor's"),
])
async def test_other_tables_of_conveyors_names_are_named(
        bare_url: str, server: str, tables: list[str], named: str) -> None:
    """A schema holding tables of conveyor's names that migrate did not make: opening it
    and migrating it both say to use another schema, and migrate changes nothing."""
    schema = dict(p.split("=") for p in urlsplit(bare_url).query.split("&"))["schema"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        for statement in tables:
            conn.execute(statement.format(s=f'"{schema}"'))
    for attempt in (PostgresStorage(bare_url).open(), migrate(bare_url),
                    PostgresStorage(bare_url, migrate=True).open()):
        with pytest.raises(SchemaError, match=rf'"{schema}" holds .*{named}.*another schema'):
            await attempt
    with psycopg.connect(server) as conn:
        left = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s",
                            (schema,)).fetchone()
    assert left == (len([t for t in tables if t.startswith("CREATE")]),)


@pytest.mark.parametrize("url", [
    "postgresql://ann:pa/ssSECRET@db.example:5432/db",
    "postgresql://ann:p?wSECRET@db.example/db",
    "postgresql://ann:pw#SECRET@db.example/db",
    "postgresql://ann:12/34SECRET@db.example/db",
])
def test_an_unencoded_delimiter_in_the_password_is_named_not_shown(url: str) -> None:
    with pytest.raises(ConfigurationError, match="must be percent-encoded") as err:
        PostgresStorage(url)
    assert "SECRET" not in str(err.value) and "ann:***@db.example" in str(err.value)


def test_a_bad_escape_in_the_password_is_not_shown() -> None:
    with pytest.raises(ConfigurationError, match="percent-encoded") as err:
        PostgresStorage("postgresql://ann:x%zzSECRET@db.example/db")
    assert "SECRET" not in str(err.value), err.value


@pytest.mark.parametrize(("url", "key"), [
    ("postgresql://ann@db.example:5432/app?dbname=other", "dbname"),
    ("postgresql://ann@db.example:5432/app?port=5999", "port"),
    ("postgresql://ann@[::1]:5432/app?port=5999", "port"),
    ("postgresql://ann@db.example/app?host=", "host"),
    ("postgresql://ann@db.example/app?user=bob", "user"),
    ("postgresql://ann:pw@db.example/app?password=pw2", "password"),
])
def test_a_query_option_repeating_a_part_of_the_url_is_refused(url: str, key: str) -> None:
    with pytest.raises(ConfigurationError, match=f"'{key}' given twice"):
        PostgresStorage(url)


def test_query_options_may_fill_the_parts_the_url_leaves_out() -> None:
    for url in ("postgresql:///app?host=/var/run/postgresql&user=ann&port=5432",
                "postgresql://[::1]/app?port=5433", "postgresql://db.example?dbname=app"):
        PostgresStorage(url)  # nothing connects before open()
    # a keyword beside the same option in the URL wins
    assert PostgresStorage("postgresql://db.example/app?schema=aaa", schema="bbb").schema == "bbb"


async def test_nul_in_a_unique_key_is_named(storage: Any) -> None:
    spec = make_spec(unique_key="a\x00b")
    with pytest.raises(ValidationError, match="unique key"):
        await storage.add([spec])
    assert await storage.get(spec.id) is None


def test_poll_interval_is_at_most_an_hour() -> None:
    with pytest.raises(ConfigurationError, match="poll_interval must be at most 3600"):
        open_storage("postgresql://u:p@localhost/db?poll_interval=3601")
    assert open_storage("postgresql://u:p@localhost/db?poll_interval=3600") is not None
