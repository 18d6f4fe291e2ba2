"""Claims: SKIP LOCKED along the ready index; conditions and per-action limits atomic
across concurrent claimers; the claim plan stays on the indexes as the queue grows."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import psycopg

from conveyor.model import Condition, Status, Transition
from conveyor.query import parse_filter
from conveyor.storage import ClaimLimits, Completion
from conveyor.storage.postgres import PostgresStorage
from conveyor.testing.contract import make_spec


async def _storages(url: str, n: int) -> list[PostgresStorage]:
    out = [PostgresStorage(url) for _ in range(n)]
    for s in out:
        await s.open()
    return out


async def _churn(storages: list[PostgresStorage], actions: list[str], check: Any,
                 rounds: int, limits: ClaimLimits | None = None) -> int:
    """Claimers that claim, check an invariant, and finish at random, concurrently."""
    done = 0

    async def claimer(s: PostgresStorage, name: str) -> None:
        nonlocal done
        held: list[Any] = []
        for _ in range(rounds):
            held.extend(await s.claim(name, actions, random.randint(1, 4), 30, limits))
            await check()
            random.shuffle(held)
            k = random.randint(0, len(held))
            finishing, held = held[:k], held[k:]
            if finishing:
                await s.finish(name, [Completion(t.id, t.token, Transition(Status.SUCCEEDED))
                                      for t in finishing])
                done += len(finishing)
            await asyncio.sleep(random.random() * 0.005)
        if held:
            await s.finish(name, [Completion(t.id, t.token, Transition(Status.SUCCEEDED))
                                  for t in held])
            done += len(held)

    await asyncio.gather(*(claimer(s, f"w{i}") for i, s in enumerate(storages)))
    return done


async def test_conditions_hold_across_concurrent_claimers(storage: Any,
                                                          schema_url: str) -> None:
    books = ["A", "B", "C"]
    specs = [make_spec(payload={"book": b, "i": i},
                       concurrency=(Condition({"payload.book": b}, limit=2),))
             for i in range(40) for b in books]
    specs += [make_spec(payload={"book": "A", "plain": True}) for _ in range(10)]
    random.shuffle(specs)
    await storage.add(specs)
    storages = await _storages(schema_url, 6)
    worst: dict[str, int] = dict.fromkeys(books, 0)

    async def check() -> None:
        for b in books:
            # conditional tasks running for a book: never more than the limit (+ the
            # unconditional ones, which are not held back)
            n = await storage.count(parse_filter({"status": "running", "payload.book": b,
                                                  "payload.plain": {"$exists": False}}))
            worst[b] = max(worst[b], n)

    try:
        await _churn(storages, ["test:a"], check, rounds=40)
    finally:
        for s in storages:
            await s.close()
    assert all(n <= 2 for n in worst.values()), worst
    assert max(worst.values()) == 2  # and the limit was actually reached


async def test_per_action_limit_holds_across_concurrent_claimers(storage: Any,
                                                                 schema_url: str) -> None:
    await storage.add([make_spec(payload=i) for i in range(120)])
    await storage.add([make_spec(action="test:b", payload=i) for i in range(30)])
    limits = ClaimLimits({"test:a": 3})
    storages = await _storages(schema_url, 6)
    worst = 0

    async def check() -> None:
        nonlocal worst
        worst = max(worst, await storage.count(parse_filter({"status": "running",
                                                             "action": "test:a"})))

    try:
        await _churn(storages, ["test:a", "test:b"], check, rounds=40, limits=limits)
    finally:
        for s in storages:
            await s.close()
    assert worst == 3


async def test_a_blocked_conditional_head_does_not_hide_the_rest(storage: Any) -> None:
    cond = (Condition({"payload.kind": "x"}, limit=1),)
    now = time.time()
    await storage.add([make_spec(payload={"kind": "x", "i": i}, concurrency=cond,
                                 run_at=now - 100 + i) for i in range(30)])
    await storage.add([make_spec(payload={"kind": "y"}, run_at=now)])
    first = await storage.claim("w", ["test:a"], 10, 30)
    assert sorted(t.payload["kind"] for t in first) == ["x", "y"]
    assert await storage.claim("w", ["test:a"], 10, 30) == []


async def test_claim_order_across_actions_and_conditions(storage: Any) -> None:
    now = time.time()
    cond = (Condition({"action": "none"}, limit=1),)  # always allows
    await storage.add([
        make_spec(action="a", payload=1, priority=0, run_at=now - 5),
        make_spec(action="b", payload=2, priority=0, run_at=now - 4, concurrency=cond),
        make_spec(action="a", payload=3, priority=0, run_at=now - 3),
        make_spec(action="c", payload=0, priority=-1, run_at=now - 1),
    ])
    claimed = await storage.claim("w", ["a", "b", "c"], 10, 30)
    assert [t.payload for t in claimed] == [0, 1, 2, 3]


async def test_claim_plan_uses_the_ready_index(storage: Any) -> None:
    await storage.add([make_spec(action=f"act{i % 4}", payload=i) for i in range(20_000)])
    async with storage._conn() as conn:
        await conn.execute(f'ANALYZE "{storage.schema}".tasks')
        now = time.time()
        base = {"worker": "w", "token": "t", "lease_until": now + 30, "now": now,
                "origin": "o", "limit": 50}
        for name, extra in (("claim_one_action", {"action": "act1"}),
                            ("claim_actions", {"actions": ["act1", "act2"]})):
            async with conn.transaction():
                cur = await conn.execute("EXPLAIN (ANALYZE, COSTS OFF) " + storage._q[name],
                                         {**base, **extra})
                plan = "\n".join(r[0] for r in await cur.fetchall())
                raise psycopg.Rollback()
            assert "tasks_ready" in plan, plan
            assert "Seq Scan on tasks" not in plan, plan
            assert "LockRows" in plan, plan
    # claims stay cheap as they drain the head of a big queue
    started = time.perf_counter()
    got = 0
    while got < 2000:
        got += len(await storage.claim("w", ["act1", "act2"], 100, 30))
    assert time.perf_counter() - started < 10


async def test_pickup_timeouts_expire_in_batches(storage: Any) -> None:
    now = time.time()
    await storage.add([make_spec(run_at=now - 10, pickup_timeout=0.01) for _ in range(30)])
    await storage.add([make_spec(payload="ok")])
    await asyncio.sleep(0.05)  # the pickup timeouts run out
    claimed = await storage.claim("w", ["test:a"], 5, 30)
    assert [t.payload for t in claimed] == ["ok"]
    assert await storage.count(parse_filter({"reason": "pickup_timeout"})) == 30


async def test_claims_commit_without_the_flush_and_leave_the_session_alone(
        schema_url: str) -> None:
    """The claim's own transaction sets synchronous_commit off (the claim does not
    wait for its WAL flush); the connection it ran on, back in the pool, still has
    the server's setting for everything else (an add, a finish)."""
    s = PostgresStorage(schema_url + "&pool_min=1&pool_max=1")
    await s.open()
    try:
        await s.add([make_spec(action=a, payload=i) for a in ("test:a", "test:b")
                     for i in range(3)])
        one = await s.claim("w1", ["test:a"], 2, 30)
        both = await s.claim("w1", ["test:a", "test:b"], 10, 30)
        assert len(one) == 2 and len(both) == 4
        async with s._conn() as conn:  # the pool's only connection: the claims ran on it
            cur = await conn.execute("SHOW synchronous_commit")
            row = await cur.fetchone()
        assert row is not None and row[0] == "on"
        refused = await s.finish("w1", [Completion(t.id, t.token, Transition(Status.SUCCEEDED))
                                        for t in one + both])
        assert refused == []
        assert await s.count(parse_filter({"status": "succeeded"})) == 6
    finally:
        await s.close()


