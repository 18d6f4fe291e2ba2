"""Abort latency and single terminal state, in this process (every backend)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor import Context, Conveyor, InvalidTransition, Retry, Status, SyncConveyor, Task

from ._support import until

ENDINGS = {"task.succeeded", "task.failed", "task.aborted"}


@pytest.fixture
async def app(local_url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(local_url, concurrency=4, lease=5.0, sweep_interval=0.2, stop_timeout=1.0)
    yield app
    await app.close()


class Ends:
    """Records the events of one task; ``ends`` are its ending events."""

    def __init__(self, app: Conveyor, task_id: str) -> None:
        self.types: list[str] = []
        app.on("task.*", lambda e: self.types.append(e.type), task_id=task_id)

    @property
    def ends(self) -> list[str]:
        return [t for t in self.types if t in ENDINGS]


async def abort_and_time(app: Conveyor, task_id: str, bound: float) -> tuple[Task, float]:
    """Abort the task; return it once aborted and the seconds from the abort
    call to the stored status change (``finished_at``), checking both the
    stored time and the time this process saw it against ``bound``."""
    wall = time.time()
    t0 = time.monotonic()
    await app.abort(task_id, "user asked")
    done = await app.wait_task(task_id, timeout=bound + 5)
    seen = time.monotonic() - t0
    assert done.status is Status.ABORTED and done.reason == "user asked"
    assert done.finished_at is not None
    latency = done.finished_at - wall
    assert latency <= bound, f"aborted after {latency:.3f}s, bound {bound}s"
    assert seen <= bound + 0.1, f"seen aborted after {seen:.3f}s, bound {bound}s"
    return done, latency


async def settle(app: Conveyor) -> None:
    """Run one more task to the end: everything the worker had to write before is written."""
    probe = await app.add("probe")
    assert await app.wait(probe.id, timeout=10) == "probe"


def add_probe(app: Conveyor) -> None:
    @app.handler("probe")
    async def probe(ctx: Context[Any]) -> str:
        return "probe"


@pytest.mark.serial  # a bound of about a second: alone
async def test_abort_running_async_task(app: Conveyor) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @app.handler("slow")
    async def slow(ctx: Context[Any]) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    add_probe(app)
    async with app:
        task = await app.add("slow")
        ends = Ends(app, task.id)
        await asyncio.wait_for(started.wait(), 10)
        done, _ = await abort_and_time(app, task.id, bound=1.0)
        assert cancelled.is_set()
        await settle(app)
        final = await app.get(task.id)
    assert final.version == done.version and final.result is None
    assert [e.type for e in final.errors] == ["Aborted"] and final.attempts == 1
    assert ends.ends == ["task.aborted"]


@pytest.mark.serial  # a bound of about a second: alone
async def test_abort_running_sync_task_cooperative(app: Conveyor) -> None:
    started = threading.Event()
    noticed: list[float] = []

    @app.handler("loop")
    def loop(ctx: Context[Any]) -> str:
        started.set()
        while not ctx.aborted:
            time.sleep(0.01)
        noticed.append(time.time())
        return "stopped"  # a value returned after the abort is discarded

    add_probe(app)
    async with app:
        task = await app.add("loop")
        ends = Ends(app, task.id)
        assert await asyncio.to_thread(started.wait, 10)
        done, _ = await abort_and_time(app, task.id, bound=1.0)
        assert noticed and app.worker is not None and app.worker.zombies == 0
        await settle(app)
        final = await app.get(task.id)
    assert final.version == done.version and final.result is None
    assert final.status is Status.ABORTED
    assert ends.ends == ["task.aborted"]


@pytest.mark.serial  # a bound of about a second: alone
async def test_abort_running_sync_task_that_ignores_it(local_url: str) -> None:
    """A sync handler that ignores the abort is abandoned after its abort_grace:
    the task ends aborted, its later return changes nothing, and its thread
    keeps the worker's slot until it returns."""
    app = Conveyor(local_url, concurrency=1, lease=5.0, sweep_interval=0.2, stop_timeout=1.0)
    started = threading.Event()
    release = threading.Event()
    returned: list[float] = []
    ran: list[float] = []
    grace = 0.3

    @app.handler("stubborn", abort_grace=grace)
    def stubborn(ctx: Context[Any]) -> str:
        started.set()
        release.wait(30)  # ignores ctx.aborted
        returned.append(time.time())
        return "late result"

    @app.handler("next")
    async def next_(ctx: Context[Any]) -> str:
        ran.append(time.time())
        return "next"

    try:
        await app.start()
        worker = app.worker
        assert worker is not None
        task = await app.add("stubborn")
        ends = Ends(app, task.id)
        assert await asyncio.to_thread(started.wait, 10)
        done, latency = await abort_and_time(app, task.id, bound=grace + 1.0)
        assert latency >= grace - 0.05  # it was given its grace period
        # the abandoned thread still holds the only slot: the next task waits
        assert worker.zombies == 1
        follower = await app.add("next")
        await asyncio.sleep(0.3)  # give the worker every chance to (wrongly) claim it
        assert (await app.get(follower.id)).status is Status.QUEUED and not ran
        release.set()
        assert await app.wait(follower.id, timeout=10) == "next"
        assert worker.zombies == 0
        assert returned and ran and ran[0] >= returned[0]
        final = await app.get(task.id)
        assert final.status is Status.ABORTED and final.result is None
        assert final.version == done.version
        assert ends.ends == ["task.aborted"]
    finally:
        release.set()
        await app.close()


