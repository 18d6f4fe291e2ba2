"""The parser: raw JSON-like filters and sorts in, validated trees out.

Everything a caller can pass is checked here, so the evaluator and the SQL
compiler never meet a malformed tree. Every refusal is a
:class:`~conveyor.errors.QueryError` whose ``path`` says where the problem is
(``filter.$and[1].payload.user.$gt``).
"""

from __future__ import annotations

import importlib
import math
import re
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from conveyor.errors import QueryError
from conveyor.model import FieldKind, Status

from ._regex import compile_regex
from ._tree import (
    MATCH_ALL,
    And,
    Compare,
    CompareOp,
    Exists,
    Filter,
    In,
    Node,
    Not,
    Or,
    Query,
    Ref,
    Regex,
    Scalar,
    SortKey,
    check_window,
    make_ref,
)

__all__ = [
    "FIELD_OPERATORS",
    "FILTER_OPERATORS",
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "MAX_PATTERN",
    "MAX_PATTERNS",
    "MAX_TERMS",
    "REGEX_OPTIONS",
    "parse_filter",
    "parse_query",
    "parse_sort",
]

MAX_DEPTH = 32
"""How deeply ``$and``/``$or``/``$not`` may nest."""

MAX_TERMS = 2000
"""How many comparisons one filter may hold: each ``$in`` / ``$nin`` item counts as
one (an empty list as one), so a single ``$in`` may list 2000 values."""

MAX_PATTERN = 1000
"""The longest ``$regex`` pattern of a ``bounded`` parse (a hub's clients), in characters."""

MAX_PATTERNS = 4000
"""The ``$regex`` patterns of one filter of a ``bounded`` parse together, in characters
(compiling a pattern takes about 10 ms per 1000 characters, and a hub parses its
clients' filters on its event loop)."""

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

FILTER_OPERATORS = ("$and", "$or", "$not")
FIELD_OPERATORS = (
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$regex",
    "$options", "$not",
)
_ORDERING: dict[str, CompareOp] = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}
REGEX_OPTIONS: dict[str, re.RegexFlag] = {
    "i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE,
}
_DIRECTIONS: dict[str, bool] = {
    "asc": False, "ascending": False, "desc": True, "descending": True,
}
_STATUS_VALUES = frozenset(s.value for s in Status)
_STATUSES = ", ".join(s.value for s in Status)


# ---------------------------------------------------------------------------
# helpers


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _number(value: float) -> str:
    if isinstance(value, int) and not -(10**30) < value < 10**30:
        return "beyond 10**30"  # str() of a huge int may even raise
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(value: object) -> str:
    """How an offending value is named in messages: ``a list``, ``a string ('x')``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int | float):
        return f"a number ({_number(value)})"
    if isinstance(value, str):
        return f"a string ({_short(value)})"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a Python {type(value).__name__}"


def _text(value: str, what: str, where: str) -> str:
    """``value`` as an exact ``str``, refusing lone surrogates (not valid UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError(f"{what} is not valid Unicode text (it holds a lone surrogate)",
                         where) from None
    return str.__str__(value)


def _key(key: object, where: str) -> str:
    if not isinstance(key, str):
        raise QueryError(f"keys must be strings, not {_describe(key)}", where)
    return _text(key, f"key {_short(key)}", where)


def _epoch(moment: datetime, where: str) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError) as exc:  # pragma: no cover - extreme dates
        raise QueryError(f"time {moment.isoformat()} is out of range: {exc}", where) from None


