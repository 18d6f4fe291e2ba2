"""An add of a unique key reads a few rows per key, however many ended tasks once
held it: the holder (in its own scope) and the newest task of each status (it read
and decoded every one: 3.9 s for a key 100,000 ended tasks had used)."""

from __future__ import annotations

from typing import Any

from conveyor.model import Status, Transition
from conveyor.storage import Completion
from conveyor.testing import make_spec


async def test_a_key_used_many_times_reads_a_few_rows(storage: Any) -> None:
    ended = []
    for _ in range(40):  # one after another: each takes the key once the last has ended
        [res] = await storage.add([make_spec("key:x", unique_key="k")])
        assert res.created
        [task] = await storage.claim("w", ["key:x"], 1, 60.0)
        fail = len(ended) % 2 == 1
        await storage.finish("w", [Completion(task.id, task.token, Transition(
            Status.FAILED if fail else Status.SUCCEEDED))])
        ended.append(task.id)
    [live] = await storage.add([make_spec("key:x", unique_key="k")])  # queued: the holder
    async with storage._conn() as conn:
        rows = (await storage._holders(conn, ["k"]))["k"]
    assert len(rows) <= 6, len(rows)
    assert live.task.id in {t.id for t in rows}
    # the rule is unchanged: the holder, else the newest in the asked scope
    [again] = await storage.add([make_spec("key:x", unique_key="k")])
    assert not again.created and again.task.id == live.task.id
    [task] = await storage.claim("w", ["key:x"], 1, 60.0)  # the holder ends too
    await storage.finish("w", [Completion(task.id, task.token, Transition(Status.FAILED))])
    succeeded = (Status.SUCCEEDED,)
    [one] = await storage.add([make_spec("key:y", unique_key="k", unique_scope=succeeded)])
    assert not one.created and one.task.id == ended[-2]  # the newest succeeded
    failed = (Status.FAILED,)
    [two] = await storage.add([make_spec("key:y", unique_key="k", unique_scope=failed)])
    assert not two.created and two.task.id == task.id  # the newest failed


async def test_a_retry_racing_an_add_of_its_key_is_refused(storage: Any) -> None:
    """retry() checks that no other task holds the key, then writes: an add of the
    key committed in between made the retry give its key up silently (it returned
    the task with the key, stored without it: two live tasks for one key). It is a
    DuplicateTask, and nothing of the retry is written."""
    from conveyor.errors import DuplicateTask

    [res] = await storage.add([make_spec("key:r", unique_key="r")])
    await storage.abort(res.task.id, "stopped")  # ended: the key is free
    rows = storage._rows
    added: list[Any] = []

    async def racing(conn: Any, query: str, params: Any) -> Any:
        out = await rows(conn, query, params)
        if query == storage._q["live_duplicate"] and not added:  # checked: none holds it
            added.extend(await storage.add([make_spec("key:r", unique_key="r")]))
        return out

    storage._rows = racing
    try:
        try:
            await storage.retry(res.task.id)
        except DuplicateTask:
            pass
        else:
            raise AssertionError("the retry took a key another task holds")
    finally:
        del storage._rows
    assert added and added[0].created
    [old, new] = await storage.get_many([res.task.id, added[0].task.id])
    assert (old.status, old.unique_key) == (Status.ABORTED, "r")
    assert (new.status, new.unique_key) == (Status.QUEUED, "r")


async def test_a_key_given_twice_gets_the_concurrent_holder_for_both(
        storage: Any, schema_url: str) -> None:
    """A batch naming one key twice, while another transaction adds that key and
    commits after the batch looked but before it inserted: both items get the other
    transaction's task (the second got the batch's own first task, never stored)."""
    import asyncio
    import os
    import time

    import psycopg

    from conveyor import Conveyor

    from ..conftest import PG_ENV, pg_schema

    app = Conveyor(schema_url)
    await app.open()
    try:
        schema = pg_schema(schema_url)
        async with await psycopg.AsyncConnection.connect(os.environ[PG_ENV]) as conn:
            await conn.execute("SELECT 1")  # the other transaction, not committed yet
            held = await app.add_in(conn, "key:x", {"by": "tx"}, unique_key="k")
            batch = asyncio.ensure_future(app.add_many_checked([
                ("key:x", {"copy": 1}, {"unique_key": "k"}),
                ("key:x", {"copy": 2}, {"unique_key": "k"})]))
            deadline = time.monotonic() + 10
            async with await psycopg.AsyncConnection.connect(os.environ[PG_ENV],
                                                             autocommit=True) as watch:
                while True:  # until the batch's insert waits on the uncommitted key
                    cur = await watch.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE %s", (f"%{schema}%tasks%",))
                    row = await cur.fetchone()
                    if row is not None and row[0] >= 1:
                        break
                    assert time.monotonic() < deadline and not batch.done()
                    await asyncio.sleep(0.01)
            await conn.commit()
            results = await batch
        assert [(task.id, created) for task, created in results] == [(held.id, False)] * 2
        assert [t.id for t in await app.find({"unique_key": "k"})] == [held.id]
    finally:
        await app.close()