@pytest.mark.serial  # a bound of about a second: alone
async def test_abort_queued_task(app: Conveyor) -> None:
    @app.handler("later")
    async def later(ctx: Context[Any]) -> str:
        return "ran"

    async with app:
        task = await app.add("later", delay=60)
        ends = Ends(app, task.id)
        t0 = time.monotonic()
        aborted = await app.abort(task.id, "user asked")
        assert time.monotonic() - t0 < 1.0
        assert aborted.status is Status.ABORTED and aborted.finished_at is not None
        stored = await app.get(task.id)
        assert stored.status is Status.ABORTED and stored.attempts == 0 and stored.result is None
        await until(lambda: ends.ends, timeout=5, what="the aborted event")
    assert ends.ends == ["task.aborted"]
    assert stored.version == aborted.version


async def test_abort_of_async_handler_that_returns_on_cancel(app: Conveyor) -> None:
    """An async handler that cleans up on cancellation and returns a value: the
    abort still wins, as for a sync handler that returns after noticing it
    (the task ends aborted and the value is discarded)."""
    started = asyncio.Event()

    @app.handler("tidy")
    async def tidy(ctx: Context[Any]) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "cleaned up"
        return "finished"

    add_probe(app)
    async with app:
        task = await app.add("tidy")
        ends = Ends(app, task.id)
        await asyncio.wait_for(started.wait(), 10)
        await app.abort(task.id, "user asked")
        done = await app.wait_task(task.id, timeout=5)
        await settle(app)
    assert (done.status, done.reason, done.result) == (Status.ABORTED, "user asked", None)
    assert ends.ends == ["task.aborted"]


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_an_abort_right_after_the_claim_ends_the_task(app: Conveyor, kind: str) -> None:
    """An abort delivered as the run starts (from a ``task.started`` callback): the
    task ends ``aborted``. On memory:// the abort arrives before the run's asyncio
    task took its first step, and the handler is not called; such a run was
    cancelled before its first step, so nothing recorded an outcome: the task stayed
    ``running``, its lease renewed. (Elsewhere the abort's write lets the handler
    start first, and the handler is stopped.)"""
    called: list[str] = []
    aborted_at_start: list[bool] = []  # a sync handler called although aborted already

    async def run_async(ctx: Context[Any]) -> str:
        called.append(ctx.task.id)
        await asyncio.sleep(30)
        return "ran"

    def run_sync(ctx: Context[Any]) -> str:
        called.append(ctx.task.id)
        aborted_at_start.append(ctx.aborted)
        ctx.wait_aborted(30)
        return "ran"  # returned after the abort: discarded

    app.register("first", run_async if kind == "async" else run_sync)
    aborts: list[asyncio.Future[Task]] = []

    def on_started(event: Any) -> None:
        aborts.append(asyncio.ensure_future(app.abort(event.task.id, "at once")))

    app.on("task.started", on_started)
    async with app:
        tasks = await app.add_many([("first", i) for i in range(5)])
        ended = [await app.wait_task(t.id, timeout=10) for t in tasks]
        await asyncio.gather(*aborts)
        await until(lambda: app.worker is not None and not app.worker.running, timeout=5,
                    what="the worker to forget the runs")
    assert [(t.status, t.reason) for t in ended] == [(Status.ABORTED, "at once")] * 5
    assert len(aborts) == 5
    assert not any(aborted_at_start), aborted_at_start
    if app.storage.url.startswith("memory"):
        assert called == []


