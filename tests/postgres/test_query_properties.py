"""Property tests: the Python evaluator and the PostgreSQL compiler agree on every filter
and sort, and translated $regex patterns match exactly what the regex engine (memory,
SQLite) finds.

Random tasks go into a real table made by the real migration; the strategies are
the ones of the SQLite property tests (tests/query).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.errors import QueryError
from conveyor.model import Task
from conveyor.query import (
    Filter,
    SortKey,
    apply_query,
    compile_postgres,
    compile_sort_postgres,
    parse_filter,
    parse_query,
    parse_sort,
)
from conveyor.query._postgres import translate_regex
from conveyor.query._regex import compile_regex
from conveyor.query._tree import MATCH_ALL
from conveyor.storage._codec import COLUMNS, task_to_values

from ..conftest import PG_ENV, drop_pg_schema, pg_url
from ..query.test_query_properties import (
    _twins,
    dense_tasks,
    dense_values,
    json_scalars,
    python_ids,
    scenarios,
    subfilters,
)

JSON_COLUMNS = {"payload", "backoff", "progress", "result", "error", "errors", "concurrency",
                "tags"}


@pytest.fixture(scope="module")
def db() -> Iterator[tuple[psycopg.Connection[Any], str]]:
    import asyncio

    from conveyor.storage.postgres import migrate

    url = pg_url(schema=f"q_{uuid.uuid4().hex[:12]}")
    asyncio.run(migrate(url))
    schema = dict(p.split("=") for p in url.split("?", 1)[1].split("&"))["schema"]
    with psycopg.connect(os.environ[PG_ENV], autocommit=True) as conn:
        conn.execute(f'ALTER TABLE "{schema}".tasks DISABLE TRIGGER USER')
        yield conn, schema
    drop_pg_schema(url)


def load(db: tuple[psycopg.Connection[Any], str], tasks: Sequence[Task]) -> None:
    conn, schema = db
    conn.execute(f'TRUNCATE "{schema}".tasks')
    marks = ", ".join("%s::jsonb" if c in JSON_COLUMNS else "%s" for c in COLUMNS)
    with conn.cursor() as cur:
        cur.executemany(f'INSERT INTO "{schema}".tasks ({", ".join(COLUMNS)}) VALUES ({marks})',
                        [task_to_values(t) for t in tasks])


def pg_ids(db: tuple[psycopg.Connection[Any], str], f: Filter, sort: Sequence[SortKey] = (),
           limit: int | None = None, skip: int = 0) -> list[str]:
    conn, schema = db
    where, params = compile_postgres(f)
    order, order_params = compile_sort_postgres(sort)
    sql = (f'SELECT id FROM "{schema}".tasks WHERE {where} ORDER BY {order} '
           "LIMIT %s OFFSET %s")
    return [r[0] for r in conn.execute(sql, [*params, *order_params, limit, skip])]


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(scenarios())
def test_python_and_postgres_agree(db: Any, scenario: Any) -> None:
    tasks, raw_filter, raw_sort, limit, skip = scenario
    f = parse_filter(raw_filter)
    sort = parse_sort(raw_sort)
    load(db, tasks)
    expected = python_ids(f, tasks, sort)
    assert pg_ids(db, f, sort) == expected
    q = parse_query(raw_filter, raw_sort, limit, skip)
    assert pg_ids(db, f, sort, limit, skip) == [t.id for t in apply_query(q, tasks)]
    assert pg_ids(db, MATCH_ALL, sort) == python_ids(MATCH_ALL, tasks, sort)
    for part in subfilters(raw_filter):
        pf, nf = parse_filter(part), parse_filter({"$not": part})
        assert pg_ids(db, pf) == python_ids(pf, tasks), part
        assert pg_ids(db, nf) == python_ids(nf, tasks), part


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dense_tasks(), st.data())
def test_single_comparisons_agree(db: Any, tasks: list[Task], data: st.DataObject) -> None:
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
    load(db, tasks)
    assert pg_ids(db, f) == python_ids(f, tasks)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dense_tasks(), st.lists(st.tuples(st.sampled_from(["payload.v", "payload", "id"]),
                                         st.sampled_from([1, -1])), max_size=2))
def test_sort_order_agrees(db: Any, tasks: list[Task], raw_sort: list[tuple[str, int]]) -> None:
    sort = parse_sort([["payload.v", raw_sort[0][1] if raw_sort else 1], *raw_sort])
    load(db, tasks)
    assert pg_ids(db, MATCH_ALL, sort) == python_ids(MATCH_ALL, tasks, sort)


# -- $regex: the same meaning on PostgreSQL as on memory and SQLite --------------------

ALPHABET = ("aAbB_ 0\n9\t.-é\u00c9\u0663\u212akKs\u017f\u00df\u03c3\u03c2\u03a3\u00a0x"
            # where Python's re and the regex engine part: ASCII separators, dotless and
            # dotted i, a Unicode 16 digit, a Unicode 14 letter, a combining mark, ½, ‿
            "iI\u0131\u0130\x1c\x1f\U00010d40\U0001df95\u1e9e\u0301\u00bd\u203f")
ATOMS = ["a", "b", "A", "é", "k", "s", "\u03c3", "i", "\u0131", "\u00df", ".",
         r"\d", r"\D", r"\w", r"\W", r"\s", r"\S",
         "[a-c]", "[^a]", r"[\w-]", r"[^\d\s]", "[A-Z]", "[é-ê]", r"\.", r"\n", r"\u00e9",
         r"\x41", "(?:a|b)", "(a)", "[\u03c3\u03c2]"]
ANCHORS = ["^", "$", r"\A", r"\Z", r"\b", r"\B"]
QUANTIFIERS = ["", "", "", "*", "+", "?", "{2}", "{1,3}", "*?", "+?", "{0,}"]


@st.composite
def patterns(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.integers(0, 5)) == 0:
            parts.append(draw(st.sampled_from(ANCHORS)))
        else:
            parts.append(draw(st.sampled_from(ATOMS)) + draw(st.sampled_from(QUANTIFIERS)))
    pattern = "".join(parts)
    if draw(st.integers(0, 6)) == 0:
        pattern = pattern + "|" + draw(st.sampled_from(ATOMS))
    if draw(st.integers(0, 8)) == 0:
        pattern = f"(?={pattern})" + draw(st.sampled_from(ATOMS))
    return pattern


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(patterns(), st.sets(st.sampled_from("imsx"), max_size=3),
       st.lists(st.text(ALPHABET, max_size=6), min_size=1, max_size=12))
def test_regex_translation_matches_python(db: Any, pattern: str, options: set[str],
                                          texts: list[str]) -> None:
    flags = 0
    for o in options:
        flags |= {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}[o]
    try:
        re.compile(pattern, flags)  # the syntax is Python's
        compiled = compile_regex(pattern, flags)  # the meaning, memory's and SQLite's
    except (re.error, regex.error):
        return
    try:
        translated = translate_regex(pattern, flags)
    except QueryError:
        return
    conn, _ = db
    rows = conn.execute("SELECT t COLLATE \"C\" ~ %s FROM unnest(%s::text[]) "
                        "WITH ORDINALITY AS x(t, n) ORDER BY n", [translated, texts]).fetchall()
    got = [r[0] for r in rows]
    expected = [compiled.search(t) is not None for t in texts]
    assert got == expected, (pattern, options, translated)


@pytest.mark.parametrize("pattern", ["(?>a)", "a++", "(a)?(?(1)b|c)", "a{256}", "(?i)(a)\\1"])
def test_untranslatable_regexes_are_refused(pattern: str) -> None:
    with pytest.raises(QueryError, match="PostgreSQL"):
        translate_regex(pattern, 0)
