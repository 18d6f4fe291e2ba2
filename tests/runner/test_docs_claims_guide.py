"""Claims of docs/guide.md, docs/query.md and the README that no other test checked.

Black-box: only ``from conveyor import ...`` (and ``conveyor.events`` /
``conveyor.schedule`` where the guide names them). Tests where the storage
matters take the ``url`` / ``app`` fixtures of tests/conftest.py and run on
every backend; the others run on ``memory://``.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conveyor import (
    Backoff,
    ConfigurationError,
    Context,
    Conveyor,
    Event,
    Outcome,
    QueryError,
    Retry,
    Status,
    Task,
    TaskAbortRequested,
    Transition,
    ValidationError,
    default_policy,
)


@pytest.fixture
async def mem() -> AsyncIterator[Conveyor]:
    """An app on memory:// for claims that do not depend on the storage."""
    app = Conveyor("memory://", concurrency=8, lease=5.0, stop_timeout=2.0)
    yield app
    await app.close()


# --- the application -----------------------------------------------------------------------


def test_the_app_options_have_the_documented_defaults() -> None:
    app = Conveyor("memory://")
    assert app.concurrency == 32
    assert app.lease == 30
    assert app.batch_size == 32  # min(concurrency, 100)
    assert app.max_payload == 1 << 20
    assert app.max_rescues == 3
    assert app.sweep_interval == 10  # lease / 3
    assert app.idle_poll == 1
    assert app.progress_interval == 0.05
    assert app.stop_timeout == 10
    assert app.retention is None
    assert app.name is None
    assert Conveyor("memory://", concurrency=200).batch_size == 100
    assert Conveyor("memory://", concurrency=8).batch_size == 8
    assert Conveyor("memory://", lease=3.0).sweep_interval == 1


async def test_a_closed_app_can_be_opened_again(url: str) -> None:
    app = Conveyor(url, lease=5.0, stop_timeout=2.0)

    @app.handler("reopen:run")
    async def run(ctx: Context[Any]) -> int:
        return int(ctx.payload) + 1

    try:
        await app.open()
        first = await app.add("reopen:nobody", 1)
        await app.close()
        await app.open()
        assert (await app.get(first.id)).status is Status.QUEUED
        await app.close()
        async with app:  # opens and starts a worker again
            assert app.worker is not None
            task = await app.add("reopen:run", 41)
            assert await app.wait(task.id, timeout=10) == 42
        assert app.worker is None
    finally:
        await app.close()


async def test_async_with_starts_no_worker_without_handlers(mem: Conveyor) -> None:
    async with mem:
        assert mem.worker is None
        task = await mem.add("nobody:handles")
        assert (await mem.get(task.id)).status is Status.QUEUED


