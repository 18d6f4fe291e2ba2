"""The PostgreSQL compiler: filters and sorts to parameterised SQL over conveyor's ``tasks`` table.

Only column names from :data:`conveyor.model.FIELDS` and fixed SQL text are
written into the SQL; every value, JSON key and pattern is a bound parameter
(psycopg's ``%s`` style). Every leaf is two-valued (true or false, never
NULL), so ``NOT``, ``AND`` and ``OR`` behave like Python's.

JSON columns are ``jsonb``. A path is followed key by key with ``->`` and a
text key (``->`` with text on an array or a scalar gives NULL, so a digit
segment is a key and never an array index); ``jsonb_typeof`` tells the type.
Equality is jsonb equality, which is type-strict and compares numbers by value
(``1 = 1.0``); the ordering operators check the type first and compare numbers
as jsonb numbers and strings as text in the ``"C"`` collation (code points).

``$regex`` keeps its meaning on the other backends: the pattern is parsed with
Python's own regular expression parser and rewritten as a PostgreSQL advanced
regular expression that matches exactly the strings the ``regex`` engine (memory,
SQLite) finds (character classes such as ``\\d`` and ``\\w`` and case-insensitive
letters become explicit sets of the code points that engine matches, ``$`` and
``\\b`` become lookarounds). The few constructs PostgreSQL
cannot express are refused with a :class:`~conveyor.errors.QueryError`
(see docs/query.md, "PostgreSQL").
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import regex as _regex_engine

from conveyor import _json
from conveyor.errors import QueryError
from conveyor.model import FIELDS, FieldKind

from ._tree import And, Compare, Exists, Filter, In, Node, Not, Or, Ref, Regex, SortKey, guarded_sql

__all__ = ["compile_postgres", "compile_sort_postgres", "translate_regex"]

_SQL_OPS = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def _column(ref: Ref) -> str:
    # Defence in depth: only names of FIELDS (plain identifiers) ever reach the SQL text.
    if FIELDS.get(ref.field) is not ref.kind or not _IDENTIFIER.fullmatch(ref.field):
        raise ValueError(f"not a task field: {ref.field!r}")  # pragma: no cover
    return ref.field


def _jsonb(value: Any) -> str:
    """A JSON operand as text, bound with a ``::jsonb`` cast (psycopg is not needed to compile)."""
    return _json.dumps(value)


class _Compiler:
    def __init__(self) -> None:
        self.params: list[Any] = []

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return "%s"

    def node(self, node: Node) -> str:
        if isinstance(node, And):
            if not node.children:
                return "true"
            if node.guarded and len(node.children) > 1:
                sql = guarded_sql(node, self.node, "false")
                if sql is not None:
                    return sql
            return "(" + " AND ".join(self.node(child) for child in node.children) + ")"
        if isinstance(node, Or):
            if not node.children:
                return "false"
            return "(" + " OR ".join(self.node(child) for child in node.children) + ")"
        if isinstance(node, Not):
            return f"(NOT {self.node(node.child)})"
        if isinstance(node, Compare | In):
            operands = (node.operand,) if isinstance(node, Compare) else node.values
            for i, value in enumerate(operands):
                if isinstance(value, str) and "\x00" in value:
                    where = node.where or node.ref.dotted
                    raise QueryError(
                        "PostgreSQL text cannot contain the NUL character (\\u0000)",
                        f"{where}[{i}]" if isinstance(node, In) and node.where else where)
        if node.ref.kind is FieldKind.JSON:
            return self.json_leaf(node)
        return self.column_leaf(node)

    # -- typed columns ------------------------------------------------------

    def column_leaf(self, node: Compare | In | Exists | Regex) -> str:
        col = _column(node.ref)
        if isinstance(node, Compare):
            if node.operand is None:
                return f"({col} IS NULL)"
            return f"({col} IS NOT NULL AND {col} {_SQL_OPS[node.op]} {self.bind(node.operand)})"
        if isinstance(node, In):
            values = [v for v in node.values if v is not None]
            has_null = len(values) < len(node.values)
            if not values:
                return f"({col} IS NULL)" if has_null else "false"
            if node.ref.kind is FieldKind.TEXT:
                listed = f"ANY({self.bind([str(v) for v in values])}::text[])"
            else:
                listed = f"ANY({self.bind([float(v) for v in values])}::float8[])" \
                    if any(isinstance(v, float) for v in values) \
                    else f"ANY({self.bind(values)}::int8[])"
            if has_null:
                return f"({col} IS NULL OR {col} = {listed})"
            return f"({col} IS NOT NULL AND {col} = {listed})"
        if isinstance(node, Exists):
            return f"({col} IS NOT NULL)"
        pattern = _translated(node)
        return f"({col} IS NOT NULL AND ({col} COLLATE \"C\") ~ {self.bind(pattern)})"

    # -- JSON columns ---------------------------------------------------------

    def value(self, ref: Ref) -> str:
        """The jsonb value at the path, SQL NULL when missing (keys only, never indexes)."""
        expr = _column(ref)
        for segment in ref.path:
            expr = f"({expr} -> {self.bind(segment)}::text)"
        return expr

    def is_null(self, ref: Ref) -> str:
        return f"(coalesce(jsonb_typeof({self.value(ref)}), 'null') = 'null')"

    def json_leaf(self, node: Compare | In | Exists | Regex) -> str:
        ref = node.ref
        if isinstance(node, Compare):
            operand = node.operand
            if operand is None:
                return self.is_null(ref)
            if node.op == "eq":
                return f"coalesce({self.value(ref)} = {self.bind(_jsonb(operand))}::jsonb, false)"
            op = _SQL_OPS[node.op]
            if isinstance(operand, str):
                check = f"(CASE WHEN jsonb_typeof({self.value(ref)}) = 'string' "
                text = f"({self.value(ref)} #>> '{{}}') COLLATE \"C\""
                return f"{check}THEN {text} {op} {self.bind(operand)} ELSE false END)"
            return (f"coalesce(jsonb_typeof({self.value(ref)}) = 'number' "
                    f"AND {self.value(ref)} {op} {self.bind(_jsonb(operand))}::jsonb, false)")
        if isinstance(node, In):
            parts: list[str] = []
            if any(v is None for v in node.values):
                parts.append(self.is_null(ref))
            values = [v for v in node.values if v is not None]
            if values:
                value = self.value(ref)
                listed = self.bind([_jsonb(v) for v in values])
                parts.append(f"coalesce({value} = ANY({listed}::text[]::jsonb[]), false)")
            if not parts:
                return "false"
            return "(" + " OR ".join(parts) + ")"
        if isinstance(node, Exists):
            return f"(coalesce(jsonb_typeof({self.value(ref)}), 'null') <> 'null')"
        pattern = _translated(node)
        check = f"(CASE WHEN jsonb_typeof({self.value(ref)}) = 'string' "
        text = f"({self.value(ref)} #>> '{{}}') COLLATE \"C\""
        return f"{check}THEN {text} ~ {self.bind(pattern)} ELSE false END)"


def _translated(node: Regex) -> str:
    """:func:`translate_regex` of the node's pattern; a refusal names where it is."""
    try:
        return translate_regex(node.pattern, node.flags)
    except QueryError as exc:
        if exc.path or not node.where:
            raise
        raise QueryError(exc.reason, node.where) from None


