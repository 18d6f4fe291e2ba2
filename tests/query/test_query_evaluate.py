"""The evaluator and the SQLite compiler on hand-built tasks: each case runs both ways."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor.model import ErrorInfo, Progress, Status, Task
from conveyor.query import (
    SortKey,
    apply_query,
    compile_sort_sqlite,
    compile_sqlite,
    matches,
    parse_filter,
    parse_query,
    parse_sort,
    register_sqlite_functions,
    sort_tasks,
)

from ._support import new_db, sql_ids, task

TASKS = [
    task("t1", action="mail:send", status=Status.QUEUED, priority=0.0, run_at=100.0,
         payload={"user": {"id": 1, "name": "Ann"}, "n": 1, "flag": True, "tags": ["x"]},
         tags={"team": "a", "tier": 1}),
    task("t2", action="mail:send", status=Status.RUNNING, priority=5.0, run_at=200.0,
         payload={"user": {"id": "1", "name": "bob"}, "n": 1.0, "flag": False, "s": "1"},
         worker="w1", tags={"team": "b"}, started_at=150.0,
         progress=Progress(current=3, total=10, message="working")),
    task("t3", action="geo:code", status=Status.FAILED, priority=-1.5, run_at=300.0,
         payload={"user": None, "n": 2.5, "flag": 1, "obj": {"a": 1}},
         error=ErrorInfo("ValueError", "bad input", attempt=2), max_attempts=3,
         result={"partial": True}),
    task("t4", action="geo:code", status=Status.SUCCEEDED, priority=5.0, run_at=400.0,
         payload={"n": "2", "flag": None, "list": [1, 2], "0": "zero", "": "empty"},
         result=[1, 2, 3], finished_at=450.0, worker="W2"),
    task("t5", action="ünïcode", status=Status.ABORTED, priority=10.0, run_at=500.0,
         payload=None, result="done", reason="timeout", tags={}),
    task("t6", action="mail:send", status=Status.QUEUED, priority=0.0, run_at=600.0,
         payload={"user": {"id": 2.0}, "n": -3, "flag": "true", "obj": {}},
         result=0, tags={"team": None}),
]


@pytest.fixture(scope="module")
def conn() -> Iterator[sqlite3.Connection]:
    db = new_db(TASKS)
    yield db
    db.close()


def run(conn: sqlite3.Connection, raw: Any) -> list[str]:
    """Ids matched by the filter, from Python and from SQL, which must agree."""
    f = parse_filter(raw)
    python = [t.id for t in TASKS if matches(f, t)]
    assert sql_ids(conn, f) == python, raw
    return python


CASES: list[tuple[Any, list[str]]] = [
    # match everything
    (None, ["t1", "t2", "t3", "t4", "t5", "t6"]),
    ({}, ["t1", "t2", "t3", "t4", "t5", "t6"]),
    # typed columns
    ({"status": "queued"}, ["t1", "t6"]),
    ({"status": {"$ne": "queued"}}, ["t2", "t3", "t4", "t5"]),
    ({"status": {"$in": ["failed", "aborted"]}}, ["t3", "t5"]),
    ({"status": {"$nin": ["failed", "aborted"]}}, ["t1", "t2", "t4", "t6"]),
    ({"action": "mail:send", "priority": 0}, ["t1", "t6"]),
    ({"priority": {"$gt": 0, "$lt": 10}}, ["t2", "t4"]),
    ({"priority": {"$gte": 5}}, ["t2", "t4", "t5"]),
    ({"priority": {"$lte": -1.5}}, ["t3"]),
    ({"priority": 5}, ["t2", "t4"]),
    ({"priority": 5.0}, ["t2", "t4"]),
    ({"run_at": {"$gte": 200, "$lt": 500}}, ["t2", "t3", "t4"]),
    ({"run_at": {"$lt": "1970-01-01T00:05:00Z"}}, ["t1", "t2"]),
    ({"worker": None}, ["t1", "t3", "t5", "t6"]),
    ({"worker": {"$exists": True}}, ["t2", "t4"]),
    ({"worker": {"$ne": None}}, ["t2", "t4"]),
    ({"worker": {"$ne": "w1"}}, ["t1", "t3", "t4", "t5", "t6"]),
    ({"worker": {"$gt": "a"}}, ["t2"]),  # "W2" < "a" < "w1" by code point
    ({"worker": {"$in": ["w1", None]}}, ["t1", "t2", "t3", "t5", "t6"]),
    ({"worker": {"$nin": ["w1", None]}}, ["t4"]),
    ({"worker": {"$in": [None]}}, ["t1", "t3", "t5", "t6"]),
    ({"worker": {"$regex": "^w"}}, ["t2"]),
    ({"worker": {"$regex": "^w", "$options": "i"}}, ["t2", "t4"]),
    ({"worker": {"$not": {"$regex": "^w"}}}, ["t1", "t3", "t4", "t5", "t6"]),
    ({"max_attempts": 3}, ["t3"]),
    ({"max_attempts": {"$lt": 5}}, ["t3"]),
    ({"max_attempts": {"$not": {"$lt": 5}}}, ["t1", "t2", "t4", "t5", "t6"]),
    ({"started_at": {"$exists": False}}, ["t1", "t3", "t4", "t5", "t6"]),
    ({"finished_at": {"$gte": 0}}, ["t4"]),
    ({"reason": "timeout"}, ["t5"]),
    ({"id": {"$in": ["t1", "t9"]}}, ["t1"]),
    ({"id": {"$gt": "t4"}}, ["t5", "t6"]),
    ({"action": {"$regex": "^ü"}}, ["t5"]),
    ({"action": {"$regex": "CODE$", "$options": "i"}}, ["t3", "t4", "t5"]),
    ({"action": {"$regex": ":CODE$", "$options": "i"}}, ["t3", "t4"]),
    # JSON paths: type-strict equality
    ({"payload.user.id": 1}, ["t1"]),
    ({"payload.user.id": "1"}, ["t2"]),
    ({"payload.user.id": 2}, ["t6"]),  # 2 == 2.0
    ({"payload.n": 1}, ["t1", "t2"]),  # 1 == 1.0
    ({"payload.n": {"$in": [1, "2"]}}, ["t1", "t2", "t4"]),
    ({"payload.flag": True}, ["t1"]),  # not 1, not "true"
    ({"payload.flag": 1}, ["t3"]),  # not true
    ({"payload.flag": False}, ["t2"]),
    ({"payload.flag": 0}, []),
    ({"payload.flag": "true"}, ["t6"]),
    ({"payload.flag": {"$in": [True, False]}}, ["t1", "t2"]),
    ({"payload.flag": {"$nin": [True, False]}}, ["t3", "t4", "t5", "t6"]),
    ({"payload.flag": {"$ne": True}}, ["t2", "t3", "t4", "t5", "t6"]),
    ({"payload.s": "1"}, ["t2"]),
    ({"payload.s": 1}, []),
    # null and missing are one thing
    ({"payload.flag": None}, ["t4", "t5"]),  # JSON null, and t5 whose payload is null
    ({"payload.user": None}, ["t3", "t4", "t5"]),
    ({"payload.user.id": None}, ["t3", "t4", "t5"]),
    ({"payload.user.id": {"$exists": True}}, ["t1", "t2", "t6"]),
    ({"payload.user.id": {"$exists": False}}, ["t3", "t4", "t5"]),
    ({"payload.user": {"$exists": True}}, ["t1", "t2", "t6"]),
    ({"payload.user.id": {"$ne": None}}, ["t1", "t2", "t6"]),
    ({"payload.nothing": {"$in": [None, 1]}}, ["t1", "t2", "t3", "t4", "t5", "t6"]),
    ({"payload": None}, ["t5"]),
    ({"payload": {"$exists": True}}, ["t1", "t2", "t3", "t4", "t6"]),
    ({"result": None}, ["t1", "t2"]),
    ({"result": 0}, ["t6"]),
    ({"result": "done"}, ["t5"]),
    ({"result": {"$exists": True}}, ["t3", "t4", "t5", "t6"]),
    ({"tags.team": None}, ["t3", "t4", "t5", "t6"]),
    ({"tags.team": {"$exists": True}}, ["t1", "t2"]),
    ({"tags": {"$exists": True}}, ["t1", "t2", "t3", "t4", "t5", "t6"]),  # {} is present
    # ordering: numbers with numbers, strings with strings, never across types
    ({"payload.n": {"$gt": 1}}, ["t3"]),
    ({"payload.n": {"$gte": 1}}, ["t1", "t2", "t3"]),
    ({"payload.n": {"$lt": 1}}, ["t6"]),
    ({"payload.n": {"$gt": "1"}}, ["t4"]),
    ({"payload.n": {"$lt": "9"}}, ["t4"]),
    ({"payload.flag": {"$gte": 0}}, ["t3"]),  # booleans are not numbers
    ({"payload.user.name": {"$gt": "B"}}, ["t2"]),  # "Ann" < "B" < "bob"
    ({"payload.user": {"$gt": 0}}, []),  # objects never compare
    ({"payload.n": {"$not": {"$gt": 1}}}, ["t1", "t2", "t4", "t5", "t6"]),
    ({"payload.n": {"$gt": 0, "$lt": 2}}, ["t1", "t2"]),
    # arrays and objects are never equal to scalars and are not stepped into
    ({"payload.tags": "x"}, []),
    ({"payload.tags.0": "x"}, []),
    ({"payload.list": {"$exists": True}}, ["t4"]),
    ({"payload.list.0": {"$exists": True}}, []),
    ({"payload.0": "zero"}, ["t4"]),  # a digit segment is an object key
    ({"payload.obj": {"$exists": True}}, ["t3", "t6"]),  # {} is present
    ({"payload.obj.a": 1}, ["t3"]),
    ({"payload.user.name.first": {"$exists": True}}, []),  # stepping through a string
    ({"result.partial": True}, ["t3"]),
    ({"result.0": 1}, []),
    # regex only matches strings
    ({"payload.n": {"$regex": "2"}}, ["t4"]),
    ({"payload.n": {"$regex": "1"}}, []),
    ({"payload.user": {"$regex": "Ann"}}, []),  # an object's JSON text never matches
    ({"payload.list": {"$regex": "1"}}, []),
    ({"payload.user.name": {"$regex": "^(ann|bob)$", "$options": "i"}}, ["t1", "t2"]),
    ({"payload.user.name": {"$regex": "n"}}, ["t1"]),
    ({"payload.user.name": {"$not": {"$regex": "n"}}}, ["t2", "t3", "t4", "t5", "t6"]),
    ({"payload.flag": {"$regex": "^t"}}, ["t6"]),
    # error and progress read as their to_json()
    ({"error.type": "ValueError"}, ["t3"]),
    ({"error.attempt": {"$gte": 2}}, ["t3"]),
    ({"error.traceback": None}, ["t1", "t2", "t3", "t4", "t5", "t6"]),
    ({"error": {"$exists": True}}, ["t3"]),
    ({"error.message": {"$regex": "bad"}}, ["t3"]),
    ({"progress.current": {"$gt": 2}}, ["t2"]),
    ({"progress.message": "working"}, ["t2"]),
    ({"progress.data": {"$exists": True}}, []),
    # logical operators
    ({"$or": [{"status": "failed"}, {"priority": {"$gt": 5}}]}, ["t3", "t5"]),
    ({"$and": [{"action": "mail:send"}, {"payload.n": 1}]}, ["t1", "t2"]),
    ({"$not": {"status": "queued"}}, ["t2", "t3", "t4", "t5"]),
    ({"$not": {}}, []),
    ({"$or": [{"$not": {}}]}, []),
    ({"$and": [{}]}, ["t1", "t2", "t3", "t4", "t5", "t6"]),
    ({"status": "queued", "$or": [{"payload.n": -3}, {"tags.team": "a"}]}, ["t1", "t6"]),
    ({"$not": {"$or": [{"payload.flag": True}, {"payload.flag": None}]}},
     ["t2", "t3", "t6"]),
    ({"$not": {"payload.user.id": {"$gt": 0}}}, ["t2", "t3", "t4", "t5"]),
    ({"status": {"$in": []}}, []),
    ({"status": {"$nin": []}}, ["t1", "t2", "t3", "t4", "t5", "t6"]),
    ({"payload.n": {"$in": []}}, []),
]


@pytest.mark.parametrize(("raw", "expected"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_filters(conn: sqlite3.Connection, raw: Any, expected: list[str]) -> None:
    assert run(conn, raw) == expected


@pytest.mark.parametrize(("raw", "_expected"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_negations_are_complements(conn: sqlite3.Connection, raw: Any,
                                   _expected: list[str]) -> None:
    inside = run(conn, raw)
    outside = run(conn, {"$not": raw or {}})
    assert sorted(inside + outside) == [t.id for t in TASKS]


# ---------------------------------------------------------------------------
# sorting

SORT_TASKS = [
    task("s1", payload={"v": "b"}),
    task("s2", payload={"v": 2}),
    task("s3", payload={"v": True}),
    task("s4", payload={"v": None}),
    task("s5", payload={}),
    task("s6", payload={"v": [1]}),
    task("s7", payload={"v": False}),
    task("s8", payload={"v": 1.5}),
    task("s9", payload={"v": "a"}),
    task("sa", payload={"v": {"x": 1}}),
    task("sb", payload={"v": -10}),
    task("sc", payload={"v": "B"}),
    task("sd", payload={"v": 2.0}),
    task("se", payload={"v": []}),
]


def ordered(sort: Any, tasks: list[Task] = SORT_TASKS) -> list[str]:
    keys = parse_sort(sort)
    python = [t.id for t in sort_tasks(tasks, keys)]
    db = new_db(tasks)
    try:
        assert sql_ids(db, parse_filter(None), keys) == python, sort
    finally:
        db.close()
    return python


def test_sort_order_of_types() -> None:
    # missing/null < false < true < numbers < strings < objects and arrays (tied, by id)
    assert ordered("payload.v") == [
        "s4", "s5", "s7", "s3", "sb", "s8", "s2", "sd", "sc", "s9", "s1", "s6", "sa", "se"]


def test_descending_reverses_but_ties_stay_by_id() -> None:
    assert ordered("-payload.v") == [
        "s6", "sa", "se", "s1", "s9", "sc", "s2", "sd", "s8", "sb", "s3", "s7", "s4", "s5"]


def test_no_sort_is_by_id() -> None:
    assert ordered(None) == sorted(t.id for t in SORT_TASKS)


def test_multiple_keys() -> None:
    tasks = [
        task("a", priority=1.0, run_at=3.0),
        task("b", priority=0.0, run_at=3.0),
        task("c", priority=1.0, run_at=1.0),
        task("d", priority=0.0, run_at=2.0, worker="x"),
        task("e", priority=1.0, run_at=3.0, worker="y"),
    ]
    assert ordered(["priority", "run_at"], tasks) == ["d", "b", "c", "a", "e"]
    assert ordered(["-priority", "run_at"], tasks) == ["c", "a", "e", "d", "b"]
    assert ordered({"priority": -1, "run_at": -1}, tasks) == ["a", "e", "c", "b", "d"]
    assert ordered("worker", tasks) == ["a", "b", "c", "d", "e"]
    assert ordered("-worker", tasks) == ["e", "d", "a", "b", "c"]
    assert ordered(["-id"], tasks) == ["e", "d", "c", "b", "a"]
    assert ordered([["run_at", -1], ["id", -1]], tasks) == ["e", "b", "a", "d", "c"]


def test_sort_by_status_and_time_columns() -> None:
    tasks = [
        task("a", status=Status.RUNNING, finished_at=None),
        task("b", status=Status.ABORTED, finished_at=5.0),
        task("c", status=Status.QUEUED, finished_at=1.0),
    ]
    assert ordered("status", tasks) == ["b", "c", "a"]
    assert ordered("finished_at", tasks) == ["a", "c", "b"]
    assert ordered("-finished_at", tasks) == ["b", "c", "a"]


def test_sort_tasks_accepts_any_iterable() -> None:
    keys = parse_sort("-priority")
    tasks = (task(str(i), priority=float(i % 3)) for i in range(6))
    assert [t.id for t in sort_tasks(tasks, keys)] == ["2", "5", "1", "4", "0", "3"]


# ---------------------------------------------------------------------------
# apply_query


def test_apply_query_filters_sorts_and_windows() -> None:
    q = parse_query({"action": "mail:send"}, "-run_at", limit=2, skip=1)
    assert [t.id for t in apply_query(q, TASKS)] == ["t2", "t1"]
    q = parse_query({"action": "mail:send"}, "-run_at", limit=0)
    assert apply_query(q, TASKS) == []
    q = parse_query({"action": "mail:send"}, "-run_at", skip=10)
    assert apply_query(q, TASKS) == []
    q = parse_query(None, "priority", limit=None, skip=4)
    assert [t.id for t in apply_query(q, iter(TASKS))] == ["t4", "t5"]


def test_matches_wants_a_parsed_filter() -> None:
    with pytest.raises(TypeError, match="parsed Filter"):
        matches({"status": "queued"}, TASKS[0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="parsed Filter"):
        compile_sqlite({"status": "queued"})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# the SQL itself


def test_no_user_text_is_spliced_into_sql() -> None:
    evil = "x'); DROP TABLE conveyor_tasks; --"
    f = parse_filter({
        f"payload.{evil}": {"$regex": re.escape(evil), "$options": "i"},
        "action": evil,
        "tags.a": {"$in": [evil, 1, True, None]},
        "$or": [{"worker": {"$gt": evil}}, {"payload.b": {"$lt": evil}}],
    })
    sql, params = compile_sqlite(f)
    assert evil not in sql
    assert "DROP" not in sql
    assert sql.count("?") == len(params)
    assert evil in params
    assert f'$."{evil}"' in params
    order, order_params = compile_sort_sqlite(parse_sort(f"-payload.{evil}"))
    assert evil not in order
    assert order.count("?") == len(order_params)
    db = new_db(TASKS)
    try:
        sql_ids(db, f, parse_sort(f"-payload.{evil}"))
        assert db.execute("SELECT count(*) FROM conveyor_tasks").fetchone()[0] == len(TASKS)
    finally:
        db.close()


def test_empty_filter_compiles_to_true() -> None:
    assert compile_sqlite(parse_filter(None)) == ("1", [])
    assert compile_sqlite(parse_filter({"$not": {}})) == ("(NOT 1)", [])


def test_sort_sql_ends_with_id() -> None:
    assert compile_sort_sqlite(()) == ("id", [])
    sql, params = compile_sort_sqlite(parse_sort(["-priority", "payload.a.b"]))
    assert sql.startswith("priority DESC, ")
    assert sql.endswith(", id")
    assert params == ['$."a"."b"'] * 3
    with pytest.raises(TypeError):
        compile_sort_sqlite(["priority"])  # type: ignore[list-item]


def test_typed_columns_use_indexes() -> None:
    db = new_db(TASKS)
    try:
        raws: list[dict[str, Any]] = [
            {"status": "queued"}, {"status": {"$in": ["queued", "running"]}},
            {"parent_id": {"$gt": "a"}},
        ]
        for raw in raws:
            sql, params = compile_sqlite(parse_filter(raw))
            plan = db.execute(f"EXPLAIN QUERY PLAN SELECT id FROM conveyor_tasks WHERE {sql}",
                              params).fetchall()
            assert any("USING INDEX" in row[-1] for row in plan), (raw, plan)
    finally:
        db.close()


def test_every_leaf_is_two_valued() -> None:
    """No leaf yields NULL, so NOT of it is its complement even on NULL columns."""
    raws: list[Any] = [
        {"worker": "w1"}, {"worker": {"$gt": "a"}}, {"worker": {"$in": ["w1"]}},
        {"worker": {"$in": ["w1", None]}}, {"worker": {"$regex": "w"}},
        {"result": 1}, {"result": "a"}, {"result": True}, {"result": None},
        {"result.x": {"$gt": 1}}, {"result.x": {"$in": [1, "a", True, None]}},
        {"result.x": {"$regex": "a"}}, {"result": {"$exists": True}},
        {"error.type": "x"}, {"progress.current": {"$lt": 3}},
    ]
    db = new_db(TASKS)
    try:
        for raw in raws:
            sql, params = compile_sqlite(parse_filter(raw))
            values = {row[0] for row in db.execute(
                f"SELECT {sql} FROM conveyor_tasks", params)}
            assert values <= {0, 1}, (raw, values)
    finally:
        db.close()


def test_regexp_function() -> None:
    db = sqlite3.connect(":memory:")
    try:
        register_sqlite_functions(db)
        one = db.execute("SELECT conveyor_regexp('^a', 0, 'abc'), conveyor_regexp('^A', 2, 'abc'),"
                         " conveyor_regexp('^A', 0, 'abc'), conveyor_regexp('a', 0, NULL),"
                         " conveyor_regexp('1', 0, 1), conveyor_regexp('(', 0, 'x')").fetchone()
        assert one == (1, 1, 0, 0, 0, 0)
    finally:
        db.close()


def test_sort_key_ref() -> None:
    key = SortKey("payload", ("a",))
    assert key.ref.field == "payload"
    assert key.ref.path == ("a",)
    assert key.ref.dotted == "payload.a"


def test_the_stored_row_is_what_python_reads() -> None:
    """The evaluator's view of error and progress is the JSON the column holds."""
    t = TASKS[2]
    db = new_db([t])
    try:
        error_json, progress_json = db.execute(
            "SELECT json_extract(error, '$.type'), progress FROM conveyor_tasks").fetchone()
        assert error_json == "ValueError"
        assert progress_json is None
    finally:
        db.close()