def _parse_time(text: str, ref: Ref, where: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise QueryError(
            f"{_short(text)} is not an ISO-8601 time; {ref.field} is a time field: give epoch "
            f"seconds or a string such as '2024-05-01T12:00:00Z' (no zone means UTC)",
            where,
        ) from None
    return _epoch(moment, where)


def _expected(ref: Ref, ordering: bool) -> str:
    """What an operand of ``ref`` may be, for messages."""
    kind = ref.kind
    if kind is FieldKind.JSON:
        return "a number or a string" if ordering else "a string, number, boolean or null"
    if kind is FieldKind.TEXT:
        what = "a string" if ordering else "a string or null"
    elif kind is FieldKind.NUMBER:
        what = "a number" if ordering else "a number or null"
    else:
        what = ("epoch seconds or an ISO-8601 time string" if ordering
                else "epoch seconds, an ISO-8601 time string or null")
    return f"{what} ({ref.field} is a {kind.value} field)"


def _all(parts: list[Node]) -> Node:
    """The AND of ``parts``, with nested ANDs flattened."""
    flat: list[Node] = []
    for part in parts:
        flat.extend(part.children if isinstance(part, And) and part.children else (part,))
    return flat[0] if len(flat) == 1 else And(tuple(flat))


# ---------------------------------------------------------------------------
# filters


class _Parser:
    def __init__(self, bounded: bool = False) -> None:
        self.terms = 0
        self.bounded = bounded
        self.pattern_chars = 0

    def count(self, n: int, where: str) -> None:
        self.terms += n
        if self.terms > MAX_TERMS:
            raise QueryError(
                f"the filter is too large: more than {MAX_TERMS} comparisons (each $in or "
                f"$nin item counts as one)",
                where,
            )

    # -- filter level ------------------------------------------------------

    def filter(self, raw: object, where: str, depth: int) -> Node:
        if not isinstance(raw, Mapping):
            raise QueryError(f"a filter must be an object, not {_describe(raw)}", where)
        if depth > MAX_DEPTH:
            raise QueryError(f"the filter nests more than {MAX_DEPTH} levels deep", where)
        parts: list[Node] = []
        for raw_key, value in raw.items():
            key = _key(raw_key, where)
            sub = f"{where}.{key}"
            if key in ("$and", "$or"):
                if not isinstance(value, list | tuple):
                    raise QueryError(f"{key} needs a list of filters, not {_describe(value)}", sub)
                if not value:
                    raise QueryError(f"{key} needs at least one filter", sub)
                children = tuple(
                    self.filter(item, f"{sub}[{i}]", depth + 1) for i, item in enumerate(value)
                )
                parts.append(And(children) if key == "$and" else Or(children))
            elif key == "$not":
                parts.append(Not(self.filter(value, sub, depth + 1)))
            elif key.startswith("$"):
                if key in FIELD_OPERATORS:
                    raise QueryError(
                        f"{key} compares a field, so it goes inside a field's condition, "
                        f'as in {{"priority": {{"{key}": ...}}}}',
                        sub,
                    )
                raise QueryError(
                    f"unknown operator {key}; a filter's keys are field names "
                    f"and the logical operators $and, $or, $not",
                    sub,
                )
            else:
                name, *path = key.split(".")
                ref = make_ref(name, tuple(path), sub, key)
                parts.append(self.condition(ref, value, sub, depth))
        return _all(parts)

    # -- field level -------------------------------------------------------

    def condition(self, ref: Ref, raw: object, where: str, depth: int) -> Node:
        if isinstance(raw, list | tuple):
            raise QueryError(
                f"{ref.dotted} cannot be compared with a list; to match any of several "
                f'values use {{"$in": [...]}}',
                where,
            )
        if not isinstance(raw, Mapping):
            self.count(1, where)
            return Compare(ref, "eq", self.operand(ref, raw, where, None, ordering=False), where)
        if not raw:
            raise QueryError(
                'empty condition: give a value to compare with, or an object of operators '
                'such as {"$gt": 1}',
                where,
            )
        keys = [_key(k, where) for k in raw]
        ops = [k for k in keys if k.startswith("$")]
        plain = [k for k in keys if not k.startswith("$")]
        if ops and plain:
            raise QueryError(
                f"the condition mixes operators ({', '.join(ops)}) with plain keys "
                f"({', '.join(map(repr, plain))}); give either a value or an object of operators",
                where,
            )
        if plain:
            hint = (f"; to test a key inside it, use a path such as "
                    f"'{ref.dotted}.{plain[0]}'" if ref.kind is FieldKind.JSON else "")
            raise QueryError(
                f"{ref.dotted} cannot be compared with an object: operands are strings, "
                f"numbers, booleans or null{hint}",
                where,
            )
        if depth > MAX_DEPTH:
            raise QueryError(f"the filter nests more than {MAX_DEPTH} levels deep", where)
        parts: list[Node] = []
        for op, arg in zip(keys, raw.values(), strict=True):
            sub = f"{where}.{op}"
            node: Node
            if op in ("$eq", "$ne"):
                self.count(1, sub)
                node = Compare(ref, "eq", self.operand(ref, arg, sub, op, ordering=False), sub)
                if op == "$ne":
                    node = Not(node)
            elif op in _ORDERING:
                self.count(1, sub)
                node = Compare(ref, _ORDERING[op], self.operand(ref, arg, sub, op, ordering=True),
                               sub)
            elif op in ("$in", "$nin"):
                if not isinstance(arg, list | tuple):
                    raise QueryError(f"{op} needs a list of values, not {_describe(arg)}", sub)
                self.count(max(1, len(arg)), sub)  # an empty list is one comparison
                values = tuple(
                    self.operand(ref, item, f"{sub}[{i}]", f"each item of {op}", ordering=False)
                    for i, item in enumerate(arg)
                )
                node = In(ref, values, sub)
                if op == "$nin":
                    node = Not(node)
            elif op == "$exists":
                if not isinstance(arg, bool):
                    raise QueryError(f"$exists needs true or false, not {_describe(arg)}", sub)
                self.count(1, sub)
                node = Exists(ref) if arg else Not(Exists(ref))
            elif op == "$regex":
                self.count(1, sub)
                node = self.regex(ref, raw, where)
            elif op == "$options":
                if "$regex" not in raw:
                    raise QueryError("$options only goes beside a $regex", sub)
                continue
            elif op == "$not":
                if not (isinstance(arg, Mapping) and arg
                        and all(isinstance(k, str) and k.startswith("$") for k in arg)):
                    raise QueryError(
                        '$not needs an object of operators, such as {"$gt": 5}; '
                        "to exclude one value use $ne",
                        sub,
                    )
                node = Not(self.condition(ref, arg, sub, depth + 1))
            elif op in ("$and", "$or"):
                raise QueryError(
                    f"{op} combines whole filters, so it goes at filter level, "
                    f'as in {{"{op}": [{{"{ref.dotted}": ...}}, ...]}}',
                    sub,
                )
            else:
                valid = ", ".join(o for o in FIELD_OPERATORS if o != "$options")
                raise QueryError(f"unknown operator {op}; valid operators are {valid}", sub)
            parts.append(node)
        return _all(parts)

    def operand(self, ref: Ref, raw: object, where: str, op: str | None, *,
                ordering: bool) -> Scalar:
        """A checked operand for ``ref``; TIME strings and datetimes become epoch floats."""
        kind = ref.kind
        subject = op if op is not None else f"a condition on {ref.dotted}"

        def refuse() -> QueryError:
            return QueryError(
                f"{subject} needs {_expected(ref, ordering)}, not {_describe(raw)}", where
            )

        if kind is FieldKind.TIME and isinstance(raw, datetime):
            return _epoch(raw, where)
        if raw is None:
            if ordering:
                raise refuse()
            return None
        if isinstance(raw, bool):
            if ordering or kind is not FieldKind.JSON:
                raise refuse()
            return bool(raw)
        if isinstance(raw, int):
            if kind is FieldKind.TEXT:
                raise refuse()
            if not INT_MIN <= raw <= INT_MAX:
                raise QueryError(
                    f"{subject}: the integer {_number(raw)} is out of range "
                    f"(integers must be between -2**63 and 2**63-1)",
                    where,
                )
            return int(raw)
        if isinstance(raw, float):
            if kind is FieldKind.TEXT:
                raise refuse()
            if not math.isfinite(raw):
                raise QueryError(f"{subject} needs a finite number, not {raw!r}", where)
            return float(raw)
        if isinstance(raw, str):
            if kind is FieldKind.NUMBER:
                raise refuse()
            text = _text(raw, f"the operand of {subject}", where)
            if kind is FieldKind.TIME:
                return _parse_time(text, ref, where)
            if ref.field == "status" and text not in _STATUS_VALUES:
                raise QueryError(
                    f"{_short(text)} is not a status; expected one of {_STATUSES}", where
                )
            return text
        raise refuse()

    def regex(self, ref: Ref, raw: Mapping[Any, Any], where: str) -> Regex:
        sub = f"{where}.$regex"
        pattern = raw["$regex"]
        if not isinstance(pattern, str):
            raise QueryError(f"$regex needs a pattern string, not {_describe(pattern)}", sub)
        pattern = _text(pattern, "the $regex pattern", sub)
        if self.bounded and len(pattern) > MAX_PATTERN:
            raise QueryError(f"the $regex pattern is too long: {len(pattern)} characters, "
                             f"at most {MAX_PATTERN}", sub)
        self.pattern_chars += len(pattern)
        if self.bounded and self.pattern_chars > MAX_PATTERNS:
            raise QueryError(f"the filter's $regex patterns are too long together: more "
                             f"than {MAX_PATTERNS} characters", sub)
        if ref.kind in (FieldKind.NUMBER, FieldKind.TIME):
            raise QueryError(
                f"$regex matches text, but {ref.field} is a {ref.kind.value} field", sub
            )
        options = raw.get("$options", "")
        flags = 0
        if not isinstance(options, str):
            raise QueryError(
                f"$options needs a string of flags such as 'i', not {_describe(options)}",
                f"{where}.$options",
            )
        for letter in options:
            flag = REGEX_OPTIONS.get(letter)
            if flag is None:
                raise QueryError(
                    f"unknown $options flag {letter!r}; the flags are i, m, s and x",
                    f"{where}.$options",
                )
            flags |= flag
        _unambiguous(pattern, flags, sub)
        try:
            with warnings.catch_warnings():  # (what it would warn of was refused above)
                warnings.simplefilter("ignore", FutureWarning)
                re.compile(pattern, flags)  # Python's syntax, and its words for an error
            compiled = compile_regex(pattern, int(flags))
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            raise QueryError(f"invalid regular expression {_short(pattern)}: {exc}", sub) from None
        except Exception as exc:  # what the regex engine refuses
            raise QueryError(f"regular expression {_short(pattern)} is not supported: "
                             f"{exc}", sub) from None
        return Regex(ref, pattern, int(flags), compiled, sub)


_re_parser: Any = importlib.import_module("re._parser")


def _unambiguous(pattern: str, flags: int, where: str) -> None:
    """Refuse what Python itself flags as ambiguous in a set (a ``FutureWarning``: a
    nested ``[``, as in ``[[:alpha:]]``, or ``--``, ``&&``, ``~~``, ``||``): engines read
    it differently (the regex engine of memory and SQLite as a POSIX class, Python's
    re and PostgreSQL as a ``[`` in a set), so one filter would answer differently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        try:
            _re_parser.parse(pattern, flags)
        except FutureWarning as exc:
            raise QueryError(f"regular expression {_short(pattern)} is ambiguous ({exc}): "
                             "escape the character (\\[ for a [ in a set)", where) from None
        except Exception:  # not a pattern at all: re.compile says why, in its words
            return


def parse_filter(raw: Mapping[str, Any] | Filter | None, *, where: str = "filter",
                 bounded: bool = False) -> Filter:
    """Parse and validate a filter; ``None`` or ``{}`` match every task.

    A :class:`Filter` is returned unchanged. ``where`` names the filter in
    error paths (``"filter"``, or for instance ``"concurrency[0].query"``).
    ``bounded``: also refuse ``$regex`` patterns longer than :data:`MAX_PATTERN`
    characters, or :data:`MAX_PATTERNS` together (a hub's clients' filters).
    Raises :class:`~conveyor.errors.QueryError` for anything malformed.
    """
    if raw is None:
        return MATCH_ALL
    if isinstance(raw, Filter):
        return raw
    parser = _Parser(bounded)
    try:
        return Filter(parser.filter(raw, where, 0))
    except RecursionError:  # pragma: no cover - depth is limited long before this
        raise QueryError("the filter is nested too deeply", where) from None


# ---------------------------------------------------------------------------
# sorts


def _direction(raw: object, where: str) -> bool:
    """True for descending."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw in (1, -1):
        return raw == -1
    if isinstance(raw, str) and raw.lower() in _DIRECTIONS:
        return _DIRECTIONS[raw.lower()]
    raise QueryError(
        f"a sort direction is 1, -1, 'asc' or 'desc', not {_describe(raw)}", where
    )


def _sort_field(raw: object, descending: bool, where: str) -> SortKey:
    if not isinstance(raw, str):
        raise QueryError(f"a sort field must be a string, not {_describe(raw)}", where)
    text = _text(raw, "the sort field", where)
    if not text:
        raise QueryError("a sort field name is empty", where)
    name, *path = text.split(".")
    ref = make_ref(name, tuple(path), where, text)
    return SortKey(ref.field, ref.path, descending)


def _signed(raw: str, where: str) -> SortKey:
    descending = raw.startswith("-")
    name = raw[1:] if raw[:1] in ("-", "+") else raw
    return _sort_field(name, descending, where)


def _is_pair(raw: list[Any] | tuple[Any, ...]) -> bool:
    if len(raw) != 2 or not isinstance(raw[0], str):
        return False
    second = raw[1]
    if isinstance(second, bool):
        return False
    return isinstance(second, int) or (isinstance(second, str)
                                       and second.lower() in _DIRECTIONS)


def parse_sort(raw: object, *, where: str = "sort") -> tuple[SortKey, ...]:
    """Parse a sort specification into sort keys (``None`` means no sort).

    Accepted forms: ``"field"``, ``"-field"`` (descending), several of those
    separated by commas (``"-priority,created_at"``), a list of those,
    ``[field, 1 | -1]`` pairs (or a list of them), and a mapping
    ``{field: 1 | -1 | "asc" | "desc"}``. Fields may be JSON paths such as
    ``payload.user.id``. :class:`SortKey` objects are accepted as they are.
    """
    if raw is None:
        return ()
    if isinstance(raw, SortKey):
        return (raw,)
    if isinstance(raw, str) and "," in raw:  # "-priority,created_at", as in a URL
        parts = [part.strip() for part in raw.split(",")]
        if not all(parts):
            raise QueryError("every field must be named (comma-separated fields such as "
                             f"-priority,created_at), not {raw!r}", where)
        return tuple(_signed(part, f"{where}[{i}]") for i, part in enumerate(parts))
    if isinstance(raw, str):
        return (_signed(raw, where),)
    if isinstance(raw, Mapping):
        keys: list[SortKey] = []
        for raw_key, direction in raw.items():
            key = _key(raw_key, where)
            sub = f"{where}.{key}"
            keys.append(_sort_field(key, _direction(direction, sub), sub))
        return tuple(keys)
    if isinstance(raw, list | tuple):
        if _is_pair(raw):
            return (_sort_field(raw[0], _direction(raw[1], where), where),)
        keys = []
        for i, item in enumerate(raw):
            sub = f"{where}[{i}]"
            if isinstance(item, SortKey):
                keys.append(item)
            elif isinstance(item, str):
                keys.append(_signed(item, sub))
            elif isinstance(item, list | tuple):
                if len(item) != 2:
                    raise QueryError(
                        f"a sort pair is [field, 1 or -1], not a list of {len(item)}", sub
                    )
                keys.append(_sort_field(item[0], _direction(item[1], sub), sub))
            elif isinstance(item, Mapping) and len(item) == 1:
                ((raw_key, direction),) = item.items()
                key = _key(raw_key, sub)
                keys.append(_sort_field(key, _direction(direction, f"{sub}.{key}"),
                                        f"{sub}.{key}"))
            else:
                raise QueryError(
                    f"a sort item is a field name, [field, direction] or {{field: direction}}, "
                    f"not {_describe(item)}",
                    sub,
                )
        return tuple(keys)
    raise QueryError(
        f"sort must be a field name, a list or an object, not {_describe(raw)}", where
    )


# ---------------------------------------------------------------------------
# whole queries


def parse_query(filter: Mapping[str, Any] | Filter | None = None, sort: object = None,
                limit: object = None, skip: object = 0, *, bounded: bool = False) -> Query:
    """Parse a whole query: a filter, a sort, ``limit`` (None or an int >= 0) and
    ``skip`` (an int >= 0; not None). Booleans are not numbers here either.
    ``bounded``: as for :func:`parse_filter`.
    """
    parsed_filter = parse_filter(filter, bounded=bounded)
    parsed_sort = parse_sort(sort)
    check_window(limit, skip)
    assert limit is None or isinstance(limit, int)
    assert isinstance(skip, int)
    return Query(parsed_filter, parsed_sort, limit, skip)
