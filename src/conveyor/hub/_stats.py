"""The task counts per action and status that ``GET /api/v1/stats``, ``/metrics``
and so the dashboard read, shared once they are costly to read.

``stats`` is one GROUP BY over every task: 0.2-0.5 s at 1,500,000 tasks on
PostgreSQL. A dashboard reads it with ``/metrics`` every 2 s and again soon after
each change of its task table: under churn, one open page kept the database busy
reading counts. A read that took ``EXPENSIVE`` seconds or more makes the next
callers share it: those that come while it runs wait for it, and those that come
within ``SPACING`` times its duration of its start (``MAX_AGE`` at most) get its
counts. So counts take about a tenth of the database's time at most, however many
pages and scrapers ask; a cheap read (a small database) is made for every caller,
so its counts are always current.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import Conveyor

__all__ = ["EXPENSIVE", "MAX_AGE", "SPACING", "SharedStats", "retrieved"]

EXPENSIVE = 0.05
"""Seconds: a stats read that took this long or more is shared with later callers."""

SPACING = 10.0
"""A costly read's counts serve callers up to this many times its duration after it began."""

MAX_AGE = 5.0
"""Seconds: the oldest counts served (a read slow because the storage was stuck)."""


class SharedStats:
    """``app.stats()`` for the hub's routes, shared as the module says."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self.reads = 0
        """Reads made (for tests and the log)."""
        self._reading: asyncio.Task[dict[str, dict[str, int]]] | None = None
        self._began = 0.0  # monotonic start of the last read that succeeded
        self._cost = 0.0  # its duration
        self._counts: dict[str, dict[str, int]] | None = None

    async def read(self) -> dict[str, dict[str, int]]:
        """The counts (do not change the dict: other callers may get it too)."""
        if self._cost >= EXPENSIVE:
            if self._reading is not None and not self._reading.done():
                return await asyncio.shield(self._reading)
            if (self._counts is not None
                    and time.monotonic() - self._began < min(SPACING * self._cost, MAX_AGE)):
                return self._counts
        reading = asyncio.create_task(self._read())
        reading.add_done_callback(retrieved)
        self._reading = reading
        return await asyncio.shield(reading)

    def close(self) -> None:
        """Cancel a read under way (the hub stops)."""
        if self._reading is not None:
            self._reading.cancel()

    async def _read(self) -> dict[str, dict[str, int]]:
        began = time.monotonic()
        self.reads += 1
        counts = await self.app.stats()
        if began >= self._began:  # a slower read begun earlier does not undo a newer one
            self._began, self._cost, self._counts = began, time.monotonic() - began, counts
        return counts


def retrieved(task: asyncio.Task[Any]) -> None:
    """A shared read's error is its callers' to report; none may be left unread."""
    if not task.cancelled():
        task.exception()
