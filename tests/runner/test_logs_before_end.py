"""A handler's log lines are stored, and their events emitted, before its end.

A handler that writes many lines right before it returns: the lines queued
while the worker's writer was busy with earlier ones must not be stored after
the task's end (``logs(follow=True)``, and so ``conveyor tail``, would stop at
the end without them, and ``task.log`` events would come after ``task.ended``).
On every backend, for sync (thread) and async handlers, in the worker's process
and in another process's app on the same storage.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from conveyor import Context, Conveyor, Event

LINES = 200
EXPECTED = ["start", *(f"line {i}" for i in range(LINES))]


def register(app: Conveyor, kind: str, sync_gate: threading.Event,
             async_gate: asyncio.Event) -> None:
    """The handler "chatty": writes "start", waits for the gate, then writes
    LINES lines and returns at once (the async one lets the loop run now and
    then, as a handler doing I/O would)."""
    if kind == "sync":
        @app.handler("chatty")
        def chatty_sync(ctx: Context[Any]) -> str:
            ctx.log.info("start")
            sync_gate.wait(60)
            for i in range(LINES):
                ctx.log.info("line %d", i)
            return "done"
    else:
        @app.handler("chatty")
        async def chatty_async(ctx: Context[Any]) -> str:
            ctx.log.info("start")
            await async_gate.wait()
            for i in range(LINES):
                ctx.log.info("line %d", i)
                if i % 20 == 0:
                    await asyncio.sleep(0)  # other work: the writer starts on the first lines
            return "done"


async def follow(app: Conveyor, task_id: str, seen_start: asyncio.Event) -> list[str]:
    """Every line ``app.logs(follow=True)`` yields, until it stops at the task's end."""
    lines = []
    async for record in app.logs(task_id, follow=True):
        lines.append(record.message)
        if record.message == "start":
            seen_start.set()
    return lines


async def until_ended(events: Any, task_id: str, seen_start: asyncio.Event) -> list[Event]:
    """The task's events, up to and including its ``task.ended``."""
    got: list[Event] = []
    async for event in events:
        if event.task_id != task_id:
            continue
        got.append(event)
        if event.type == "task.log" and event.data["log"].message == "start":
            seen_start.set()
        if event.type == "task.ended":
            return got
    raise AssertionError("the subscription ended before task.ended")


def check_events(got: list[Event]) -> None:
    assert [e.type for e in got] == ["task.log"] * len(EXPECTED) + ["task.ended"]
    assert [e.data["log"].message for e in got[:-1]] == EXPECTED
    seqs = [e.data["log"].seq for e in got[:-1]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_follower_gets_every_line_then_the_end(app: Conveyor, url: str,
                                                       kind: str) -> None:
    sync_gate = threading.Event()
    async_gate = asyncio.Event()
    register(app, kind, sync_gate, async_gate)
    # another process's app on the same storage (memory:// is one process's own)
    observer = None if url.startswith("memory:") else Conveyor(url)
    try:
        async with app:
            events = app.events(["task.log", "task.ended"])
            far_events = None
            if observer is not None:
                await observer.open()
                far_events = observer.events(["task.log", "task.ended"])
            task = await app.add("chatty")
            starts = [asyncio.Event() for _ in range(4 if observer is not None else 2)]
            jobs: list[asyncio.Task[Any]] = [
                asyncio.create_task(follow(app, task.id, starts[0])),
                asyncio.create_task(until_ended(events, task.id, starts[1])),
            ]
            if observer is not None:
                jobs.append(asyncio.create_task(follow(observer, task.id, starts[2])))
                jobs.append(asyncio.create_task(until_ended(far_events, task.id, starts[3])))
            try:
                async with asyncio.timeout(60):
                    # everyone follows the task live before its last lines are written
                    await asyncio.gather(*(s.wait() for s in starts))
                    sync_gate.set()
                    async_gate.set()
                    results = await asyncio.gather(*jobs)
            finally:
                sync_gate.set()
                async_gate.set()
                for job in jobs:
                    job.cancel()
            assert (await app.get(task.id)).result == "done"  # type: ignore[union-attr]
    finally:
        if observer is not None:
            await observer.close()
    assert results[0] == EXPECTED
    check_events(results[1])
    if observer is not None:
        assert results[2] == EXPECTED
        check_events(results[3])