def compile_postgres(f: Filter) -> tuple[str, list[Any]]:
    """A SQL boolean expression over the columns of conveyor's ``tasks`` table, and its parameters.

    Use it as ``WHERE <sql>`` with psycopg, the parameters bound in order
    (``%s`` placeholders; the SQL holds no other ``%``). The empty filter
    compiles to ``true``. Raises :class:`~conveyor.errors.QueryError` for a
    ``$regex`` that PostgreSQL cannot run with Python's meaning and for a string
    operand holding the NUL character (PostgreSQL text cannot contain it).
    """
    if not isinstance(f, Filter):
        raise TypeError(f"compile_postgres() needs a parsed Filter, not {type(f).__name__}")
    compiler = _Compiler()
    sql = compiler.node(f.root)
    return sql, compiler.params


def compile_sort_postgres(sort: Sequence[SortKey]) -> tuple[str, list[Any]]:
    """The body of an ``ORDER BY`` (without those words) for the sort keys, and its parameters.

    It always ends with ``id`` (ascending), the final tie-break; the order is
    the one of :func:`~conveyor.query.sort_tasks`: missing/null < false < true
    < numbers < strings < objects and arrays. Bind these parameters after the
    ones of the WHERE clause.
    """
    parts: list[str] = []
    compiler = _Compiler()
    for key in sort:
        if not isinstance(key, SortKey):
            raise TypeError(f"compile_sort_postgres() needs SortKey objects, not {key!r}")
        ref = key.ref
        col = _column(ref)
        direction = "DESC" if key.descending else "ASC"
        if ref.kind is FieldKind.JSON:
            v = compiler.value
            parts.append(
                f"(CASE coalesce(jsonb_typeof({v(ref)}), 'null') WHEN 'null' THEN 0 "
                f"WHEN 'boolean' THEN (CASE WHEN {v(ref)} = 'true'::jsonb THEN 2 ELSE 1 END) "
                f"WHEN 'number' THEN 3 WHEN 'string' THEN 4 ELSE 5 END) {direction}")
            parts.append(f"(CASE WHEN jsonb_typeof({v(ref)}) = 'number' "
                         f"THEN ({v(ref)})::numeric END) {direction}")
            parts.append(f"(CASE WHEN jsonb_typeof({v(ref)}) = 'string' "
                         f"THEN ({v(ref)} #>> '{{}}') END) COLLATE \"C\" {direction}")
        else:
            # missing values first, like the evaluator; descending puts them last
            nulls = "NULLS LAST" if key.descending else "NULLS FIRST"
            parts.append(f"{col} {direction} {nulls}")
    parts.append("id")
    return ", ".join(parts), compiler.params


