"""``close()`` ends even when the change relay's first cancellation is lost.

On Python 3.11 a cancellation can be lost inside a library (``asyncio.wait_for``,
CPython gh-86296: psycopg_pool waited for a connection that way), and a relay
that ran on made ``Conveyor.close()`` hang. The relay is cancelled again until
it stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from conveyor import Context, Conveyor
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


def test_an_app_used_again_under_a_new_asyncio_run_relays_other_processes(
        tmp_path: Path) -> None:
    """An app opened under one asyncio.run() and used under the next: its change relay
    had ended with the first loop, so events of tasks other processes ran never came
    (and wait() fell back to polling)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    app = Conveyor(url)
    asyncio.run(app.open())

    async def second_run() -> list[str]:
        other = Conveyor(url)  # stands for another process: its changes come by the feed

        @other.handler("r:job")
        async def job(ctx: Context[Any]) -> str:
            return "done"

        seen: list[str] = []
        ended = asyncio.Event()

        def note(event: Any) -> None:
            seen.append(event.type)
            if event.type == "task.ended":
                ended.set()

        app.on("task.*", note)
        await app.open()
        task = await app.add("r:job")
        async with other:
            assert await app.wait(task.id, timeout=20) == "done"
            await asyncio.wait_for(ended.wait(), 20)
        await app.close()
        return seen

    seen = asyncio.run(second_run())
    assert "task.started" in seen and "task.succeeded" in seen, seen


def test_listening_alone_under_a_new_asyncio_run_starts_the_relay(tmp_path: Path) -> None:
    """The same with events() only (no other call that opens the app): the relay is
    started again by the subscription, as a fresh app's is."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    app = Conveyor(url)
    asyncio.run(app.open())

    async def second_run() -> list[str]:
        other = Conveyor(url)  # stands for another process

        @other.handler("r:job")
        async def job(ctx: Context[Any]) -> str:
            return "done"

        seen: list[str] = []
        events = app.events("task.*")
        async with other:
            await other.add("r:job")
            async for event in events:
                seen.append(event.type)
                if event.type == "task.ended":
                    break
        await app.close()
        return seen

    seen = asyncio.run(asyncio.wait_for(second_run(), 30))
    assert "task.started" in seen and "task.succeeded" in seen, seen
