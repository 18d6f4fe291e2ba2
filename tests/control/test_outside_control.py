"""Black-box tests of the controls, written from issue 3, the README and the docs.

Only the public API (``from conveyor import ...``), on ``memory://`` and SQLite
files (and PostgreSQL when ``CONVEYOR_TEST_PG`` is set), plus real worker
processes where a worker has to die.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conveyor import (
    Aborted,
    Backoff,
    ConfigurationError,
    Context,
    Conveyor,
    ErrorInfo,
    Event,
    InvalidTransition,
    Outcome,
    Raised,
    Reschedule,
    Retry,
    Returned,
    Status,
    Task,
    TaskAborted,
    TaskNotFound,
    TimedOut,
    Transition,
    ValidationError,
    default_policy,
)

from ._support import status_is, until


@pytest.fixture
async def app(local_url: str) -> Any:
    """An app with a short lease and stop timeout, closed after the test."""
    app = Conveyor(local_url, concurrency=8, lease=5.0, stop_timeout=2.0)
    yield app
    await app.close()


async def started(app: Conveyor, task_id: str) -> Task:
    """Wait until the task runs, and return it."""
    task: Task = await until(status_is(app, task_id, Status.RUNNING), 10, f"{task_id} to run")
    return task


# --- abort --------------------------------------------------------------------------


async def test_abort_of_a_queued_task_is_immediate(app: Conveyor) -> None:
    events: list[str] = []
    app.on(["task.aborted", "task.ended"], lambda e: events.append(e.type))
    task = await app.add("abort:nobody")
    aborted = await app.abort(task.id, reason="changed my mind")
    assert aborted.status is Status.ABORTED and aborted.reason == "changed my mind"
    stored = await app.get(task.id)
    assert stored.status is Status.ABORTED and stored.attempts == 0 and stored.started_at is None
    assert stored.finished_at is not None
    assert [e.message for e in stored.errors] == ["changed my mind"]
    assert events == ["task.aborted", "task.ended"]
    with pytest.raises(TaskAborted):
        await app.wait(task.id, timeout=5)


async def test_abort_of_a_finished_task_is_an_error_and_changes_nothing(app: Conveyor) -> None:
    @app.handler("abort:quick")
    async def quick(ctx: Context[Any]) -> int:
        return 1

    async with app:
        task = await app.add("abort:quick")
        await app.wait(task.id, timeout=10)
        before = await app.get(task.id)
        with pytest.raises(InvalidTransition):
            await app.abort(task.id)
        aborted = await app.add("abort:nobody")
        await app.abort(aborted.id)
        again = await app.get(aborted.id)
        with pytest.raises(InvalidTransition):
            await app.abort(aborted.id, reason="twice")
    assert await app.get(task.id) == before
    assert (await app.get(aborted.id)).version == again.version


@pytest.mark.serial  # a bound of about a second: alone
async def test_abort_reaches_running_handlers_within_a_second(app: Conveyor) -> None:
    @app.handler("abort:async")
    async def async_handler(ctx: Context[Any]) -> None:
        await asyncio.sleep(30)

    @app.handler("abort:sleep")
    async def ctx_sleep(ctx: Context[Any]) -> None:
        await ctx.sleep(30)

    @app.handler("abort:coop")
    def cooperative(ctx: Context[Any]) -> str:
        while not ctx.aborted:
            time.sleep(0.005)
        return "late value"

    @app.handler("abort:wait")
    def waiting(ctx: Context[Any]) -> None:
        assert ctx.wait_aborted(30)
        ctx.check_aborted()

    requested: list[str] = []
    app.on("task.abort_requested", lambda e: requested.append(e.task_id or ""))
    async with app:
        for action in ("abort:async", "abort:sleep", "abort:coop", "abort:wait"):
            task = await app.add(action)
            await started(app, task.id)
            t0 = time.monotonic()
            running = await app.abort(task.id, reason=f"stop {action}")
            assert running.status is Status.RUNNING
            assert running.abort_requested == f"stop {action}"
            ended = await app.wait_task(task.id, timeout=5)
            assert time.monotonic() - t0 < 1.0, action
            assert ended.status is Status.ABORTED and ended.reason == f"stop {action}"
            assert ended.result is None
            assert requested[-1] == task.id


async def test_a_sync_handler_that_ignores_an_abort_is_abandoned(local_url: str) -> None:
    release = threading.Event()
    app = Conveyor(local_url, concurrency=2, lease=5.0, stop_timeout=1.0)

    @app.handler("abort:stubborn", abort_grace=0.2)
    def stubborn(ctx: Context[Any]) -> str:
        release.wait(10)
        return "discarded"

    try:
        async with app:
            task = await app.add("abort:stubborn")
            await started(app, task.id)
            await app.abort(task.id)
            ended = await app.wait_task(task.id, timeout=5)
            assert ended.status is Status.ABORTED and ended.reason == "aborted"
            worker = app.worker
            assert worker is not None and worker.zombies == 1
            release.set()
            await until(lambda: worker.zombies == 0, 5, "the thread to return")
            assert (await app.get(task.id)).result is None
            assert (await app.get(task.id)).status is Status.ABORTED
    finally:
        release.set()
        await app.close()


# --- timeouts -----------------------------------------------------------------------


async def test_run_timeout_per_action_with_a_per_task_override(app: Conveyor) -> None:
    @app.handler("slow:run", timeout=30)
    async def slow(ctx: Context[Any]) -> None:
        await asyncio.sleep(30)

    async with app:
        task = await app.add("slow:run", timeout=0.2)
        assert task.run_timeout == 0.2
        assert (await app.add("slow:other")).run_timeout is None
        t0 = time.monotonic()
        with pytest.raises(TaskAborted) as info:
            await app.wait(task.id, timeout=10)
        assert time.monotonic() - t0 < 5
    assert info.value.task.status is Status.ABORTED and info.value.task.reason == "timeout"


async def test_a_timeout_with_attempts_left_is_retried(app: Conveyor) -> None:
    attempts: list[int] = []

    @app.handler("slow:retry", timeout=0.1, max_attempts=2, backoff=0.01)
    async def slow(ctx: Context[Any]) -> None:
        attempts.append(ctx.attempt)
        await asyncio.sleep(30)

    async with app:
        task = await app.add("slow:retry")
        ended = await app.wait_task(task.id, timeout=10)
    assert attempts == [1, 2]
    assert ended.status is Status.ABORTED and ended.reason == "timeout" and ended.attempts == 2
    assert [e.type for e in ended.errors] == ["TimeoutError", "TimeoutError"]


async def test_pickup_timeout_fails_without_running(app: Conveyor) -> None:
    ran: list[str] = []

    @app.handler("late:run")
    async def late(ctx: Context[Any]) -> None:
        ran.append(ctx.id)

    expired: list[str] = []
    app.on("task.expired", lambda e: expired.append(e.task_id or ""))
    task = await app.add("late:run", pickup_timeout=0.1, delay=0.2)
    assert task.pickup_deadline is not None
    assert task.pickup_deadline == pytest.approx(task.run_at + 0.1, abs=0.01)
    await asyncio.sleep(0.4)  # the deadline passes while no worker runs
    async with app:
        ended = await app.wait_task(task.id, timeout=10)
    assert ended.status is Status.FAILED and ended.reason == "pickup_timeout"
    assert ended.started_at is None and ended.attempts == 0 and ran == []
    assert expired == [task.id]


# --- retries, backoff and outcomes --------------------------------------------------


def test_backoff_defaults_and_formula() -> None:
    backoff = Backoff()
    assert (backoff.base, backoff.factor, backoff.maximum, backoff.jitter) == (1, 2, 600, 0.2)
    exact = Backoff(base=2, factor=3, maximum=100, jitter=0)
    assert [exact.delay(n) for n in (1, 2, 3, 4, 5)] == [2, 6, 18, 54, 100]
    for n in range(1, 30):
        assert 0.8 * min(600, 2 ** (n - 1)) <= backoff.delay(n) <= 1.2 * min(600, 2 ** (n - 1))


async def test_retries_keep_every_error_and_honour_retry_on(app: Conveyor) -> None:
    @app.handler("retry:all", retries=2, backoff={"base": 0.01, "jitter": 0})
    async def always(ctx: Context[Any]) -> None:
        raise OSError(f"attempt {ctx.attempt}")

    @app.handler("retry:some", max_attempts=5, backoff=0.01, retry_on=(OSError,))
    async def some(ctx: Context[Any]) -> None:
        if ctx.attempt == 1:
            raise OSError("transient")
        raise KeyError("permanent")

    async with app:
        a = await app.add("retry:all")
        b = await app.add("retry:some")
        c = await app.add("retry:all", max_attempts=1)
        done_a = await app.wait_task(a.id, timeout=10)
        done_b = await app.wait_task(b.id, timeout=10)
        done_c = await app.wait_task(c.id, timeout=10)
    assert done_a.status is Status.FAILED and done_a.reason == "error"
    assert done_a.attempts == 3 and done_a.max_attempts == 3
    assert [(e.type, e.message, e.attempt) for e in done_a.errors] == [
        ("OSError", "attempt 1", 1), ("OSError", "attempt 2", 2), ("OSError", "attempt 3", 3)]
    assert all(e.traceback for e in done_a.errors)
    assert done_b.status is Status.FAILED and done_b.attempts == 2
    assert [e.type for e in done_b.errors] == ["OSError", "KeyError"]
    assert done_c.attempts == 1 and len(done_c.errors) == 1


async def test_retry_outcome_uses_an_attempt_reschedule_does_not(app: Conveyor) -> None:
    @app.handler("out:retry", max_attempts=3)
    async def again(ctx: Context[Any]) -> Any:
        if ctx.attempt < 3:
            return Retry(after=0.01)
        return ctx.attempt

    @app.handler("out:poll")
    async def poll(ctx: Context[Any]) -> Any:
        seen = (ctx.task.result or {}).get("seen", 0)
        if seen < 3:
            return Reschedule(after=0.01, result={"seen": seen + 1})
        return {"seen": seen, "attempt": ctx.attempt}

    rescheduled: list[str] = []
    app.on("task.rescheduled", lambda e: rescheduled.append(e.task_id or ""))
    async with app:
        retried = await app.add("out:retry")
        polled = await app.add("out:poll")
        assert await app.wait(retried.id, timeout=10) == 3
        assert await app.wait(polled.id, timeout=10) == {"seen": 3, "attempt": 1}
    assert (await app.get(retried.id)).attempts == 3
    assert (await app.get(polled.id)).attempts == 1
    assert rescheduled == [polled.id] * 3


async def test_a_custom_policy_sees_typed_outcomes(app: Conveyor) -> None:
    outcomes: list[Outcome] = []

    def forever(task: Task, outcome: Outcome) -> Transition:
        """Never fail: errors come back a moment later, without using an attempt."""
        outcomes.append(outcome)
        if isinstance(outcome, Raised) and task.attempts < 3:
            return Transition(Status.QUEUED, run_at=time.time() + 0.01, error=outcome.error,
                              refund_attempt=True)
        return default_policy(task, outcome)

    calls = Counter[str]()

    @app.handler("pol:flaky", policy=forever)
    async def flaky(ctx: Context[Any]) -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise RuntimeError("not yet")
        return "finally"

    @app.handler("pol:slow", policy=forever, timeout=0.1)
    async def slow(ctx: Context[Any]) -> None:
        await asyncio.sleep(30)

    @app.handler("pol:abort", policy=forever)
    async def abortable(ctx: Context[Any]) -> None:
        await asyncio.sleep(30)

    async with app:
        flaky_task = await app.add("pol:flaky")
        assert await app.wait(flaky_task.id, timeout=10) == "finally"
        slow_task = await app.add("pol:slow")
        await app.wait_task(slow_task.id, timeout=10)
        abort_task = await app.add("pol:abort")
        await started(app, abort_task.id)
        await app.abort(abort_task.id, reason="enough")
        await app.wait_task(abort_task.id, timeout=10)
    done = await app.get(flaky_task.id)
    assert done.attempts == 1 and [e.message for e in done.errors] == ["not yet", "not yet"]
    kinds = [type(o) for o in outcomes]
    assert kinds.count(Raised) == 2 and TimedOut in kinds and Aborted in kinds
    assert [o.reason for o in outcomes if isinstance(o, Aborted)] == ["enough"]


def test_the_default_policy_follows_the_lifecycle() -> None:
    running = Task(id="t", action="a", payload=None, status=Status.RUNNING, attempts=1,
                   max_attempts=3)
    last = Task(id="t", action="a", payload=None, status=Status.RUNNING, attempts=3,
                max_attempts=3)
    error = ErrorInfo("OSError", "down")
    steady = Backoff(base=4, jitter=0)

    def policy(task: Task, outcome: Outcome) -> Transition:
        return default_policy(task, outcome, now=1000.0, default_backoff=steady)

    assert policy(running, Returned({"ok": 1})) == Transition(Status.SUCCEEDED,
                                                              result={"ok": 1})
    again = policy(running, Raised(error))
    assert (again.status, again.run_at, again.error) == (Status.QUEUED, 1004.0, error)
    assert not again.refund_attempt
    final = policy(running, Raised(error, retryable=False))
    assert (final.status, final.reason) == (Status.FAILED, "error")
    assert policy(last, Raised(error)).status is Status.FAILED
    retry = policy(running, Retry(after=7, reason="rate limited"))
    assert (retry.status, retry.run_at) == (Status.QUEUED, 1007.0)
    assert retry.error is not None and retry.error.message == "rate limited"
    poll = policy(last, Reschedule(after=2, result={"n": 1}))
    assert (poll.status, poll.run_at, poll.result, poll.refund_attempt) == (
        Status.QUEUED, 1002.0, {"n": 1}, True)
    aborted = policy(running, Aborted("user"))
    assert (aborted.status, aborted.reason) == (Status.ABORTED, "user")
    timed_out = policy(running, TimedOut(1.0))
    assert timed_out.status is Status.QUEUED
    assert timed_out.error is not None and timed_out.error.type == "TimeoutError"
    for task, outcome in ((last, TimedOut(1.0)), (running, TimedOut(1.0, retryable=False))):
        ended = policy(task, outcome)
        assert (ended.status, ended.reason) == (Status.ABORTED, "timeout")
    own = Task(id="t", action="a", payload=None, status=Status.RUNNING, attempts=1,
               max_attempts=2, backoff=Backoff(base=30, jitter=0))
    assert policy(own, Raised(error)).run_at == 1030.0  # the task's backoff wins


@pytest.mark.parametrize("bad", [Retry, Reschedule])
def test_negative_after_is_refused(bad: Any) -> None:
    with pytest.raises(ValidationError):
        bad(after=-1)


# --- retry and prioritise -----------------------------------------------------------


async def test_retry_of_a_failed_task_is_a_new_attempt_with_the_same_id(app: Conveyor) -> None:
    @app.handler("again:fail")
    async def fail(ctx: Context[Any]) -> int:
        if ctx.attempt == 1:
            raise ValueError("first run")
        return ctx.attempt

    retried: list[str] = []
    app.on("task.retried", lambda e: retried.append(e.task_id or ""))
    async with app:
        task = await app.add("again:fail")
        failed = await app.wait_task(task.id, timeout=10)
        assert failed.status is Status.FAILED and failed.attempts == 1
        queued = await app.retry(task.id)
        assert queued.id == task.id and queued.status is Status.QUEUED
        assert await app.wait(task.id, timeout=10) == 2
        with pytest.raises(InvalidTransition):
            await app.retry(task.id)
        later = await app.add("again:nobody")
        with pytest.raises(InvalidTransition):
            await app.retry(later.id)
        await app.abort(later.id)
        delayed = await app.retry(later.id, delay=60)
        assert delayed.status is Status.QUEUED and delayed.run_at >= time.time() + 55
    done = await app.get(task.id)
    assert done.attempts == 2 and [e.message for e in done.errors] == ["first run"]
    assert retried == [task.id, later.id]


async def test_prioritize_only_queued_tasks(app: Conveyor) -> None:
    order: list[int] = []

    @app.handler("prio:run")
    async def run(ctx: Context[Any]) -> None:
        order.append(ctx.payload)

    prioritized: list[float] = []
    app.on("task.prioritized", lambda e: prioritized.append(e.task.priority if e.task else -1))
    tasks = [await app.add("prio:run", i) for i in range(3)]
    changed = await app.prioritize(tasks[2].id, -5)
    assert changed.priority == -5 and changed.status is Status.QUEUED
    async with app:
        for t in tasks:
            await app.wait(t.id, timeout=10)
        with pytest.raises(InvalidTransition):
            await app.prioritize(tasks[0].id, 1)
    assert order == [2, 0, 1]
    assert prioritized == [-5]


# --- dedupe ---------------------------------------------------------------------------


async def test_unique_key_returns_the_live_task(app: Conveyor) -> None:
    first = await app.add("dedupe:a", {"n": 1}, unique_key="invoice:42")
    second = await app.add("dedupe:a", {"n": 2}, unique_key="invoice:42")
    assert second.id == first.id and second.payload == {"n": 1}
    assert first.unique_scope == (Status.QUEUED, Status.RUNNING)
    batch = await app.add_many([("dedupe:a", 3, {"unique_key": "invoice:42"}),
                                ("dedupe:a", 4, {"unique_key": "invoice:43"}),
                                ("dedupe:a", 5, {"unique_key": "invoice:43"})])
    assert batch[0].id == first.id and batch[1].id == batch[2].id != first.id
    assert await app.count() == 2
    await app.abort(first.id)  # out of its scope: the key is free again
    third, created = await app.add_checked("dedupe:a", {"n": 6}, unique_key="invoice:42")
    assert created and third.id != first.id


async def test_unique_fields_name_a_field_or_a_path_through_objects(app: Conveyor) -> None:
    nested = await app.add("dedupe:p", {"customer": {"id": 7}, "n": 1},
                           unique_fields=["customer.id"])
    same = await app.add("dedupe:p", {"customer": {"id": 7}, "n": 2},
                         unique_fields=["customer.id"])
    assert nested.id == same.id and nested.unique_key == 'dedupe:p:{"customer.id":7}'
    # a top-level field whose name holds a dot is that field (it was "no field")
    dotted = await app.add("dedupe:p", {"customer.id": 8}, unique_fields=["customer.id"])
    assert dotted.unique_key == 'dedupe:p:{"customer.id":8}' and dotted.id != nested.id
    with pytest.raises(ValidationError, match=r"payload has no field 'customer\.name'"):
        await app.add("dedupe:p", {"customer": {"id": 7}}, unique_fields=["customer.name"])
    # a key too long names unique_fields, not a unique_key the call did not give
    with pytest.raises(ValidationError, match=r"^unique_fields: the key they make is \d+ "):
        await app.add("dedupe:p", {"x": "y" * 600}, unique_fields=["x"])
    assert await app.count({"action": "dedupe:p"}) == 2


async def test_unique_fields_build_the_key_from_the_action_and_payload(app: Conveyor) -> None:
    a = await app.add("dedupe:f", {"invoice": 1, "note": "x"}, unique_fields=["invoice"])
    b = await app.add("dedupe:f", {"invoice": 1, "note": "y"}, unique_fields=["invoice"])
    c = await app.add("dedupe:f", {"invoice": 2, "note": "x"}, unique_fields=["invoice"])
    d = await app.add("dedupe:g", {"invoice": 1}, unique_fields=["invoice"])
    assert a.id == b.id and len({a.id, c.id, d.id}) == 3
    assert a.unique_key == 'dedupe:f:{"invoice":1}'
    # other fields with equal values make another key; the order of names does not
    e = await app.add("dedupe:f", {"invoice": 9, "customer": 1}, unique_fields=["customer"])
    assert e.id != a.id
    both = await app.add("dedupe:f", {"a": 1, "b": 2}, unique_fields=["b", "a"])
    again = await app.add("dedupe:f", {"a": 1, "b": 2, "c": 3}, unique_fields=["a", "b"])
    assert both.id == again.id and both.unique_key == 'dedupe:f:{"a":1,"b":2}'
    # one number in JSON: 42.0 (from JavaScript, a float column) and 42 make one key
    whole = await app.add("dedupe:f", {"n": 42, "m": [1.0, {"k": 2}]}, unique_fields=["n", "m"])
    floats = await app.add("dedupe:f", {"n": 42.0, "m": [1, {"k": 2.0}]},
                           unique_fields=["n", "m"])
    half = await app.add("dedupe:f", {"n": 42.5, "m": [1, {"k": 2}]}, unique_fields=["n", "m"])
    assert whole.id == floats.id != half.id
    assert whole.unique_key == 'dedupe:f:{"m":[1,{"k":2}],"n":42}'
    # one object in JSON whatever the order of its keys (PostgreSQL's jsonb gives them
    # back by length): a payload read back and added again finds its task
    to = {"city": "Oslo", "zip": "0150", "c": [{"y": 1, "x": 2}]}
    ship = await app.add("dedupe:f", {"to": to}, unique_fields=["to"])
    stored = await app.get(ship.id)
    reordered = await app.add("dedupe:f", {"to": {"c": [{"x": 2, "y": 1}], "zip": "0150",
                                                  "city": "Oslo"}}, unique_fields=["to"])
    read_back = await app.add("dedupe:f", stored.payload, unique_fields=["to"])
    assert ship.id == reordered.id == read_back.id
    assert ship.unique_key == 'dedupe:f:{"to":{"c":[{"x":2,"y":1}],"city":"Oslo","zip":"0150"}}'


async def test_unique_scope_with_succeeded_keeps_the_key(app: Conveyor) -> None:
    @app.handler("dedupe:run")
    async def run(ctx: Context[Any]) -> int:
        return 1

    wide = ["queued", "running", "succeeded"]
    async with app:
        kept = await app.add("dedupe:run", unique_key="k1", unique_scope=wide)
        await app.wait(kept.id, timeout=10)
        same, created = await app.add_checked("dedupe:run", unique_key="k1")
        assert same.id == kept.id and not created and same.status is Status.SUCCEEDED
        plain = await app.add("dedupe:run", unique_key="k2")
        await app.wait(plain.id, timeout=10)
        found, created = await app.add_checked("dedupe:run", unique_key="k2", unique_scope=wide)
        assert found.id == plain.id and not created
        fresh, created = await app.add_checked("dedupe:run", unique_key="k2")
        assert created and fresh.id != plain.id
        await app.wait(fresh.id, timeout=10)


@pytest.mark.parametrize("options", [
    {"unique_key": 42},
    {"unique_key": ""},
    {"unique_key": "k" * 513},
    {"unique_key": "k", "unique_scope": ["running"]},
    {"unique_key": "k", "unique_scope": ["queued", "done"]},
    {"timeout": -1},
    {"timeout": 0},
    {"pickup_timeout": -5},
    {"max_attempts": 0},
    {"delay": float("nan")},
    {"concurrency": [{"scope": "sleeping", "query": {}, "limit": 1}]},
    {"concurrency": [{"scope": "running", "query": {"payload.x": {"$near": 1}}, "limit": 1}]},
    {"concurrency": [{"scope": "running", "query": {"nope": 1}, "limit": 1}]},
    {"concurrency": [{"scope": "running", "query": {"payload.x": 1}, "limit": 0}]},
    {"concurrency": [{"scope": "running", "query": "payload.x", "limit": 1}]},
    {"backoff": {"base": -1}},
    {"backoff": {"speed": 1}},
])
async def test_bad_control_options_write_nothing(app: Conveyor, options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        await app.add("bad:opts", {"x": 1}, **options)
    with pytest.raises(ValidationError):
        await app.add_many([("bad:opts", 1), ("bad:opts", 2, options)])
    assert await app.count() == 0


@pytest.mark.parametrize("schedule", ["every day", "* * *", "0 0 30 2 *", "@daily",
                                      "H * * * *", "0 0 * * * * 2030", -1, 0])
def test_bad_schedules_are_refused(schedule: Any) -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError):
        app.schedule("sched:bad", schedule)

    def handler(ctx: Context[Any]) -> None: ...

    with pytest.raises(ConfigurationError):
        app.register("sched:bad", handler, schedule=schedule)


@pytest.mark.parametrize("options", [{"timeout": -1}, {"max_attempts": 0}, {"limit": 0},
                                     {"abort_grace": -1}, {"retry_on": ValueError("x")},
                                     {"mode": "fibre"}, {"nonsense": True}])
def test_bad_handler_options_are_refused(options: dict[str, Any]) -> None:
    app = Conveyor("memory://")

    def handler(ctx: Context[Any]) -> None: ...

    with pytest.raises(ConfigurationError):
        app.register("bad:handler", handler, **options)


# --- concurrency conditions ---------------------------------------------------------


async def test_conditions_and_action_limits_hold_in_one_worker(app: Conveyor) -> None:
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()

    async def track(key: str) -> None:
        running[key] += 1
        peak[key] = max(peak[key], running[key])
        await asyncio.sleep(0.03)
        running[key] -= 1

    @app.handler("books:index")
    async def index(ctx: Context[Any]) -> None:
        await track(ctx.payload["book"])

    @app.handler("mail:send", limit=2)
    async def send(ctx: Context[Any]) -> None:
        await track("mail")

    items: list[Any] = [
        ("books:index", {"book": b}, {"concurrency": [
            {"scope": "running", "query": {"payload.book": b}, "limit": 1}]})
        for b in "XYXYXYXY"]
    items += [("mail:send", i) for i in range(8)]
    async with app:
        tasks = await app.add_many(items)
        for t in tasks:
            await app.wait(t.id, timeout=20)
    assert peak == {"X": 1, "Y": 1, "mail": 2}
    condition = tasks[0].concurrency[0]
    assert (condition.scope, condition.query, condition.limit) == (
        (Status.RUNNING,), {"payload.book": "X"}, 1)


# --- crash safety ---------------------------------------------------------------------


async def test_stop_hands_running_tasks_back_at_once(local_url: str) -> None:
    app = Conveyor(local_url, concurrency=4, lease=30.0, stop_timeout=0.2)
    gate = asyncio.Event()

    @app.handler("stop:long")
    async def long(ctx: Context[Any]) -> None:
        gate.set()
        await asyncio.sleep(30)

    @app.handler("stop:short")
    async def short(ctx: Context[Any]) -> int:
        await asyncio.sleep(0.05)
        return 1

    released: list[Event] = []
    app.on("task.released", released.append)
    try:
        await app.start()
        long_task = await app.add("stop:long")
        await gate.wait()
        short_task = await app.add("stop:short")
        await started(app, short_task.id)
        t0 = time.monotonic()
        await app.stop()
        assert time.monotonic() - t0 < 5
        back = await app.get(long_task.id)
        assert back.status is Status.QUEUED and back.attempts == 0
        assert back.worker is None and back.lease_until is None
        assert (await app.get(short_task.id)).status is Status.SUCCEEDED
        assert [e.task_id for e in released] == [long_task.id]
    finally:
        await app.close()


SUICIDE = """
import asyncio, os, signal, sys
from conveyor import Conveyor

