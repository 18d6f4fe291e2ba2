"""The change feed: NOTIFY wakes, the table is the truth, read by snapshot.

Sequence numbers are taken before commit, so a transaction that started first
can commit last with a smaller seq; the feed must still deliver it, exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from conveyor.model import Status, Transition
from conveyor.storage import Change, Completion, _pgfeed
from conveyor.storage.postgres import PostgresStorage, parse_postgres_url
from conveyor.testing.contract import make_spec

from .conftest import listening


class Collector:
    def __init__(self, storage: Any, **options: Any) -> None:
        self.storage = storage
        self.seen: list[Change] = []
        self.arrived: dict[str, float] = {}
        self._task = asyncio.create_task(self._run(storage.change_batches(**options)))

    async def _run(self, stream: Any) -> None:
        async for batch in stream:
            for change in batch:
                self.seen.append(change)
                self.arrived.setdefault(f"{change.task_id}:{change.event}", time.time())

    async def ready(self) -> Collector:
        await listening(self.storage)
        return self

    async def until(self, predicate: Callable[[list[Change]], bool], timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.seen):
            assert time.monotonic() < deadline, f"timed out; seen {self.seen}"
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._task.cancel()


async def _read_since(storage: Any, mark: float, timeout: float = 10) -> None:
    """Until ``storage``'s listener has read the feed again after ``mark`` (time.time())."""
    deadline = time.monotonic() + timeout
    while storage.feed_health().get("last_read", 0.0) <= mark:
        assert time.monotonic() < deadline, storage.feed_health()
        await asyncio.sleep(0.01)


async def test_out_of_order_commits_are_all_delivered(storage: Any, other: Any,
                                                      schema_url: str) -> None:
    feed = Collector(other)
    await feed.ready()
    conninfo, _, _ = parse_postgres_url(schema_url)
    try:
        async with await psycopg.AsyncConnection.connect(conninfo) as slow:
            async with slow.transaction():
                [early] = await storage.add_in(slow, [make_spec(payload="early")])
                [late] = await storage.add([make_spec(payload="late")])  # commits first
                await feed.until(lambda s: any(c.task_id == late.task.id for c in s))
                # the reader reads again (its poll) past early's seq, early still open
                await _read_since(other, time.time())
            await feed.until(lambda s: any(c.task_id == early.task.id for c in s))
        seqs = {(c.task_id, c.event): c.seq for c in feed.seen}
        assert seqs[(early.task.id, "added")] < seqs[(late.task.id, "added")]
        keys = [(c.task_id, c.version) for c in feed.seen]
        assert len(keys) == len(set(keys))  # exactly once
    finally:
        feed.stop()


@pytest.mark.serial  # a 100 ms bound across processes: alone
async def test_feed_is_fast_and_in_order_across_storages(storage: Any, other: Any) -> None:
    feed = Collector(other, include_own=False)
    await feed.ready()
    try:
        delays = []
        for _ in range(20):
            [res] = await storage.add([make_spec()])
            start = time.time()
            await feed.until(lambda s, i=res.task.id: any(c.task_id == i for c in s))
            delays.append(time.time() - start)
        delays.sort()
        assert delays[len(delays) // 2] < 0.1, delays
    finally:
        feed.stop()


async def test_include_own_and_wakeups_only(storage: Any, other: Any) -> None:
    mine = Collector(storage, include_own=False)
    wakeups = Collector(storage, include_own=True, wakeups_only=True)
    everything = Collector(storage)
    await everything.ready()
    try:
        [own] = await storage.add([make_spec()])
        [foreign] = await other.add([make_spec(action="test:b")])
        [claimed] = await other.claim("w", ["test:b"], 1, 30)
        await everything.until(lambda s: any(c.task_id == claimed.id and c.event == "started"
                                             for c in s))
        await mine.until(lambda s: any(c.task_id == claimed.id for c in s))
        await wakeups.until(lambda s: any(c.task_id == foreign.task.id for c in s))
        assert all(c.origin != storage.instance_id for c in mine.seen)
        assert not any(c.task_id == own.task.id for c in mine.seen)
        assert all(c.status is Status.QUEUED or c.event == "abort_requested"
                   for c in wakeups.seen)
        assert any(c.task_id == own.task.id for c in everything.seen)
    finally:
        for c in (mine, wakeups, everything):
            c.stop()


async def test_listener_reconnects_and_catches_up(storage: Any, other: Any,
                                                  server: str) -> None:
    feed = Collector(other)
    await feed.ready()
    try:
        health = other.feed_health()
        assert health["connected"] and health["backend_pid"]
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (health["backend_pid"],))
        # written while the listener is down (its first retry waits a little)
        added = [r.task.id for r in await storage.add([make_spec() for _ in range(5)])]
        await feed.until(lambda s: set(added) <= {c.task_id for c in s}, timeout=10)
        assert other.feed_health()["backend_pid"] != health["backend_pid"]
        keys = [(c.task_id, c.version) for c in feed.seen]
        assert len(keys) == len(set(keys))
    finally:
        feed.stop()


