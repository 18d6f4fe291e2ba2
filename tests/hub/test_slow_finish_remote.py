"""The hub's side of a slow storage: a remote service's ended runs keep their
leases in the hub's heartbeats until their outcomes are stored (they expired, and
the tasks were rescued and run again, past max_rescues failed as worker_lost)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from conveyor import Context
from conveyor.client import HubClient
from conveyor.model import Status

from ._ws_helpers import make_hub

LEASE = 1.0


async def test_remote_outcomes_keep_their_leases_until_stored(tmp_path: Path) -> None:
    runs: Counter[str] = Counter()
    async with make_hub(tmp_path, insecure=True, service_lease=LEASE) as hub:
        gate = asyncio.Event()
        held = asyncio.Event()
        finish = hub.app.storage.finish

        async def slow_finish(*args: Any, **kwargs: Any) -> Any:
            held.set()
            await gate.wait()  # the outcomes wait, and past their leases
            return await finish(*args, **kwargs)

        hub.app.storage.finish = slow_finish  # type: ignore[method-assign]
        client = HubClient(hub.url)

        @client.handler("slow:remote")
        async def work(ctx: Context[Any]) -> None:
            runs[ctx.task.id] += 1

        worker = asyncio.create_task(client.work("svc", concurrency=4, stop_timeout=1.0))
        try:
            await client.wait_working(10)
            tasks = await hub.app.add_many([("slow:remote", i) for i in range(20)])
            await asyncio.wait_for(held.wait(), 10)
            await asyncio.sleep(4 * LEASE)  # the clock: leases not extended would expire
            gate.set()
            ended = [await hub.app.wait_task(t.id, timeout=30) for t in tasks]
        finally:
            gate.set()
            client.stop()
            await asyncio.wait_for(worker, 20)
            await client.close()
    assert [t.status for t in ended] == [Status.SUCCEEDED] * 20
    assert sorted(runs.values()) == [1] * 20, runs  # none ran twice
    assert all(t.rescues == 0 for t in ended)


async def test_outcomes_of_a_service_gone_keep_their_leases(tmp_path: Path) -> None:
    """The service reports its runs, then stops (the hub retires it) while the
    outcomes wait: the hub renews their leases all the same (it renewed only those
    of the services it still had)."""
    runs: Counter[str] = Counter()
    async with make_hub(tmp_path, insecure=True, service_lease=LEASE) as hub:
        gate = asyncio.Event()
        held = asyncio.Event()
        finish = hub.app.storage.finish

        async def slow_finish(*args: Any, **kwargs: Any) -> Any:
            held.set()
            await gate.wait()
            return await finish(*args, **kwargs)

        hub.app.storage.finish = slow_finish  # type: ignore[method-assign]
        client = HubClient(hub.url)

        @client.handler("slow:gone")
        async def work(ctx: Context[Any]) -> None:
            runs[ctx.task.id] += 1

        worker = asyncio.create_task(client.work("svc", concurrency=4, stop_timeout=1.0))
        try:
            await client.wait_working(10)
            tasks = await hub.app.add_many([("slow:gone", i) for i in range(4)])
            await asyncio.wait_for(held.wait(), 10)
            client.stop()  # the service goes away after its runs ended
            await asyncio.wait_for(worker, 20)
            await asyncio.sleep(4 * LEASE)  # the clock: leases not extended would expire
            gate.set()
            ended = [await hub.app.wait_task(t.id, timeout=30) for t in tasks]
        finally:
            gate.set()
            client.stop()
            await client.close()
    assert [(t.status, t.rescues) for t in ended] == [(Status.SUCCEEDED, 0)] * 4
    assert sorted(runs.values()) == [1] * 4, runs
