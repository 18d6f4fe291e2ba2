"""Fork safety: after ``os.fork()`` the child builds its own connections, threads
and event loop on next use instead of hanging on the parent's.

A process that forks after using conveyor (``gunicorn --preload``, a
``multiprocessing`` pool with the fork start method, a daemon that forks
workers) copies objects whose background threads do not exist in the child
and whose sockets and SQLite handles belong to the parent. Objects that hold
such things register here; in the child each one drops them (``_after_fork``)
and opens anew when next used. What it dropped is kept referenced for the
child's lifetime and never closed or finalized there: closing a PostgreSQL
connection in the child would end the parent's session, and an SQLite
connection must not be used across a fork at all.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any, Protocol

__all__ = ["keep", "track"]


class _Forkable(Protocol):
    def _after_fork(self) -> None: ...


_tracked: weakref.WeakSet[Any] = weakref.WeakSet()
_inherited: list[Any] = []


def track(obj: _Forkable) -> None:
    """Call ``obj._after_fork()`` in the child of every later fork."""
    _tracked.add(obj)


def keep(*objs: Any) -> None:
    """Hold the parent's ``objs`` for the child's lifetime (never finalized there)."""
    _inherited.extend(o for o in objs if o is not None)


def _in_child() -> None:
    # nothing may stop the child from starting (and logging could deadlock here)
    for obj in list(_tracked):
        with contextlib.suppress(Exception):
            obj._after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_in_child)