app = Conveyor(sys.argv[1], lease=1.0, max_rescues=1)

@app.handler("pill:die")
def die(ctx):
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(app.run())
"""


async def test_a_task_lost_more_than_max_rescues_times_fails_worker_lost(
        shared_url: str, tmp_path: Path) -> None:
    script = tmp_path / "suicide.py"
    script.write_text(SUICIDE)
    app = Conveyor(shared_url, lease=1.0, max_rescues=1, sweep_interval=0.1)

    @app.handler("pill:other")  # this worker only sweeps
    async def other(ctx: Context[Any]) -> None: ...

    rescued: list[str] = []
    app.on("task.rescued", lambda e: rescued.append(e.task_id or ""))

    async def run_worker_until_it_dies() -> None:
        proc = await asyncio.create_subprocess_exec(sys.executable, str(script), shared_url,
                                                    stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)
        try:
            assert await asyncio.wait_for(proc.wait(), timeout=60) == -9
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    try:
        pill = await app.add("pill:die")
        await app.start()
        await run_worker_until_it_dies()
        back = await until(status_is(app, pill.id, Status.QUEUED), 20, "the rescue")
        assert back.rescues == 1 and back.attempts == 0
        await run_worker_until_it_dies()
        dead = await until(status_is(app, pill.id, Status.FAILED), 20, "the second loss")
    finally:
        await app.close()
    assert dead.reason == "worker_lost" and dead.rescues == 1
    assert [e.type for e in dead.errors] == ["WorkerLost", "WorkerLost"]
    assert rescued == [pill.id]


async def test_a_handler_that_blocks_the_loop_keeps_its_lease(shared_url: str) -> None:
    """The lease is renewed from a place a busy handler cannot starve: a handler
    that blocks the event loop for three leases is not rescued by another
    process's sweeper, and runs once."""
    runs: list[int] = []
    busy = Conveyor(shared_url, lease=1.0, concurrency=1)

    @busy.handler("busy:block")
    async def block(ctx: Context[Any]) -> str:
        runs.append(ctx.attempt)
        time.sleep(3.0)  # noqa: ASYNC251 - blocks the loop on purpose
        return "done"

    sweeper = Conveyor(shared_url, lease=1.0, sweep_interval=0.1)

    @sweeper.handler("busy:other")
    async def other(ctx: Context[Any]) -> None: ...

    rescued: list[Event] = []
    sweeper.on("task.rescued", rescued.append)
    try:
        await sweeper.start()
        task = await busy.add("busy:block")
        await busy.start()
        assert await busy.wait(task.id, timeout=20) == "done"
        done = await sweeper.get(task.id)
    finally:
        await busy.close()
        await sweeper.close()
    assert runs == [1] and rescued == []
    assert done.status is Status.SUCCEEDED and done.rescues == 0 and done.attempts == 1


