"""``close()`` ends even when the change relay's first cancellation is lost.

On Python 3.11 a cancellation can be lost inside a library (``asyncio.wait_for``,
CPython gh-86296: psycopg_pool waited for a connection that way), and a relay
that ran on made ``Conveyor.close()`` hang. The relay is cancelled again until
it stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from conveyor import Conveyor
from conveyor.storage import Change
from conveyor.storage.memory import MemoryStorage


class LosesOneCancel(MemoryStorage):
    """The memory backend, whose change stream loses the first cancellation."""

    lost = 0

    def change_batches(self, include_own: Callable[[], bool] | bool = True,
                       wakeups_only: Callable[[], bool] | bool = False,
                       wanted: Callable[[], bool] | bool = True
                       ) -> AsyncIterator[Sequence[Change]]:
        def stream() -> AsyncIterator[Sequence[Change]]:
            return super(LosesOneCancel, self).change_batches(include_own, wakeups_only,
                                                              wanted)

        async def batches() -> AsyncIterator[Sequence[Change]]:
            inner = stream().__aiter__()
            while True:
                try:
                    batch = await inner.__anext__()
                except asyncio.CancelledError:
                    if self.lost:
                        raise
                    self.lost += 1  # as if it never came: wait for the next batch
                    inner = stream().__aiter__()
                    continue
                except StopAsyncIteration:
                    return
                yield batch

        return batches()


async def test_close_ends_although_the_relay_lost_a_cancellation() -> None:
    storage = LosesOneCancel()
    app = Conveyor(storage)
    await app.open()
    task: Any = await app.add("x:y", 1)
    assert (await app.get(task.id)).id == task.id
    closing = asyncio.create_task(app.close())
    await asyncio.wait({closing}, timeout=5)  # not a cancel: a hang stays a hang
    try:
        assert closing.done(), "close() hung on the relay"
        closing.result()
    finally:
        closing.cancel()
    assert storage.lost == 1
