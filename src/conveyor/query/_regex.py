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

__all__ = ["MATCH_TIMEOUT", "compile_regex", "limit_matches", "note_timeout", "search",
           "take_timeout", "timed_out"]

MATCH_TIMEOUT = 1.0
"""Seconds one ``$regex`` may take on one value before the query fails."""

_pending = threading.local()
_limit = threading.local()


def limit_matches(seconds: float | None) -> float | None:
    """Make :func:`search` on this thread give up after ``seconds`` (None: after
    :data:`MATCH_TIMEOUT`); returns the limit it replaces, to put back. A hub's live
    queries match on its event loop, with a far shorter limit than a query's."""
    old: float | None = getattr(_limit, "seconds", None)
    _limit.seconds = seconds
    return old


@functools.lru_cache(maxsize=256)
def compile_regex(pattern: str, flags: int) -> regex.Pattern[str]:
    """The pattern for :func:`search` (``flags``: :mod:`re`'s, the same numbers in
    :mod:`regex`). Raises ``regex.error`` for one it cannot compile."""
    return regex.compile(pattern, flags | regex.VERSION0)


def timed_out(pattern: str, where: str = "", seconds: float = MATCH_TIMEOUT) -> QueryError:
    why = ("it backtracks catastrophically" if seconds >= MATCH_TIMEOUT
           else "a live query matches each change on the hub's event loop, shared by all")
    return QueryError(
        f"$regex {pattern[:60]!r} ran longer than {seconds:g}s on one value ({why}): "
        "simplify the pattern", where)


def search(compiled: regex.Pattern[str], value: str, where: str = "") -> bool:
    """Whether ``compiled`` is found in ``value``; :class:`QueryError` when that
    takes longer than :data:`MATCH_TIMEOUT` (or the :func:`limit_matches` of this
    thread)."""
    seconds = getattr(_limit, "seconds", None) or MATCH_TIMEOUT
    try:
        return compiled.search(value, timeout=seconds, concurrent=True) is not None
    except TimeoutError:
        raise timed_out(compiled.pattern, where, seconds) from None


def note_timeout(error: QueryError) -> None:
    """Keep ``error`` for :func:`take_timeout` on this thread: a SQL function that
    raised it (SQLite reports only that a function failed)."""
    _pending.error = error


def take_timeout() -> QueryError | None:
    """The error :func:`note_timeout` kept on this thread (then forgotten)."""
    error: QueryError | None = getattr(_pending, "error", None)
    _pending.error = None
    return error
