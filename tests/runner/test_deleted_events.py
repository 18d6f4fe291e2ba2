"""``task.deleted``: exactly one per task deleted, per subscriber, on every backend.

``app.delete`` announces its deletions itself (the storage's change feed names it
as their writer, so they are not announced again when read back); deletions by
retention (``app.prune``, the workers' ``retention=``) name no writer and are
announced from the feed by every process, the pruning one included.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from conveyor import Context, Conveyor, Event


async def finished_tasks(app: Conveyor, n: int) -> list[str]:
    ids = [(await app.add("noop")).id for _ in range(n)]
    for task_id in ids:
        await app.wait(task_id, timeout=30)
    return ids


async def deleted_until(events: Any, last: str) -> list[str]:
    """The ids of the ``task.deleted`` events received, up to ``last``'s."""
    seen: list[str] = []
    async with asyncio.timeout(30):
        async for event in events:
            if event.type != "task.deleted":
                continue
            seen.append(event.task_id)
            if event.task_id == last:
                return seen
    raise AssertionError("the subscription ended early")


async def test_one_task_deleted_per_deletion_and_per_subscriber(app: Conveyor,
                                                                url: str) -> None:
    @app.handler("noop")
    async def noop(ctx: Context[Any]) -> int:
        return 1

    observer = None if url.startswith("memory:") else Conveyor(url)  # another process
    try:
        async with app:
            events = app.events("task.deleted")
            other = app.events("task.*")
            called: list[str] = []

            def on_deleted(event: Event) -> None:
                called.append(event.task_id or "")

            app.on("task.deleted", on_deleted)
            far = None
            if observer is not None:
                await observer.open()
                far = observer.events("task.deleted")
            a, b, c = await finished_tasks(app, 3)
            assert sorted(await app.delete([a, b])) == sorted([a, b])
            assert Counter(called) == {a: 1, b: 1}  # announced before delete returns
            # c is pruned: announced through the feed, after the rows of a and b were
            # read back (the feed is relayed in commit order), so a second event for
            # a or b would come before c's
            assert await app.prune(0) == 1
            seen = await deleted_until(events, c)
            everything = await deleted_until(other, c)
            far_seen = None if far is None else await deleted_until(far, c)
    finally:
        if observer is not None:
            await observer.close()
    expected = {a: 1, b: 1, c: 1}
    assert Counter(seen) == expected
    assert Counter(called) == expected
    assert Counter(everything) == expected
    if far_seen is not None:
        assert Counter(far_seen) == expected


async def test_prune_announces_each_task_once(app: Conveyor, url: str) -> None:
    @app.handler("noop")
    async def noop(ctx: Context[Any]) -> int:
        return 1

    async with app:
        events = app.events("task.deleted")
        ids = await finished_tasks(app, 5)
        assert await app.prune(0) == 5
        seen: list[str] = []
        async with asyncio.timeout(30):
            async for event in events:
                seen.append(event.task_id or "")
                if len(set(seen)) == len(ids):
                    break
        # a last deletion, by prune again: any repeat of the first five comes before it
        (last,) = await finished_tasks(app, 1)
        assert await app.prune(0) == 1
        seen += await deleted_until(events, last)
        assert await app.count() == 0
    assert Counter(seen) == dict.fromkeys([*ids, last], 1)


async def test_a_runs_end_is_announced_when_its_task_was_deleted_before_the_read_back(
        app: Conveyor, monkeypatch: Any) -> None:
    """A worker reads a task back to announce its run's end; deleted meanwhile (a
    cleanup of ended tasks elsewhere), its ``task.succeeded``/``task.ended`` were not
    announced and drain() did not count it (about a quarter of 5,000 runs against a
    loop deleting succeeded tasks): the end is shown as the run left it. The read
    back is slowed here so that the deletion comes first; the storage is real."""
    @app.handler("cleaned")
    async def cleaned(ctx: Context[Any]) -> str:
        return "done"

    await app.open()
    storage = app.storage
    real_get_many = storage.get_many

    async def get_many(ids: Any) -> Any:
        for task in await real_get_many(ids):
            if task.action == "cleaned" and task.status.value == "succeeded":
                await storage.delete([task.id])  # as another process's cleanup would
        return await real_get_many(ids)

    monkeypatch.setattr(storage, "get_many", get_many)
    seen: list[tuple[str, str, Any]] = []
    app.on("task.*", lambda e: seen.append((e.type, e.task.status.value, e.task.result))
           if e.task is not None and e.type != "task.added" else None)
    await app.add("cleaned")
    tally = await app.drain(timeout=30)
    assert tally["succeeded"] == 1
    assert ("task.succeeded", "succeeded", "done") in seen
    assert ("task.ended", "succeeded", "done") in seen
