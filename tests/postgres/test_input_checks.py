"""URL values, keyword options, big floats, conditions PostgreSQL cannot run, and
errors that name their item or place: checked before anything is written."""

from __future__ import annotations

import math
from typing import Any

import psycopg
import pytest

from conveyor import Conveyor
from conveyor.errors import ConfigurationError, QueryError, ValidationError
from conveyor.query import parse_filter
from conveyor.storage.postgres import PostgresStorage, parse_postgres_url
from conveyor.testing.contract import make_spec

from ..cli._support import assert_error, cli

BOOK = {"scope": "running", "query": {"payload.book": {"$regex": "a++"}}, "limit": 1}


async def test_a_plus_in_a_url_value_stays_a_plus(schema_url: str) -> None:
    url = f"{schema_url}&application_name=my+app%20x"
    conninfo, _, display = parse_postgres_url(url)
    assert "my%2Bapp" in display
    assert psycopg.conninfo.conninfo_to_dict(conninfo)["application_name"] == "my+app x"
    storage = PostgresStorage(url)
    await storage.open()
    try:
        async with storage._conn() as conn:
            cur = await conn.execute("SHOW application_name")
            assert await cur.fetchone() == ("my+app x",)
    finally:
        await storage.close()


@pytest.mark.parametrize(("url", "named"), [
    ("postgresql://ann:pw@db.example/db?sslmode=bogus", "sslmode='bogus'"),
    ("postgresql://ann:pw@db.example/db?connect_timeout=abc", "connect_timeout='abc'"),
    ("postgresql://ann:pw@db.example/db?port=abc", "port='abc'"),
    ("postgresql://ann:pw@db.example/db?port=5432,0", "port='5432,0'"),
    ("postgresql://ann:pw@db.example/db?target_session_attrs=any-one", "target_session_attrs"),
    ("postgresql://ann:p@ss@db.example/db", "%40"),
    ("postgresql://ann:pw@db.example/db?schema=pg_jobs", "pg_"),
    # a bad escape in a query value: libpq refuses it, the parser kept it (re-encoded,
    # the password was sent as written and failed as a wrong password)
    ("postgresql://ann@db.example/db?password=pw%zzss",
     "invalid percent-encoded token in 'password'"),
    ("postgresql://ann:pw@db.example/db?application_name=a%z", "in 'application_name'"),
])
def test_values_libpq_would_refuse_on_connecting_are_configuration_errors(
        url: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named) as err:
        PostgresStorage(url)
    assert "pw" not in str(err.value) and "ss@" not in str(err.value)


def test_a_list_of_ports_is_accepted() -> None:
    conninfo, _, _ = parse_postgres_url("postgresql://db.example/db?port=5432,5433")
    assert psycopg.conninfo.conninfo_to_dict(conninfo)["port"] == "5432,5433"


@pytest.mark.parametrize("options", [
    {"listen": "false"}, {"migrate": 1}, {"prepare": "no"}, {"schema": 5},
    {"schema": "pg_jobs"}, {"pool_max": 2.5}, {"pool_min": True},
    {"poll_interval": math.nan}, {"poll_interval": "1"}, {"pool_timeout": "5"},
    {"pool_timeout": 0}, {"pool_timeout": math.inf}, {"pool_timeout": True},
])
def test_keyword_options_are_checked_like_the_urls(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(options))):
        PostgresStorage("postgresql://db.example/db", **options)


async def test_floats_with_an_exponent_come_back_as_floats(storage: Any) -> None:
    payload = {"a": 1e16, "b": -5e18, "c": 1e300, "d": 10**17, "e": "1e+16 \"x\" 2E+20",
               "f": [2.5e17, 1e-7, 0.5]}
    spec = make_spec(payload=payload, tags={"big": 9.2e18})
    await storage.add([spec])
    task = await storage.get(spec.id)
    assert task.payload == payload and task.tags == {"big": 9.2e18}
    for key in ("a", "b", "c"):
        assert type(task.payload[key]) is float, key
    assert type(task.payload["d"]) is int
    assert [type(v) for v in task.payload["f"]] == [float, float, float]
    assert await storage.count(parse_filter({"payload.a": 1e16})) == 1


