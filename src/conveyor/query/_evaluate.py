"""The Python evaluator: filters and sorts over :class:`~conveyor.model.Task` objects.

It is the reference semantics of the language; the SQL compilers must give
the same answers (the property tests compare them).
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from conveyor.model import FieldKind, Task

from ._regex import search
from ._tree import And, Compare, Exists, Filter, In, Node, Not, Or, Query, Ref, Regex, SortKey

__all__ = ["apply_query", "matches", "read", "sort_tasks", "sort_value"]

# Ranks of JSON types, in sort order. Equal ranks are the "same type" for comparisons,
# except that false and true are one type (boolean) with two ranks.
_NULL, _FALSE, _TRUE, _NUMBER, _STRING, _OTHER = range(6)

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
}


def _rank(value: object) -> int:
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, int | float):
        return _NUMBER
    if isinstance(value, str):
        return _STRING
    return _OTHER


def read(task: Task, ref: Ref) -> Any:
    """The value ``ref`` points at in ``task``, None when missing.

    JSON fields are read as they are stored (``error`` and ``progress`` as their
    ``to_json()``), then followed key by key; stepping into anything but an
    object gives None. Other fields are plain attributes (``status`` as its text).
    """
    if ref.kind is FieldKind.JSON:
        if ref.field == "error":
            value: Any = None if task.error is None else task.error.to_json()
        elif ref.field == "progress":
            value = None if task.progress is None else task.progress.to_json()
        else:
            value = getattr(task, ref.field)
        for segment in ref.path:
            if not isinstance(value, Mapping):
                return None
            value = value.get(segment)
        return value
    value = getattr(task, ref.field)
    if isinstance(value, enum.Enum):
        value = value.value
    return value


def _equal(value: object, operand: object) -> bool:
    """Type-strict equality: same JSON type and equal (1 == 1.0, True != 1)."""
    if operand is None:
        return value is None
    if isinstance(operand, bool):
        return isinstance(value, bool) and value is operand
    if isinstance(operand, int | float):
        return _rank(value) == _NUMBER and value == operand
    return isinstance(value, str) and value == operand


def _evaluate(node: Node, task: Task) -> bool:
    if isinstance(node, And):
        return all(_evaluate(child, task) for child in node.children)
    if isinstance(node, Or):
        return any(_evaluate(child, task) for child in node.children)
    if isinstance(node, Not):
        return not _evaluate(node.child, task)
    value = read(task, node.ref)
    if isinstance(node, Compare):
        if node.op == "eq":
            return _equal(value, node.operand)
        if _rank(value) != _rank(node.operand):  # number with number, string with string
            return False
        return _ORDER[node.op](value, node.operand)
    if isinstance(node, In):
        return any(_equal(value, item) for item in node.values)
    if isinstance(node, Exists):
        return value is not None
    assert isinstance(node, Regex)
    return isinstance(value, str) and search(node.compiled, value, node.where)


def matches(f: Filter, task: Task) -> bool:
    """True when ``task`` satisfies the filter ``f``."""
    if not isinstance(f, Filter):
        raise TypeError(f"matches() needs a parsed Filter, not {type(f).__name__}")
    return _evaluate(f.root, task)


def sort_value(value: object) -> tuple[int, Any]:
    """A key that orders values as null < false < true < numbers < strings < the rest.

    Objects and arrays all share the last rank and tie with each other.
    """
    rank = _rank(value)
    return (rank, value) if rank in (_NUMBER, _STRING) else (rank, 0)


def sort_tasks(tasks: Iterable[Task], sort: Sequence[SortKey]) -> list[Task]:
    """The tasks in the order of ``sort``, ties broken by ``id`` ascending."""
    ordered = sorted(tasks, key=lambda task: task.id)
    for key in reversed(tuple(sort)):
        # stable sorts, least significant key first; reverse=True keeps ties in order
        ordered.sort(key=_sort_key(key.ref), reverse=key.descending)
    return ordered


def _sort_key(ref: Ref) -> Callable[[Task], tuple[int, Any]]:
    return lambda task: sort_value(read(task, ref))


def apply_query(q: Query, tasks: Iterable[Task]) -> list[Task]:
    """Filter, sort, skip and limit ``tasks`` as the query says (the memory backend's find)."""
    selected = [task for task in tasks if _evaluate(q.filter.root, task)]
    ordered = sort_tasks(selected, q.sort)
    end = None if q.limit is None else q.skip + q.limit
    return ordered[q.skip:end]