async def test_an_abort_as_a_run_ends_in_a_retry_is_not_lost(shared_url: str) -> None:
    """An abort from another process while a run is ending in a retry (its handler
    raised; the worker decided the retry before the abort reached it): the task
    ends ``aborted``, is not run again, and listeners see ``task.aborted`` (not
    ``task.retrying``). Before, the retry was stored and the request dropped with
    the run: the aborted task ran again."""
    worker_app = Conveyor(shared_url, concurrency=2, lease=30.0, stop_timeout=1.0)
    # another app object on its own loop thread: its abort blocks the worker's loop
    # until committed, so the worker cannot take the request before the handler
    # raises (an awaited abort let a fast change feed cancel the handler first)
    other = SyncConveyor(shared_url)
    calls: list[int] = []

    async def flaky(ctx: Context[Any]) -> None:
        calls.append(ctx.task.attempts)
        other.abort(ctx.task.id, "user asked")  # committed; the worker has not seen it
        raise ValueError("boom")

    worker_app.register("flaky", flaky, max_attempts=5, backoff=0.0)
    errors: list[Any] = []
    worker_app.add_error_sink(errors.append)
    try:
        async with worker_app:
            task = await worker_app.add("flaky", None)
            ends = Ends(worker_app, task.id)
            done = await worker_app.wait_task(task.id, timeout=10)
            await until(lambda: "task.aborted" in ends.types, timeout=5, what="task.aborted")
    finally:
        other.close()
    assert (done.status, done.reason, calls) == (Status.ABORTED, "user asked", [1])
    assert [e.type for e in done.errors][-1] == "Aborted"
    assert "task.retrying" not in ends.types and ends.ends == ["task.aborted"]
    # the error sink got the attempt's error as final: it is not retried
    assert [(e.error.type, e.final, e.task.status) for e in errors] == [
        ("ValueError", True, Status.ABORTED)]


async def test_a_policy_cannot_queue_a_task_aborted_with_abort(local_url: str) -> None:
    """``abort()`` is final: a policy that answers the ``Aborted`` outcome with
    ``queued`` does not run the task again; it ends aborted with the reason."""
    from conveyor import Aborted, Transition, default_policy

    def requeue_aborts(task: Task, outcome: Any) -> Transition:
        if isinstance(outcome, Aborted):
            return Transition(Status.QUEUED, run_at=time.time())
        return default_policy(task, outcome)

    app = Conveyor(local_url, policy=requeue_aborts, stop_timeout=1.0)
    started = asyncio.Event()
    calls: list[int] = []

    async def long(ctx: Context[Any]) -> None:
        calls.append(ctx.task.attempts)
        started.set()
        await asyncio.sleep(30)

    app.register("long", long, max_attempts=5)
    async with app:
        task = await app.add("long", None)
        await asyncio.wait_for(started.wait(), 10)
        await app.abort(task.id, "user asked")
        done = await app.wait_task(task.id, timeout=10)
    assert (done.status, done.reason, calls) == (Status.ABORTED, "user asked", [1])


