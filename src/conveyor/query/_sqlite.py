"""The SQLite compiler: filters and sorts to parameterised SQL over ``conveyor_tasks``.

Only column names from :data:`conveyor.model.FIELDS` and fixed SQL text are
written into the SQL; every value, JSON path and pattern is a bound parameter
(qmark style). Every leaf is two-valued (0 or 1, never NULL), so ``NOT``,
``AND`` and ``OR`` behave like Python's ``not``, ``and`` and ``or``.

JSON columns hold JSON text. ``json_type(col, path)`` tells the JSON type
(``'null'``, ``'true'``, ``'false'``, ``'integer'``, ``'real'``, ``'text'``,
``'array'``, ``'object'``; SQL NULL when the path is missing or the column
is NULL); ``json_extract(col, path)`` gives the value, which is compared only
after its type has been checked (it returns 1/0 for booleans and JSON text
for arrays and objects).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Any

from conveyor.errors import QueryError
from conveyor.model import FIELDS, FieldKind

from ._regex import compile_regex, note_timeout, search
from ._tree import (
    And,
    Compare,
    Exists,
    Filter,
    In,
    Node,
    Not,
    Or,
    Ref,
    Regex,
    Scalar,
    SortKey,
    guarded_sql,
)

__all__ = [
    "REGEXP_FUNCTION",
    "compile_sort_sqlite",
    "compile_sqlite",
    "json_path",
    "register_sqlite_functions",
]

REGEXP_FUNCTION = "conveyor_regexp"
"""``conveyor_regexp(pattern, flags, value)``: 1 when the pattern (Python's syntax; see
:mod:`conveyor.query._regex`) finds the
pattern in ``value`` (a string), else 0."""

_SQL_OPS = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def json_path(path: Sequence[str]) -> str:
    """The SQLite JSON path for a key path, every key quoted: ``$."user"."id"``.

    The parser guarantees that keys hold no ``"``, ``\\`` or control characters.
    """
    return "$" + "".join(f'."{segment}"' for segment in path)


def _column(ref: Ref) -> str:
    # Defence in depth: only names of FIELDS (plain identifiers) ever reach the SQL text.
    if FIELDS.get(ref.field) is not ref.kind or not _IDENTIFIER.fullmatch(ref.field):
        raise ValueError(f"not a task field: {ref.field!r}")  # pragma: no cover
    return ref.field


_FLAT = 16
"""Most terms joined in one flat ``a OR b OR ...`` chain: SQLite parses a chain of n
terms into a tree n deep, and refuses trees deeper than 1000."""


def _joined(terms: list[str], op: str) -> str:
    """``terms`` joined by ``op``, parenthesised as a balanced tree (depth about
    ``_FLAT + log2(len(terms))``) so that a filter's 2000 comparisons stay well
    inside SQLite's expression depth limit; the terms keep their order (and with
    them the order of the bound parameters)."""
    if len(terms) <= _FLAT:
        return "(" + op.join(terms) + ")"
    half = len(terms) // 2
    return "(" + _joined(terms[:half], op) + op + _joined(terms[half:], op) + ")"


class _Compiler:
    def __init__(self) -> None:
        self.params: list[Any] = []

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    def node(self, node: Node) -> str:
        if isinstance(node, And):
            if not node.children:
                return "1"
            if node.guarded and len(node.children) > 1:
                sql = guarded_sql(node, self.node, "0")
                if sql is not None:
                    return sql
            return _joined([self.node(child) for child in node.children], " AND ")
        if isinstance(node, Or):
            if not node.children:
                return "0"
            return _joined([self.node(child) for child in node.children], " OR ")
        if isinstance(node, Not):
            return f"(NOT {self.node(node.child)})"
        if node.ref.kind is FieldKind.JSON:
            return self.json_leaf(node)
        return self.column_leaf(node)

    # -- typed columns: TEXT, REAL or INTEGER values, or NULL --------------

    def column_leaf(self, node: Compare | In | Exists | Regex) -> str:
        col = _column(node.ref)
        if isinstance(node, Compare):
            if node.op == "eq":
                if node.operand is None:
                    return f"({col} IS NULL)"
                return f"({col} IS {self.bind(node.operand)})"
            return f"({col} IS NOT NULL AND {col} {_SQL_OPS[node.op]} {self.bind(node.operand)})"
        if isinstance(node, In):
            values = [v for v in node.values if v is not None]
            has_null = len(values) < len(node.values)
            if not values:
                return f"({col} IS NULL)" if has_null else "0"
            listed = ", ".join(self.bind(v) for v in values)
            if has_null:
                return f"({col} IS NULL OR {col} IN ({listed}))"
            return f"({col} IS NOT NULL AND {col} IN ({listed}))"
        if isinstance(node, Exists):
            return f"({col} IS NOT NULL)"
        return f"{REGEXP_FUNCTION}({self.bind(node.pattern)}, {self.bind(node.flags)}, {col})"

    # -- JSON columns ------------------------------------------------------

    def jtype(self, ref: Ref) -> str:
        return f"json_type({_column(ref)}, {self.bind(json_path(ref.path))})"

    def jvalue(self, ref: Ref) -> str:
        return f"json_extract({_column(ref)}, {self.bind(json_path(ref.path))})"

    def is_null(self, ref: Ref) -> str:
        return f"(COALESCE({self.jtype(ref)}, 'null') = 'null')"

    def is_number(self, ref: Ref) -> str:
        return f"COALESCE({self.jtype(ref)}, '') IN ('integer', 'real')"

    def is_text(self, ref: Ref) -> str:
        return f"{self.jtype(ref)} IS 'text'"

    def typed(self, ref: Ref, operand: Scalar, op: str) -> str:
        """Number or string ``value op operand``: the type test first, then the value."""
        check = self.is_text(ref) if isinstance(operand, str) else self.is_number(ref)
        return f"({check} AND {self.jvalue(ref)} {op} {self.bind(operand)})"

    def json_leaf(self, node: Compare | In | Exists | Regex) -> str:
        ref = node.ref
        if isinstance(node, Compare):
            operand = node.operand
            if operand is None:
                return self.is_null(ref)
            if isinstance(operand, bool):
                return f"({self.jtype(ref)} IS '{'true' if operand else 'false'}')"
            return self.typed(ref, operand, _SQL_OPS[node.op])
        if isinstance(node, In):
            parts: list[str] = []
            if any(v is None for v in node.values):
                parts.append(self.is_null(ref))
            for flag in (True, False):
                if any(v is flag for v in node.values):
                    parts.append(f"({self.jtype(ref)} IS '{'true' if flag else 'false'}')")
            numbers = [v for v in node.values
                       if isinstance(v, int | float) and not isinstance(v, bool)]
            if numbers:
                check = self.is_number(ref)
                value = self.jvalue(ref)
                listed = ", ".join(self.bind(v) for v in numbers)
                parts.append(f"({check} AND {value} IN ({listed}))")
            texts = [v for v in node.values if isinstance(v, str)]
            if texts:
                check = self.is_text(ref)
                value = self.jvalue(ref)
                listed = ", ".join(self.bind(v) for v in texts)
                parts.append(f"({check} AND {value} IN ({listed}))")
            if not parts:
                return "0"
            return "(" + " OR ".join(parts) + ")"
        if isinstance(node, Exists):
            return f"(COALESCE({self.jtype(ref)}, 'null') <> 'null')"
        check = self.is_text(ref)
        pattern, flags = self.bind(node.pattern), self.bind(node.flags)
        return f"({check} AND {REGEXP_FUNCTION}({pattern}, {flags}, {self.jvalue(ref)}))"


def compile_sqlite(f: Filter) -> tuple[str, list[Any]]:
    """A SQL boolean expression over the columns of ``conveyor_tasks``, and its parameters.

    Use it as ``WHERE <sql>`` with the parameters bound in order (qmark style);
    the connection needs :func:`register_sqlite_functions` when the filter
    has a ``$regex``. The empty filter compiles to ``1``.
    """
    if not isinstance(f, Filter):
        raise TypeError(f"compile_sqlite() needs a parsed Filter, not {type(f).__name__}")
    compiler = _Compiler()
    sql = compiler.node(f.root)
    return sql, compiler.params


_RANK = (
    "CASE COALESCE(json_type({col}, ?), 'null') WHEN 'null' THEN 0 WHEN 'false' THEN 1 "
    "WHEN 'true' THEN 2 WHEN 'integer' THEN 3 WHEN 'real' THEN 3 WHEN 'text' THEN 4 "
    "ELSE 5 END {direction}"
)
_VALUE = (
    "CASE WHEN json_type({col}, ?) IN ('integer', 'real', 'text') "
    "THEN json_extract({col}, ?) END {direction}"
)


def compile_sort_sqlite(sort: Sequence[SortKey]) -> tuple[str, list[Any]]:
    """The body of an ``ORDER BY`` (without those words) for the sort keys, and its parameters.

    It ends with ``id`` (ascending), the final tie-break, unless a key sorts by
    ``id`` already (an index on ``(created_at, id)`` then serves the whole order); the order is
    the one of :func:`~conveyor.query.sort_tasks`. Bind these parameters after
    the ones of the WHERE clause.
    """
    parts: list[str] = []
    params: list[Any] = []
    for key in sort:
        if not isinstance(key, SortKey):
            raise TypeError(f"compile_sort_sqlite() needs SortKey objects, not {key!r}")
        ref = key.ref
        col = _column(ref)
        direction = "DESC" if key.descending else "ASC"
        if ref.kind is FieldKind.JSON:
            path = json_path(ref.path)
            parts.append(_RANK.format(col=col, direction=direction))
            parts.append(_VALUE.format(col=col, direction=direction))
            params.extend((path, path, path))
        else:
            # NULL sorts first in SQLite, like missing values here; DESC puts it last
            parts.append(f"{col} {direction}")
    if not any(key.ref.field == "id" for key in sort):  # else id decided already
        parts.append("id")
    return ", ".join(parts), params


def _regexp(pattern: object, flags: object, value: object) -> int:
    if not (isinstance(value, str) and isinstance(pattern, str) and isinstance(flags, int)):
        return 0
    try:
        compiled = compile_regex(pattern, flags)
    except Exception:  # parse_filter refused such patterns; none reaches here from it
        return 0
    try:
        return 1 if search(compiled, value) else 0
    except QueryError as exc:  # SQLite fails the statement; its runner raises this
        note_timeout(exc)
        raise


def register_sqlite_functions(conn: sqlite3.Connection) -> None:
    """Register on ``conn`` the SQL functions compiled filters call (``conveyor_regexp``).

    Call it once on every connection that runs compiled filters.
    """
    conn.create_function(REGEXP_FUNCTION, 3, _regexp, deterministic=True)
