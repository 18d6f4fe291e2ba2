"""The runner on every backend: handlers, results, errors, waiting, reading."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from conveyor import (
    Context,
    Conveyor,
    Status,
    TaskAborted,
    TaskFailed,
    TaskNotFound,
    ValidationError,
    WaitTimeout,
)
from conveyor.model import Task
from conveyor.storage._codec import COLUMNS

from ..control._support import until


def test_task_fields_match_storage_columns() -> None:
    fields = [f for f in Task.__dataclass_fields__ if f != "logs"]
    assert fields == list(COLUMNS)


async def test_async_handler_result(app: Conveyor) -> None:
    @app.handler("math:double")
    async def double(ctx: Context[Any]) -> dict[str, int]:
        return {"n": ctx.payload["n"] * 2}

    async with app:
        task = await app.add("math:double", {"n": 21})
        assert task.status is Status.QUEUED
        assert await app.wait(task.id, timeout=10) == {"n": 42}
        done = await app.get(task.id)
        assert done.status is Status.SUCCEEDED and done.attempts == 1
        assert done.started_at is not None and done.finished_at is not None
        assert done.finished_at >= done.started_at >= done.created_at


async def test_sync_handler_runs_in_a_thread(app: Conveyor) -> None:
    seen: list[str] = []

    @app.handler("sync:work")
    def work(ctx: Context[Any]) -> str:
        seen.append(threading.current_thread().name)
        ctx.progress(1, total=1, message="done")
        ctx.log.info("in thread %s", "yes")
        return "ok"

    async with app:
        task = await app.add("sync:work")
        assert await app.wait(task.id, timeout=10) == "ok"
    assert seen and seen[0].startswith("conveyor-handler")
    done = await app.get(task.id, logs=True)  # the app opens again after close
    assert done.progress is not None and done.progress.message == "done"
    assert done.logs is not None and [r.message for r in done.logs] == ["in thread yes"]


async def test_failure_is_kept_and_raised(app: Conveyor) -> None:
    @app.handler("boom")
    async def boom(ctx: Context[Any]) -> None:
        raise ValueError("no good")

    async with app:
        task = await app.add("boom")
        with pytest.raises(TaskFailed) as info:
            await app.wait(task.id, timeout=10)
    failed = info.value.task
    assert failed.status is Status.FAILED and failed.reason == "error"
    assert failed.error is not None and failed.error.type == "ValueError"
    assert failed.error.message == "no good"
    assert failed.error.traceback is not None and "no good" in failed.error.traceback
    assert "ValueError: no good" in str(info.value)


async def test_wait_timeout_and_missing(app: Conveyor) -> None:
    task = await app.add("nobody:handles")
    with pytest.raises(WaitTimeout):
        await app.wait(task.id, timeout=0.2)
    with pytest.raises(TaskNotFound):
        await app.wait("0000-missing", timeout=0.2)
    with pytest.raises(TaskNotFound):
        await app.get("0000-missing")


async def test_wait_on_aborted_task(app: Conveyor) -> None:
    task = await app.add("nobody:handles")
    waiter = asyncio.create_task(app.wait(task.id, timeout=10))
    await until(lambda: task.id in app.bus._signals, 5, "the waiter to be waiting")
    await app.abort(task.id, "changed my mind")
    with pytest.raises(TaskAborted) as info:
        await waiter
    assert info.value.task.reason == "changed my mind"


async def test_priority_then_fifo(url: str) -> None:
    app = Conveyor(url, concurrency=1)
    order: list[str] = []

    @app.handler("rank")
    async def rank(ctx: Context[Any]) -> None:
        order.append(ctx.payload)

    try:
        tasks = [await app.add("rank", name, priority=p)
                 for name, p in [("c1", 1), ("a1", 0), ("b", -1), ("c2", 1), ("a2", 0)]]
        await app.start()
        for t in tasks:
            await app.wait(t.id, timeout=10)
        assert order == ["b", "a1", "a2", "c1", "c2"]
    finally:
        await app.close()


async def test_delay_and_run_at(app: Conveyor) -> None:
    @app.handler("later")
    async def later(ctx: Context[Any]) -> float:
        return time.time()

    async with app:
        start = time.time()
        delayed = await app.add("later", delay=0.5)
        past = await app.add("later", run_at=start - 100)
        assert delayed.run_at == pytest.approx(start + 0.5, abs=0.1)
        ran_past = await app.wait(past.id, timeout=10)
        ran_delayed = await app.wait(delayed.id, timeout=10)
    assert ran_delayed >= delayed.run_at
    assert ran_past < ran_delayed


async def test_add_many_is_all_or_nothing(app: Conveyor) -> None:
    with pytest.raises(ValidationError, match="task 2"):
        await app.add_many([("a", 1), ("a", 2), ("a", {1, 2}), ("a", 4)])
    assert await app.count() == 0
    tasks = await app.add_many([("a", 1), {"action": "b", "payload": 2, "priority": 3},
                                ("c", None, {"tags": {"k": "v"}})])
    assert [t.action for t in tasks] == ["a", "b", "c"]
    assert tasks[1].priority == 3 and tasks[2].tags == {"k": "v"}
    assert await app.count() == 3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"action": "", "payload": 1}, "invalid action name"),
    ({"action": "has space", "payload": 1}, "invalid action name"),
    ({"action": "a", "payload": object()}, "payload is not JSON-serialisable"),
    ({"action": "a", "payload": float("nan")}, "payload is not JSON-serialisable"),
    ({"action": "a", "payload": "x" * (1 << 20)}, "over the limit"),
    ({"action": "a", "payload": "\ud800"}, "not valid Unicode"),
    ({"action": "a", "priority": "high"}, "priority must be a number"),
    ({"action": "a", "priority": float("inf")}, "finite"),
    ({"action": "a", "delay": -1}, "delay must be >= 0"),
    ({"action": "a", "delay": 1, "run_at": 5}, "not both"),
    ({"action": "a", "timeout": 0}, "timeout must be > 0"),
    ({"action": "a", "max_attempts": 0}, "max_attempts"),
    ({"action": "a", "unique_key": 5}, "unique_key must be a non-empty string"),
    ({"action": "a", "unique_scope": ["running"]}, "must include 'queued'"),
    ({"action": "a", "tags": {"a.b": 1}}, "must not contain"),
    ({"action": "a", "colour": "red"}, "unknown option"),
    ({"action": "a", "concurrency": [{"scope": "nowhere", "query": {}}]}, "unknown status"),
    ({"action": "a", "concurrency": [{"query": {"$bad": 1}}]}, "concurrency\\[0\\].query"),
])
async def test_bad_input_is_refused_and_writes_nothing(app: Conveyor, kwargs: dict[str, Any],
                                                       message: str) -> None:
    kwargs = dict(kwargs)
    action = kwargs.pop("action")
    payload = kwargs.pop("payload", None)
    with pytest.raises(ValidationError, match=message):
        await app.add(action, payload, **kwargs)
    assert await app.count() == 0


async def test_find_count_exists(app: Conveyor) -> None:
    for i in range(6):
        await app.add("item", {"i": i, "group": "odd" if i % 2 else "even"},
                      tags={"user": "ann" if i < 3 else "bob"}, priority=i)
    odd = await app.find({"payload.group": "odd"}, sort="-payload.i")
    assert [t.payload["i"] for t in odd] == [5, 3, 1]
    assert await app.count({"tags.user": "ann"}) == 3
    first = await app.find_one({"tags.user": "bob"}, sort="priority")
    assert first is not None and first.payload["i"] == 3
    assert await app.exists({"payload.i": {"$gt": 4}})
    assert not await app.exists({"payload.i": {"$gt": 5}})
    assert await app.exists(first.id)
    page = await app.find(sort="priority", limit=2, skip=2)
    assert [t.priority for t in page] == [2, 3]
    assert await app.stats() == {"item": {"queued": 6}}


async def test_delete_finished(app: Conveyor) -> None:
    a = await app.add("x")
    b = await app.add("x")
    await app.abort(a.id)
    assert await app.delete([a.id, b.id]) == [a.id]
    assert not await app.exists(a.id) and await app.exists(b.id)
    await app.abort(b.id)
    assert await app.delete({"action": "x"}) == [b.id]


async def test_handler_registration_errors(app: Conveyor) -> None:
    from conveyor import ConfigurationError

    @app.handler("dup")
    async def one(ctx: Context[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="already registered"):
        app.register("dup", one)
    with pytest.raises(ConfigurationError, match=r"invalid action|action name"):
        app.register("bad name", one)
    with pytest.raises(ConfigurationError, match="timeout"):
        app.register("t", one, timeout=-1)
    with pytest.raises(ConfigurationError, match="mode='thread'"):
        app.register("m", one, mode="thread")
    with pytest.raises(ConfigurationError, match=r"unexpected keyword|colour"):
        app.register("k", one, colour="red")


async def test_values_that_cannot_be_stored_fail_cleanly(app: Conveyor) -> None:
    @app.handler("nan")
    async def nan(ctx: Context[Any]) -> float:
        return float("nan")

    @app.handler("surrogate")
    async def surrogate(ctx: Context[Any]) -> None:
        raise ValueError("bad \ud800 text")

    @app.handler("fine")
    async def fine(ctx: Context[Any]) -> str:
        return "ok"

    async with app:
        a = await app.add("nan")
        b = await app.add("surrogate")
        c = await app.add("fine")
        with pytest.raises(TaskFailed, match="not JSON-serialisable"):
            await app.wait(a.id, timeout=10)
        with pytest.raises(TaskFailed, match="bad"):
            await app.wait(b.id, timeout=10)
        assert await app.wait(c.id, timeout=10) == "ok"


async def test_handler_defaults_apply_to_tasks_added_elsewhere(app: Conveyor) -> None:
    """A producer that does not know the handler adds the task; the worker's
    max_attempts and backoff still apply."""
    producer = Conveyor(app.storage)
    task = await producer.add("flaky:elsewhere")
    assert task.max_attempts is None
    runs: list[int] = []

    @app.handler("flaky:elsewhere", max_attempts=3, backoff={"base": 0.01, "jitter": 0})
    async def flaky(ctx: Context[Any]) -> int:
        runs.append(ctx.attempt)
        if ctx.attempt < 2:
            raise RuntimeError("first time fails")
        return ctx.attempt

    async with app:
        assert await app.wait(task.id, timeout=10) == 2
    assert runs == [1, 2]


def test_backoff_never_overflows() -> None:
    from conveyor import Backoff

    huge = Backoff(base=1, factor=1e300, maximum=60, jitter=0)
    assert [huge.delay(n) for n in (1, 2, 3, 50)] == [1, 60, 60, 60]
    assert Backoff(base=0.5, factor=2, maximum=600, jitter=0).delay(4) == 4.0


async def test_calls_under_way_when_the_app_closes_finish_first(app: Conveyor) -> None:
    """Adds and reads already waiting in the storage (on SQLite, queued for a reader
    thread; on PostgreSQL, for one of the pool's connections) end as they would have,
    not with an error from the closing."""
    first = await app.add("close:race", {"i": -1})

    async def call(i: int) -> str:
        try:
            if i % 3 == 0:
                await app.add("close:race", {"i": i})
            elif i % 3 == 1:
                assert (await app.get(first.id)).id == first.id
            else:
                assert len(await app.find({"action": "close:race"}, limit=1)) == 1
        except Exception as exc:  # counted, and shown if any
            return f"{type(exc).__name__}: {exc}"
        return "ok"

    calls = [asyncio.create_task(call(i)) for i in range(300)]
    await asyncio.sleep(0)  # one step each: every call is inside the storage now
    await app.close()
    results = await asyncio.gather(*calls)
    assert [r for r in results if r != "ok"] == []
    assert await app.count({"action": "close:race"}) == 101


async def test_a_condition_that_cannot_be_evaluated_holds_up_no_other_task(
        app: Conveyor, url: str) -> None:
    """A condition's ``$regex`` stuck on a running task's value (memory and SQLite give
    up after a second) failed every claim of the worker, of every action, for as
    long as that task ran. The task of that condition fails instead; PostgreSQL's
    own engine is not stuck on this pattern, and runs it."""
    started, release = asyncio.Event(), asyncio.Event()

    @app.handler("cond:hold")
    async def hold(ctx: Context[Any]) -> None:
        started.set()
        await release.wait()

    @app.handler("cond:guarded")
    async def guarded(ctx: Context[Any]) -> str:
        return "ran"

    @app.handler("cond:other")
    async def other(ctx: Context[Any]) -> str:
        return "other"

    async with app:
        # its own value is the one its condition is stuck on: it runs (PostgreSQL's claim
        # counted it in Python, and that error failed the claim)
        own = await app.add("cond:guarded", {"pw": "z" * 40 + "!"}, concurrency=[
            {"query": {"payload.pw": {"$regex": "^(z|zz)+$"}}, "limit": 1}])
        assert await app.wait(own.id, timeout=10) == "ran"
        holder = await app.add("cond:hold", {"pw": "z" * 40 + "!"})
        await started.wait()
        failures = app.events("task.failed")
        stuck = await app.add("cond:guarded", concurrency=[
            {"query": {"payload.pw": {"$regex": "^(z|zz)+$"}}, "limit": 1}])
        free = await app.add("cond:other")
        assert await app.wait(free.id, timeout=10) == "other"
        done = await app.wait_task(stuck.id, timeout=10)
        if url.startswith("postgresql"):
            assert done.status is Status.SUCCEEDED
        else:
            # announced as any failure is, in this process too
            event = await asyncio.wait_for(failures.__anext__(), 10)
            assert (event.type, event.task_id) == ("task.failed", stuck.id)
            assert done.status is Status.FAILED and done.reason == "condition_error"
            assert done.error is not None and done.error.type == "QueryError"
            assert "concurrency condition could not be evaluated" in done.error.message
            assert done.attempts == 0 and done.started_at is None
        failures.close()
        release.set()
        assert (await app.wait_task(holder.id, timeout=10)).status is Status.SUCCEEDED