async def test_events_keep_version_order_when_an_abort_overtakes_a_retry(
        shared_url: str) -> None:
    """A run ends in a retry and another process aborts the task a moment later
    (before or after the retry is stored). In both processes, each task's status
    events come in version order and the last is ``task.aborted`` then
    ``task.ended``: the aborting process announced its own abort at once, and the
    retry that reached it later through the change feed was shown after the end
    (in about half of such rounds on SQLite)."""
    worker_app = Conveyor(shared_url, concurrency=2, stop_timeout=1.0)
    other = Conveyor(shared_url)
    seen: dict[str, defaultdict[str, list[tuple[str, int]]]] = {
        "worker": defaultdict(list), "other": defaultdict(list)}
    for name, app in (("worker", worker_app), ("other", other)):
        app.on("task.*", lambda e, name=name: seen[name][e.task_id].append(
            (e.type, e.data["version"])) if "version" in e.data else None)
    returned: dict[str, asyncio.Event] = {}

    async def again(ctx: Context[Any]) -> Any:
        returned[ctx.task.id].set()
        return Retry(after=30)

    worker_app.register("again", again, max_attempts=5)
    ids = []
    async with other, worker_app:
        for _ in range(16):
            task = await worker_app.add("again", None)
            returned[task.id] = asyncio.Event()
            ids.append(task.id)
            await asyncio.wait_for(returned[task.id].wait(), 10)
            await asyncio.sleep(random.uniform(0, 0.01))  # an abort at a random moment
            await other.abort(task.id, "stop")
            assert (await worker_app.wait_task(task.id, timeout=10)).status is Status.ABORTED
        # a change made after all of them: once both have seen it, the feed brought the rest
        probe = await other.add("probe", None)
        for name in seen:
            await until(lambda name=name: seen[name].get(probe.id), timeout=10,
                        what=f"the {name} process to see the probe")
    for name, by_task in seen.items():
        for task_id in ids:
            events = by_task[task_id]
            versions = [v for _, v in events]
            assert versions == sorted(versions), (name, events)
            assert [t for t, _ in events][-2:] == ["task.aborted", "task.ended"], (name, events)


def _record_start(ctx: Context[Any]) -> str:
    """A sync handler (module level: it may run in a process) that notes whether it
    began aborted, then honours an abort."""
    began_aborted = ctx.aborted  # first: opening the file lets other threads run
    with open(ctx.payload, "a") as f:
        f.write("aborted\n" if began_aborted else "fresh\n")
    ctx.wait_aborted(0.05)
    return "done"


# what a handler process looks the handler up in (never opened here)
_recording = Conveyor("memory://")
_recording.register("sync", _record_start, mode="process")


@pytest.mark.parametrize("mode", ["thread", "process"])
async def test_a_sync_handler_is_not_called_once_its_abort_has_arrived(
        local_url: str, mode: str, tmp_path: Any) -> None:
    """Aborts a moment after each run starts (0-4 ms; a process handler 0-80 ms):
    a sync handler either was called before its abort arrived (it starts with
    ``ctx.aborted`` false) or is not called at all. It was called with
    ``ctx.aborted`` already true when the abort came while the run waited for its
    thread or its process (a few calls in 40)."""
    app = Conveyor(local_url, concurrency=4, stop_timeout=1.0)
    app.register("sync", _record_start, **({"mode": "process"} if mode == "process" else {}))
    log = tmp_path / "starts.log"
    log.touch()
    aborts: list[asyncio.Future[Any]] = []

    async def abort_soon(task_id: str) -> None:
        await asyncio.sleep(random.uniform(0, 0.004 if mode == "thread" else 0.08))
        with contextlib.suppress(InvalidTransition):
            await app.abort(task_id, "stop")

    app.on("task.started", lambda e: aborts.append(asyncio.ensure_future(abort_soon(e.task_id))))
    async with app:
        for _ in range(40 if mode == "thread" else 12):
            task = await app.add("sync", str(log))
            ended = await app.wait_task(task.id, timeout=30)
            assert ended.status in (Status.ABORTED, Status.SUCCEEDED)
        await asyncio.gather(*aborts)
    starts = log.read_text().split()
    assert starts and "aborted" not in starts, starts
