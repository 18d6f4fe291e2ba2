"""The parsed form of a query: field references, filter nodes, sort keys.

Every object here is immutable. Nodes are built only by the parser (or by
code that validates like it does); evaluators and compilers trust them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeAlias

from conveyor.errors import QueryError

if TYPE_CHECKING:
    import regex
from conveyor.model import FIELDS, JSON_FIELDS, FieldKind

__all__ = [
    "MATCH_ALL",
    "MAX_PATH",
    "And",
    "Compare",
    "CompareOp",
    "Exists",
    "Filter",
    "In",
    "Node",
    "Not",
    "Or",
    "Query",
    "Ref",
    "Regex",
    "Scalar",
    "SortKey",
    "check_segment",
    "check_window",
    "comparisons",
    "fields_of",
    "guarded_sql",
    "has_regex",
    "make_ref",
    "scoped",
    "unknown_field_message",
]

Scalar: TypeAlias = bool | int | float | str | None
"""A JSON scalar: the only kind of operand a filter compares with."""

CompareOp: TypeAlias = Literal["eq", "gt", "gte", "lt", "lte"]


# ---------------------------------------------------------------------------
# field references


def unknown_field_message(name: str, key: str) -> str:
    """The message for a key whose first segment is not a field."""
    valid = ", ".join(FIELDS)
    json_fields = ", ".join(f for f in FIELDS if f in JSON_FIELDS)
    where = f" (in {key!r})" if key != name else ""
    return (
        f"unknown field {name!r}{where}; valid fields are: {valid}. "
        f"Look inside JSON fields with a dotted path, such as 'payload.user.id' "
        f"({json_fields} take paths)"
    )


MAX_PATH = 100
"""How many levels a dotted path may go into a JSON field (``payload.a.b`` is 2)."""


def check_segment(segment: str) -> str | None:
    """Why a path segment cannot be used, or None when it can.

    SQLite's JSON path syntax quotes each key in double quotes and compares
    it with the key *as written in the JSON text*; keys that JSON escapes
    (``\\``, ``"`` and control characters) can therefore not be addressed.
    """
    if not segment:
        return "has an empty segment (two dots in a row, or a dot at either end)"
    if '"' in segment:
        return f"segment {segment!r} contains a double quote, which paths cannot hold"
    if "\\" in segment:
        return f"segment {segment!r} contains a backslash, which paths cannot hold"
    if any(ord(ch) < 0x20 for ch in segment):
        return f"segment {segment!r} contains a control character, which paths cannot hold"
    return None


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to a value of a task: a field, and a path into it for JSON fields."""

    field: str
    path: tuple[str, ...]
    kind: FieldKind

    @property
    def dotted(self) -> str:
        """The reference as written in a filter: ``payload.user.id``."""
        return ".".join((self.field, *self.path))


def make_ref(name: str, path: tuple[str, ...], where: str, key: str | None = None) -> Ref:
    """A checked :class:`Ref`; raises :class:`QueryError` (at ``where``) when invalid."""
    key = key if key is not None else ".".join((name, *path))
    kind = FIELDS.get(name)
    if kind is None:
        raise QueryError(unknown_field_message(name, key), where)
    if path and kind is not FieldKind.JSON:
        json_fields = ", ".join(f for f in FIELDS if f in JSON_FIELDS)
        raise QueryError(
            f"{name!r} is a {kind.value} field and has no sub-fields; "
            f"only the JSON fields ({json_fields}) take a dotted path",
            where,
        )
    if len(path) > MAX_PATH:
        raise QueryError(f"path {key[:60]!r}... is more than {MAX_PATH} levels deep", where)
    for segment in path:
        problem = check_segment(segment)
        if problem is not None:
            raise QueryError(f"path {key!r} {problem}", where)
    return Ref(name, path, kind)


# ---------------------------------------------------------------------------
# filter nodes


@dataclass(frozen=True, slots=True)
class And:
    """True when every child is; ``And(())`` matches everything.

    ``guarded``: the children after the first are looked at only for tasks the first
    matches (a credential's read scope first, then a client's filter: a ``$regex``
    of that filter, which can fail or take long on a value, never runs on a task
    the scope leaves out, so its errors and its time tell nothing of those tasks).
    """

    children: tuple[Node, ...]
    guarded: bool = False


@dataclass(frozen=True, slots=True)
class Or:
    """True when some child is; ``Or(())`` matches nothing."""

    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """True when the child is false (the child is two-valued: missing is just false)."""

    child: Node


@dataclass(frozen=True, slots=True)
class Compare:
    """``value <op> operand`` with type-strict comparison.

    ``eq`` with ``None`` means "missing"; the ordering operators have a
    number or string operand (TIME operands are already epoch floats).
    """

    ref: Ref
    op: CompareOp
    operand: Scalar
    where: str = field(default="", compare=False, repr=False, hash=False)
    """Where the condition is in the filter (``filter.payload.a.$gt``), for errors that
    only a backend finds (a string PostgreSQL cannot hold)."""


@dataclass(frozen=True, slots=True)
class In:
    """The value equals (type-strictly) one of ``values``; ``In(ref, ())`` is false."""

    ref: Ref
    values: tuple[Scalar, ...]
    where: str = field(default="", compare=False, repr=False, hash=False)
    """Where the list is in the filter (``filter.payload.a.$in``), as :attr:`Compare.where`."""


@dataclass(frozen=True, slots=True)
class Exists:
    """The value is present and not null."""

    ref: Ref


@dataclass(frozen=True, slots=True)
class Regex:
    """The value is a string in which ``pattern`` is found (:func:`re.search`)."""

    ref: Ref
    pattern: str
    flags: int
    compiled: regex.Pattern[str] = field(compare=False, repr=False, hash=False)
    """The pattern compiled for matching (:func:`conveyor.query._regex.compile_regex`)."""
    where: str = field(default="", compare=False, repr=False, hash=False)
    """Where the pattern is in the filter (``filter.payload.email.$regex``), for errors
    that only a backend finds (a pattern PostgreSQL cannot express)."""


Node: TypeAlias = And | Or | Not | Compare | In | Exists | Regex


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed, validated filter: build one with :func:`~conveyor.query.parse_filter`.

    The tree inside is private; use :func:`~conveyor.query.matches`,
    :func:`~conveyor.query.compile_sqlite` and :func:`~conveyor.query.fields_of`.
    """

    root: Node

    @property
    def matches_all(self) -> bool:
        """True for the empty filter, which every task matches (a backend can skip WHERE)."""
        return isinstance(self.root, And) and not self.root.children


MATCH_ALL = Filter(And(()))


def all_of(*filters: Filter) -> Filter:
    """The tasks every one of ``filters`` matches. Each part keeps the error paths it
    was parsed with (a restriction added to a user's filter does not move the paths
    of that filter's errors under an ``$and``)."""
    roots = tuple(f.root for f in filters if not f.matches_all)
    if len(roots) == 1:
        return Filter(roots[0])
    return Filter(And(roots))


def scoped(scope: Filter, f: Filter) -> Filter:
    """The tasks of ``scope`` that ``f`` matches, ``f`` looked at only within ``scope``
    (see :attr:`And.guarded`); ``f`` keeps its error paths, as with :func:`all_of`."""
    if f.matches_all:
        return scope
    if scope.matches_all:
        return f
    return Filter(And((scope.root, f.root), guarded=True))


def has_regex(node: Node) -> bool:
    """Whether a ``$regex`` is in ``node``."""
    return any(isinstance(leaf, Regex) for leaf in _leaves(Filter(node)))


def guarded_sql(node: And, compile: Callable[[Node], str], false: str) -> str | None:
    """The SQL of a guarded ``And`` whose later terms hold a ``$regex`` (None when they
    hold none: a plain AND then): the planner may take an AND's terms in any order,
    a CASE takes its own, so the ``$regex`` runs only where the first term holds.
    The later terms without one stay outside the CASE, where an index may serve them
    (they tell nothing by failing or by their time). ``compile`` writes a node's SQL
    (binding its parameters in the order called)."""
    first = node.children[0]
    plain: list[Node] = []
    risky: list[Node] = []
    for child in node.children[1:]:
        for term in (child.children if isinstance(child, And) and not child.guarded
                     else (child,)):
            (risky if has_regex(term) else plain).append(term)
    if not risky:
        return None
    outside = compile(And((first, *plain)))
    return (f"({outside} AND CASE WHEN {compile(first)} THEN {compile(And(tuple(risky)))} "
            f"ELSE {false} END)")


def _leaves(f: Filter) -> Iterator[Compare | In | Exists | Regex]:
    """The comparisons of a filter, under its ``$and``, ``$or`` and ``$not``."""
    stack: list[Node] = [f.root]
    while stack:
        node = stack.pop()
        if isinstance(node, And | Or):
            stack.extend(node.children)
        elif isinstance(node, Not):
            stack.append(node.child)
        else:
            yield node


def fields_of(f: Filter) -> frozenset[str]:
    """The top-level fields a filter reads, such as ``{"payload", "status"}``."""
    return frozenset(node.ref.field for node in _leaves(f))


def comparisons(f: Filter) -> int:
    """How many comparisons a filter holds, counted as the parser limits them
    (``MAX_TERMS``): each ``$in`` / ``$nin`` item is one, an empty list one."""
    return sum(max(1, len(node.values)) if isinstance(node, In) else 1 for node in _leaves(f))


# ---------------------------------------------------------------------------
# sort and query


@dataclass(frozen=True, slots=True)
class SortKey:
    """One sort key: a field (with a path for JSON fields) and a direction.

    Values sort as missing/null < false < true < numbers < strings <
    objects and arrays (which tie); ``descending`` reverses that order.
    Build them with :func:`~conveyor.query.parse_sort` or directly:
    ``SortKey("payload", ("user", "id"), descending=True)``.
    """

    field: str
    path: tuple[str, ...] = ()
    descending: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.field, str):
            raise QueryError(f"a sort field must be a string, not {type(self.field).__name__}",
                             "sort")
        path = self.path
        if isinstance(path, str) or not all(isinstance(p, str) for p in path):
            raise QueryError("a sort path must be a sequence of strings", "sort")
        object.__setattr__(self, "path", tuple(path))
        if not isinstance(self.descending, bool):
            raise QueryError("descending must be true or false", "sort")
        make_ref(self.field, self.path, "sort")

    @property
    def ref(self) -> Ref:
        """The field reference this key sorts by."""
        return Ref(self.field, self.path, FIELDS[self.field])

    @property
    def dotted(self) -> str:
        """The field and path as written in a query: ``payload.user.id``."""
        return ".".join((self.field, *self.path))

    def __str__(self) -> str:
        return ("-" if self.descending else "") + self.dotted


def check_window(limit: object, skip: object) -> None:
    """Refuse a ``limit`` other than None or an int >= 0, and a ``skip`` other than an
    int >= 0; either above 2**63-1 too (the SQL backends hold them in 64 bits)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise QueryError(f"limit must be null or an integer >= 0, not {limit!r}", "limit")
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise QueryError(f"skip must be an integer >= 0, not {skip!r}", "skip")
    for name, value in (("limit", limit), ("skip", skip)):
        if value is not None and value > _WINDOW_MAX:
            raise QueryError(f"{name} must be at most 2**63-1, not {value!r}", name)


_WINDOW_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Query:
    """A complete query: which tasks (``filter``), in which order, and which window.

    Build one with :func:`~conveyor.query.parse_query`; a direct construction
    is checked too.
    """

    filter: Filter = MATCH_ALL
    sort: tuple[SortKey, ...] = ()
    limit: int | None = None
    skip: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.filter, Filter):
            raise QueryError("Query.filter must be a parsed Filter (use parse_query)", "filter")
        sort = tuple(self.sort)
        if not all(isinstance(k, SortKey) for k in sort):
            raise QueryError("Query.sort must hold SortKey objects (use parse_query)", "sort")
        object.__setattr__(self, "sort", sort)
        check_window(self.limit, self.skip)
