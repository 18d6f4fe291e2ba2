"""A big add is sent as several insert statements (built while the server runs the
previous one) inside one transaction: all the tasks or none, in order."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from conveyor.errors import StorageError, ValidationError
from conveyor.model import Status
from conveyor.query import parse_filter
from conveyor.storage import postgres
from conveyor.storage.postgres import parse_postgres_url
from conveyor.testing.contract import make_spec

N = postgres._ADD_CHUNK * 3 + 7  # four statements, the last one short


async def test_a_big_add_inserts_every_task_in_order(storage: Any) -> None:
    specs = [make_spec(payload={"i": i}) for i in range(N)]
    results = await storage.add(specs)
    assert [r.task.id for r in results] == [s.id for s in specs]
    assert all(r.created for r in results)
    assert await storage.count(parse_filter({"action": "test:a"})) == N
    stored = await storage.get_many([s.id for s in specs])
    assert sorted(t.payload["i"] for t in stored) == list(range(N))
    assert all(t.status is Status.QUEUED for t in stored)
    claimed = await storage.claim("w", ["test:a"], N, 30)
    assert [t.payload["i"] for t in claimed] == list(range(N))  # created in order


async def test_a_bad_task_in_a_later_statement_writes_nothing(storage: Any) -> None:
    specs = [make_spec(payload={"i": i}) for i in range(N)]
    specs[-3] = make_spec(payload={"bad": "nul \x00 here"})
    with pytest.raises(ValidationError, match="NUL"):
        await storage.add(specs)
    assert await storage.count(parse_filter({})) == 0


async def test_a_refused_row_in_a_later_statement_writes_nothing(storage: Any) -> None:
    [taken] = await storage.add([make_spec(payload="first")])
    specs = [make_spec(payload={"i": i}) for i in range(N)]
    dup = specs[postgres._ADD_CHUNK * 2 + 1]
    specs[postgres._ADD_CHUNK * 2 + 1] = make_spec(payload="dup")
    object.__setattr__(specs[postgres._ADD_CHUNK * 2 + 1], "id", taken.task.id)
    with pytest.raises(StorageError, match="already exists"):
        await storage.add(specs)
    assert await storage.count(parse_filter({})) == 1
    assert await storage.get(dup.id) is None


async def test_a_big_add_in_the_callers_transaction(storage: Any, schema_url: str) -> None:
    conninfo, _, _ = parse_postgres_url(schema_url)
    # a failed big add inside the caller's transaction leaves it usable and empty
    async with await psycopg.AsyncConnection.connect(conninfo) as conn, conn.transaction():
        bad = [make_spec(payload={"i": i}) for i in range(N)]
        bad[-1] = make_spec(payload="\x00")
        with pytest.raises(ValidationError):
            await storage.add_in(conn, bad)
        good = [make_spec(payload={"i": i}) for i in range(N)]
        await storage.add_in(conn, good)
        assert await storage.count(parse_filter({})) == 0  # not committed yet
    assert await storage.count(parse_filter({})) == N
    assert await storage.get(bad[0].id) is None


async def test_add_many_validates_each_part_while_sending_the_previous(storage: Any) -> None:
    """``Conveyor.add_many`` of plain (action, payload) items hands the storage a
    builder: a bad item far into the batch still writes nothing, and names its index."""
    from conveyor import Conveyor

    app = Conveyor(storage)
    items: list[Any] = [("test:a", {"i": i}) for i in range(N)]
    bad = postgres._ADD_CHUNK * 2 + 5
    items[bad] = ("test:a", {"not json": {1, 2}})
    with pytest.raises(ValidationError, match=f"task {bad}: payload"):
        await app.add_many(items)
    assert await storage.count(parse_filter({})) == 0
    items[bad] = ("test:a", {"i": bad})
    tasks = await app.add_many(items)
    assert [t.payload["i"] for t in tasks] == list(range(N))
    assert len({t.id for t in tasks}) == N
    assert await storage.count(parse_filter({})) == N
    # items with options (a unique key) take the one-statement path and still dedupe
    again = await app.add_many([("test:a", {"i": i}, {"unique_key": f"k{i % 3}"})
                                for i in range(N)])
    assert len({t.id for t in again}) == 3
    assert await storage.count(parse_filter({})) == N + 3


async def test_add_streamed_refuses_a_builder_that_gives_the_wrong_count(storage: Any) -> None:
    with pytest.raises(StorageError, match="gave"):
        await storage.add_streamed(lambda start, stop: [make_spec()], N)
    assert await storage.count(parse_filter({})) == 0