async def test_poll_only_mode(schema_url: str) -> None:
    a = PostgresStorage(schema_url, listen=False, poll_interval=0.05)
    b = PostgresStorage(schema_url)
    await a.open()
    await b.open()
    feed = Collector(a)
    await feed.ready()
    try:
        [res] = await b.add([make_spec()])
        await feed.until(lambda s: any(c.task_id == res.task.id for c in s), timeout=3)
    finally:
        feed.stop()
        await a.close()
        await b.close()


async def test_deleted_changes_name_their_origin(storage: Any, other: Any) -> None:
    feed = Collector(other)
    await feed.ready()
    try:
        [res] = await storage.add([make_spec()])
        await storage.abort(res.task.id, "x")
        assert await storage.delete([res.task.id]) == [res.task.id]
        await feed.until(lambda s: any(c.event == "deleted" for c in s))
        [deleted] = [c for c in feed.seen if c.event == "deleted"]
        assert deleted.origin == storage.instance_id and deleted.version == 3
    finally:
        feed.stop()


async def test_ready_hook_fires_on_another_writers_queued_task(storage: Any, other: Any) -> None:
    """The NOTIFY of a statement that queued a task carries a ready flag: the listener
    runs the ready hooks (workers claim at once) before reading the change table; it
    does not for the storage's own writes or for changes that queue nothing."""
    feed = await Collector(storage).ready()  # starts storage's listener
    woken: list[float] = []
    fired = asyncio.Event()

    def hook() -> None:
        woken.append(time.time())
        fired.set()

    storage.add_ready_hook(hook)
    try:
        assert storage._ready_hooks.call() is True  # the listener defers its read after a hint
        await asyncio.wait_for(fired.wait(), 5)
        woken.clear()
        fired.clear()
        await storage.add([make_spec(payload="own")])  # its own write: no hook
        [res] = await other.add([make_spec(payload="foreign")])
        await asyncio.wait_for(fired.wait(), 5)
        await feed.until(lambda s: any(c.task_id == res.task.id for c in s))
        assert len(woken) == 1
        # a claim and a finish by the other writer queue nothing: no hook
        fired.clear()
        [task] = await other.claim("w", ["test:a"], 1, 30)
        await feed.until(lambda s: any(c.task_id == task.id and c.status is Status.RUNNING
                                       for c in s))
        assert len(woken) == 1
        storage.remove_ready_hook(hook)
        [late] = await other.add([make_spec(payload="after removal")])
        await feed.until(lambda s: any(c.task_id == late.task.id for c in s))
        assert len(woken) == 1
        # with no hook left the hint wakes nobody, and the listener reads at once
        assert storage._ready_hooks.call() is False
    finally:
        storage.remove_ready_hook(hook)
        feed.stop()


