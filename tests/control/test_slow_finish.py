"""A storage slow to store outcomes: the runs that ended keep their leases in the
heartbeats until their outcomes are stored, and the worker stops claiming once one
outcome per slot waits.

The lease of an ended run left the heartbeats at once: with the finishes held up
past the lease (the PostgreSQL benchmark's 30-100 s finishes), the sweeper rescued
those tasks and they ran again, while the worker went on claiming more than it
could finish (22,200 outcomes waiting in one worker)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from conveyor import Context, Conveyor
from conveyor.model import Status

CONCURRENCY = 4
LEASE = 1.0


async def test_ended_runs_keep_their_leases_until_stored(url: str) -> None:
    app = Conveyor(url, concurrency=CONCURRENCY, lease=LEASE, sweep_interval=0.2,
                   stop_timeout=5.0)
    runs: Counter[str] = Counter()
    gate = asyncio.Event()
    held = asyncio.Event()

    @app.handler("slow:finish")
    async def work(ctx: Context[Any]) -> None:
        runs[ctx.task.id] += 1

    async with app:
        finish = app.storage.finish

        async def slow_finish(*args: Any, **kwargs: Any) -> Any:
            held.set()
            await gate.wait()  # the outcomes wait, and past their leases
            return await finish(*args, **kwargs)

        app.storage.finish = slow_finish  # type: ignore[method-assign]
        tasks = await app.add_many([("slow:finish", i) for i in range(40)])
        await asyncio.wait_for(held.wait(), 10)
        await asyncio.sleep(4 * LEASE)  # the clock: leases not extended would expire
        started_while_held = sum(runs.values())
        gate.set()
        ended = [await app.wait_task(t.id, timeout=30) for t in tasks]
    assert [t.status for t in ended] == [Status.SUCCEEDED] * 40
    assert sorted(runs.values()) == [1] * 40, runs  # none ran twice
    assert all(t.rescues == 0 for t in ended)
    # one batch being written, one outcome per slot waiting, the slots running
    assert started_while_held <= 3 * CONCURRENCY, started_while_held


async def test_a_failed_retry_of_the_storable_outcomes_is_tried_again(url: str) -> None:
    """A finish refused as not storable (ValueError) is tried again with the values
    made storable; when that try failed too (the connection lost) the outcomes were
    dropped: never stored, their leases renewed for ever, and once more of them
    than slots, the worker claimed nothing again."""
    app = Conveyor(url, concurrency=2, lease=LEASE, sweep_interval=0.2, stop_timeout=5.0)
    calls = 0

    @app.handler("flaky:finish")
    async def work(ctx: Context[Any]) -> int:
        return int(ctx.payload)

    async with app:
        finish = app.storage.finish

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls in (1, 3):
                raise ValueError("cannot encode")  # tried again as storable values...
            if calls in (2, 4):
                raise ConnectionError("connection reset")  # ...which fails too
            return await finish(*args, **kwargs)

        app.storage.finish = flaky  # type: ignore[method-assign]
        tasks = await app.add_many([("flaky:finish", i) for i in range(8)])
        ended = [await app.wait_task(t.id, timeout=30) for t in tasks]
    assert [(t.status, t.result) for t in ended] == [(Status.SUCCEEDED, i) for i in range(8)]
    assert calls > 4


async def test_outcomes_piled_up_are_stored_in_bounded_batches(url: str) -> None:
    """Outcomes that piled up behind a held finish are stored at most FINISH_BATCH
    at a time (they went in one finish: 22,200 rows in the stalled benchmark)."""
    from conveyor._batched import FINISH_BATCH

    n, slots = 3000, 1500
    app = Conveyor(url, concurrency=slots, lease=60.0, stop_timeout=5.0)
    ran = 0
    piled = asyncio.Event()
    gate = asyncio.Event()
    sizes: list[int] = []

    @app.handler("many:finish")
    async def work(ctx: Context[Any]) -> None:
        nonlocal ran
        ran += 1
        if ran == FINISH_BATCH + 300:
            piled.set()

    async with app:
        finish = app.storage.finish

        async def held_finish(worker: str, completions: Any) -> Any:
            sizes.append(len(completions))
            await gate.wait()
            return await finish(worker, completions)

        app.storage.finish = held_finish  # type: ignore[method-assign]
        tasks = await app.add_many([("many:finish", i) for i in range(n)])
        await asyncio.wait_for(piled.wait(), 60)  # more outcomes wait than one batch
        gate.set()
        ended = [await app.wait_task(t.id, timeout=120) for t in tasks]
    assert {t.status for t in ended} == {Status.SUCCEEDED}
    assert sum(sizes) == n
    assert max(sizes) <= FINISH_BATCH, sizes