async def test_run_works_until_cancelled_with_worker_events(url: str) -> None:
    app = Conveyor(url, lease=5.0, stop_timeout=2.0)
    events: list[Event] = []
    started = asyncio.Event()

    def on_worker(event: Event) -> None:
        events.append(event)
        if event.type == "worker.started":
            started.set()

    app.on("worker.*", on_worker)

    @app.handler("run:it")
    async def run_it(ctx: Context[Any]) -> str:
        return "ran"

    runner = asyncio.create_task(app.run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        task = await app.add("run:it")
        assert await app.wait(task.id, timeout=10) == "ran"
        assert app.worker is not None
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        await app.close()
    assert app.worker is None  # run() stopped the worker when cancelled
    assert [e.type for e in events] == ["worker.started", "worker.stopped"]
    assert all(e.task_id is None for e in events)
    assert [e.data["worker"]["actions"] for e in events] == [["run:it"], ["run:it"]]


# --- handlers and the context --------------------------------------------------------------


def test_a_mode_that_does_not_fit_the_function_is_refused() -> None:
    app = Conveyor("memory://")

    def plain(ctx: Context[Any]) -> None: ...

    async def coroutine(ctx: Context[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="mode"):
        app.register("mode:async", plain, mode="async")
    with pytest.raises(ConfigurationError, match="mode"):
        app.register("mode:thread", coroutine, mode="thread")
    assert len(app.registry) == 0
    app.register("mode:ok", plain, mode="thread")
    app.register("mode:ok2", coroutine, mode="async")


async def test_handler_pickup_timeout_and_backoff_seconds_are_task_defaults(
        mem: Conveyor) -> None:
    @mem.handler("defaults:run", pickup_timeout=30, backoff=7)
    def run(ctx: Context[Any]) -> None: ...

    task = await mem.add("defaults:run")
    assert task.pickup_timeout == 30
    assert task.pickup_deadline == pytest.approx(task.run_at + 30)
    # seconds are the base, the rest at their defaults
    assert task.backoff == Backoff(base=7, factor=2, maximum=600, jitter=0.2)


async def test_ctx_sleep_ends_at_once_on_abort(mem: Conveyor) -> None:
    caught: list[str] = []
    running = asyncio.Event()

    @mem.handler("nap:plain")
    async def plain(ctx: Context[Any]) -> None:
        running.set()
        try:
            await ctx.sleep(30)
        except asyncio.CancelledError:  # a handler on the loop is cancelled
            caught.append("cancelled")
            raise

    @mem.handler("nap:after")
    async def after(ctx: Context[Any]) -> str:
        running.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # it goes on after the abort...
        try:
            await ctx.sleep(30)  # ...and ctx.sleep raises at once
        except TaskAbortRequested as exc:
            caught.append(exc.reason)
            raise
        return "never"

    async with mem:
        for action, reason in (("nap:plain", "stop one"), ("nap:after", "stop two")):
            running.clear()
            task = await mem.add(action)
            await asyncio.wait_for(running.wait(), 10)
            t0 = time.monotonic()
            await mem.abort(task.id, reason=reason)
            ended = await mem.wait_task(task.id, timeout=10)
            assert time.monotonic() - t0 < 5
            assert (ended.status, ended.reason, ended.result) == (Status.ABORTED, reason, None)
    assert caught == ["cancelled", "stop two"]


async def test_wait_aborted_and_check_aborted_in_a_sync_handler(mem: Conveyor) -> None:
    waiting = threading.Event()
    seen: list[Any] = []

    @mem.handler("coop:wait")
    def wait(ctx: Context[Any]) -> None:
        seen.append(ctx.wait_aborted(0.01))  # the time passed: False
        seen.append(ctx.aborted)
        waiting.set()
        seen.append(ctx.wait_aborted(30))  # the abort came: True
        try:
            ctx.check_aborted()
        except TaskAbortRequested as exc:
            seen.append(exc.reason)
            raise

    async with mem:
        task = await mem.add("coop:wait")
        assert await asyncio.to_thread(waiting.wait, 10)
        await mem.abort(task.id, reason="enough")
        ended = await mem.wait_task(task.id, timeout=10)
    assert (ended.status, ended.reason) == (Status.ABORTED, "enough")
    assert seen == [False, False, True, "enough"]


async def test_an_async_handler_sees_its_run_timeout_in_ctx(app: Conveyor) -> None:
    """``ctx.aborted`` / ``ctx.abort_reason`` are set once the run timeout arrives,
    for async handlers too (as they unwind from the cancellation)."""
    late_seen: list[tuple[bool, str | None]] = []
    stubborn_seen: list[tuple[int, bool, str | None]] = []

    @app.handler("late:async", timeout=0.2)
    async def late(ctx: Context[Any]) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            late_seen.append((ctx.aborted, ctx.abort_reason))

    @app.handler("late:stubborn", timeout=0.2, max_attempts=2, backoff=0.01)
    async def stubborn(ctx: Context[Any]) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stubborn_seen.append((ctx.attempt, ctx.aborted, ctx.abort_reason))
        ctx.check_aborted()  # TaskAbortRequested: still a timeout, retried
        return "never stored"

    async with app:
        a = await app.add("late:async")
        b = await app.add("late:stubborn")
        ended_a = await app.wait_task(a.id, timeout=10)
        ended_b = await app.wait_task(b.id, timeout=10)
    assert (ended_a.status, ended_a.reason) == (Status.ABORTED, "timeout")
    assert late_seen == [(True, "timeout")]
    assert (ended_b.status, ended_b.reason, ended_b.result) == (Status.ABORTED, "timeout", None)
    assert ended_b.attempts == 2
    assert [e.type for e in ended_b.errors] == ["TimeoutError", "TimeoutError"]
    assert stubborn_seen == [(1, True, "timeout"), (2, True, "timeout")]


# --- adding tasks and the task record ------------------------------------------------------


async def test_dict_keys_and_tags_are_held_in_their_json_form(app: Conveyor) -> None:
    @app.handler("json:keys")
    async def keys(ctx: Context[Any]) -> Any:
        return {2: (3,), False: None}

    payload = {1.5: "a", True: "b", None: "c", "t": (1, 2)}
    tags = {"pair": (1, 2), "keys": {1: "x", None: "y"}}
    stored_payload = {"1.5": "a", "true": "b", "null": "c", "t": [1, 2]}
    stored_tags = {"pair": [1, 2], "keys": {"1": "x", "null": "y"}}
    async with app:
        added = await app.add("json:keys", payload, tags=tags)
        (many,) = await app.add_many([("json:keys", payload, {"tags": tags})])
        for task in (added, many, await app.get(added.id), await app.get(many.id)):
            assert task.payload == stored_payload
            assert task.tags == stored_tags
            assert type(task.tags["pair"]) is list
            assert type(task.payload["t"]) is list
        assert await app.wait(added.id, timeout=10) == {"2": [3], "false": None}
        assert await app.count({"tags.keys.1": "x", "payload.true": "b",
                                "payload.t": {"$exists": True}}) == 2
        for bad in ({(1, 2): "a"}, {b"k": 1}):
            with pytest.raises(ValidationError, match="payload"):
                await app.add("json:keys", bad)
            with pytest.raises(ValidationError, match="tags"):
                await app.add("json:keys", None, tags={"t": bad})
        assert await app.count() == 2


async def test_a_result_over_max_payload_fails_the_run_without_retry(url: str) -> None:
    app = Conveyor(url, lease=5.0, stop_timeout=2.0, max_payload=1000)

    @app.handler("big:result", max_attempts=3, backoff=0.01)
    async def big(ctx: Context[Any]) -> str:
        return "x" * 2000

    try:
        async with app:
            task = await app.add("big:result")
            ended = await app.wait_task(task.id, timeout=10)
    finally:
        await app.close()
    assert (ended.status, ended.reason, ended.attempts, ended.result) == (
        Status.FAILED, "error", 1, None)
    assert ended.error is not None and "result" in ended.error.message


async def test_delay_takes_a_timedelta(mem: Conveyor) -> None:
    task = await mem.add("later:nobody", delay=timedelta(minutes=2))
    assert 119 <= task.run_at - task.created_at <= 121


async def test_the_task_record(app: Conveyor) -> None:
    tasks = [await app.add("record:nobody", i) for i in range(5)]
    ids = [t.id for t in tasks]
    assert all(uuid.UUID(task_id).version == 7 for task_id in ids)  # UUIDv7
    assert ids == sorted(ids)  # time-ordered
    task = tasks[0]
    versions = [task.version]
    versions.append((await app.prioritize(task.id, 3)).version)
    versions.append((await app.abort(task.id)).version)
    versions.append((await app.retry(task.id)).version)
    assert versions == [versions[0] + i for i in range(4)]  # bumped by every change
    wire = (await app.get(task.id)).to_json()
    documented = {
        "id", "action", "payload", "status", "priority", "run_at", "created_at", "updated_at",
        "started_at", "finished_at", "attempts", "max_attempts", "rescues", "run_timeout",
        "pickup_timeout", "pickup_deadline", "backoff", "worker", "lease_until",
        "abort_requested", "progress", "result", "error", "errors", "reason", "unique_key",
        "unique_scope", "concurrency", "tags", "parent_id", "public_url", "version"}
    assert documented <= set(wire) and "token" not in wire
    assert json.loads(json.dumps(wire)) == wire
    assert wire["status"] == "queued" and wire["id"] == task.id


async def test_progress_data_is_reachable_when_set(app: Conveyor) -> None:
    @app.handler("prog:data")
    async def work(ctx: Context[Any]) -> None:
        if ctx.payload:
            await ctx.progress(1, total=2, message="half", stage="upload")
        else:
            await ctx.progress(2, total=2)

    async with app:
        with_data = await app.add("prog:data", True)
        without = await app.add("prog:data", False)
        for task in (with_data, without):
            await app.wait(task.id, timeout=10)
    assert [t.id for t in await app.find({"progress.data.stage": "upload"})] == [with_data.id]
    assert [t.id for t in await app.find({"progress.data": None})] == [without.id]
    assert [t.id for t in await app.find({"progress.current": 2,
                                          "progress.message": None})] == [without.id]
    stored = (await app.get(with_data.id)).progress
    assert stored is not None and stored.data == {"stage": "upload"}


# --- events -----------------------------------------------------------------------------------


async def test_the_status_events_of_a_retried_task_come_in_order(app: Conveyor) -> None:
    @app.handler("order:flaky", max_attempts=3, backoff=0.01)
    async def flaky(ctx: Context[Any]) -> Any:
        if ctx.attempt == 1:
            raise OSError("first")
        if ctx.attempt == 2:
            return Retry(after=0.01)
        return "third"

    statuses = {"task.added", "task.started", "task.retrying", "task.succeeded",
                "task.failed", "task.aborted", "task.ended"}
    seen: list[tuple[str, str | None, Status | None]] = []
    app.on("task.*", lambda e: seen.append(
        (e.type, e.task_id, e.task.status if e.task is not None else None)))
    async with app:
        task = await app.add("order:flaky")
        assert await app.wait(task.id, timeout=10) == "third"
    mine = [(kind, status) for kind, task_id, status in seen
            if task_id == task.id and kind in statuses]
    assert [kind for kind, _ in mine] == [
        "task.added", "task.started", "task.retrying", "task.started", "task.retrying",
        "task.started", "task.succeeded", "task.ended"]
    assert [status for kind, status in mine if kind == "task.retrying"] == [Status.QUEUED] * 2


# --- retries and the transition policy ---------------------------------------------------------


class _Top(random.Random):
    """A random source that always draws the top of the range."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_jitter_applies_after_the_cap() -> None:
    assert Backoff().delay(50, _Top()) == pytest.approx(720)  # maximum * (1 + jitter)
    assert Backoff().delay(1, _Top()) == pytest.approx(1.2)


def test_a_policy_is_any_plain_callable() -> None:
    class PlainCallable:
        def __call__(self, task: Task, outcome: Outcome) -> Transition:
            return default_policy(task, outcome)

    class AsyncCallable:
        async def __call__(self, task: Task, outcome: Outcome) -> Transition:
            return default_policy(task, outcome)

    Conveyor("memory://", policy=PlainCallable())
    Conveyor("memory://").register("pol:obj", lambda ctx: None, policy=PlainCallable())
    with pytest.raises(ConfigurationError, match="policy"):
        Conveyor("memory://", policy=AsyncCallable())  # type: ignore[arg-type]


# --- schedules ----------------------------------------------------------------------------------


async def test_a_schedule_s_default_name_unique_key_and_tag(mem: Conveyor) -> None:
    cleanup = mem.schedule("cleanup", "*/15 * * * *", payload={"older_than": 86400},
                           tz="Europe/Paris")
    assert cleanup.name == "cleanup */15 * * * *"
    mem.schedule("sched:fmt", 3600, name="fmt")
    added: list[Task] = []
    queued = asyncio.Event()

    def on_added(event: Event) -> None:
        if event.task is not None and event.task.action == "sched:fmt":
            added.append(event.task)
            queued.set()

    mem.on("task.added", on_added)

    @mem.handler("sched:fmt")
    def fmt(ctx: Context[Any]) -> None: ...

    async with mem:
        await asyncio.wait_for(queued.wait(), 10)
    (task,) = added
    assert task.unique_key == f"schedule:fmt@{round(task.run_at * 1000)}"
    assert task.tags == {"schedule": "fmt"}


# --- storage ----------------------------------------------------------------------------------


async def test_the_sqlite_poll_interval_option(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'p.db'}?poll_interval=0.01")
    try:
        task = await app.add("poll:x")
        assert (await app.get(task.id)).status is Status.QUEUED
    finally:
        await app.close()
    with pytest.raises(ConfigurationError, match="poll_interval"):
        Conveyor(f"sqlite:///{tmp_path / 'p.db'}?poll_interval=-1")


# --- the query language: the documented messages -------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"filter": {"priority": {"$gt": [1]}}},
     "filter.priority.$gt: $gt needs a number (priority is a number field), not a list"),
    ({"filter": {"$or": [{"priority": 1}, {"payload.a": {"$gt": 1, "b": 2}}]}},
     "filter.$or[1].payload.a: the condition mixes operators ($gt) with plain keys ('b'); "
     "give either a value or an object of operators"),
    ({"filter": {"status": "done"}},
     "filter.status: 'done' is not a status; expected one of queued, running, succeeded, "
     "failed, aborted"),
    ({"filter": {"payload.email": {"$regex": "("}}},
     "filter.payload.email.$regex: invalid regular expression '(': missing ), unterminated "
     "subpattern at position 0"),
    ({"filter": {"status.x": "a"}},
     "filter.status.x: 'status' is a text field and has no sub-fields; only the JSON fields "
     "(payload, tags, result, error, progress) take a dotted path"),
    ({"filter": {"run_at": "yesterday"}},
     "filter.run_at: 'yesterday' is not an ISO-8601 time; run_at is a time field: give epoch "
     "seconds or a string such as '2024-05-01T12:00:00Z' (no zone means UTC)"),
    ({"sort": ["priority", ["run_at", 2]]},
     "sort[1]: a sort direction is 1, -1, 'asc' or 'desc', not a number (2)"),
    ({"limit": -1}, "limit: limit must be null or an integer >= 0, not -1"),
])
async def test_the_documented_query_error_messages(mem: Conveyor, kwargs: dict[str, Any],
                                                   message: str) -> None:
    window = dict(kwargs)
    with pytest.raises(QueryError) as info:
        await mem.find(window.pop("filter", None), **window)
    assert str(info.value) == message
    assert info.value.path == message.split(": ", 1)[0]


async def test_the_unknown_field_message_starts_as_documented(mem: Conveyor) -> None:
    with pytest.raises(QueryError) as info:
        await mem.count({"nope": 1})
    assert str(info.value).startswith(
        "filter.nope: unknown field 'nope'; valid fields are: id, action, status, ")
