"""A stream of the change feed that starts wanting more (an app that was only adding
tasks calls ``events()``) gets every change committed after it asked, also when
the feed's reader was already reading with the narrower filter at that moment.

The reader picks its filter when a read starts; the stream's ``wakeups_only``
below answers "wake-ups only" exactly once after it is armed, so the next read
starts narrow and the stream wants everything before that read returns: the
read must be done again, wider. Before that fix, the change was filtered out
and the reader moved past it for good.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.storage import Change, open_storage
from conveyor.testing.contract import make_spec

from ..conftest import BACKENDS, backend_url, drop_pg_schema


@pytest.fixture(params=[b for b in BACKENDS if b != "memory"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    value = backend_url(request.param, tmp_path)
    yield value
    if request.param == "postgres":
        drop_pg_schema(value)


async def until(seen: list[Change], task_id: str, event: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not any(c.task_id == task_id and c.event == event for c in seen):
        assert time.monotonic() < deadline, f"no {event} of {task_id}; seen {seen}"
        await asyncio.sleep(0.01)


async def test_a_stream_that_widens_during_a_read_gets_every_later_change(
        shared_url: str) -> None:
    # PostgreSQL: no poll read in between, only the notifications' reads
    poll = "&poll_interval=60" if shared_url.startswith("postgresql") else ""
    reader = open_storage(shared_url + poll)
    writer = open_storage(shared_url)
    await reader.open()
    await writer.open()
    armed = False

    def wakeups_only() -> bool:
        nonlocal armed
        if armed:
            armed = False
            return True  # the read starting now filters to wake-ups...
        return False  # ...and the stream wants everything again before it returns

    seen: list[Change] = []

    async def collect(stream: Any) -> None:
        async for batch in stream:
            seen.extend(batch)

    collector = asyncio.create_task(
        collect(reader.change_batches(include_own=False, wakeups_only=wakeups_only)))
    try:
        # the feed delivers (PostgreSQL: once LISTEN is in place) and is idle after
        deadline = time.monotonic() + 10
        while True:
            [res] = await writer.add([make_spec()])
            try:
                await until(seen, res.task.id, "added", timeout=0.5)
                break
            except AssertionError:  # added before the reader was in place: again
                assert time.monotonic() < deadline, seen
        armed = True
        [claimed] = await writer.claim("w", ["test:a"], 1, 30)
        await until(seen, claimed.id, "started")
        assert not armed  # a read did start narrow
        keys = [(c.task_id, c.version) for c in seen]
        assert len(keys) == len(set(keys))
    finally:
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        await reader.close()
        await writer.close()
