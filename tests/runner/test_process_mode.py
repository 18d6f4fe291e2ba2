"""Handlers in child processes: results, logs, aborts that end the process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor import ConfigurationError, Context, Conveyor, Event, Status, Task, TaskFailed

from ..control._support import status_is, until
from . import process_app


@pytest.fixture
async def papp() -> AsyncIterator[Conveyor]:
    app = process_app.app
    async with app:
        yield app


async def test_result_logs_and_progress(papp: Conveyor) -> None:
    a = await papp.add("proc:square", {"n": 7})
    b = await papp.add("proc:square", {"n": 8})
    ra = await papp.wait(a.id, timeout=30)
    rb = await papp.wait(b.id, timeout=30)
    assert ra["square"] == 49 and rb["square"] == 64
    done = await papp.get(a.id, logs=True)
    assert done.logs is not None and done.logs[0].message.startswith("squaring 7 in ")
    assert done.progress is not None and done.progress.message == "done"
    c = await papp.add("proc:square", {"n": 2})
    rc = await papp.wait(c.id, timeout=30)
    assert rc["pid"] in (ra["pid"], rb["pid"])  # children are reused


@pytest.mark.serial  # a bound of about a second: alone
async def test_abort_kills_a_process_that_ignores_it(papp: Conveyor) -> None:
    task = await papp.add("proc:spin", {"seconds": 60})
    started = asyncio.Event()
    papp.on("task.started", lambda e: started.set(), task_id=task.id)
    await asyncio.wait_for(started.wait(), 30)
    t0 = time.monotonic()
    await papp.abort(task.id, "enough")
    with pytest.raises(Exception, match="aborted"):
        await papp.wait(task.id, timeout=10)
    # killed after its grace period (0.5 s), far before the 60 s it would spin; the
    # margin absorbs a loaded 2-core machine
    assert time.monotonic() - t0 < 0.5 + 2.5
    final = await papp.get(task.id)
    assert final.status is Status.ABORTED and final.reason == "enough" and final.result is None


async def test_cooperative_abort(papp: Conveyor) -> None:
    task = await papp.add("proc:polite")
    await until(status_is(papp, task.id, Status.RUNNING), 10, "the task to run")
    await papp.abort(task.id, "stop please")
    final = await papp.wait_task(task.id, timeout=10)
    assert final.status is Status.ABORTED and final.reason == "stop please"


async def test_an_abort_cancels_an_async_handler_in_its_process(papp: Conveyor) -> None:
    """As on the worker's loop: the abort cancels the async handler in the child, which
    ends the task at once (its grace is 60 s) and stays alive for the next task."""
    napping: dict[str, asyncio.Event] = {}
    pids: dict[str, int] = {}

    def on_log(event: Event) -> None:
        line = event.data["log"]
        if event.task_id and line.message.startswith("napping in "):
            pids[event.task_id] = int(line.message.rsplit(" ", 1)[1])
            napping.setdefault(event.task_id, asyncio.Event()).set()

    papp.on("task.log", on_log)

    async def nap_then_abort(reason: str) -> Task:
        task = await papp.add("proc:nap")
        await asyncio.wait_for(napping.setdefault(task.id, asyncio.Event()).wait(), 30)
        await papp.abort(task.id, reason)
        return await papp.get((await papp.wait_task(task.id, timeout=20)).id, logs=True)

    first = await nap_then_abort("wake up")  # not killed: that would take 60 s
    assert first.status is Status.ABORTED and first.reason == "wake up"
    pid = pids[first.id]
    assert [line.message for line in first.logs or []] == [
        f"napping in {pid}", f"cancelled in {pid}"]
    second = await nap_then_abort("again")  # the child was kept: the same process
    assert second.status is Status.ABORTED and pids[second.id] == pid
    assert [line.message for line in second.logs or []][-1] == f"cancelled in {pid}"
    # the run timeout cancels it likewise
    slow = await papp.add("proc:overtime")
    timed = await papp.wait_task(slow.id, timeout=20)  # its grace is 60 s too
    assert timed.status is Status.ABORTED and timed.reason == "timeout"


async def test_error_retry_timeout_and_death(papp: Conveyor) -> None:
    bad = await papp.add("proc:fail")
    with pytest.raises(TaskFailed, match="ArithmeticError: bad sum"):
        await papp.wait(bad.id, timeout=30)
    failed = await papp.get(bad.id)
    assert failed.error is not None and "bad sum" in (failed.error.traceback or "")
    again = await papp.add("proc:again")
    assert await papp.wait(again.id, timeout=30) == 2
    slow = await papp.add("proc:slow")
    timed = await papp.wait_task(slow.id, timeout=30)
    assert timed.status is Status.ABORTED and timed.reason == "timeout"
    dead = await papp.add("proc:die")
    gone = await papp.wait_task(dead.id, timeout=30)
    assert gone.status is Status.FAILED and gone.error is not None
    assert gone.error.type == "ChildProcessError"


def test_process_handlers_must_be_importable() -> None:
    app = Conveyor("memory://")

    def local(ctx: Context[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="module-level"):
        app.register("x", local, mode="process")


async def test_messages_over_64_kib_reach_the_worker(papp: Conveyor) -> None:
    """A result, log line or progress over asyncio's default line limit (64 KiB)
    failed its task, and left the child's channel out of step: later tasks on that
    child got the rest of the line, then other tasks' results."""
    size = 300_000
    tasks = [await papp.add("proc:big", {"n": n, "size": size if n % 2 else 10})
             for n in range(8)]
    results = [await papp.wait(t.id, timeout=60) for t in tasks]
    assert [r["n"] for r in results] == list(range(8))  # each its own result
    assert [len(r["text"]) for r in results] == [10, size] * 4
    done = await papp.get(tasks[1].id, logs=True)
    # a log line is cut at 100,000 characters (still over 64 KiB on the pipe)
    cut = "l" * 100_000 + f" [cut: {size - 100_000} more characters]"
    assert done.logs is not None and [line.message for line in done.logs] == [cut]
    assert done.progress is not None and done.progress.message == "p" * size