async def test_a_condition_postgresql_cannot_run_is_refused_by_add(schema_url: str) -> None:
    app = Conveyor(schema_url)
    try:
        with pytest.raises(QueryError) as err:
            await app.add("b:index", {"book": "Z"}, concurrency=[BOOK])
        assert err.value.path == "concurrency[0].query.payload.book.$regex"
        assert "possessive" in str(err.value)
        with pytest.raises(QueryError, match=r"^task 1: concurrency\[1\]") as in_batch:
            await app.add_many([("b:index", {"book": "A"}),
                                ("b:index", {"book": "B"},
                                 {"concurrency": [{"query": {"payload.book": "B"}}, BOOK]})])
        assert in_batch.value.path == "concurrency[1].query.payload.book.$regex"
        with pytest.raises(ValidationError, match=r"^task 1: "):
            await app.add_many([("b:index", {"book": "A"}, {"unique_key": "a"}),
                                ("b:index", {"book": "B"}, {"concurrency": [BOOK]})])
        assert await app.count() == 0
        fine = await app.add("b:index", {"book": "Z"},
                             concurrency=[{"query": {"payload.book": {"$regex": "^Z"}}}])
        assert fine.concurrency[0].query == {"payload.book": {"$regex": "^Z"}}
    finally:
        await app.close()


async def test_a_refused_pattern_names_its_place(storage: Any) -> None:
    where = parse_filter({"$or": [{"payload.a": 1}, {"payload.v": {"$regex": "(?>a)"}}]})
    with pytest.raises(QueryError) as err:
        await storage.count(where)
    assert err.value.path == "filter.$or[1].payload.v.$regex"
    assert str(err.value).startswith("filter.$or[1].payload.v.$regex: $regex '(?>a)' uses")


async def test_a_refused_pattern_keeps_the_callers_paths(schema_url: str) -> None:
    """``delete`` by filter adds "has ended" to the caller's filter; the error of a
    pattern PostgreSQL cannot run points into the caller's filter, not into that
    combination (it said ``filter.$and[0].payload...``)."""
    app = Conveyor(schema_url)
    try:
        await app.add("b:index", {"book": "a"})
        with pytest.raises(QueryError) as err:
            await app.delete({"payload.book": {"$regex": "a++"}})
        assert err.value.path == "filter.payload.book.$regex"
        assert str(err.value).startswith("filter.payload.book.$regex: $regex 'a++' uses")
        assert await app.count() == 1
    finally:
        await app.close()


async def test_a_nul_in_add_many_names_the_item(schema_url: str) -> None:
    app = Conveyor(schema_url)
    try:
        items: list[Any] = [("x:y", {"i": i}) for i in range(700)]
        items[600] = ("x:y", {"i": "a\x00"})
        with pytest.raises(ValidationError,
                           match=r"^task 600: payload: PostgreSQL cannot store the NUL"):
            await app.add_many(items)
        with pytest.raises(ValidationError,
                           match=r"^task 1: payload: PostgreSQL cannot store the NUL"):
            await app.add_many([("x:y", {}, {"unique_key": "k"}), ("x:y", {"i": "\x00"})])
        with pytest.raises(ValidationError, match=r"^payload: PostgreSQL cannot store the NUL"):
            await app.add("x:y", {"i": "\x00"})
        assert await app.count() == 0
    finally:
        await app.close()


def test_serve_on_a_database_without_the_schema_is_one_line(bare_url: str) -> None:
    result = cli("serve", "--port", "0", "--insecure", "--db", bare_url, timeout=30)
    assert_error(result, 1, "conveyor migrate")


def test_migrate_prints_the_url_without_the_password(bare_url: str) -> None:
    result = cli("migrate", "--db", bare_url)
    assert result.code == 0, result
    shown = result.out.strip().rpartition(" at ")[2]
    assert shown.startswith("postgresql://") and "schema=" in shown
    assert ":conveyor@" not in shown
