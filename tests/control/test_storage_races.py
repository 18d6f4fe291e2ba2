"""Storage-level races and end states not covered by the contract suite."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from conveyor.model import Status, TaskSpec, Transition, new_id
from conveyor.storage import Completion, Lease, Storage, open_storage

pytestmark = pytest.mark.serial  # races timed to the millisecond: alone


@pytest.fixture
async def stores(local_url: str) -> AsyncIterator[list[Storage]]:
    """Three storage objects on the same data (three connections, as three
    processes would have; for memory:// the one object three times)."""
    if local_url.startswith("memory"):
        one = open_storage(local_url)
        objs = [one, one, one]
    else:
        objs = [open_storage(local_url) for _ in range(3)]
    for s in dict.fromkeys(objs):
        await s.open()
    yield objs
    for s in dict.fromkeys(objs):
        await s.close()


def specs(n: int, action: str = "race") -> list[TaskSpec]:
    now = time.time()
    return [TaskSpec(id=new_id(), action=action, payload=i, run_at=now - 1) for i in range(n)]


async def test_sweepers_racing_rescue_each_task_once(stores: list[Storage]) -> None:
    """recover() from several processes at once: each expired task is rescued
    by exactly one of them, once."""
    a, b, c = stores
    await a.add(specs(60))
    claimed = await a.claim("dead-worker", ["race"], 60, 0.001)
    assert len(claimed) == 60
    await asyncio.sleep(0.01)
    reports = await asyncio.gather(*(s.recover(3) for s in (a, b, c, a, b, c)))
    rescued = Counter(i for r in reports for i in r.requeued)
    assert set(rescued) == {t.id for t in claimed}
    assert set(rescued.values()) == {1}
    assert not any(r.failed or r.aborted for r in reports)
    tasks = await a.get_many([t.id for t in claimed])
    assert all(t.status is Status.QUEUED and t.rescues == 1 and t.attempts == 0 for t in tasks)


async def test_claims_racing_sweepers_never_share_a_task(stores: list[Storage]) -> None:
    """Workers claiming while sweepers rescue expired leases: at any time each
    task is held by at most one claim, and a rescued claim can no longer finish."""
    a, b, c = stores
    await a.add(specs(40))
    first = await a.claim("dead-worker", ["race"], 40, 0.001)
    await asyncio.sleep(0.01)

    sweeping = asyncio.gather(a.recover(3), b.recover(3))

    async def claim_all(s: Storage, name: str) -> list[tuple[str, str]]:
        # claim while the sweepers run (however long they take on a loaded machine),
        # then three rounds more
        got: list[tuple[str, str]] = []
        after = 0
        while after < 3:
            after += sweeping.done()
            batch = await s.claim(name, ["race"], 3, 60)
            got.extend((t.id, t.token or "") for t in batch)
            await asyncio.sleep(0)
        return got

    results = await asyncio.gather(claim_all(b, "w-b"), claim_all(c, "w-c"))
    await sweeping
    holds = results[0] + results[1]
    assert holds  # the tasks rescued were claimed again
    assert Counter(i for i, _ in holds).most_common(1)[0][1] == 1  # no task claimed twice
    # the dead worker's tokens are all fenced out now
    refused = await a.finish("dead-worker", [
        Completion(t.id, t.token or "", Transition(Status.SUCCEEDED, result="stale"))
        for t in first])
    assert sorted(refused) == sorted(t.id for t in first)
    # the new holders can finish theirs
    done = await c.finish("w", [Completion(i, tok, Transition(Status.SUCCEEDED, result="ok"))
                                for i, tok in holds])
    assert done == []
    tasks = await a.get_many([t.id for t in first])
    held = {i for i, _ in holds}
    for t in tasks:
        if t.id in held:
            assert t.status is Status.SUCCEEDED and t.result == "ok" and t.rescues == 1
        else:
            assert t.status is Status.QUEUED and t.rescues == 1


@pytest.mark.parametrize("how", ["sweeper", "release"])
async def test_task_aborted_without_its_worker_keeps_no_abort_request(
        stores: list[Storage], how: str) -> None:
    """A running task with an abort request whose worker dies (lease expiry) or
    hands it back (graceful stop) ends aborted, like one its worker finished
    as aborted: the same record, with no pending abort request left on it."""
    s = stores[0]
    await s.add(specs(2))
    by_finish, by_other = await s.claim("w", ["race"], 2, 0.001 if how == "sweeper" else 60)
    for task in (by_finish, by_other):
        await s.abort(task.id, "user asked")
    # the normal way: the worker finishes the run as aborted
    await s.finish("w", [Completion(by_finish.id, by_finish.token or "",
                                    Transition(Status.ABORTED, reason="user asked"))])
    if how == "sweeper":
        await asyncio.sleep(0.01)
        assert (await s.recover(3)).aborted == (by_other.id,)
    else:
        assert await s.release("w", [Lease(by_other.id, by_other.token or "")]) == [by_other.id]
    finished = await s.get(by_finish.id)
    other = await s.get(by_other.id)
    assert finished is not None and other is not None
    assert finished.status is other.status is Status.ABORTED
    assert other.reason == "user asked" and other.worker is None and other.token is None
    assert finished.abort_requested is None
    assert other.abort_requested is None, (
        f"aborted by {how}, the task still says abort_requested={other.abort_requested!r}")
