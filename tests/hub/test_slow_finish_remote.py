"""The hub's side of a slow storage: a remote service's ended runs keep their
leases in the hub's heartbeats until their outcomes are stored (they expired, and
the tasks were rescued and run again, past max_rescues failed as worker_lost)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from conveyor import Context
from conveyor.client import HubClient
from conveyor.model import Status, Task

from ._ws_helpers import make_hub

LEASE = 1.0


class Held:
    """A hub whose finishes wait for ``gate``, a service counting its ``runs``."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.held = asyncio.Event()
        self.runs: Counter[str] = Counter()


@asynccontextmanager
async def held_finishes(tmp_path: Path, action: str
                        ) -> AsyncIterator[tuple[Any, HubClient, asyncio.Task[None], Held]]:
    state = Held()
    async with make_hub(tmp_path, insecure=True, service_lease=LEASE) as hub:
        finish = hub.app.storage.finish

        async def slow_finish(*args: Any, **kwargs: Any) -> Any:
            state.held.set()
            await state.gate.wait()  # the outcomes wait, and past their leases
            return await finish(*args, **kwargs)

        hub.app.storage.finish = slow_finish  # type: ignore[method-assign]
        client = HubClient(hub.url)

        @client.handler(action)
        async def work(ctx: Context[Any]) -> None:
            state.runs[ctx.task.id] += 1

        worker = asyncio.create_task(client.work("svc", concurrency=4, stop_timeout=1.0))
        try:
            await client.wait_working(10)
            yield hub, client, worker, state
        finally:
            state.gate.set()
            client.stop()
            await asyncio.wait_for(worker, 20)
            await client.close()


def _ran_once(ended: list[Task], state: Held) -> None:
    assert [(t.status, t.rescues) for t in ended] == [(Status.SUCCEEDED, 0)] * len(ended)
    assert sorted(state.runs.values()) == [1] * len(ended), state.runs  # none ran twice


async def test_remote_outcomes_keep_their_leases_until_stored(tmp_path: Path) -> None:
    """...and the hub stops claiming for a service while more of its outcomes wait
    than it has slots (8: concurrency 4 and the client's default prefetch), as a
    worker does: it went on offering every task (60 of 60 ran while held)."""
    async with held_finishes(tmp_path, "slow:remote") as (hub, _, _, state):
        tasks = await hub.app.add_many([("slow:remote", i) for i in range(60)])
        await asyncio.wait_for(state.held.wait(), 10)
        await asyncio.sleep(4 * LEASE)  # the clock: leases not extended would expire
        started_while_held = sum(state.runs.values())
        state.gate.set()
        ended = [await hub.app.wait_task(t.id, timeout=30) for t in tasks]
    _ran_once(ended, state)
    # one batch being written, one outcome per slot waiting, the slots running
    assert started_while_held <= 3 * 8, started_while_held


async def test_outcomes_of_a_service_gone_keep_their_leases(tmp_path: Path) -> None:
    """The service reports its runs, then stops (the hub retires it) while the
    outcomes wait: the hub renews their leases all the same (it renewed only those
    of the services it still had)."""
    async with held_finishes(tmp_path, "slow:gone") as (hub, client, worker, state):
        tasks = await hub.app.add_many([("slow:gone", i) for i in range(4)])
        await asyncio.wait_for(state.held.wait(), 10)
        client.stop()  # the service goes away after its runs ended
        await asyncio.wait_for(worker, 20)
        await asyncio.sleep(4 * LEASE)  # the clock: leases not extended would expire
        state.gate.set()
        ended = [await hub.app.wait_task(t.id, timeout=30) for t in tasks]
    _ran_once(ended, state)


async def test_full_services_do_not_spin_the_dispatcher(tmp_path: Path) -> None:
    """Every slot taken and tasks ready: the hub waits for a slot to free. It read
    the next due time and waited 1 ms, over and over (~600 reads a second)."""
    async with make_hub(tmp_path, insecure=True) as hub:
        storage = hub.app.storage
        reads = 0
        next_run_at = storage.next_run_at

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return await next_run_at(*args, **kwargs)

        storage.next_run_at = counted  # type: ignore[method-assign]
        client = HubClient(hub.url)
        gate = asyncio.Event()
        running: set[str] = set()
        full = asyncio.Event()

        @client.handler("busy")
        async def work(ctx: Context[Any]) -> None:
            running.add(ctx.task.id)
            if len(running) == 2:
                full.set()
            await gate.wait()

        worker = asyncio.create_task(client.work("svc", concurrency=2, stop_timeout=1.0))
        try:
            await client.wait_working(10)
            tasks = await hub.app.add_many([("busy", i) for i in range(20)])
            await asyncio.wait_for(full.wait(), 10)
            before = reads
            await asyncio.sleep(2.0)  # the window the reads are counted in
            assert reads - before <= 4, reads - before  # idle_poll is 1 s
            gate.set()
            ended = [await hub.app.wait_task(t.id, timeout=30) for t in tasks]
            assert {t.status for t in ended} == {Status.SUCCEEDED}
        finally:
            gate.set()
            client.stop()
            await asyncio.wait_for(worker, 20)
            await client.close()