# ---------------------------------------------------------------------------
# $regex: Python's regular expressions, as the regex engine reads them, in PostgreSQL's

# Python's own regular expression parser and constants (private, but stable in 3.11+)
_c: Any = importlib.import_module("re._constants")
_p: Any = importlib.import_module("re._parser")

_MAX = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
_DUPMAX = 255  # PostgreSQL's largest repetition count

Ranges = list[tuple[int, int]]  # sorted, disjoint, inclusive code point ranges


def _normalise(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _complement(ranges: Ranges) -> Ranges:
    out: Ranges = []
    start = 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _MAX:
        out.append((start, _MAX))
    return out


@functools.cache
def _every_character() -> str:
    """Every code point, in order (about 4 MiB, made once): the classes below are
    what the ``regex`` engine itself matches in it."""
    return "".join(map(chr, range(_MAX + 1)))


def _matched(pattern: str, flags: int) -> tuple[tuple[int, int], ...]:
    """The code points the ``regex`` engine (as memory and SQLite run ``$regex``)
    matches with ``pattern``, a one-character class, under ``flags``."""
    found = _regex_engine.finditer(f"(?:{pattern})+", _every_character(),
                                   flags | _regex_engine.VERSION0)
    return tuple((m.start(), m.end() - 1) for m in found)


@functools.cache
def _category(name: str, flags: int) -> tuple[tuple[int, int], ...]:
    """Code point ranges of \\d, \\s, \\w as the ``regex`` engine reads them, with the
    pattern's ``flags`` (``re.ASCII`` among them: the ASCII classes)."""
    ascii = _regex_engine.ASCII if flags & _c.SRE_FLAG_ASCII else 0
    return _matched({"digit": r"\d", "space": r"\s", "word": r"\w"}[name], ascii)


@functools.lru_cache(maxsize=4096)
def _case_closure(raw: tuple[tuple[int, int], ...], ascii: bool) -> tuple[tuple[int, int], ...]:
    """The code points that the ``regex`` engine's IGNORECASE matches against the
    class ``raw``."""
    source = "[" + "".join(_py_class_item(lo, hi) for lo, hi in raw) + "]"
    return _matched(source, _regex_engine.IGNORECASE | (_regex_engine.ASCII if ascii else 0))


def _esc(cp: int) -> str:
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"


def _py_class_item(lo: int, hi: int) -> str:
    return _esc_py(lo) if lo == hi else f"{_esc_py(lo)}-{_esc_py(hi)}"


def _esc_py(cp: int) -> str:
    return f"\\U{cp:08x}"


class _Unsupported(Exception):
    pass


class _Translator:
    def __init__(self) -> None:
        self.has_backrefs = False
        self.lookaround_groups = False

    # -- sets -------------------------------------------------------------

    def case_closure(self, raw: Ranges, flags: int) -> Ranges:
        """The code points that IGNORECASE matches against the class ``raw``."""
        if not flags & _c.SRE_FLAG_IGNORECASE or not raw:
            return raw
        return list(_case_closure(tuple(raw), bool(flags & _c.SRE_FLAG_ASCII)))

    def category(self, chcode: Any, flags: int) -> Ranges:
        name = str(chcode).lower()
        negate = "not_" in name
        base = "digit" if "digit" in name else "space" if "space" in name else "word"
        if "linebreak" in name:
            raise _Unsupported("\\n categories")
        ranges = list(_category(base, flags))
        return _complement(ranges) if negate else ranges

    def in_set(self, items: Sequence[Any], flags: int) -> Ranges:
        negate = False
        raw: Ranges = []
        cats: Ranges = []
        for op, av in items:
            if op is _c.NEGATE:
                negate = True
            elif op is _c.LITERAL:
                raw.append((av, av))
            elif op is _c.RANGE:
                raw.append((av[0], av[1]))
            elif op is _c.CATEGORY:
                cats.extend(self.category(av, flags))
            else:
                raise _Unsupported(f"{op} in a character class")
        result = _normalise([*self.case_closure(_normalise(raw), flags), *cats])
        return _complement(result) if negate else result

    def bracket(self, ranges: Ranges) -> str:
        # PostgreSQL text holds neither NUL nor surrogates: leave them out
        usable: Ranges = []
        for lo, hi in ranges:
            lo = max(lo, 1)
            if lo > hi:
                continue
            if lo <= _SURROGATES[1] and hi >= _SURROGATES[0]:
                if lo < _SURROGATES[0]:
                    usable.append((lo, _SURROGATES[0] - 1))
                if hi > _SURROGATES[1]:
                    usable.append((_SURROGATES[1] + 1, hi))
            else:
                usable.append((lo, hi))
        if not usable:
            return "(?!)"
        if len(usable) == 1 and usable[0][0] == usable[0][1]:
            return _esc(usable[0][0])
        inside = "".join(_esc(lo) if lo == hi else f"{_esc(lo)}-{_esc(hi)}"
                         for lo, hi in usable)
        return f"[{inside}]"

    def word(self, flags: int) -> str:
        return self.bracket(list(_category("word", flags)))

    # -- the tree ---------------------------------------------------------

    def seq(self, items: Any, flags: int, in_lookaround: bool = False) -> str:
        return "".join(self.item(op, av, flags, in_lookaround) for op, av in items)

    def item(self, op: Any, av: Any, flags: int, look: bool) -> str:
        ignore = flags & _c.SRE_FLAG_IGNORECASE
        if op is _c.LITERAL:
            return self.bracket(self.case_closure([(av, av)], flags) if ignore else [(av, av)])
        if op is _c.NOT_LITERAL:
            return self.bracket(_complement(self.case_closure([(av, av)], flags)))
        if op is _c.ANY:
            if flags & _c.SRE_FLAG_DOTALL:
                return "."
            return "[^\\u000a]"
        if op is _c.IN:
            return self.bracket(self.in_set(av, flags))
        if op is _c.BRANCH:
            return "(?:" + "|".join(self.seq(alt, flags, look) for alt in av[1]) + ")"
        if op is _c.SUBPATTERN:
            group, add, remove, sub = av
            inner = self.seq(sub, (flags | add) & ~remove, look)
            if group is not None and look:
                self.lookaround_groups = True
                return f"(?:{inner})"
            return f"({inner})" if group is not None else f"(?:{inner})"
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            lo, hi, sub = av
            if lo > _DUPMAX or (hi is not _c.MAXREPEAT and hi > _DUPMAX):
                raise _Unsupported(f"a repetition count above {_DUPMAX}")
            inner = f"(?:{self.seq(sub, flags, look)})"
            if (lo, hi) == (0, _c.MAXREPEAT):
                return inner + "*"
            if (lo, hi) == (1, _c.MAXREPEAT):
                return inner + "+"
            if (lo, hi) == (0, 1):
                return inner + "?"
            if hi is _c.MAXREPEAT:
                return f"{inner}{{{lo},}}"
            return f"{inner}{{{lo},{hi}}}" if lo != hi else f"{inner}{{{lo}}}"
        if op is _c.AT:
            return self.at(av, flags)
        if op in (_c.ASSERT, _c.ASSERT_NOT):
            direction, sub = av
            inner = self.seq(sub, flags, True)
            if op is _c.ASSERT:
                return f"(?={inner})" if direction == 1 else f"(?<={inner})"
            return f"(?!{inner})" if direction == 1 else f"(?<!{inner})"
        if op is _c.GROUPREF:
            if ignore:
                raise _Unsupported("a back reference in a case-insensitive pattern")
            if look:
                raise _Unsupported("a back reference inside a lookaround")
            self.has_backrefs = True
            return f"(?:\\{av})"
        names = {"ATOMIC_GROUP": "an atomic group", "POSSESSIVE_REPEAT": "a possessive repeat",
                 "GROUPREF_EXISTS": "a conditional group"}
        raise _Unsupported(names.get(str(op), str(op)))

    def at(self, where: Any, flags: int) -> str:
        multiline = flags & _c.SRE_FLAG_MULTILINE
        if where is _c.AT_BEGINNING:
            return "(?:^|(?<=\\u000a))" if multiline else "^"
        if where is _c.AT_BEGINNING_STRING:
            return "^"
        if where is _c.AT_END:
            return "(?=\\u000a|$)" if multiline else "(?=\\u000a?$)"
        if where is _c.AT_END_STRING:
            return "$"
        w = self.word(flags)
        if where is _c.AT_BOUNDARY:
            return f"(?:(?<={w})(?!{w})|(?<!{w})(?={w}))"
        if where is _c.AT_NON_BOUNDARY:  # (in an empty string too, as the regex engine's)
            return f"(?:(?<={w})(?={w})|(?<!{w})(?!{w}))"
        raise _Unsupported(str(where))


@functools.lru_cache(maxsize=256)
def translate_regex(pattern: str, flags: int = 0) -> str:
    """A PostgreSQL advanced regular expression that finds a match in exactly the
    strings where ``$regex`` does on memory and SQLite (the ``regex`` engine's
    ``search(pattern, s, flags)``).

    Raises :class:`QueryError` for what PostgreSQL cannot express (possessive
    repeats, atomic and conditional groups, back references with IGNORECASE or
    in lookarounds, repetition counts above 255, NUL characters).
    """
    if "\x00" in pattern:
        raise QueryError(f"$regex {pattern!r}: PostgreSQL patterns cannot contain NUL")
    try:
        tree = _p.parse(pattern, flags)
    except re.error as exc:  # pragma: no cover - the parser compiled it already
        raise QueryError(f"invalid regular expression {pattern!r}: {exc}") from None
    translator = _Translator()
    try:
        out = translator.seq(tree, tree.state.flags)
        if translator.has_backrefs and translator.lookaround_groups:
            raise _Unsupported("a capturing group inside a lookaround together with "
                               "back references")
    except _Unsupported as exc:
        raise QueryError(
            f"$regex {pattern!r} uses {exc}, which PostgreSQL regular expressions "
            "cannot express with Python's meaning") from None
    return out