async def test_an_idle_child_that_died_is_replaced(papp: Conveyor) -> None:
    """A child that died while idle (killed, say) was handed the next task before its
    exit was seen: the task failed ("the handler's process died") though its handler
    never ran. The worker now starts another child for it."""
    import os
    import signal

    for _ in range(5):
        first = [await papp.add("proc:square", {"n": n}) for n in range(4)]
        pids = {(await papp.wait(t.id, timeout=30))["pid"] for t in first}
        for pid in pids:  # the idle children die
            os.kill(pid, signal.SIGKILL)
        again = [await papp.add("proc:square", {"n": n}) for n in range(4)]
        ended = [await papp.wait_task(t.id, timeout=30) for t in again]
        assert [(t.status, t.error) for t in ended] == [(Status.SUCCEEDED, None)] * 4
        assert not {t.result["pid"] for t in ended} & pids


def _children_of_this_process() -> set[int]:
    import os
    from pathlib import Path

    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"conveyor._child" in cmdline:
            found.add(int(entry.name))
    return found


async def test_idle_children_are_at_most_the_slots(papp: Conveyor) -> None:
    """Each handler kept its idle children: six process handlers run once each left
    six processes beside a worker of four slots. The least recently used go past
    the slots."""
    before = _children_of_this_process()
    for action in ("proc:square", "proc:one", "proc:two", "proc:again", "proc:big",
                   "proc:fail"):
        task = await papp.add(action, {"n": 1, "size": 1})
        await papp.wait_task(task.id, timeout=30)
    left = _children_of_this_process()
    assert len(left) <= papp.concurrency, (before, left)
    again = await papp.add("proc:fail")  # the most recent is still there: reused
    assert (await papp.wait_task(again.id, timeout=30)).status is Status.FAILED
    assert _children_of_this_process() <= left


async def test_max_runs_ends_a_child_after_its_runs(papp: Conveyor) -> None:
    """max_runs=2: a child runs two tasks, then a fresh one takes the next (a handler
    that leaks memory grew its child for ever: 52 -> 332 MiB over 15 runs)."""
    pids = []
    for _ in range(5):
        task = await papp.add("proc:pid")
        pids.append(await papp.wait(task.id, timeout=30))
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4], pids
    assert pids[0] not in _children_of_this_process()


