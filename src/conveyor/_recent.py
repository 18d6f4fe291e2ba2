"""Ids noted lately: aborts asked of tasks whose claim had not returned yet."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .storage import Storage

__all__ = ["RecentIds", "abort_asked"]


async def abort_asked(storage: Storage, task_id: str, token: str) -> str | None:
    """The reason of an abort asked of this run of the task (the run holding ``token``),
    as stored; None when none was (or the task is another run's now)."""
    task = await storage.get(task_id)
    if task is not None and task.abort_requested and task.token == token:
        return task.abort_requested
    return None


class RecentIds:
    """Ids noted in the last ``keep`` seconds, at most ``most`` of them (the oldest go
    first). A worker notes the abort of a task it does not run (yet: its claim may be
    under way, committed but not returned) and looks once the claim returns."""

    def __init__(self, keep: float = 60.0, most: int = 10_000) -> None:
        self.keep = keep
        self.most = most
        self._at: dict[str, float] = {}

    def note(self, key: str) -> None:
        self._at.pop(key, None)
        self._at[key] = time.monotonic()
        while len(self._at) > self.most:
            del self._at[next(iter(self._at))]

    def take(self, key: str) -> bool:
        """Whether ``key`` was noted lately (then forgotten)."""
        at = self._at.pop(key, None)
        return at is not None and time.monotonic() - at < self.keep
