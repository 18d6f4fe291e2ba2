"""Retries, backoff, timeouts, rescheduling, policies and control actions, in
this process on every backend."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from itertools import pairwise
from typing import Any

import pytest

from conveyor import (
    Context,
    Conveyor,
    DuplicateTask,
    InvalidTransition,
    Outcome,
    Raised,
    Reschedule,
    Retry,
    Status,
    Task,
    Transition,
    default_policy,
)

from ._support import until


@pytest.fixture
async def app(local_url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(local_url, concurrency=4, lease=5.0, sweep_interval=0.1, stop_timeout=1.0)
    yield app
    await app.close()


@pytest.mark.serial  # a bound of about a second: alone
async def test_exponential_backoff_and_error_history(app: Conveyor) -> None:
    runs: list[float] = []

    @app.handler("flaky", max_attempts=3, backoff={"base": 0.05, "factor": 2, "jitter": 0})
    async def flaky(ctx: Context[Any]) -> None:
        runs.append(time.time())
        raise RuntimeError(f"failure {ctx.attempt}")

    async with app:
        task = await app.add("flaky")
        done = await app.wait_task(task.id, timeout=10)
    assert done.status is Status.FAILED and done.reason == "error" and done.attempts == 3
    assert len(runs) == 3
    gaps = [b - a for a, b in pairwise(runs)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, gaps  # base, then base * factor
    assert gaps[0] < 0.9 and gaps[1] < 0.9, gaps  # woken when due, not by a poll
    assert [e.attempt for e in done.errors] == [1, 2, 3]
    assert [e.type for e in done.errors] == ["RuntimeError"] * 3
    assert [e.message for e in done.errors] == ["failure 1", "failure 2", "failure 3"]
    for i, error in enumerate(done.errors, 1):
        assert error.traceback is not None and f"RuntimeError: failure {i}" in error.traceback
    assert done.error == done.errors[-1]


async def test_a_short_delay_is_kept_when_nothing_watches(local_url: str) -> None:
    """A worker that queues a task again (backoff, ``Reschedule``) runs it when it is
    due, not at its next idle poll, though nothing in the app listens to events
    (no ``wait``: the handler tells the test). It slept ``idle_poll`` before."""
    app = Conveyor(local_url, idle_poll=60.0, stop_timeout=1.0)
    runs: dict[str, list[float]] = {"poll": [], "flaky": []}
    done = {name: asyncio.Event() for name in runs}

    @app.handler("poll")
    async def poll(ctx: Context[Any]) -> Reschedule | str:
        runs["poll"].append(time.monotonic())
        if len(runs["poll"]) == 3:
            done["poll"].set()
            return "ok"
        return Reschedule(after=0.05)

    @app.handler("flaky", max_attempts=3, backoff={"base": 0.05, "factor": 1, "jitter": 0})
    async def flaky(ctx: Context[Any]) -> None:
        runs["flaky"].append(time.monotonic())
        if len(runs["flaky"]) == 3:
            done["flaky"].set()
        raise RuntimeError("again")

    try:
        async with app:
            for name, event in done.items():  # one after the other: nothing else wakes it
                await app.add(name)
                # three runs, two 0.05 s delays: far under the 60 s idle poll
                await asyncio.wait_for(event.wait(), 20)
    finally:
        await app.close()
    for name, times in runs.items():
        assert len(times) == 3, name
        assert all(b - a >= 0.05 for a, b in pairwise(times)), (name, times)


async def test_retry_returned_by_the_handler(app: Conveyor) -> None:
    runs: list[float] = []

    @app.handler("again", max_attempts=2)
    async def again(ctx: Context[Any]) -> Any:
        runs.append(time.time())
        return Retry(after=0.1, reason="not yet") if ctx.attempt == 1 else "done"

    @app.handler("always_again", max_attempts=2)
    async def always_again(ctx: Context[Any]) -> Retry:
        return Retry(after=0.05)

    async with app:
        task = await app.add("again")
        spent = await app.add("always_again")
        done = await app.wait_task(task.id, timeout=10)
        out = await app.wait_task(spent.id, timeout=10)
    assert done.status is Status.SUCCEEDED and done.result == "done" and done.attempts == 2
    assert runs[1] - runs[0] >= 0.1
    assert [(e.type, e.message, e.attempt) for e in done.errors] == [("Retry", "not yet", 1)]
    # a Retry with no attempt left fails the task
    assert out.status is Status.FAILED and out.attempts == 2
    assert [e.type for e in out.errors] == ["Retry", "Retry"]


async def test_retry_on_limits_what_is_retried(app: Conveyor) -> None:
    @app.handler("picky", max_attempts=3, backoff=0.01, retry_on=(KeyError,))
    async def picky(ctx: Context[Any]) -> None:
        raise ValueError("not a key problem")

    @app.handler("keyed", max_attempts=3, backoff=0.01, retry_on=(KeyError,))
    async def keyed(ctx: Context[Any]) -> None:
        raise KeyError("missing")

    async with app:
        value_error = await app.add("picky")
        key_error = await app.add("keyed")
        fast = await app.wait_task(value_error.id, timeout=10)
        slow = await app.wait_task(key_error.id, timeout=10)
    assert fast.status is Status.FAILED and fast.attempts == 1
    assert [e.type for e in fast.errors] == ["ValueError"]
    assert slow.status is Status.FAILED and slow.attempts == 3
    assert [(e.type, e.attempt) for e in slow.errors] == [("KeyError", 1), ("KeyError", 2),
                                                          ("KeyError", 3)]


async def test_run_timeout(app: Conveyor) -> None:
    runs: dict[str, int] = {}

    def count(ctx: Context[Any]) -> None:
        runs[ctx.action] = runs.get(ctx.action, 0) + 1

    @app.handler("hang", timeout=0.2)
    async def hang(ctx: Context[Any]) -> str:
        count(ctx)
        await asyncio.sleep(5)
        return "never"

    @app.handler("hang_twice", timeout=0.2, max_attempts=2, backoff=0.05)
    async def hang_twice(ctx: Context[Any]) -> str:
        count(ctx)
        await asyncio.sleep(5)
        return "never"

    @app.handler("hang_sync", timeout=0.2)
    def hang_sync(ctx: Context[Any]) -> str:
        count(ctx)
        ctx.wait_aborted(5)  # a sync handler sees the timeout as an abort
        return "too late"

    async with app:
        t0 = time.monotonic()
        tasks = [await app.add(a) for a in ("hang", "hang_twice", "hang_sync")]
        done = [await app.wait_task(t.id, timeout=10) for t in tasks]
        took = time.monotonic() - t0
    assert took < 3.0  # nowhere near the handlers' 5 s
    for task in done:
        assert task.status is Status.ABORTED and task.reason == "timeout", task
        assert task.result is None and task.error is not None
        assert task.error.type == "TimeoutError"
    once, twice, sync = done
    assert runs == {"hang": 1, "hang_twice": 2, "hang_sync": 1}
    assert [e.attempt for e in twice.errors] == [1, 2] and twice.attempts == 2
    assert [e.type for e in once.errors] == ["TimeoutError"] and once.attempts == 1
    assert len(sync.errors) == 1


async def test_run_timeout_of_async_handler_that_returns_on_cancel(app: Conveyor) -> None:
    """An async handler that catches the cancellation of its run timeout and
    returns a value still timed out: the task ends aborted with reason timeout
    (as a sync handler that returns after the timeout does)."""

    @app.handler("tidy", timeout=0.2)
    async def tidy(ctx: Context[Any]) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "cleaned up"
        return "finished"

    async with app:
        task = await app.add("tidy")
        done = await app.wait_task(task.id, timeout=5)
    assert (done.status, done.reason, done.result) == (Status.ABORTED, "timeout", None)


async def test_run_timeout_is_retried_only_when_the_action_retries_timeouts(
        app: Conveyor) -> None:
    """default_policy: a run timeout is "like an exception of type TimeoutError
    (retried while attempts remain and the action retries TimeoutError)"."""
    runs: dict[str, int] = {}

    async def hang(ctx: Context[Any]) -> None:
        runs[ctx.action] = runs.get(ctx.action, 0) + 1
        await asyncio.sleep(5)

    options: dict[str, Any] = {"timeout": 0.1, "max_attempts": 3, "backoff": 0.01}
    app.register("keys_only", hang, retry_on=(KeyError,), **options)
    app.register("timeouts_too", hang, retry_on=(KeyError, TimeoutError), **options)

    async with app:
        keys_only = await app.add("keys_only")
        timeouts_too = await app.add("timeouts_too")
        once = await app.wait_task(keys_only.id, timeout=10)
        thrice = await app.wait_task(timeouts_too.id, timeout=10)
    assert (thrice.status, thrice.reason, thrice.attempts) == (Status.ABORTED, "timeout", 3)
    assert (once.status, once.reason) == (Status.ABORTED, "timeout")
    assert runs == {"keys_only": 1, "timeouts_too": 3}
    assert once.attempts == 1