def test_max_runs_is_for_process_handlers() -> None:
    app = Conveyor("memory://")
    for bad, why in [({"max_runs": 3}, "needs mode='process'"),
                     ({"max_runs": 0, "mode": "process"}, "max_runs must be an integer >= 1"),
                     ({"max_runs": True, "mode": "process"}, "max_runs must be")]:
        with pytest.raises(ConfigurationError, match=why):
            app.register("x:y", process_app.pid, **bad)
    assert "x:y" not in app.registry


async def test_a_child_killed_as_it_starts_is_replaced(tmp_path: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The task failed ("could not start a handler process: the child process
    exited") though its handler never ran; another child is started now."""
    from . import _dies_starting

    marker = tmp_path / "died"
    monkeypatch.setenv("CONVEYOR_TEST_DIE_MARKER", str(marker))
    async with _dies_starting.app as app:
        task = await app.add("proc:after_a_death")
        pid = await app.wait(task.id, timeout=60)
        done = await app.get(task.id)
    assert marker.exists()  # the first child was killed
    assert isinstance(pid, int) and done.attempts == 1 and done.errors == ()


async def test_a_function_shared_by_apps_and_actions_runs_with_each_ones_options() -> None:
    from . import process_tenants

    a, b = process_tenants.tenant_a, process_tenants.tenant_b.app
    async with a, b:
        for _ in range(2):  # the second round on children kept idle from the first
            ta, tb = await a.add("report"), await b.add("report")
            assert await a.wait(ta.id, timeout=30) == {"env": {"tenant": "A"},
                                                       "action": "report"}
            assert await b.wait(tb.id, timeout=30) == {"env": {"tenant": "B"},
                                                       "action": "report"}
    resizer = process_tenants.resizer
    async with resizer:
        for _ in range(2):
            large = await resizer.add("resize:large")
            small = await resizer.add("resize:small")
            assert await resizer.wait(large.id, timeout=30) == {
                "env": {"width": 2000}, "action": "resize:large"}
            assert await resizer.wait(small.id, timeout=30) == {
                "env": {"width": 100}, "action": "resize:small"}


async def test_process_outcomes_are_the_in_process_ones(papp: Conveyor) -> None:
    """Worker parity audit: a result that is not JSON fails at once (it was retried as
    a handler error), ``sys.exit()`` fails the run (it killed the child and was retried
    as ChildProcessError), and ``ctx.task`` is the whole task (its errors were lost)."""
    nan = await papp.wait_task((await papp.add("proc:nan")).id, timeout=60)
    assert nan.status is Status.FAILED and nan.attempts == 1
    assert nan.error is not None and nan.error.type == "ValidationError"
    assert "not JSON" in nan.error.message
    left = await papp.wait_task((await papp.add("proc:exit")).id, timeout=60)
    assert left.status is Status.FAILED and left.attempts == 1
    assert left.error is not None and (left.error.type, left.error.message) == ("SystemExit", "3")
    seen = await papp.wait((await papp.add("proc:history")).id, timeout=60)
    assert seen == {"errors": ["ValueError"], "error": "ValueError", "backoff": 0}


async def test_a_process_handlers_emit_over_max_payload_is_refused_in_the_handler(
        papp: Conveyor) -> None:
    """As in-process, a ValidationError in the handler (it was dropped with a warning,
    the handler none the wiser: tests/runner/test_process_values.py has the rest)."""
    results = papp.events("task.result")
    task = await papp.add("proc:emit_big")
    assert await papp.wait(task.id, timeout=60) == "ok"
    event = await asyncio.wait_for(results.__anext__(), 30)
    assert event.task_id == task.id  # the big one: not emitted
    assert event.data["value"] == ("emitted result is 2097154 bytes, over the limit of "
                                   "1048576 bytes")
    results.close()


async def test_a_handler_the_child_cannot_find_fails_its_run_once() -> None:
    """Leftovers audit: an app that is not a module-level name (a factory's) with a
    process handler no app of its module registers failed as a RuntimeError and was
    retried to max_attempts, a new child each time; it fails at once, as LookupError."""
    app = Conveyor("memory://")  # not a name of process_app
    app.register("proc:elsewhere", process_app.square, mode="process", max_attempts=3)
    async with app:
        task = await app.add("proc:elsewhere", {"n": 2})
        ended = await app.wait_task(task.id, timeout=60)
    assert ended.status is Status.FAILED and ended.attempts == 1
    assert ended.error is not None and ended.error.type == "LookupError"
    assert "is not a module-level name of" in ended.error.message