async def test_a_stalled_careful_claimer_does_not_block_the_others(storage: Any, other: Any,
                                                                   monkeypatch: Any) -> None:
    """A careful claim (per-action limit) holds transaction-level advisory locks that
    every other careful claimer waits for. If its client goes quiet inside that
    transaction (a paused or cut-off worker), the server ends the transaction after
    the claim's lease (at least a floor), and the others go on."""
    from conveyor.errors import StorageError
    from conveyor.storage import postgres

    monkeypatch.setattr(postgres, "_LOCK_IDLE_FLOOR", 0.2)
    limits = ClaimLimits(per_action={"test:a": 5})
    await storage.add([make_spec() for _ in range(2)])
    stalled = asyncio.Event()
    real = storage._ready_in_order

    async def stall(*args: Any, **kwargs: Any) -> Any:
        stalled.set()
        await asyncio.sleep(30)  # the locks are held and the client says nothing
        async for task in real(*args, **kwargs):
            yield task

    monkeypatch.setattr(storage, "_ready_in_order", stall)
    first = asyncio.create_task(storage.claim("w1", ["test:a"], 1, 0.3, limits))
    try:
        await asyncio.wait_for(stalled.wait(), 10)
        claimed = await asyncio.wait_for(other.claim("w2", ["test:a"], 1, 30, limits), 10)
        assert len(claimed) == 1 and claimed[0].worker == "w2"
    finally:
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError, StorageError):
            await first