# --- schedules --------------------------------------------------------------------------


async def test_an_interval_schedule_runs_each_occurrence_once_across_apps(
        shared_url: str) -> None:
    runs: list[tuple[str | None, Any, float]] = []
    apps = [Conveyor(shared_url, lease=5.0) for _ in range(2)]
    for app in apps:
        def tick(ctx: Context[Any]) -> None:
            runs.append((ctx.task.unique_key, ctx.payload, ctx.task.run_at))

        app.register("sched:tick", tick)
        app.schedule("sched:tick", 0.25, payload={"kind": "tick"}, name="ticker")
    try:
        for app in apps:
            await app.start()
        await until(lambda: len(runs) >= 4, 20, "four occurrences")
    finally:
        for app in apps:
            await app.close()
    keys = [key for key, _, _ in runs]
    assert len(keys) == len(set(keys)), keys  # once per occurrence
    assert all(isinstance(k, str) and "ticker" in k for k in keys)
    assert all(payload == {"kind": "tick"} for _, payload, _ in runs)
    for _, _, run_at in runs:  # intervals fall on multiples of the interval since the epoch
        assert run_at / 0.25 == pytest.approx(round(run_at / 0.25), abs=1e-3)


# --- errors of the control operations ----------------------------------------------------


async def test_control_operations_name_their_problem(app: Conveyor) -> None:
    unknown = "01a00000-0000-7000-8000-000000000000"
    with pytest.raises(TaskNotFound):
        await app.abort(unknown)
    with pytest.raises(TaskNotFound):
        await app.retry(unknown)
    with pytest.raises(TaskNotFound):
        await app.prioritize(unknown, 1)
    with pytest.raises(TaskNotFound):
        [line async for line in app.logs(unknown)]
    task = await app.add("ops:nobody")
    for bad in (float("nan"), float("inf"), "1", None):
        with pytest.raises(ValidationError, match="priority"):
            await app.prioritize(task.id, bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="reason"):
        await app.abort(task.id, reason="")
    assert (await app.get(task.id)).version == task.version  # nothing changed
    await app.abort(task.id)
    with pytest.raises(ValidationError, match="delay"):
        await app.retry(task.id, delay=-1)
    assert (await app.get(task.id)).status is Status.ABORTED
