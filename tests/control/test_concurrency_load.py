"""Concurrency conditions and per-action limits across worker processes, checked
against the run intervals the handlers write to a ledger."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

from conveyor import Conveyor

from ..integration.procs import Fleet, max_overlap, read_intervals
from ._support import until

pytestmark = pytest.mark.slow

BOOKS = 20
BOOK_TASKS = 2000


async def test_one_run_per_book_at_a_time(shared_url: str, tmp_path: Path) -> None:
    """4 workers, 2,000 tasks over 20 books, each with the condition "at most
    one running task of my book": no two runs of one book ever overlap."""
    ledger = tmp_path / "ledger.txt"
    env = {"CONVEYOR_DB": shared_url, "LEDGER": str(ledger), "CONCURRENCY": "8"}
    app = Conveyor(shared_url)
    fleet = Fleet(env, tmp_path)
    try:
        items = []
        for i in range(BOOK_TASKS):
            book = f"book-{i % BOOKS}"
            items.append(("book", {"book": book, "i": i, "sleep": 0.005},
                          {"concurrency": {"scope": "running", "query": {"payload.book": book},
                                           "limit": 1}}))
        for start in range(0, BOOK_TASKS, 500):
            await app.add_many(items[start:start + 500])
        t0 = time.monotonic()
        await asyncio.to_thread(fleet.start, 4)

        async def all_done() -> bool:
            return await app.count({"status": "succeeded"}) == BOOK_TASKS

        await until(all_done, timeout=180, what="all book tasks to succeed", interval=0.25)
        took = time.monotonic() - t0
        stats = await app.stats()
    finally:
        fleet.close()
        await app.close()

    runs = read_intervals(ledger)
    assert stats == {"book": {"succeeded": BOOK_TASKS}}
    assert len(runs) == BOOK_TASKS and len({r[0] for r in runs}) == BOOK_TASKS
    by_book: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, book, start, end, _ in runs:
        assert end >= start
        by_book[book].append((start, end))
    assert len(by_book) == BOOKS
    overlaps = []
    for book, intervals in by_book.items():
        intervals.sort()
        for (s1, e1), (s2, e2) in pairwise(intervals):
            if s2 < e1:
                overlaps.append((book, (s1, e1), (s2, e2)))
    parallel = max_overlap((s, e) for _, _, s, e, _ in runs)
    pids = {r[4] for r in runs}
    print(f"\nbooks: {BOOK_TASKS} tasks in {took:.1f}s on {len(pids)} workers; "
          f"most books running at once: {parallel}; overlaps within a book: {len(overlaps)}")
    assert not overlaps, overlaps[:5]
    assert max(max_overlap(iv) for iv in by_book.values()) == 1
    assert parallel > 1  # the books did run side by side
    assert len(pids) > 1


async def test_per_action_limit_across_processes(shared_url: str, tmp_path: Path) -> None:
    """A handler registered with limit=2, 3 worker processes of one slot each: never
    more than 2 runs at once, and the limit is used (2 at once happens, so in two
    processes). (With 8 slots each, the process whose run ends takes the freed place
    first, woken by its own end rather than the change feed: one process could run
    them all.)"""
    ledger = tmp_path / "ledger.txt"
    env = {"CONVEYOR_DB": shared_url, "LEDGER": str(ledger), "CONCURRENCY": "1"}
    n = 150
    app = Conveyor(shared_url)
    fleet = Fleet(env, tmp_path)
    try:
        await app.add_many([("limited", {"i": i, "sleep": 0.02}) for i in range(n)])
        await asyncio.to_thread(fleet.start, 3)

        async def all_done() -> bool:
            return await app.count({"status": "succeeded"}) == n

        await until(all_done, timeout=120, what="all limited tasks to succeed", interval=0.1)
    finally:
        fleet.close()
        await app.close()

    runs = read_intervals(ledger)
    assert len(runs) == n and len({r[0] for r in runs}) == n
    most = max_overlap((s, e) for _, _, s, e, _ in runs)
    pids = {r[4] for r in runs}
    print(f"\nper-action limit 2: most running at once {most}, workers used {len(pids)}")
    assert most == 2
    assert len(pids) > 1
