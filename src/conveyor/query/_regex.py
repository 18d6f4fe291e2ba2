"""``$regex`` matching, in Python (the memory backend, live queries) and inside SQLite.

The syntax is Python's (:mod:`re` checks a pattern when a filter is parsed); the
match runs on the :mod:`regex` engine, with the same meaning for these patterns,
because it can be stopped: a pattern that backtracks catastrophically on a value
raises :class:`~conveyor.errors.QueryError` after :data:`MATCH_TIMEOUT` seconds
instead of holding the process (and, matching with the GIL released, it lets the
process's other threads run meanwhile: a hub keeps answering).
"""

from __future__ import annotations

import functools
import threading

import regex

from ..errors import QueryError

__all__ = ["MATCH_TIMEOUT", "compile_regex", "note_timeout", "search", "take_timeout",
           "timed_out"]

MATCH_TIMEOUT = 1.0
"""Seconds one ``$regex`` may take on one value before the query fails."""

_pending = threading.local()


@functools.lru_cache(maxsize=256)
def compile_regex(pattern: str, flags: int) -> regex.Pattern[str]:
    """The pattern for :func:`search` (``flags``: :mod:`re`'s, the same numbers in
    :mod:`regex`). Raises ``regex.error`` for one it cannot compile."""
    return regex.compile(pattern, flags | regex.VERSION0)


def timed_out(pattern: str, where: str = "") -> QueryError:
    return QueryError(
        f"$regex {pattern[:60]!r} ran longer than {MATCH_TIMEOUT:g}s on one value "
        "(it backtracks catastrophically): simplify the pattern", where)


def search(compiled: regex.Pattern[str], value: str, where: str = "") -> bool:
    """Whether ``compiled`` is found in ``value``; :class:`QueryError` when that
    takes longer than :data:`MATCH_TIMEOUT`."""
    try:
        return compiled.search(value, timeout=MATCH_TIMEOUT, concurrent=True) is not None
    except TimeoutError:
        raise timed_out(compiled.pattern, where) from None


def note_timeout(error: QueryError) -> None:
    """Keep ``error`` for :func:`take_timeout` on this thread: a SQL function that
    raised it (SQLite reports only that a function failed)."""
    _pending.error = error


def take_timeout() -> QueryError | None:
    """The error :func:`note_timeout` kept on this thread (then forgotten)."""
    error: QueryError | None = getattr(_pending, "error", None)
    _pending.error = None
    return error