async def test_pickup_timeout_for_an_action_nobody_handles(app: Conveyor) -> None:
    @app.handler("other")
    async def other(ctx: Context[Any]) -> None: ...

    async with app:
        task = await app.add("nobody:home", pickup_timeout=0.2)
        done = await app.wait_task(task.id, timeout=5)
    assert done.status is Status.FAILED and done.reason == "pickup_timeout"
    assert done.attempts == 0 and done.started_at is None
    assert done.error is not None and done.error.type == "PickupTimeout"
    assert done.finished_at is not None and done.finished_at >= task.run_at + 0.2


async def test_pickup_timeout_before_the_worker_starts(app: Conveyor) -> None:
    ran: list[str] = []

    @app.handler("pk")
    async def pk(ctx: Context[Any]) -> None:
        ran.append(ctx.id)

    task = await app.add("pk", pickup_timeout=0.2)
    on_time = await app.add("pk")
    assert task.pickup_deadline is not None
    await asyncio.sleep(max(0.0, task.pickup_deadline - time.time()) + 0.05)  # let it pass
    async with app:
        done = await app.wait_task(task.id, timeout=5)
        assert (await app.wait_task(on_time.id, timeout=5)).status is Status.SUCCEEDED
    assert done.status is Status.FAILED and done.reason == "pickup_timeout"
    assert done.attempts == 0 and ran == [on_time.id]  # the expired one never ran