async def test_a_statement_of_many_tasks_writes_one_feed_row(storage: Any, other: Any,
                                                             server: str) -> None:
    """Schema version 3: a bulk add, a claim or a finish of many tasks writes one
    change row with their ids and versions; the feed still delivers one change per
    task, each once, in the order of the task's own changes."""
    from conveyor.model import Transition
    from conveyor.storage import Completion

    feed = await Collector(other, include_own=True).ready()
    try:
        n = 600  # three insert statements
        results = await storage.add([make_spec(payload={"i": i}) for i in range(n)])
        ids = [r.task.id for r in results]
        claimed = await storage.claim("w", ["test:a"], 100, 30)
        await storage.finish("w", [Completion(t.id, t.token or "", Transition(Status.SUCCEEDED))
                                   for t in claimed])
        done = {t.id for t in claimed}
        await feed.until(lambda s: sum(c.event == "succeeded" for c in s) == 100)
        added = [c for c in feed.seen if c.event == "added"]
        assert sorted(c.task_id for c in added) == sorted(ids)  # each once
        assert all(c.version == 1 and c.status is Status.QUEUED for c in added)
        for task_id in done:
            mine = [(c.event, c.version) for c in feed.seen if c.task_id == task_id]
            assert mine == [("added", 1), ("started", 2), ("succeeded", 3)]
        with psycopg.connect(server) as conn:
            rows = conn.execute(f'SELECT count(*), count(ids), sum(cardinality(ids)) '
                                f'FROM "{storage.schema}".changes').fetchone()
        assert rows == (5, 5, n + 200)  # 3 adds, 1 claim, 1 finish
    finally:
        feed.stop()


async def test_a_backlog_longer_than_a_page_is_delivered_whole(
        schema_url: str, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that finds a page full or more (a listener back from a long outage)
    pages through one snapshot; every change goes out once, the first page's too
    (it was dropped before)."""
    monkeypatch.setattr(_pgfeed, "PAGE", 10)
    reader = PostgresStorage(schema_url)
    await reader.open()  # the feed starts from the snapshot taken here
    try:
        added = [(await storage.add([make_spec(payload=i)]))[0].task.id for i in range(35)]
        feed = Collector(reader)  # the listener starts now: 35 rows to catch up on
        try:
            await feed.until(lambda s: set(added) <= {c.task_id for c in s}, timeout=10)
            keys = [(c.task_id, c.version) for c in feed.seen]
            assert len(keys) == len(set(keys))
            assert [c.task_id for c in feed.seen if c.task_id in set(added)] == added
        finally:
            feed.stop()
    finally:
        await reader.close()


async def _health(storage: Any, key: str, value: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while storage.feed_health().get(key) != value:
        assert time.monotonic() < deadline, storage.feed_health()
        await asyncio.sleep(0.01)


async def test_an_app_that_only_adds_listens_only_while_something_wants_changes(
        schema_url: str, other: Any) -> None:
    """Its own inserts' notifications would wake its listener for nothing: it stops
    LISTENing while no listener, signal, tally or worker wants changes, and starts
    again as soon as one does, with no change committed after that lost."""
    from conveyor import Conveyor

    app = Conveyor(schema_url)
    await app.open()
    try:
        await _health(app.storage, "listening", False)
        mine = await app.add("test:a", {"n": 0})
        started: list[str] = []
        unsubscribe = app.on("task.started", lambda event: started.append(event.task_id or ""))
        # right after on(): no wait for LISTEN, the catch-up read delivers
        claimed = await other.claim("w", ["test:a"], 1, 30)
        assert [t.id for t in claimed] == [mine.id]
        deadline = time.monotonic() + 5
        while mine.id not in started:
            assert time.monotonic() < deadline, started
            await asyncio.sleep(0.01)
        await _health(app.storage, "listening", True)
        unsubscribe()
        await _health(app.storage, "listening", False)
        # a wait() wants changes too (a task signal)
        [res] = await other.add([make_spec()])
        waiter = asyncio.create_task(app.wait_task(res.task.id, timeout=10))
        await _health(app.storage, "listening", True)
        [task] = await other.claim("w", ["test:a"], 1, 30)
        await other.finish("w", [Completion(task.id, task.token or "", Transition(
            Status.SUCCEEDED, result=7))])
        assert (await waiter).result == 7
    finally:
        await app.close()
