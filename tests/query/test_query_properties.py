"""Property tests: the Python evaluator and the SQLite compiler agree on every filter and sort.

Random tasks go into a real SQLite table made by the real migration; random
filters and sorts are run both ways and must select the same ids in the same
order. Random malformed filters must raise QueryError and nothing else.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.errors import QueryError
from conveyor.model import FIELDS, ErrorInfo, FieldKind, Progress, Status, Task
from conveyor.query import (
    Filter,
    SortKey,
    apply_query,
    matches,
    parse_filter,
    parse_query,
    parse_sort,
    sort_tasks,
)
from conveyor.query._tree import MATCH_ALL
from conveyor.storage._codec import row_to_task, task_to_row

from ._support import new_db, sql_ids

# ---------------------------------------------------------------------------
# values

KEYS = ["a", "b", "c", "0"]  # few keys, so that paths of data and filters collide

# Cheap, collision-prone choices most of the time; the full range now and then.
# (Text without surrogates or NUL: see "Limits" in docs/query.md.)
small_text = st.sampled_from(["", "a", "b", "ab", "ba", "A", "B", "aB", "é", "b\n", "0"])
any_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=6
)
texts = st.one_of(small_text, small_text, small_text, any_text)
ints = st.one_of(st.integers(-3, 3), st.integers(-(2**53), 2**53))
floats = st.one_of(
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.5, -1.5, 1e300, 3.0]),
    st.floats(allow_nan=False, allow_infinity=False),
)
numbers = st.one_of(ints, floats)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    ),
    max_leaves=6,
)
json_objects = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3)
flat_objects = st.dictionaries(st.sampled_from(KEYS), json_scalars, max_size=3)
TIMES = [0.0, 1.0, 1_700_000_000.0, 1_700_000_000.5, 2e9]
times = st.one_of(st.sampled_from(TIMES), st.sampled_from(TIMES), st.floats(0, 4e9))


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


errors = st.builds(
    ErrorInfo,
    type=st.sampled_from(["ValueError", "KeyError", "a"]),
    message=texts,
    traceback=maybe(texts),
    attempt=maybe(st.integers(0, 3)),
    at=maybe(times),
)
progresses = st.builds(
    Progress,
    current=maybe(numbers),
    total=maybe(numbers),
    message=maybe(texts),
    data=maybe(json_objects),
)


IDS = ["0", "1", "10", "2", "a", "ab", "b", "z", "é", "A"]

# The typed fields of a task. Drawing all of them for every task makes each example
# slow, so an example varies a random few from task to task and keeps the others
# at one value drawn for the whole list (they still differ between examples).
SCALARS: dict[str, st.SearchStrategy[Any]] = {
    "action": st.sampled_from(["a", "b", "mail:send", "é"]),
    "status": st.sampled_from(list(Status)),
    "priority": st.one_of(st.integers(-2, 2).map(float), floats),
    "run_at": times,
    "created_at": times,
    "updated_at": times,
    "started_at": maybe(times),
    "finished_at": maybe(times),
    "attempts": st.integers(0, 3),
    "max_attempts": maybe(st.integers(1, 3)),
    "rescues": st.integers(0, 2),
    "run_timeout": maybe(floats),
    "pickup_timeout": maybe(st.sampled_from([1.0, 2.0])),
    "worker": maybe(texts),
    "lease_until": maybe(times),
    "abort_requested": maybe(texts),
    "reason": maybe(texts),
    "unique_key": maybe(small_text),
    "parent_id": maybe(small_text),
    "version": st.integers(1, 3),
}


@st.composite
def task_lists(draw: st.DrawFn) -> list[Task]:
    ids = draw(st.lists(st.sampled_from(IDS), unique=True, min_size=2, max_size=6))
    varying = draw(st.lists(st.sampled_from(list(SCALARS)), unique=True, min_size=2,
                            max_size=7))
    shared = {name: draw(strategy) for name, strategy in SCALARS.items()
              if name not in varying}
    with_error = draw(st.booleans())
    with_progress = draw(st.booleans())
    tasks = []
    for task_id in ids:
        fields = dict(shared)
        fields.update({name: draw(SCALARS[name]) for name in varying})
        tasks.append(Task(
            id=task_id,
            payload=draw(st.one_of(json_objects, json_objects, json_values)),
            progress=draw(maybe(progresses)) if with_progress else None,
            result=draw(st.one_of(json_scalars, json_values)),
            error=draw(maybe(errors)) if with_error else None,
            unique_scope=(),  # keeps the unique index out of the way
            tags=draw(flat_objects),
            **fields,
        ))
    return tasks


# ---------------------------------------------------------------------------
# filters and sorts


@dataclass
class Survey:
    """What the tasks hold, so that random filters hit it often."""

    fields: list[str] = field(default_factory=lambda: list(FIELDS))  # preferred fields
    paths: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)  # present paths
    values: dict[str, list[Any]] = field(default_factory=dict)  # scalars by dotted key


Scalars = dict[tuple[str, str], Any]  # keyed by type name and repr: keeps 1, 1.0, True apart


def _walk(value: Any, key: str, path: tuple[str, ...], paths: set[tuple[str, ...]],
          found: dict[str, Scalars]) -> None:
    """Record the paths of ``value`` and the scalars at each key (and anywhere, at '*')."""
    if not isinstance(value, dict | list):
        paths.add(path)  # scalar paths first: they discriminate best
    here = found.setdefault(key, {})
    anywhere = found.setdefault(key.split(".")[0] + ".*", {})
    if isinstance(value, dict):
        for k, v in value.items():
            anywhere[("str", repr(k))] = k
            _walk(v, f"{key}.{k}", (*path, k), paths, found)
    elif isinstance(value, list):
        for v in value:
            _walk(v, f"{key}.[]", (*path, "[]"), set(), found)  # no paths through arrays
    else:
        here[(type(value).__name__, repr(value))] = value
        anywhere[(type(value).__name__, repr(value))] = value


def survey(tasks: list[Task]) -> Survey:
    rows = [t.to_json() for t in tasks]
    out = Survey(fields=[])
    found: dict[str, Scalars] = {}
    for name in FIELDS:
        paths: set[tuple[str, ...]] = set()
        for row in rows:
            _walk(row[name], name, (), paths, found)
        out.paths[name] = sorted(paths) or [()]
        if FIELDS[name] is FieldKind.JSON or len(found[name]) > 1:
            out.fields.append(name)
    out.values = {key: [scalars[k] for k in sorted(scalars)] for key, scalars in found.items()}
    return out


def random_paths() -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(KEYS), max_size=3).map(tuple)


def pick_ref(draw: st.DrawFn, info: Survey) -> tuple[str, str]:
    """A (field, key) pair: mostly fields that differ between tasks and paths they hold."""
    use_survey = bool(info.fields) and draw(st.integers(0, 3)) > 0
    fields = info.fields if use_survey else list(FIELDS)
    name = draw(st.sampled_from(fields))
    if FIELDS[name] is not FieldKind.JSON:
        return name, name
    present = info.paths.get(name)
    path = (draw(st.sampled_from(present)) if present and draw(st.integers(0, 3))
            else draw(random_paths()))
    return name, ".".join((name, *path))


REGEXES = ["a", "^a", "b$", "a|b", "^$", ".", "A", "[0-9]", "^a.*b$", r"\d", "é", "^.{2}$", "B"]
ISO_TIMES = ["2023-11-14T22:13:20Z", "1970-01-01", "2023-11-14 22:13:20.500000",
             "2033-05-18T03:33:20+00:00"]


@st.composite
def filters(draw: st.DrawFn, info: Survey | None = None) -> dict[str, Any]:
    """A random valid raw filter, aimed at what ``info`` says the tasks hold."""
    info = info or Survey()

    def operand(kind: FieldKind, key: str, ordering: bool) -> Any:
        name = key.split(".")[0]
        if name == "status":
            choices = [s.value for s in Status]
            return draw(st.sampled_from(choices if ordering else [*choices, None]))
        where = key if draw(st.integers(0, 3)) else name + ".*"
        pool = [v for v in info.values.get(where, []) if v is None or type(v) in _TYPES[kind]]
        if ordering:
            pool = [v for v in pool if v is not None and not isinstance(v, bool)]
        fresh = {
            FieldKind.TEXT: texts,
            FieldKind.NUMBER: numbers,
            FieldKind.TIME: st.one_of(times, st.sampled_from(ISO_TIMES)),
            FieldKind.JSON: st.one_of(numbers, texts) if ordering else json_scalars,
        }[kind]
        if not ordering and kind is not FieldKind.JSON:
            fresh = st.one_of(fresh, st.none())
        from_pool = bool(pool) and draw(st.integers(0, 2)) > 0
        if from_pool:
            value = draw(st.sampled_from(pool))
            if kind is FieldKind.JSON and draw(st.integers(0, 3)) == 0:
                # a look-alike of another type: true/1, 0/false/"0", null/"null", ...
                twins = [t for t in _twins(value)
                         if not ordering or (t is not None and not isinstance(t, bool))]
                if twins:
                    return draw(st.sampled_from(twins))
            return value
        return draw(fresh)

    def condition(kind: FieldKind, name: str, depth: int) -> Any:
        # name: the dotted key of the condition
        choice = draw(st.integers(0, 11))
        ops: dict[str, Any] = {}
        if choice == 0:
            return operand(kind, name, False)
        if choice == 1:
            ops["$eq"] = operand(kind, name, False)
        elif choice == 2:
            ops["$ne"] = operand(kind, name, False)
        elif choice == 3:
            op = draw(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]))
            ops[op] = operand(kind, name, True)
        elif choice == 4:
            lo, hi = operand(kind, name, True), operand(kind, name, True)
            ops[draw(st.sampled_from(["$gt", "$gte"]))] = lo
            ops[draw(st.sampled_from(["$lt", "$lte"]))] = hi
        elif choice in (5, 6):
            items = [operand(kind, name, False) for _ in range(draw(st.integers(0, 4)))]
            ops["$in" if choice == 5 else "$nin"] = items
        elif choice == 7:
            ops["$exists"] = draw(st.booleans())
        elif choice == 8 and kind in (FieldKind.TEXT, FieldKind.JSON):
            strings = [v for v in info.values.get(name, []) if isinstance(v, str) and v]
            use_data = bool(strings) and draw(st.booleans())
            if use_data:
                text = draw(st.sampled_from(strings))
                ops["$regex"] = draw(st.sampled_from(
                    ["^" + re.escape(text[:2]), re.escape(text[-1:]) + "$", re.escape(text)]))
            else:
                ops["$regex"] = draw(st.sampled_from(REGEXES))
            if draw(st.booleans()):
                ops["$options"] = "".join(draw(st.lists(st.sampled_from("imsx"), max_size=3)))
        elif choice == 9 and depth < 3:
            inner = condition(kind, name, depth + 1)
            ops["$not"] = inner if isinstance(inner, dict) else {"$eq": inner}
        else:
            ops["$exists"] = draw(st.booleans())
            ops["$ne"] = operand(kind, name, False)
        return ops

    def leaf_filter(depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
            name, key = pick_ref(draw, info)
            out[key] = condition(FIELDS[name], key, depth)
        return out

    def node(depth: int) -> dict[str, Any]:
        choice = draw(st.integers(0, 5)) if depth < 3 else 0
        if choice <= 2:
            return leaf_filter(depth)
        if choice == 5:
            return {"$not": node(depth + 1)}
        op = "$and" if choice == 3 else "$or"
        out = {op: [node(depth + 1) for _ in range(draw(st.integers(1, 3)))]}
        if draw(st.booleans()):
            out.update(leaf_filter(depth))
        return out

    return node(0)


def _twins(value: Any) -> list[Any]:
    """Values of other JSON types that a sloppy comparison would take for ``value``."""
    if value is None:
        return ["null", "", 0, False]
    if isinstance(value, bool):
        return [int(value), float(value), str(value).lower(), str(int(value))]
    if isinstance(value, int | float):
        out: list[Any] = [str(value), json.dumps(value)]
        if value in (0, 1):
            out.append(bool(value))
        return out
    if isinstance(value, str):
        out = []
        try:
            out.append(json.loads(value))
        except ValueError:
            pass
        return [v for v in out if v is None or isinstance(v, bool | int | str)
                or (isinstance(v, float) and math.isfinite(v))]
    return []


_TYPES: dict[FieldKind, tuple[type, ...]] = {
    FieldKind.TEXT: (str,),
    FieldKind.NUMBER: (int, float),
    FieldKind.TIME: (int, float),
    FieldKind.JSON: (type(None), bool, int, float, str),
}


@st.composite
def sorts(draw: st.DrawFn, info: Survey | None = None) -> list[Any]:
    info = info or Survey()
    keys: list[Any] = []
    for _ in range(draw(st.integers(0, 3))):
        _, name = pick_ref(draw, info)
        if draw(st.booleans()):
            keys.append([name, draw(st.sampled_from([1, -1, "asc", "desc"]))])
        else:
            keys.append(draw(st.sampled_from(["", "-", "+"])) + name)
    return keys


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Task], dict[str, Any], list[Any],
                                        int | None, int]:
    tasks = draw(task_lists())
    info = survey(tasks)
    raw_filter = draw(filters(info))
    raw_sort = draw(sorts(info))
    limit = draw(st.one_of(st.none(), st.integers(0, 5)))
    skip = draw(st.integers(0, 3))
    return tasks, raw_filter, raw_sort, limit, skip


# ---------------------------------------------------------------------------
# the properties


def subfilters(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """``raw`` and every filter inside it, down to single operators on one field.

    Checking all of them makes each generated example test many small filters,
    which select a proper part of the tasks far more often than a big one does.
    """
    out = [raw]
    for key, value in raw.items():
        if key in ("$and", "$or"):
            for item in value:
                out.extend(subfilters(item))
        elif key == "$not":
            out.extend(subfilters(value))
        else:
            out.append({key: value})
            if isinstance(value, dict):
                for op, arg in value.items():
                    if op == "$regex":
                        out.append({key: {k: v for k, v in value.items()
                                          if k in ("$regex", "$options")}})
                    elif op == "$not":
                        out.append({key: arg})
                    elif op != "$options":
                        out.append({key: {op: arg}})
    return out


def python_ids(f: Filter, tasks: list[Task], sort: tuple[SortKey, ...] = ()) -> list[str]:
    return [t.id for t in sort_tasks([t for t in tasks if matches(f, t)], sort)]


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_python_and_sqlite_agree(
    scenario: tuple[list[Task], dict[str, Any], list[Any], int | None, int],
) -> None:
    tasks, raw_filter, raw_sort, limit, skip = scenario
    f = parse_filter(raw_filter)
    sort = parse_sort(raw_sort)
    conn = new_db(tasks)
    try:
        expected = python_ids(f, tasks, sort)
        assert sql_ids(conn, f, sort) == expected

        # the window: apply_query and LIMIT/OFFSET agree too
        q = parse_query(raw_filter, raw_sort, limit, skip)
        windowed = [t.id for t in apply_query(q, tasks)]
        end = None if limit is None else skip + limit
        assert windowed == expected[skip:end]
        assert sql_ids(conn, f, sort, limit, skip) == windowed

        # the sort on its own, over every task
        assert sql_ids(conn, MATCH_ALL, sort) == python_ids(MATCH_ALL, tasks, sort)

        # every part of the filter, and its negation, which selects exactly the rest
        everything = python_ids(MATCH_ALL, tasks)
        for part in subfilters(raw_filter):
            pf, nf = parse_filter(part), parse_filter({"$not": part})
            inside, outside = python_ids(pf, tasks), python_ids(nf, tasks)
            assert sorted(inside + outside) == everything
            assert sql_ids(conn, pf) == inside, part
            assert sql_ids(conn, nf) == outside, part

        # the evaluator sees the same thing in a task read back from its row
        for t in tasks:
            assert matches(f, row_to_task(task_to_row(t))) == matches(f, t)
    finally:
        conn.close()


# Dense checks of one comparison or one sort key: every task holds a scalar (or
# nothing) at payload.v, so each example compares values of mixed types head on.

dense_values = st.one_of(
    st.sampled_from([None, True, False, 0, 1, -1, 0.0, 1.0, 1.5, "", "0", "1", "a", "b",
                     "true", "null", "é", [], {}, [1], {"v": 1}]),
    json_scalars,
)


@st.composite
def dense_tasks(draw: st.DrawFn) -> list[Task]:
    values = draw(st.lists(st.one_of(dense_values, st.just("missing")), min_size=2,
                           max_size=8))
    return [
        Task(id=f"t{i}", action="a", status=Status.QUEUED, unique_scope=(),
             payload={} if value == "missing" else {"v": value})
        for i, value in enumerate(values)
    ]


@settings(max_examples=300, deadline=None)
@given(dense_tasks(), st.data())
def test_single_comparisons_agree(tasks: list[Task], data: st.DataObject) -> None:
    present = [t.payload["v"] for t in tasks if "v" in t.payload]
    candidates = [v for v in present if v is None or isinstance(v, bool | int | float | str)]
    twins = [t for v in candidates for t in _twins(v)]
    operand = data.draw(st.sampled_from(candidates + twins) if candidates + twins
                        else json_scalars)
    op = data.draw(st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in",
                                    "$nin", "$exists", "$regex"]))
    if op in ("$in", "$nin"):
        arg: Any = [operand, *data.draw(st.lists(dense_values.filter(
            lambda v: not isinstance(v, list | dict)), max_size=2))]
    elif op == "$exists":
        arg = data.draw(st.booleans())
    elif op == "$regex":
        arg = re.escape(operand) if isinstance(operand, str) else "^.?$"
    elif op in ("$gt", "$gte", "$lt", "$lte") and (operand is None
                                                   or isinstance(operand, bool)):
        arg = 0
    else:
        arg = operand
    f = parse_filter({"payload.v": {op: arg}})
    conn = new_db(tasks)
    try:
        assert sql_ids(conn, f) == python_ids(f, tasks)
    finally:
        conn.close()


@settings(max_examples=300, deadline=None)
@given(dense_tasks(), st.lists(st.tuples(st.sampled_from(["payload.v", "payload", "id"]),
                                         st.sampled_from([1, -1])), max_size=2))
def test_sort_order_agrees(tasks: list[Task], raw_sort: list[tuple[str, int]]) -> None:
    sort = parse_sort([["payload.v", raw_sort[0][1] if raw_sort else 1], *raw_sort])
    conn = new_db(tasks)
    try:
        assert sql_ids(conn, MATCH_ALL, sort) == python_ids(MATCH_ALL, tasks, sort)
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# malformed filters

BAD_PIECES: list[tuple[str, Any]] = [
    ("nope", 1),
    ("status.x", "queued"),
    ("payload..a", 1),
    ("payload.", 1),
    ('payload.a"b', 1),
    ("payload.a\\b", 1),
    ("payload.a\nb", 1),
    ("priority", {"$gt": [1]}),
    ("priority", "x"),
    ("priority", True),
    ("status", "bogus"),
    ("status", {"$in": ["queued", "nope"]}),
    ("worker", 5),
    ("worker", {"$gt": None}),
    ("run_at", "yesterday"),
    ("run_at", {"$lt": "2024-13-45"}),
    ("priority", {"$regex": "a"}),
    ("payload.a", {"$eq": {"x": 1}}),
    ("payload.a", {"$eq": [1]}),
    ("payload.a", [1]),
    ("payload.a", {}),
    ("payload.a", {"x": 1}),
    ("payload.a", {"$in": "x"}),
    ("payload.a", {"$in": [[1]]}),
    ("payload.a", {"$nin": [{"a": 1}]}),
    ("payload.a", {"$exists": 1}),
    ("payload.a", {"$exists": "yes"}),
    ("payload.a", {"$regex": "("}),
    ("payload.a", {"$regex": 5}),
    ("payload.a", {"$regex": "a", "$options": "q"}),
    ("payload.a", {"$regex": "a", "$options": 1}),
    ("payload.a", {"$options": "i"}),
    ("payload.a", {"$gt": 1, "b": 2}),
    ("payload.a", {"$foo": 1}),
    ("payload.a", {"$not": 5}),
    ("payload.a", {"$not": {}}),
    ("payload.a", {"$not": {"x": 1}}),
    ("payload.a", {"$and": [{}]}),
    ("payload.a", {"$gt": True}),
    ("payload.a", {"$gt": None}),
    ("payload.a", {"$lt": {"a": 1}}),
    ("payload.a", float("nan")),
    ("payload.a", float("inf")),
    ("payload.a", 2**64),
    ("payload.a", -(2**63) - 1),
    ("payload.a", b"x"),
    ("payload.a", {1, 2}),
    ("payload.a", "\ud800"),
    ("payload.\ud800", 1),
    ("$and", []),
    ("$and", {}),
    ("$or", "x"),
    ("$or", [1]),
    ("$not", []),
    ("$nor", []),
    ("$gt", 1),
    ("$where", "1"),
]


def _deep(depth: int) -> dict[str, Any]:
    f: dict[str, Any] = {"status": "queued"}
    for _ in range(depth):
        f = {"$not": f}
    return f


@st.composite
def bad_filters(draw: st.DrawFn) -> dict[Any, Any]:
    """A valid random filter with one malformed piece put somewhere inside."""
    key, value = draw(st.sampled_from(BAD_PIECES))
    bad: dict[Any, Any] = {key: value}
    good = draw(filters())
    good = {k: v for k, v in good.items() if k != key}
    where = draw(st.integers(0, 3))
    if where == 0:
        return {**good, **bad}
    if where == 1:
        return {"$and": [good, bad]}
    if where == 2:
        return {"$or": [bad, good]}
    return {"$not": {"$or": [good, {"$and": [bad]}]}}


@settings(max_examples=400, deadline=None)
@given(bad_filters())
def test_malformed_filters_raise_query_error(raw: dict[Any, Any]) -> None:
    with pytest.raises(QueryError) as info:
        parse_filter(raw)
    assert info.value.path.startswith("filter")
    assert str(info.value).startswith(info.value.path + ": ")


junk_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4),
    st.binary(max_size=2), st.sampled_from(["$gt", "$in", "$regex", "$not", "$and", "$or",
                                            "queued", "payload.a", "(", "2024-01-01"]),
)
junk_keys = st.one_of(
    st.sampled_from([*FIELDS, "payload.a", "tags.a.b", "$and", "$or", "$not", "$eq", "$ne",
                     "$gt", "$lt", "$in", "$nin", "$exists", "$regex", "$options", "$x",
                     "status.a", "payload..", ""]),
    st.text(max_size=4),
    st.integers(),
)
junk = st.recursive(
    junk_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(junk_keys, inner, max_size=3)),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None)
@given(junk)
def test_junk_never_raises_anything_but_query_error(raw: Any) -> None:
    try:
        f = parse_filter(raw)
    except QueryError:
        return
    assert isinstance(f, Filter)


@settings(max_examples=200, deadline=None)
@given(st.one_of(junk, st.lists(st.lists(junk_scalars, max_size=3), max_size=3),
                 st.dictionaries(junk_keys, junk_scalars, max_size=3)),
       junk_scalars, junk_scalars)
def test_junk_queries_never_raise_anything_but_query_error(raw: Any, limit: Any,
                                                           skip: Any) -> None:
    for call in (lambda: parse_sort(raw), lambda: parse_query(None, None, limit, skip)):
        try:
            call()
        except QueryError:
            pass


def test_deep_nesting_is_refused_cleanly() -> None:
    parse_filter(_deep(30))
    with pytest.raises(QueryError, match="nests more than"):
        parse_filter(_deep(5000))