async def test_reschedule_does_not_use_attempts(app: Conveyor) -> None:
    runs: list[float] = []

    @app.handler("poll")
    async def poll(ctx: Context[Any]) -> Any:
        runs.append(time.time())
        if len(runs) <= 3:
            return Reschedule(after=0.05, result={"polls": len(runs)})
        return "finally"

    async with app:
        task = await app.add("poll")
        done = await app.wait_task(task.id, timeout=10)
    assert done.status is Status.SUCCEEDED and done.result == "finally"
    assert done.attempts == 1 and done.errors == ()
    assert len(runs) == 4
    assert all(b - a >= 0.05 for a, b in pairwise(runs))


async def test_a_retry_keeps_the_polling_state_a_reschedule_left(app: Conveyor) -> None:
    seen: list[Any] = []

    @app.handler("poll", max_attempts=3, backoff={"base": 0.01, "jitter": 0}, timeout=0.3)
    async def poll(ctx: Context[Any]) -> Any:
        state = ctx.task.result
        seen.append(state)
        cursor = 0 if state is None else state["cursor"]
        if len(seen) == 3:
            raise ConnectionError("a blip")  # an error retry
        if len(seen) == 5:
            await asyncio.sleep(5)  # a run timeout, retried
        if cursor == 4:
            return {"done_at": cursor}
        return Reschedule(after=0.01, result={"cursor": cursor + 1})

    async with app:
        task = await app.add("poll")
        done = await app.wait_task(task.id, timeout=10)
    assert done.status is Status.SUCCEEDED and done.result == {"done_at": 4}, done
    cursors = [None if s is None else s["cursor"] for s in seen]
    assert cursors == [None, 1, 2, 2, 3, 3, 4], cursors  # neither retry started over
    assert [e.type for e in done.errors] == ["ConnectionError", "TimeoutError"]


async def test_custom_policy_turns_failures_into_polling(app: Conveyor) -> None:
    runs: dict[str, list[int]] = {"poller": [], "plain": []}

    def poll_until_ready(task: Task, outcome: Outcome) -> Transition:
        if isinstance(outcome, Raised):
            return Transition(Status.QUEUED, run_at=time.time() + 0.05, error=outcome.error,
                              refund_attempt=True)
        return default_policy(task, outcome)

    def not_ready_twice(ctx: Context[Any]) -> str:
        mine = runs[ctx.action]
        mine.append(ctx.attempt)
        if len(mine) < 3:
            raise RuntimeError(f"not ready ({len(mine)})")
        return "ready"

    app.register("poller", not_ready_twice, policy=poll_until_ready)
    app.register("plain", not_ready_twice)  # the same failure under the default policy

    async with app:
        task = await app.add("poller")
        done = await app.wait_task(task.id, timeout=10)
        plain = await app.wait_task((await app.add("plain")).id, timeout=10)
    assert done.status is Status.SUCCEEDED and done.result == "ready"
    assert runs["poller"] == [1, 1, 1] and done.attempts == 1
    assert [e.message for e in done.errors] == ["not ready (1)", "not ready (2)"]
    assert plain.status is Status.FAILED and plain.attempts == 1  # no attempts left
    assert runs["plain"] == [1]


async def test_reprioritise_changes_claim_order(local_url: str) -> None:
    app = Conveyor(local_url, concurrency=1)
    order: list[str] = []

    @app.handler("rank")
    async def rank(ctx: Context[Any]) -> None:
        order.append(ctx.payload)

    try:
        a, b, c = [await app.add("rank", name) for name in "abc"]
        moved = await app.prioritize(c.id, -5)
        assert moved.priority == -5 and moved.status is Status.QUEUED
        await app.prioritize(a.id, 5)
        await app.start()
        for t in (a, b, c):
            await app.wait(t.id, timeout=10)
        assert order == ["c", "b", "a"]
        with pytest.raises(InvalidTransition):
            await app.prioritize(a.id, 0)  # finished: nothing to re-prioritise
    finally:
        await app.close()


