"""A due task held back by a ``limit=`` or a concurrency condition does not make an
idle worker claim in a tight loop (~1,000 empty claims a second, a core per worker
on a busy database): it waits, backing off up to ``idle_poll``, and claims again at
once when a task leaves ``running``, in this process or another."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor

from ..conftest import BACKENDS, backend_url, drop_pg_schema


def _count_claims(app: Conveyor) -> list[int]:
    """Wrap the real storage's claim to count the calls."""
    count = [0]
    claim = app.storage.claim

    async def counting(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return await claim(*args, **kwargs)

    app.storage.claim = counting  # type: ignore[method-assign]
    return count


@pytest.mark.parametrize("held_by", ["limit", "condition"])
async def test_a_held_task_waits_for_a_run_to_end_without_spinning(
        url: str, held_by: str) -> None:
    app = Conveyor(url, concurrency=4, idle_poll=5.0)
    running = asyncio.Event()
    release = asyncio.Event()
    started: dict[int, float] = {}

    @app.handler("slow", **({"limit": 1} if held_by == "limit" else {}))
    async def slow(ctx: Context) -> None:
        started[ctx.payload] = time.monotonic()
        running.set()
        if ctx.payload == 1:
            await release.wait()

    cond = ({} if held_by == "limit"
            else {"concurrency": [{"query": {"action": "slow"}, "limit": 1}]})
    try:
        await app.open()
        claims = _count_claims(app)
        await app.add("slow", 1, **cond)
        second = await app.add("slow", 2, **cond)
        await app.start()
        await asyncio.wait_for(running.wait(), 10)
        before = claims[0]
        await asyncio.sleep(1.0)  # the scenario: a second with the second task held back
        assert claims[0] - before <= 10  # backing off 10 ms, 20 ms... (it was ~1,000)
        assert 2 not in started
        ended = time.monotonic()
        release.set()
        await app.wait(second.id, timeout=10)
        # woken by the end of the run, not by the held wait (up to idle_poll, 5 s)
        assert started[2] - ended < 1.0
    finally:
        await app.close()


@pytest.mark.parametrize("kind", [b for b in BACKENDS if b != "memory"])
async def test_a_run_ending_in_another_process_frees_a_held_task_at_once(
        kind: str, tmp_path: Path) -> None:
    url = backend_url(kind, tmp_path)
    blocker_app = Conveyor(url)
    held_app = Conveyor(url, idle_poll=5.0)
    running = asyncio.Event()
    release = asyncio.Event()
    started: list[float] = []

    @blocker_app.handler("blocker")
    async def blocker(ctx: Context) -> None:
        running.set()
        await release.wait()

    @held_app.handler("slow")
    async def slow(ctx: Context) -> None:
        started.append(time.monotonic())

    try:
        block = await blocker_app.add("blocker", None)
        await blocker_app.start()
        await asyncio.wait_for(running.wait(), 10)
        held = await held_app.add("slow", None, concurrency=[
            {"query": {"action": "blocker"}, "limit": 1}])
        await held_app.start()
        claims = _count_claims(held_app)
        # the scenario: 1.5 s held back by the other app's run (the wait has grown to
        # 1.28 s: the next empty claim comes about a second after the release);
        # held_app is a plain worker (no wait(), events() or on(): its change relay
        # reads only wake-ups unless tasks are held back)
        await asyncio.sleep(1.5)
        assert claims[0] <= 12 and not started
        ended = time.monotonic()
        release.set()
        await blocker_app.wait(block.id, timeout=10)
        await blocker_app.wait(held.id, timeout=10)
        assert started[0] - ended < 0.3  # its end came through the change feed
    finally:
        await held_app.close()
        await blocker_app.close()
        if kind == "postgres":
            drop_pg_schema(url)


async def test_an_abort_here_of_a_queued_blocker_frees_a_held_task_at_once(url: str) -> None:
    """A condition whose scope holds ``queued``: the blocker is a queued task, and its
    abort by this very app (a change of this process, which a plain worker's relay
    leaves out) frees the held task."""
    app = Conveyor(url, idle_poll=5.0)
    started: list[float] = []

    @app.handler("held")
    async def held(ctx: Context) -> None:
        started.append(time.monotonic())

    try:
        blocker = await app.add("nobody:runs", None)  # no handler: it stays queued
        task = await app.add("held", None, concurrency=[
            {"query": {"action": "nobody:runs"}, "scope": ["queued", "running"], "limit": 1}])
        await app.start()
        await asyncio.sleep(1.5)  # the scenario: held back (the wait has grown to 1.28 s)
        assert not started
        aborted = time.monotonic()
        await app.abort(blocker.id)
        # waited from another app (a wait here makes the relay read every change);
        # on memory:// the abort's change is out before this wait begins
        other = app if url == "memory://" else Conveyor(url)
        try:
            await other.wait(task.id, timeout=10)
        finally:
            if other is not app:
                await other.close()
        assert started[0] - aborted < 0.3
    finally:
        await app.close()


async def test_a_producer_sharing_a_memory_storage_wakes_the_worker_app() -> None:
    """Two apps given one storage object (a producer beside a worker, in a test): the
    producer's add did not wake the worker app (their feeds leave out the storage's
    own changes), and each task started a whole idle_poll later."""
    worker_app = Conveyor("memory://", idle_poll=5.0)
    started = asyncio.Event()

    @worker_app.handler("run")
    async def run(ctx: Context) -> None:
        started.set()

    producer = Conveyor(worker_app.storage)
    try:
        await worker_app.start()
        for _ in range(3):
            started.clear()
            added = time.monotonic()
            await producer.add("run", None)
            await asyncio.wait_for(started.wait(), 10)
            assert time.monotonic() - added < 0.5  # not the 5 s idle poll
    finally:
        await producer.close()
        await worker_app.close()
