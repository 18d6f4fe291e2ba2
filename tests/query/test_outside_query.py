"""Black-box tests of the query language, written from issue 2 and docs/query.md.

Every test goes through the public API (``app.find``, ``count``, ``exists``,
``find_one``, ``delete``) on every backend (memory, SQLite and PostgreSQL when
``CONVEYOR_TEST_PG`` is set: the ``url`` fixture of tests/conftest.py), so the
same documented answer is checked on each one.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from conveyor import Context, Conveyor, QueryError, Status, ValidationError

MISSING = object()


@pytest.fixture
async def app(url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(url, lease=5.0, stop_timeout=2.0)
    await app.open()
    yield app
    await app.close()


async def labelled(app: Conveyor, action: str, values: dict[str, Any],
                   key: str = "v") -> dict[str, str]:
    """Add one task per label, whose payload holds ``key: value`` (nothing for
    MISSING, the value itself for a label starting with ``=``); return id -> label."""
    names: dict[str, str] = {}
    for label, value in values.items():
        if label.startswith("="):
            payload = value
        else:
            payload = {} if value is MISSING else {key: value}
        names[(await app.add(action, payload)).id] = label
    return names


async def found(app: Conveyor, names: dict[str, str], raw: Any) -> set[str]:
    """The labels of the tasks (among ``names``) that ``raw`` finds; count and
    exists must agree with find."""
    tasks = await app.find(raw)
    labels = {names[t.id] for t in tasks if t.id in names}
    assert await app.count(raw) == len(tasks)
    assert await app.exists(raw) == bool(tasks)
    return labels


# --- filters -------------------------------------------------------------------------


async def test_an_empty_or_absent_filter_matches_every_task(app: Conveyor) -> None:
    assert await app.find() == [] and await app.count() == 0
    assert not await app.exists({}) and await app.find_one() is None
    ids = [(await app.add("q:all", i)).id for i in range(3)]
    await app.abort(ids[1])
    for raw in (None, {}):
        assert [t.id for t in await app.find(raw)] == ids  # oldest first
        assert await app.count(raw) == 3
        first = await app.find_one(raw)
        assert first is not None and first.id == ids[0]
    assert await app.exists({})


async def test_the_strict_types_table(app: Conveyor) -> None:
    names = await labelled(app, "q:types", {"1": 1, "1.0": 1.0, '"1"': "1", "true": True,
                                            "[1]": [1], "missing": MISSING})
    assert await found(app, names, {"payload.v": 1}) == {"1", "1.0"}
    assert await found(app, names, {"payload.v": 1.0}) == {"1", "1.0"}
    assert await found(app, names, {"payload.v": "1"}) == {'"1"'}
    assert await found(app, names, {"payload.v": True}) == {"true"}
    assert await found(app, names, {"payload.v": {"$in": [1, "x"]}}) == {"1", "1.0"}
    assert await found(app, names, {"payload.v": {"$gte": 1}}) == {"1", "1.0"}
    # operands are scalars: lists and objects are refused, not matched
    for bad in ({"payload.v": [1]}, {"payload.v": {"$eq": [1]}},
                {"payload.v": {"$in": [[1]]}}, {"payload.v": {"$eq": {"a": 1}}}):
        with pytest.raises(QueryError):
            await app.find(bad)


async def test_null_and_missing_are_the_same(app: Conveyor) -> None:
    names = await labelled(app, "q:null", {
        "null": None, "missing": MISSING, "=not an object": "text", "=a list": [1, 2],
        "0": 0, "empty": "", "false": False, "[]": [], "{}": {}})
    absent = {"null", "missing", "=not an object", "=a list"}
    present = {"0", "empty", "false", "[]", "{}"}
    assert await found(app, names, {"payload.v": None}) == absent
    assert await found(app, names, {"payload.v": {"$eq": None}}) == absent
    assert await found(app, names, {"payload.v": {"$exists": False}}) == absent
    assert await found(app, names, {"payload.v": {"$exists": True}}) == present
    assert await found(app, names, {"payload.v": {"$ne": None}}) == present
    assert await found(app, names, {"payload.v": {"$nin": [None]}}) == present
    assert await found(app, names, {"payload": None}) == set()
    with pytest.raises(QueryError, match=r"\$exists"):
        await app.find({"payload.v": {"$exists": 1}})


async def test_ne_and_nin_are_exact_negations(app: Conveyor) -> None:
    names = await labelled(app, "q:ne", {"billing": "billing", "ops": "ops", "none": MISSING,
                                         "null": None, "number": 5})
    everything = set(names.values())
    assert await found(app, names, {"payload.v": {"$ne": "billing"}}) == everything - {"billing"}
    assert await found(app, names, {"payload.v": {"$nin": ["billing", "ops"]}}) == {
        "none", "null", "number"}
    assert await found(app, names, {"payload.v": {"$in": ["ops", None]}}) == {
        "ops", "none", "null"}
    assert await found(app, names, {"payload.v": {"$in": []}}) == set()
    assert await found(app, names, {"payload.v": {"$nin": []}}) == everything
    assert await found(app, names, {"payload.v": {"$ne": 5.0}}) == everything - {"number"}
    # $nin with a null item excludes the missing values as well
    assert await found(app, names, {"payload.v": {"$nin": ["ops", None]}}) == {
        "billing", "number"}


async def test_ranges_compare_numbers_with_numbers_and_strings_by_code_point(
        app: Conveyor) -> None:
    names = await labelled(app, "q:range", {
        "12": 12, "1e7": 10_000_000, "-1.5": -1.5, '"12"': "12", "true": True,
        "missing": MISSING, "B": "B", "a": "a", "é": "é", "list": [20]})
    assert await found(app, names, {"payload.v": {"$gt": 0}}) == {"12", "1e7"}
    assert await found(app, names, {"payload.v": {"$gt": 1000000}}) == {"1e7"}
    assert await found(app, names, {"payload.v": {"$lte": 12}}) == {"12", "-1.5"}
    assert await found(app, names, {"payload.v": {"$lt": 12}}) == {"-1.5"}
    assert await found(app, names, {"payload.v": {"$gte": -1.5, "$lt": 13}}) == {"12", "-1.5"}
    # "B" < "a" < "é" by code point
    assert await found(app, names, {"payload.v": {"$gt": "B"}}) == {"a", "é"}
    assert await found(app, names, {"payload.v": {"$lt": "a"}}) == {'"12"', "B"}
    assert await found(app, names, {"payload.v": {"$gte": "a"}}) == {"a", "é"}
    # booleans and null are no range operands
    for bad in (True, None, [1]):
        with pytest.raises(QueryError, match=r"\$gt"):
            await app.find({"payload.v": {"$gt": bad}})


async def test_regex_searches_strings_with_its_flags(app: Conveyor) -> None:
    names = await labelled(app, "q:re", {
        "ann": "ann@EXAMPLE.com", "bob": "bob@example.org", "multi": "first\nsecond",
        "number": 42, "true": True, "missing": MISSING, "list": ["ann@example.com"]})
    assert await found(app, names, {"payload.v": {"$regex": "example"}}) == {"bob"}
    assert await found(app, names, {"payload.v": {"$regex": r"@example\.com$",
                                                  "$options": "i"}}) == {"ann"}
    assert await found(app, names, {"payload.v": {"$regex": "^second"}}) == set()
    assert await found(app, names, {"payload.v": {"$regex": "^second$",
                                                  "$options": "m"}}) == {"multi"}
    assert await found(app, names, {"payload.v": {"$regex": "first.second"}}) == set()
    assert await found(app, names, {"payload.v": {"$regex": "first.second",
                                                  "$options": "s"}}) == {"multi"}
    verbose = "^ bob  # the user\n @ example"
    assert await found(app, names, {"payload.v": {"$regex": verbose, "$options": "x"}}) == {
        "bob"}
    assert await found(app, names, {"payload.v": {"$regex": "4"}}) == set()  # only strings
    assert await found(app, names, {"action": {"$regex": "^q:r"}}) == set(names.values())
    assert await found(app, names, {"payload.v": {"$not": {"$regex": "^bob"}}}) == (
        set(names.values()) - {"bob"})
    with pytest.raises(QueryError) as info:
        await app.find({"payload.v": {"$regex": "("}})
    assert info.value.path == "filter.payload.v.$regex"
    with pytest.raises(QueryError, match=r"\$options"):
        await app.find({"payload.v": {"$options": "i"}})
    for field in ("priority", "created_at"):
        with pytest.raises(QueryError):
            await app.find({field: {"$regex": "1"}})


async def test_not_on_a_field_and_the_logical_operators(app: Conveyor) -> None:
    names: dict[str, str] = {}
    for label, priority, payload in (("p1", 1, {"n": 1}), ("p6", 6, {"n": 9}),
                                     ("p5", 5, {}), ("neg", -2, {"n": 4})):
        names[(await app.add("q:logic", payload, priority=priority)).id] = label
    internal = await app.add("internal:x", {"n": 1})
    names[internal.id] = "internal"
    every = set(names.values())
    assert await found(app, names, {"priority": {"$not": {"$gt": 5}}}) == every - {"p6"}
    # a field $not matches tasks where the value is missing
    assert await found(app, names, {"payload.n": {"$not": {"$gt": 3}}}) == {
        "p1", "p5", "internal"}
    assert await found(app, names, {"$not": {"payload.n": {"$gt": 3}}}) == {
        "p1", "p5", "internal"}
    assert await found(app, names, {"$not": {"action": {"$regex": "^internal:"}}}) == (
        every - {"internal"})
    assert await found(app, names, {"$or": [{"priority": {"$lt": 0}},
                                            {"payload.n": 9}]}) == {"neg", "p6"}
    assert await found(app, names, {"$and": [{"priority": {"$gte": 1}},
                                             {"priority": {"$lte": 5}}]}) == {"p1", "p5"}
    assert await found(app, names, {"action": "q:logic", "$or": [
        {"payload.n": {"$exists": False}}, {"payload.n": 1}]}) == {"p1", "p5"}
    # $not is an exact complement, also of a filter over missing values
    for f in ({"payload.n": {"$lt": 5}}, {"payload.n": {"$ne": 1}}, {"payload.m": None}):
        assert await found(app, names, {"$not": f}) == every - await found(app, names, f)
    for bad in ({"$and": []}, {"$or": []}, {"$or": {"a": 1}}, {"$not": [{"priority": 1}]},
                {"priority": {"$not": 5}}):
        with pytest.raises(QueryError):
            await app.find(bad)


# --- fields and paths --------------------------------------------------------------------


async def test_paths_are_object_keys_only(app: Conveyor) -> None:
    names = await labelled(app, "q:paths", {
        "=key 0": {"0": "zero"}, "=list": ["zero"], "=nested": {"user": {"id": 42}},
        "=string user": {"user": "42"}, "=list user": {"user": [{"id": 42}]},
        "=scalar": 42})
    assert await found(app, names, {"payload.0": "zero"}) == {"=key 0"}
    assert await found(app, names, {"payload.user.id": 42}) == {"=nested"}
    # stepping into a list, a string or a missing key gives missing
    assert await found(app, names, {"payload.user.id": None}) == set(names.values()) - {
        "=nested"}
    assert await found(app, names, {"payload.user.id.deeper": None}) == set(names.values())
    # a path with no segments compares the whole value
    assert await found(app, names, {"payload": 42}) == {"=scalar"}
    assert await found(app, names, {"payload": {"$exists": True}}) == set(names.values())
    for bad, where in (("payload..a", "filter.payload..a"), ("payload.", "filter.payload."),
                       ('payload.a"b', None), ("payload.a\\b", None), ("payload.a\nb", None),
                       ("status.x", "filter.status.x"), ("priority.x", None)):
        with pytest.raises(QueryError) as info:
            await app.find({bad: 1})
        if where is not None:
            assert info.value.path == where
    with pytest.raises(QueryError, match="no sub-fields"):
        await app.find({"status.x": "queued"})


async def test_result_error_and_progress_are_reachable(app: Conveyor) -> None:
    @app.handler("q:fields")
    async def work(ctx: Context[Any]) -> Any:
        await ctx.progress(60, total=100, message="most")
        if ctx.payload == "fail":
            raise TimeoutError("timed out talking to upstream")
        return ctx.payload

    async with app:
        rows = await app.add("q:fields", {"rows": 3})
        zero = await app.add("q:fields", 0)
        failed = await app.add("q:fields", "fail")
        for t in (rows, zero):
            await app.wait(t.id, timeout=10)
        await app.wait_task(failed.id, timeout=10)
    queued = await app.add("q:fields:later", None)

    async def ids(raw: Any) -> set[str]:
        return {t.id for t in await app.find(raw)}

    assert await ids({"result.rows": {"$gt": 0}}) == {rows.id}
    assert await ids({"result": 0}) == {zero.id}
    assert await ids({"result": {"$exists": True}}) == {rows.id, zero.id}
    assert await ids({"error": {"$exists": True}}) == {failed.id}
    assert await ids({"error.type": "TimeoutError"}) == {failed.id}
    assert await ids({"error.message": {"$regex": "timed? ?out", "$options": "i"}}) == {
        failed.id}
    assert await ids({"error.attempt": 1, "error.traceback": {"$regex": "TimeoutError"}}) == {
        failed.id}
    assert await ids({"error.at": {"$gt": 0}}) == {failed.id}
    assert await ids({"progress.current": {"$gte": 50}}) == {rows.id, zero.id, failed.id}
    assert await ids({"progress.total": 100, "progress.message": "most"}) == {
        rows.id, zero.id, failed.id}
    assert await ids({"progress": None}) == {queued.id}
    assert await ids({"reason": "error", "status": "failed"}) == {failed.id}
    assert await ids({"worker": None}) == {rows.id, zero.id, failed.id, queued.id}
    assert await ids({"started_at": {"$exists": True}}) == {rows.id, zero.id, failed.id}
    assert await ids({"finished_at": None}) == {queued.id}
    assert await ids({"attempts": 0}) == {queued.id}


async def test_typed_fields_check_their_operands(app: Conveyor) -> None:
    task = await app.add("q:typed", None, priority=2, tags={"team": "a"},
                         unique_key="k1", max_attempts=3)
    assert [t.id for t in await app.find({"unique_key": "k1", "max_attempts": 3,
                                          "version": {"$gte": 1}, "rescues": 0,
                                          "run_timeout": None, "parent_id": None,
                                          "abort_requested": None, "reason": None,
                                          "lease_until": None, "id": task.id})] == [task.id]
    assert await app.count({"status": {"$in": ["queued", "running"]}}) == 1
    assert await app.count({"worker": {"$in": [None, "w"]}, "priority": {"$nin": [None]}}) == 1
    for bad, where in (({"priority": "high"}, "filter.priority"),
                       ({"worker": 5}, "filter.worker"),
                       ({"priority": {"$gt": None}}, "filter.priority.$gt"),
                       ({"priority": {"$gt": [1]}}, "filter.priority.$gt"),
                       ({"attempts": True}, "filter.attempts"),
                       ({"action": {"$in": ["a", 1]}}, None),
                       ({"status": "done"}, "filter.status"),
                       ({"status": {"$in": ["queued", "done"]}}, None),
                       ({"created_at": "yesterday"}, "filter.created_at"),
                       ({"nope": 1}, "filter.nope")):
        with pytest.raises(QueryError) as info:
            await app.find(bad)
        if where is not None:
            assert info.value.path == where, (bad, info.value.path)
    with pytest.raises(QueryError) as info:
        await app.find({"nope": 1})
    assert "valid fields are" in str(info.value) and "payload" in str(info.value)
    with pytest.raises(QueryError, match="queued, running, succeeded, failed, aborted"):
        await app.count({"status": "done"})


async def test_time_fields_take_epoch_seconds_iso_strings_and_datetimes(app: Conveyor) -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    epoch = at.timestamp()
    early = await app.add("q:time", None, run_at=epoch - 3600)
    exact = await app.add("q:time", None, run_at=epoch)
    late = await app.add("q:time", None, run_at=epoch + 86400 * 40)

    async def ids(raw: Any) -> list[str]:
        return [t.id for t in await app.find(raw, sort="run_at")]

    assert await ids({"run_at": epoch}) == [exact.id]
    for same in ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00", "2024-05-01T14:00:00+02:00",
                 at, at.replace(tzinfo=None), at.astimezone(timezone(timedelta(hours=-5)))):
        assert await ids({"run_at": same}) == [exact.id], same
        assert await ids({"run_at": {"$gte": same}}) == [exact.id, late.id], same
    assert await ids({"run_at": {"$gte": "2024-05-01", "$lt": "2024-05-01T12:00:00Z"}}) == [
        early.id]
    assert await ids({"run_at": {"$gte": "2024-05-01T00:00:00Z",
                                 "$lt": "2024-06-01T00:00:00Z"}}) == [early.id, exact.id]
    assert await ids({"run_at": {"$lt": 1714521600 + 86400}}) == [early.id, exact.id]
    assert await ids({"run_at": {"$in": [epoch, "2024-05-01T11:00:00Z"]}}) == [
        early.id, exact.id]
    assert await ids({"created_at": {"$gt": "2024-05-01"}, "finished_at": None}) == [
        early.id, exact.id, late.id]
    with pytest.raises(QueryError, match="ISO-8601") as info:
        await app.find({"run_at": {"$lt": "yesterday"}})
    assert info.value.path == "filter.run_at.$lt"


async def test_malformed_conditions_say_what_and_where(app: Conveyor) -> None:
    cases: list[tuple[Any, str, str]] = [
        ({"priority": {"$gt": [1]}}, "filter.priority.$gt", "needs a number"),
        ({"$or": [{"priority": 1}, {"payload.a": {"$gt": 1, "b": 2}}]}, "filter.$or[1].payload.a",
         "mixes operators"),
        ({"status": "done"}, "filter.status", "'done' is not a status"),
        ({"nope": 1}, "filter.nope", "unknown field 'nope'"),
        ({"payload.email": {"$regex": "("}}, "filter.payload.email.$regex",
         "invalid regular expression"),
        ({"status.x": "a"}, "filter.status.x", "has no sub-fields"),
        ({"run_at": "yesterday"}, "filter.run_at", "'yesterday' is not an ISO-8601 time"),
        ({"payload.a": {"b": 2}}, "filter.payload.a", ""),
        ({"payload.a": {}}, "filter.payload.a", ""),
        ({"payload.a": {"$near": 1}}, "filter.payload.a.$near", "$near"),
    ]
    for raw, where, what in cases:
        with pytest.raises(QueryError) as info:
            await app.find(raw)
        error = info.value
        assert isinstance(error, ValidationError) and isinstance(error, ValueError)
        assert error.path == where, (raw, error.path)
        assert what in str(error) and where in str(error), (raw, str(error))
    for call in (app.count, app.exists, app.find_one, app.delete):
        with pytest.raises(QueryError):
            await call({"payload.a": {"$near": 1}})  # type: ignore[operator]
    with pytest.raises(QueryError):
        await app.find("status")  # type: ignore[arg-type]


# --- sort, limit and skip -----------------------------------------------------------------


async def test_every_sort_form_gives_the_same_order(app: Conveyor) -> None:
    tasks = [await app.add("q:sort", {"size": size}, priority=priority)
             for priority, size in ((2, 10), (1, 30), (2, 20), (1, 5), (3, None))]
    ids = [t.id for t in tasks]

    async def order(sort: Any) -> list[int]:
        return [ids.index(t.id) for t in await app.find(sort=sort)]

    by_priority_then_size_desc = [1, 3, 2, 0, 4]
    for form in (["priority", "-payload.size"], ["+priority", "-payload.size"],
                 [["priority", 1], ["payload.size", -1]],
                 [["priority", "asc"], ["payload.size", "desc"]],
                 [["priority", "ascending"], ["payload.size", "descending"]],
                 {"priority": 1, "payload.size": -1}, ("priority", "-payload.size"),
                 "priority,-payload.size"):
        assert await order(form) == by_priority_then_size_desc, form
    assert await order("priority") == [1, 3, 0, 2, 4]  # ties by id (oldest first)
    assert await order(["priority", -1]) == [4, 0, 2, 1, 3]  # ties by id even descending
    assert await order(("priority", "desc")) == [4, 0, 2, 1, 3]
    assert await order("-payload.size") == [1, 2, 0, 3, 4]  # missing comes last descending
    assert await order("payload.size") == [4, 3, 0, 2, 1]
    assert await order(None) == [0, 1, 2, 3, 4]
    assert await order([]) == [0, 1, 2, 3, 4]
    assert await order("-id") == [4, 3, 2, 1, 0]
    for bad, where in (([["priority", 1], ["run_at", 2]], "sort[1]"), (["priority", 2], "sort"),
                       ("nope", None), ("-", None),
                       ({"priority": 0}, None), (5, None), ("status.x", None)):
        with pytest.raises(QueryError) as info:
            await app.find(sort=bad)
        if where is not None:
            assert info.value.path == where and "not a number (2)" in str(info.value)


async def test_limit_and_skip_apply_after_sorting(app: Conveyor) -> None:
    tasks = [await app.add("q:page", None, priority=p) for p in (5, 1, 4, 2, 3)]
    by_priority = [tasks[i].id for i in (1, 3, 4, 2, 0)]

    async def page(**window: Any) -> list[str]:
        return [t.id for t in await app.find(sort="priority", **window)]

    assert await page(limit=2) == by_priority[:2]
    assert await page(limit=2, skip=2) == by_priority[2:4]
    assert await page(skip=3) == by_priority[3:]
    assert await page(limit=None, skip=0) == by_priority
    assert await page(limit=0) == []
    assert await page(skip=10) == []
    first = await app.find_one({"priority": {"$gt": 1}}, sort="-priority")
    assert first is not None and first.id == tasks[0].id
    for window, where in (({"limit": -1}, "limit"), ({"limit": True}, "limit"),
                          ({"limit": 1.5}, "limit"), ({"limit": "2"}, "limit"),
                          ({"skip": None}, "skip"), ({"skip": -1}, "skip"),
                          ({"skip": False}, "skip")):
        with pytest.raises(QueryError) as info:
            await app.find(**window)
        assert info.value.path == where
    with pytest.raises(QueryError, match=re.escape("limit must be null or an integer >= 0, "
                                                   "not -1")):
        await app.find(limit=-1)


# --- limits ----------------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    """A filter whose logical operators nest ``depth`` levels deep."""
    raw: dict[str, Any] = {"priority": 0}
    for _ in range(depth):
        raw = {"$and": [raw]}
    return raw


async def test_the_documented_limits(app: Conveyor) -> None:
    task = await app.add("q:limits", {"n": 7, "s": "x"})
    assert [t.id for t in await app.find(nested(32))] == [task.id]
    with pytest.raises(QueryError, match="32"):
        await app.find(nested(33))
    assert await app.count({"payload.n": {"$in": list(range(2000))}}) == 1
    with pytest.raises(QueryError, match="the filter is too large"):
        await app.count({"payload.n": {"$in": list(range(2001))}})
    with pytest.raises(QueryError, match="the filter is too large"):
        await app.count({"payload.n": {"$in": list(range(1999))}, "payload.s": "x",
                         "priority": 0})
    # an empty $in counts as one comparison
    with pytest.raises(QueryError, match="the filter is too large"):
        await app.count({"payload.n": {"$in": list(range(2000))}, "payload.m": {"$nin": []}})
    assert await app.count({"payload.n": {"$lt": 2**63 - 1, "$gt": -(2**63)}}) == 1
    for bad in (2**63, -(2**63) - 1, float("inf"), float("nan")):
        with pytest.raises(QueryError):
            await app.count({"payload.n": bad})
    with pytest.raises(QueryError):
        await app.count({"payload.s": "\ud800"})
    with pytest.raises(QueryError):
        await app.count({"payload.\ud800": 1})


async def test_a_big_integer_in_a_task_compares_as_a_number(app: Conveyor) -> None:
    big = await app.add("q:big", {"n": 2**70})
    small = await app.add("q:big", {"n": 5})
    assert [t.id for t in await app.find({"payload.n": {"$gt": 2**62}})] == [big.id]
    assert [t.id for t in await app.find(sort="-payload.n")] == [big.id, small.id]


# --- the filter language elsewhere: delete, conditions -----------------------------------------


async def test_delete_by_filter_takes_finished_tasks_only(app: Conveyor) -> None:
    keep = await app.add("q:del", {"n": 1})
    gone = await app.add("q:del", {"n": 2})
    other = await app.add("q:del", {"n": 3})
    await app.abort(gone.id)
    await app.abort(other.id)
    assert await app.delete({"payload.n": {"$lte": 2}}) == [gone.id]
    assert {t.id for t in await app.find()} == {keep.id, other.id}


async def test_a_condition_query_uses_the_whole_language(app: Conveyor) -> None:
    """A condition counts the tasks in its scope that its query matches: here a
    succeeded task of the same book blocks the next one until it is deleted."""

    @app.handler("q:book")
    async def book(ctx: Context[Any]) -> str:
        return str(ctx.payload["book"])

    condition = {"scope": ["succeeded"], "limit": 1, "query": {
        "action": {"$regex": "^q:b"}, "$or": [{"payload.book": "X"}, {"tags.book": "X"}]}}
    async with app:
        first = await app.add("q:book", {"book": "X"})
        await app.wait(first.id, timeout=10)
        blocked = await app.add("q:book", {"book": "X", "n": 2}, concurrency=[condition])
        free = await app.add("q:book", {"book": "Y"}, concurrency=[
            {**condition, "query": {"payload.book": "Y"}}])
        assert await app.wait(free.id, timeout=10) == "Y"
        assert (await app.get(blocked.id)).status is Status.QUEUED
        await app.delete(first.id)
        assert await app.wait(blocked.id, timeout=10) == "X"
    stored = (await app.get(blocked.id)).concurrency[0]
    assert stored.scope == (Status.SUCCEEDED,) and stored.limit == 1
    assert stored.query == condition["query"]


async def test_a_condition_defaults_to_the_running_scope_and_limit_one(app: Conveyor) -> None:
    task = await app.add("q:cond", {"book": "X"}, concurrency=[{"query": {"payload.book": "X"}}])
    (condition,) = task.concurrency
    assert (condition.scope, condition.limit) == ((Status.RUNNING,), 1)
    assert condition.to_json()["query"] == {"payload.book": "X"}
    assert condition.to_json()["limit"] == 1
    bad = [{"query": {"payload.x": {"$near": 1}}}]
    with pytest.raises(ValidationError, match=r"concurrency\[0\]\.query.*\$near"):
        await app.add("q:cond", None, concurrency=bad)
    with pytest.raises(ValidationError, match=r"^task 1: concurrency\[0\]\.query.*\$near"):
        await app.add_many([("q:cond", 1), ("q:cond", 2, {"concurrency": bad})])
    assert await app.count() == 1


# --- PostgreSQL keeps Python's regular expressions -------------------------------------------


@pytest.mark.parametrize("pattern", ["(?>a)b", "a++", "(a)?(?(1)b|c)", "a{300}"])
async def test_patterns_postgres_cannot_express(app: Conveyor, url: str, pattern: str) -> None:
    """Refused on PostgreSQL with a QueryError pointing at the pattern (also in a
    condition, where add writes nothing); the other backends run them."""
    task = await app.add("q:pat", {"name": "ab" + "a" * 300})
    condition = [{"query": {"payload.name": {"$regex": pattern}}}]
    if url.startswith("postgresql"):
        with pytest.raises(QueryError) as info:
            await app.find({"payload.name": {"$regex": pattern}})
        assert info.value.path == "filter.payload.name.$regex"
        with pytest.raises(ValidationError, match=r"concurrency\[0\]\.query"):
            await app.add("q:pat", None, concurrency=condition)
        with pytest.raises(ValidationError, match=r"^task 1: concurrency\[0\]\.query"):
            await app.add_many([("q:pat", 1), ("q:pat", 2, {"concurrency": condition})])
        assert await app.count() == 1
    else:
        await app.find({"payload.name": {"$regex": pattern}})
        assert (await app.add("q:pat", None, concurrency=condition)).concurrency
    assert (await app.get(task.id)).status is Status.QUEUED


async def test_postgres_regex_means_what_python_means(app: Conveyor) -> None:
    names = await labelled(app, "q:pyre", {"nl": "end\n", "ß": "STRASSE", "é": "café",
                                           "digits": "١٢٣", "word": "naïve"})
    assert await found(app, names, {"payload.v": {"$regex": "end$"}}) == {"nl"}
    assert await found(app, names, {"payload.v": {"$regex": "^end\\Z"}}) == set()
    assert await found(app, names, {"payload.v": {"$regex": "^\\d+$"}}) == {"digits"}
    assert await found(app, names, {"payload.v": {"$regex": "^\\w+$"}}) == set(names.values())
    assert await found(app, names, {"payload.v": {"$regex": "^\\w+\\Z"}}) == (
        set(names.values()) - {"nl"})
    assert await found(app, names, {"payload.v": {"$regex": "CAFÉ", "$options": "i"}}) == {"é"}
    assert await found(app, names, {"payload.v": {"$regex": "\\bna"}}) == {"word"}


async def test_a_condition_does_not_count_its_own_task(app: Conveyor) -> None:
    @app.handler("q:self")
    async def work(ctx: Context[Any]) -> Any:
        return ctx.payload

    mine = [{"scope": ["queued", "running"], "query": {"action": "q:self"}, "limit": 1}]
    async with app:
        task = await app.add("q:self", 1, concurrency=mine)
        assert await app.wait(task.id, timeout=10) == 1


async def test_delete_by_filter_goes_in_batches_of_1000(app: Conveyor,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """All of a filter's finished tasks, 1,000 per storage delete (one transaction
    each: a delete of a million held every writer for 11 s on SQLite)."""
    @app.handler("q:many")
    async def many(ctx: Context[Any]) -> int:
        return 1

    await app.add_many([("q:many", {"n": n}) for n in range(2300)])
    await app.drain(timeout=120)
    waiting = await app.add("q:many", {"n": -1}, delay=600)  # not ended: left alone
    storage = app.storage
    real_delete = storage.delete
    sizes: list[int] = []

    async def delete(ids: Any) -> Any:
        sizes.append(len(ids))
        return await real_delete(ids)

    monkeypatch.setattr(storage, "delete", delete)
    deleted = await app.delete({"action": "q:many"})
    assert len(deleted) == len(set(deleted)) == 2300
    assert sizes == [1000, 1000, 300]
    assert [t.id for t in await app.find({"action": "q:many"})] == [waiting.id]