async def test_retry_of_a_failed_task_keeps_id_and_history(app: Conveyor) -> None:
    runs: list[str] = []

    @app.handler("second_time_lucky")
    async def lucky(ctx: Context[Any]) -> str:
        runs.append(ctx.id)
        if len(runs) == 1:
            raise RuntimeError("unlucky")
        return "lucky"

    async with app:
        task = await app.add("second_time_lucky")
        failed = await app.wait_task(task.id, timeout=10)
        assert failed.status is Status.FAILED
        again = await app.retry(task.id)
        assert again.id == task.id and again.status is Status.QUEUED
        done = await app.wait_task(task.id, timeout=10)
    assert done.status is Status.SUCCEEDED and done.result == "lucky"
    assert runs == [task.id, task.id] and done.attempts == 2
    assert [(e.type, e.attempt) for e in done.errors] == [("RuntimeError", 1)]
    assert done.error is None and done.reason is None


async def test_abort_of_a_finished_task_changes_nothing(app: Conveyor) -> None:
    @app.handler("quick")
    async def quick(ctx: Context[Any]) -> str:
        return "ok"

    @app.handler("broken")
    async def broken(ctx: Context[Any]) -> str:
        raise RuntimeError("broken")

    async with app:
        ok = await app.wait_task((await app.add("quick")).id, timeout=10)
        bad = await app.wait_task((await app.add("broken")).id, timeout=10)
        for task in (ok, bad):
            with pytest.raises(InvalidTransition):
                await app.abort(task.id)
            assert await app.get(task.id) == task


@pytest.mark.serial  # a bound of about a second: alone
async def test_sync_handler_abort_grace_applies_to_timeouts(local_url: str) -> None:
    """A sync handler that ignores its run timeout is abandoned after abort_grace:
    the task ends aborted/timeout and its late return changes nothing."""
    app = Conveyor(local_url, concurrency=2)
    release = threading.Event()

    @app.handler("deaf", timeout=0.2, abort_grace=0.2)
    def deaf(ctx: Context[Any]) -> str:
        release.wait(10)
        return "late"

    @app.handler("probe")
    async def probe(ctx: Context[Any]) -> str:
        return "probe"

    try:
        await app.start()
        task = await app.add("deaf")
        t0 = time.monotonic()
        done = await app.wait_task(task.id, timeout=5)
        assert time.monotonic() - t0 < 0.2 + 0.2 + 1.0
        assert done.status is Status.ABORTED and done.reason == "timeout"
        assert app.worker is not None and app.worker.zombies == 1
        worker = app.worker
        release.set()
        await until(lambda: worker.zombies == 0, timeout=5, what="the handler to return")
        probe_task = await app.add("probe")
        assert await app.wait(probe_task.id, timeout=5) == "probe"
        final = await app.get(task.id)
        assert final == done
    finally:
        release.set()
        await app.close()


async def test_a_retry_whose_key_another_task_took_is_a_duplicate_task(app: Conveyor) -> None:
    """``retry`` cannot return the task that holds the key instead: DuplicateTask (an
    InvalidTransition), naming the holder, and nothing changes."""
    first = await app.add("later", unique_key="k")
    await app.abort(first.id)
    second = await app.add("later", unique_key="k")
    assert second.id != first.id
    with pytest.raises(DuplicateTask, match=f"task {second.id} already holds unique key 'k'"
                       ) as info:
        await app.retry(first.id)
    assert isinstance(info.value, InvalidTransition)
    assert info.value.task is not None and info.value.task.id == first.id
    assert (await app.get(first.id)).status is Status.ABORTED



async def test_a_retry_whose_key_was_taken_meanwhile_runs_without_it(app: Conveyor) -> None:
    """A task deduped only while queued runs; a second one takes its key; the first
    fails once and is retried: it goes back to the queue without its key and succeeds
    (the unique index refused its retry, so the worker's writes retried for ever and the
    sweeper rescued nothing more)."""
    started = asyncio.Event()
    go = asyncio.Event()

    @app.handler("keyed", max_attempts=2, backoff=0)
    async def keyed(ctx: Context[Any]) -> int:
        if ctx.attempt == 1:
            started.set()
            await go.wait()
            raise RuntimeError("first attempt fails")
        return ctx.attempt

    first = await app.add("keyed", {"n": 1}, unique_key="k", unique_scope=["queued"])
    async with app:
        await started.wait()
        second, created = await app.add_checked("keyed", {"n": 2}, unique_key="k",
                                                unique_scope=["queued"], delay=60)
        assert created and second.id != first.id
        go.set()
        assert await app.wait(first.id, timeout=10) == 2
    done = await app.get(first.id)
    assert done.unique_key is None and done.attempts == 2
    assert (await app.get(second.id)).unique_key == "k"
