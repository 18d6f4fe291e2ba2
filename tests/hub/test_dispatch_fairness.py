"""The hub's dispatch to remote services: a due task held back by a concurrency
condition does not make it claim in a tight loop (~600 empty claims a second, a
third of the hub's core), and two services of one action take turns at a trickle
of tasks (the first one subscribed got them all while it had room)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from conveyor import Context
from conveyor.client import HubClient

from ._working import working as _working
from .conftest import RunningHub


def working(client: HubClient, service: str, concurrency: int) -> Any:
    """The service without prefetched offers (they keep their place: see protocol.md)."""
    return _working(client, service, concurrency, prefetch=0)


def _count_claims(hub: RunningHub) -> list[int]:
    count = [0]
    claim = hub.app.storage.claim

    async def counting(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return await claim(*args, **kwargs)

    hub.app.storage.claim = counting  # type: ignore[method-assign]
    return count


async def test_a_held_task_does_not_spin_the_hubs_claims(hub: RunningHub) -> None:
    release = asyncio.Event()
    first = asyncio.Event()
    started: dict[str, float] = {}
    worker = HubClient(hub.url, hub.key("svc", subscribe=["*"]))

    @worker.handler("slow")
    async def slow(ctx: Context[Any]) -> None:
        started[ctx.payload] = time.monotonic()
        if ctx.payload == "first":
            first.set()
            await release.wait()

    cond = [{"query": {"action": "slow"}, "limit": 1}]
    async with working(worker, "svc", 4), HubClient(
            hub.url, hub.key("pub", publish=["*"], read=["*"])) as pub:
        await pub.add("slow", "first", concurrency=cond)
        second = await pub.add("slow", "second", concurrency=cond)
        await asyncio.wait_for(first.wait(), 10)
        claims = _count_claims(hub)
        await asyncio.sleep(1.0)  # the scenario: a second with the second task held
        assert claims[0] <= 10 and "second" not in started
        ended = time.monotonic()
        release.set()
        await pub.wait(second.id, timeout=10)
        assert started["second"] - ended < 1.0  # woken by the end, not a poll


async def test_two_services_take_turns_at_a_trickle(hub: RunningHub) -> None:
    ran: Counter[str] = Counter()
    clients = []
    for name in ("a", "b"):
        client = HubClient(hub.url, hub.key(f"svc-{name}", subscribe=["*"]))

        @client.handler("job")
        async def job(ctx: Context[Any], name: str = name) -> None:
            ran[name] += 1

        clients.append((client, name))
    async with working(*clients[0], 4), working(*clients[1], 4), HubClient(
            hub.url, hub.key("pub", publish=["*"], read=["*"])) as pub:
        for _ in range(20):
            task = await pub.add("job", None)
            await pub.wait(task.id, timeout=10)
    assert ran["a"] + ran["b"] == 20
    assert ran["a"] >= 5 and ran["b"] >= 5, ran


async def test_the_hubs_pickup_deadline_of_a_past_run_at_counts_from_the_add(
        hub: RunningHub) -> None:
    """A task added with a run_at a minute ago and a pickup timeout of a minute has
    its whole minute from the add (as its stored pickup_deadline): the hub counted it
    from the run_at and failed it at the first refused offer."""
    refused = 0

    def accept(task: Any) -> bool:
        nonlocal refused
        refused += 1
        return refused > 6  # refused six times (the waits between offers grow)

    worker = HubClient(hub.url, hub.key("svc", subscribe=["*"]))

    @worker.handler("late", accept=accept)
    async def late(ctx: Context[Any]) -> str:
        return "ran"

    async with working(worker, "svc", 2), HubClient(
            hub.url, hub.key("pub", publish=["*"], read=["*"])) as pub:
        task = await pub.add("late", None, run_at=time.time() - 59.95, pickup_timeout=60)
        assert await pub.wait(task.id, timeout=20) == "ran"
    assert refused == 7
