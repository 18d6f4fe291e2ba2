"""The documented limits hold exactly, on every backend: a filter of 2000 comparisons
(each $in / $nin item one) is run, a 2001st is refused; skip and limit are integers."""

from __future__ import annotations

import re
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.errors import QueryError, ValidationError
from conveyor.query import parse_filter, parse_query
from conveyor.query._parse import MAX_PATTERN, MAX_PATTERNS, MAX_TERMS
from conveyor.query._tree import MAX_PATH


@pytest.mark.parametrize("op", ["$in", "$nin"])
def test_a_list_of_exactly_the_limit_passes(op: str) -> None:
    assert MAX_TERMS == 2000  # the number docs/query.md gives
    parse_filter({"priority": {op: list(range(2000))}})
    parse_filter({"payload.n": {op: [str(i) for i in range(2000)]}})
    with pytest.raises(QueryError, match=r"too large: more than 2000 comparisons") as info:
        parse_filter({"priority": {op: list(range(2001))}})
    assert info.value.path == f"filter.priority.{op}"


@pytest.mark.parametrize(("raw", "ok"), [
    ({"priority": {"$in": list(range(1999))}, "attempts": 0}, True),
    ({"priority": {"$in": list(range(1999))}, "attempts": 0, "rescues": 0}, False),
    ({"priority": {"$in": list(range(1000)), "$nin": list(range(1000))}}, True),
    ({"priority": {"$in": list(range(1000)), "$nin": list(range(1001))}}, False),
    ({"$or": [{"priority": i} for i in range(2000)]}, True),
    ({"$or": [{"priority": i} for i in range(2001)]}, False),
    ({"priority": {"$in": []}, "$or": [{"attempts": i} for i in range(1999)]}, True),
    ({"priority": {"$in": []}, "$or": [{"attempts": i} for i in range(2000)]}, False),
])
def test_comparisons_add_up(raw: dict[str, Any], ok: bool) -> None:
    if ok:
        parse_filter(raw)
    else:
        with pytest.raises(QueryError, match="too large"):
            parse_filter(raw)


async def test_a_full_in_list_runs_on_every_backend(url: str) -> None:
    app = Conveyor(url)
    try:
        await app.add_many([("work", {"n": n}) for n in range(10)])
        wanted = [{"n": 3}, {"n": 7}]
        values = [3, 7, *range(100, 2098)]
        assert len(values) == 2000
        found = await app.find({"payload.n": {"$in": values}}, sort="payload.n")
        assert [t.payload for t in found] == wanted
        assert await app.count({"payload.n": {"$nin": values}}) == 8
        with pytest.raises(QueryError, match="too large"):
            await app.find({"payload.n": {"$in": [*values, 2098]}})
        with pytest.raises(QueryError, match="too large"):
            await app.count({"payload.n": {"$nin": [*values, 2098]}})
    finally:
        await app.close()


@pytest.mark.parametrize(("window", "message"), [
    ({"skip": None}, "skip must be an integer >= 0, not None"),
    ({"skip": True}, "skip must be an integer >= 0, not True"),
    ({"skip": -1}, "skip must be an integer >= 0, not -1"),
    ({"skip": 1.0}, "skip must be an integer >= 0, not 1.0"),
    ({"skip": "1"}, "skip must be an integer >= 0, not '1'"),
    ({"limit": False}, "limit must be null or an integer >= 0, not False"),
    ({"limit": -1}, "limit must be null or an integer >= 0, not -1"),
    ({"limit": 2.0}, "limit must be null or an integer >= 0, not 2.0"),
    ({"limit": 2**63}, re.escape(f"limit must be at most 2**63-1, not {2**63}")),
    ({"skip": 2**64}, re.escape(f"skip must be at most 2**63-1, not {2**64}")),
])
async def test_find_refuses_a_bad_window(url: str, window: dict[str, Any], message: str) -> None:
    app = Conveyor(url)
    try:
        await app.add("work")
        with pytest.raises(QueryError, match=message) as info:
            await app.find(**window)
        assert info.value.path == next(iter(window))
        with pytest.raises(QueryError, match=message):
            parse_query(**window)
        assert len(await app.find(limit=None, skip=0)) == 1
        assert await app.find(limit=0) == []
    finally:
        await app.close()


async def test_the_largest_window_reads_everything(url: str) -> None:
    """2**63-1, the largest limit and skip, is accepted by every backend (their SQL
    holds it in 64 bits): a limit that large is no limit, a skip that large skips all."""
    app = Conveyor(url)
    try:
        added = await app.add_many([("work", {"n": n}) for n in range(3)])
        found = await app.find(limit=2**63 - 1)
        assert [t.id for t in found] == [t.id for t in added]
        assert await app.find(skip=2**63 - 1) == []
        assert await app.find(limit=2**63 - 1, skip=2**63 - 1) == []
    finally:
        await app.close()


