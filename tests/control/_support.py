"""Small helpers shared by the control tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from conveyor import Conveyor, Status, Task


async def until(predicate: Callable[[], Any], timeout: float, what: str,
                interval: float = 0.02) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and
    return that; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def status_is(app: Conveyor, task_id: str, *statuses: Status) -> Callable[[], Awaitable[Any]]:
    """A predicate for :func:`until`: the task (returned) has one of ``statuses``."""

    async def check() -> Task | None:
        task = await app.get(task_id)
        return task if task.status in statuses else None

    return check