async def test_integers_beyond_64_bits_compare_as_documented(url: str) -> None:
    """docs/query.md, Limits: a stored integer beyond 64 bits compares as a float on
    SQLite, by exact decimal value on PostgreSQL, as Python compares on memory://."""
    app = Conveyor(url)
    try:
        above, exact, as_float = await app.add_many(
            [("work", {"big": 2**64 + 1}), ("work", {"big": 2**64}),
             ("work", {"big": float(2**64)})])
        found = {t.id for t in await app.find({"payload.big": float(2**64)})}
        if url.startswith("sqlite"):
            assert found == {above.id, exact.id, as_float.id}
        elif url.startswith("postgres"):
            assert found == {as_float.id}
        else:
            assert found == {exact.id, as_float.id}
    finally:
        await app.close()


FULL_FILTERS = [
    ({"$or": [{"payload.n": i} for i in range(2000)]}, 10),
    ({"$and": [{"payload.n": {"$ne": i}} for i in range(100, 2100)]}, 10),
    ({"$or": [{"priority": i} for i in range(1, 2001)]}, 0),
    ({"$or": [{"payload.n": {"$gte": i, "$lte": i}} for i in range(3, 1003)]}, 7),
    ({f"payload.k{i}": {"$exists": False} for i in range(2000)}, 10),
]


@pytest.mark.parametrize(("raw", "expected"), FULL_FILTERS)
async def test_a_filter_of_the_full_size_runs_on_every_backend(
        url: str, raw: dict[str, Any], expected: int) -> None:
    """2000 comparisons in an $or, an $and or as the keys of one object: SQLite refused
    more than about 1000 of them in one chain ("Expression tree is too large")."""
    app = Conveyor(url)
    try:
        await app.add_many([("work", {"n": n}) for n in range(10)])
        assert await app.count(raw) == expected
        assert len(await app.find(raw)) == expected
    finally:
        await app.close()


async def test_a_condition_of_the_full_size_is_claimed_on_every_backend(url: str) -> None:
    """A task whose concurrency condition holds the most comparisons a task's conditions
    may (100) runs, and does not stop the worker from claiming other tasks (on SQLite a
    claim with a large one raised once, so nothing ran); a filter of the full size (2000)
    is refused as a condition."""
    app = Conveyor(url)
    app.register("c:big", lambda ctx: "big")
    app.register("c:other", lambda ctx: "other")
    condition = {"scope": "running", "limit": 1,
                 "query": {"$or": [{"payload.book": f"b{i}"} for i in range(100)]}}
    full = {"query": {"$or": [{"payload.book": f"b{i}"} for i in range(2000)]}}
    try:
        with pytest.raises(ValidationError, match="more than 100 comparisons"):
            await app.add("c:big", {"book": "b1"}, concurrency=full)
        big = await app.add("c:big", {"book": "b1"}, concurrency=condition)
        other = await app.add("c:other")
        async with app:
            assert await app.wait(big.id, timeout=10) == "big"
            assert await app.wait(other.id, timeout=10) == "other"
    finally:
        await app.close()


def test_regex_patterns_are_bounded_one_by_one_and_together() -> None:
    """Compiling a pattern costs about 10 ms per 1000 characters, where the filter comes
    in (a hub's event loop): a few large patterns held a hub for seconds. A bounded
    parse (what a hub does with its clients' filters) refuses them; others do not (a
    stored condition is parsed again at each claim, and the hub's own read scope)."""
    assert (MAX_PATTERN, MAX_PATTERNS) == (1000, 4000)  # the numbers docs/query.md gives
    parse_filter({"payload.s": {"$regex": "a" * 1000}}, bounded=True)
    with pytest.raises(QueryError, match="pattern is too long: 1001 characters, at most "
                                         "1000") as one:
        parse_filter({"payload.s": {"$regex": "a" * 1001}}, bounded=True)
    assert one.value.path == "filter.payload.s.$regex"
    parse_filter({"$or": [{f"payload.s{i}": {"$regex": "a" * 1000}} for i in range(4)]},
                 bounded=True)
    many = {"$or": [{f"payload.s{i}": {"$regex": "(a|b)" * 160}} for i in range(6)]}
    with pytest.raises(QueryError, match="patterns are too long together: more than 4000 "
                                         "characters") as too_many:
        parse_filter(many, bounded=True)
    assert too_many.value.path == "filter.$or[5].payload.s5.$regex"
    with pytest.raises(QueryError, match="too long together"):
        parse_query(many, bounded=True)
    parse_filter(many)  # unbounded
    parse_filter({"payload.s": {"$regex": "a" * 1001}})


async def test_paths_go_at_most_100_levels_deep(url: str) -> None:
    """A path of 5000 levels overflowed PostgreSQL's stack (503 on a hub)."""
    assert MAX_PATH == 100
    deep = "payload." + ".".join(["a"] * 100)
    async with Conveyor(url) as app:
        await app.add("deep:x", {"a": 1})
        assert await app.count({deep: 1}) == 0
        assert await app.find({}, sort=deep) != []
        for too_deep in (deep + ".a", "payload." + ".".join(["a"] * 5000)):
            with pytest.raises(QueryError, match="is more than 100 levels deep"):
                await app.count({too_deep: 1})
            with pytest.raises(QueryError, match="is more than 100 levels deep"):
                await app.find({}, sort=too_deep)
