"""Crash safety with real worker processes: SIGKILL storms, fencing of paused
workers, poison pills, SIGTERM hand-back and aborts across processes."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, Status, Transition
from conveyor.storage import Completion

from ..integration.procs import (
    Fleet,
    kill_worker,
    pause,
    read_ledger,
    resume,
    start_worker_logged,
)
from ._support import status_is, until

pytestmark = pytest.mark.slow

# Short leases so that rescues happen fast: a dead worker's tasks come back
# after at most LEASE + SWEEP seconds.
FAST = {"LEASE": "2", "SWEEP": "0.5"}


def ledger_runs(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Each task's runs from the ledger as (attempt, pid), in attempt order."""
    runs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for task_id, attempt, pid in read_ledger(path):
        runs[task_id].append((attempt, pid))
    for lines in runs.values():
        lines.sort()
    return runs


# -- 1. kill storm ----------------------------------------------------------------------

STORM_TASKS = 5000
STORM_KILLS = 20
STORM_EVERY = 2.0
STORM_WORKERS = 3


async def test_kill_storm_loses_nothing(shared_url: str, tmp_path: Path) -> None:
    """3 workers, 5,000 tasks, a random worker SIGKILLed every 2 s and restarted,
    20 times: every task succeeds, and a task run twice was first run by a
    worker that was killed."""
    ledger = tmp_path / "ledger.txt"
    # Each task sleeps 0.1 s and a worker runs 4 at once: the work takes longer
    # than the storm, so every kill lands on a busy worker.
    env = {"CONVEYOR_DB": shared_url, "LEDGER": str(ledger), "CONCURRENCY": "4", **FAST}
    app = Conveyor(shared_url)
    fleet = Fleet(env, tmp_path)
    rng = random.Random(20240601)
    hits: list[int] = []  # tasks the killed worker held at each kill
    try:
        for start in range(0, STORM_TASKS, 1000):
            await app.add_many([("ledger", {"i": i, "sleep": 0.1})
                                for i in range(start, start + 1000)])
        await asyncio.to_thread(fleet.start, STORM_WORKERS)
        began = time.monotonic()
        for k in range(STORM_KILLS):
            # the storm's own pace: one kill every STORM_EVERY seconds
            await asyncio.sleep(max(0.0, began + (k + 1) * STORM_EVERY - time.monotonic()))
            slot = rng.randrange(STORM_WORKERS)
            pid = fleet.kill(slot)
            hits.append(await app.count({"status": "running",
                                         "worker": {"$regex": f":{pid}:"}}))
            await asyncio.to_thread(fleet.restart, slot)
        remaining_after_storm = await app.count({"status": {"$ne": "succeeded"}})

        async def all_done() -> bool:
            return await app.count({"status": "succeeded"}) == STORM_TASKS

        try:
            await until(all_done, timeout=120, what="all tasks to succeed", interval=0.25)
        except AssertionError:
            pass  # counted below: lost tasks fail the test with the figures
        stats = await app.stats()
        tasks = {t.id: t for t in await app.find({"action": "ledger"})}
    finally:
        fleet.close()
        await app.close()

    runs = ledger_runs(ledger)
    killed = set(fleet.killed)
    succeeded = sum(1 for t in tasks.values() if t.status is Status.SUCCEEDED)
    lost = STORM_TASKS - succeeded
    duplicated = sum(1 for lines in runs.values() if len(lines) > 1)
    print(f"\nkill storm: tasks={STORM_TASKS} lost={lost} duplicated={duplicated} "
          f"kills={len(fleet.killed)} tasks-held-at-kill={sum(hits)} {hits} "
          f"rescued={sum(1 for t in tasks.values() if t.rescues)} "
          f"left-when-storm-ended={remaining_after_storm} stats={stats}")

    assert len(tasks) == STORM_TASKS
    assert lost == 0, stats
    assert len(fleet.killed) == STORM_KILLS
    # the storm really hit running work (else it proves nothing)
    assert remaining_after_storm > 0
    assert sum(1 for h in hits if h) >= STORM_KILLS // 2
    assert duplicated > 0
    assert set(runs) == set(tasks)  # every task ran, and only our tasks ran
    bad = []
    for task_id, lines in runs.items():
        task = tasks[task_id]
        attempts = [a for a, _ in lines]
        last_attempt, last_pid = lines[-1]
        # runs are numbered by rescues: no number twice, the last one is the stored run
        if len(set(attempts)) != len(attempts) or last_attempt != 1 + task.rescues:
            bad.append((task_id, lines, task.rescues))
        # the stored result is the pid of the run that finished
        if task.result != last_pid:
            bad.append((task_id, lines, task.result))
        # every earlier run was on a worker that was killed
        if any(pid not in killed for _, pid in lines[:-1]):
            bad.append((task_id, lines, "earlier run on a live worker"))
    assert not bad, bad[:10]
    # a run on a killed worker costs no attempt
    assert {t.attempts for t in tasks.values()} == {1}


# -- 2. fencing ---------------------------------------------------------------------------


async def test_paused_worker_is_fenced_out(shared_url: str, tmp_path: Path) -> None:
    """A worker paused (SIGSTOP) past its lease loses the task to another worker;
    once resumed, its late finish is refused and the other worker's result stays."""
    ledger = tmp_path / "ledger.txt"
    env = {"CONVEYOR_DB": shared_url, "LEDGER": str(ledger), **FAST}
    app = Conveyor(shared_url)
    first = second = None
    try:
        first = await asyncio.to_thread(start_worker_logged, env, tmp_path / "first.log")
        task = await app.add("ledger", {"sleep": 1.0})
        await until(lambda: read_ledger(ledger), timeout=10, what="the first run to start")
        pause(first)  # mid-run: the handler sleeps for 1 s after writing its line
        [(_, _, pid)] = read_ledger(ledger)
        assert pid == first.pid
        paused_at = time.monotonic()
        held = await app.get(task.id)  # the first worker's claim, token included
        assert held.status is Status.RUNNING and held.token and held.worker

        second = await asyncio.to_thread(start_worker_logged, env, tmp_path / "second.log")
        await until(lambda: len(read_ledger(ledger)) == 2, timeout=20,
                    what="the second worker to take the task over")
        # while the second worker runs it, a finish with the first worker's token
        # (what the paused worker would write) is refused and changes nothing
        late = Completion(task.id, held.token, Transition(Status.SUCCEEDED, result=first.pid))
        assert await app.storage.finish(held.worker, [late]) == [task.id]
        now_held = await app.get(task.id)
        assert now_held.token != held.token and now_held.result in (None, second.pid)
        done = await until(status_is(app, task.id, Status.SUCCEEDED), timeout=20,
                           what="the second worker to finish the task")
        taken_over_after = time.monotonic() - paused_at
        assert done.result == second.pid
        assert done.rescues == 1 and done.attempts == 1
        assert [p for _, _, p in read_ledger(ledger)] == [first.pid, second.pid]
        assert done.errors and done.errors[-1].type == "WorkerLost"

        assert await app.storage.finish(held.worker, [late]) == [task.id]

        # the real paused worker, resumed: its handler's sleep is long over and it
        # finishes at once, too late, and is refused. (Now and then its lease keeper
        # learns first that the lease is gone; then it drops the run without writing.)
        resume(first)
        log = tmp_path / "first.log"
        refused = "the result of this run was discarded"
        noticed = "lease lost; stopping this run"
        text = await until(lambda: (t := log.read_text()) and (refused in t or noticed in t)
                           and t, timeout=10, what="the resumed worker to learn it lost the lease")
        # the resumed worker is alive and keeps working
        again = await app.add("ledger", {})
        assert await app.wait(again.id, timeout=10) in (first.pid, second.pid)
        after = await app.get(task.id)
        print(f"\nfencing: taken over {taken_over_after:.2f}s after the pause; "
              f"late finish refused: {refused in text}; lost lease noticed by heartbeat: "
              f"{noticed in text}")
        # nothing about the task changed: same result, same version
        assert after.status is Status.SUCCEEDED and after.result == second.pid
        assert after.version == done.version and after.rescues == 1
        assert first.poll() is None
    finally:
        for proc in (first, second):
            if proc is not None:
                resume(proc)
                kill_worker(proc)
        await app.close()


async def test_a_claim_lost_before_its_run_started_is_not_run(shared_url: str,
                                                              tmp_path: Path) -> None:
    """A worker claims two tasks; the first blocks its event loop, the process is
    frozen (SIGSTOP) past the lease and another worker runs the second task. Resumed,
    the frozen worker asks whether its claim still holds before starting the second
    task's handler, and does not start it: the task runs once, on the other worker."""
    ledger = tmp_path / "ledger.txt"
    env = {"CONVEYOR_DB": shared_url, "LEDGER": str(ledger), "CONCURRENCY": "2", **FAST}
    app = Conveyor(shared_url)
    first = second = None
    try:
        # one claim takes both, the blocker first (lower priority runs first)
        blocker, target = await app.add_many([("block_loop", {"sleep": 1.5}, {"priority": 0}),
                                              ("ledger", {}, {"priority": 1})])
        first = await asyncio.to_thread(start_worker_logged, env, tmp_path / "first.log")
        await until(lambda: read_ledger(ledger), timeout=10, what="the blocker to start")
        pause(first)  # the target is claimed; its run waits for the blocked loop
        held = await app.get(target.id)
        assert held.status is Status.RUNNING and held.worker and f":{first.pid}:" in held.worker
        assert [t for t, _, _ in read_ledger(ledger)] == [blocker.id]

        second = await asyncio.to_thread(start_worker_logged, env, tmp_path / "second.log")
        done = await until(status_is(app, target.id, Status.SUCCEEDED), timeout=20,
                           what="the second worker to run the target")
        assert done.result == second.pid and done.rescues == 1

        resume(first)
        log = tmp_path / "first.log"
        # its keeper's heartbeat, or the blocker's refused finish: by then the target's
        # run would have started (right after the blocker's handler returned)
        text = await until(lambda: (t := log.read_text()) and "lease lost" in t and t,
                           timeout=10, what="the resumed worker to learn it lost its leases")
        runs = [pid for task_id, _, pid in read_ledger(ledger) if task_id == target.id]
        assert runs == [second.pid], text  # never started on the resumed worker
        after = await app.get(target.id)
        assert after.version == done.version and after.result == second.pid
        assert first.poll() is None
    finally:
        for proc in (first, second):
            if proc is not None:
                resume(proc)
                kill_worker(proc)
        await app.close()


async def test_log_lines_of_a_fenced_out_run_are_not_stored(shared_url: str,
                                                            tmp_path: Path) -> None:
    """A worker frozen mid-run past its lease, resumed after another worker ran the
    task to its end: the line its handler writes on waking is not stored (the task's
    log holds the other run's line only, and nothing after the end)."""
    ledger = tmp_path / "ledger.txt"
    env = {"CONVEYOR_DB": shared_url, "LEDGER": str(ledger), **FAST}
    app = Conveyor(shared_url)
    first = second = None
    try:
        first = await asyncio.to_thread(start_worker_logged, env, tmp_path / "first.log")
        task = await app.add("log_after", {"sleep": 1.0})
        await until(lambda: read_ledger(ledger), timeout=10, what="the first run to start")
        pause(first)  # mid-sleep: the line comes after
        second = await asyncio.to_thread(start_worker_logged, env, tmp_path / "second.log")
        done = await until(status_is(app, task.id, Status.SUCCEEDED), timeout=20,
                           what="the second worker to run the task")
        assert done.result == second.pid
        kill_worker(second)  # what comes next runs on the resumed worker

        resume(first)  # its handler wakes, logs its line, returns: too late
        log = tmp_path / "first.log"
        await until(lambda: "this run" in log.read_text(), timeout=10,
                    what="the resumed worker to learn it lost the lease")
        # a task run after it by the same worker: its writer has passed the line by then
        again = await app.add("ledger", {})
        assert await app.wait(again.id, timeout=10) == first.pid
        lines = [r.message async for r in app.logs(task.id, follow=False)]
        assert lines == [f"after the sleep, pid {second.pid}"], log.read_text()
        assert (await app.get(task.id)).version == done.version
    finally:
        for proc in (first, second):
            if proc is not None:
                resume(proc)
                kill_worker(proc)
        await app.close()


# -- 3. poison pill -------------------------------------------------------------------------

MAX_RESCUES = 3  # the app's default max_rescues (tests/integration/apps.py sets none)


@pytest.mark.parametrize("concurrency", [1, 50])
async def test_poison_pill_ends_failed_worker_lost(shared_url: str, tmp_path: Path,
                                                   concurrency: int) -> None:
    """A task that kills its worker every time fails with reason ``worker_lost``
    after max_rescues rescues, while the tasks queued around it all succeed.

    With one task at a time per worker the pill takes down only its own run. With
    50, the first worker claims the pill and the others in one batch and dies with
    them all; rescued, each runs alone (the worker claims nothing beside a rescued
    task), so the others are rescued once at most, and the pill alone dies again."""
    ledger = tmp_path / "ledger.txt"
    env = {"CONVEYOR_DB": shared_url, "LEDGER": str(ledger), "CONCURRENCY": str(concurrency),
           **FAST}
    app = Conveyor(shared_url)
    fleet = Fleet(env, tmp_path)
    try:
        before = await app.add_many([("ledger", {"i": i, "sleep": 0.02}) for i in range(20)])
        pill = await app.add("suicide")
        after = await app.add_many([("ledger", {"i": i, "sleep": 0.02}) for i in range(20, 40)])
        others = [t.id for t in before + after]
        await asyncio.to_thread(fleet.start, 2)

        async def supervise() -> bool:
            """Restart dead workers; done once the pill has ended."""
            await asyncio.to_thread(fleet.restart_dead)
            return (await app.get(pill.id)).terminal

        await until(supervise, timeout=90, what="the pill to end", interval=0.1)

        async def others_done() -> bool:
            await asyncio.to_thread(fleet.restart_dead)
            return await app.count({"id": {"$in": others}, "status": "succeeded"}) == len(others)

        await until(others_done, timeout=30, what="the other tasks to succeed", interval=0.1)
        dead = await app.get(pill.id)
        rest = await app.find({"id": {"$in": others}})
    finally:
        fleet.close()
        await app.close()

    assert dead.status is Status.FAILED and dead.reason == "worker_lost"
    assert dead.rescues == MAX_RESCUES and dead.attempts == 1
    assert [e.type for e in dead.errors] == ["WorkerLost"] * (MAX_RESCUES + 1)
    assert dead.error is not None and dead.error.type == "WorkerLost"
    runs = ledger_runs(ledger)
    pill_runs = runs[pill.id]
    # it ran max_rescues + 1 times, numbered 1..4, each run in a different worker that died
    assert [a for a, _ in pill_runs] == list(range(1, MAX_RESCUES + 2))
    pill_pids = [p for _, p in pill_runs]
    assert len(set(pill_pids)) == len(pill_pids)
    assert set(pill_pids) <= set(fleet.killed)
    assert len(rest) == 40
    assert all(t.status is Status.SUCCEEDED for t in rest)
    if concurrency == 1:  # the others: each run exactly once, none rescued
        assert all(t.rescues == 0 for t in rest)
        assert all(len(runs[t.id]) == 1 for t in rest)
    else:  # died with the pill's first run at most
        assert all(t.rescues <= 1 for t in rest), [t.rescues for t in rest]
        assert all(1 <= len(runs[t.id]) <= t.rescues + 1 for t in rest)


# -- 4. abort across processes ----------------------------------------------------------


async def test_abort_reaches_a_worker_in_another_process(shared_url: str, tmp_path: Path) -> None:
    """An abort requested here travels through the change feed to the worker
    process running the task; the task ends aborted within a second."""
    ledger = tmp_path / "ledger.txt"
    env = {"CONVEYOR_DB": shared_url, "LEDGER": str(ledger)}
    app = Conveyor(shared_url)
    worker = None
    try:
        worker = await asyncio.to_thread(start_worker_logged, env, tmp_path / "worker.log")
        task = await app.add("ledger", {"sleep": 60})
        ends: list[str] = []
        app.on(["task.succeeded", "task.failed", "task.aborted"], lambda e: ends.append(e.type),
               task_id=task.id)
        await until(lambda: read_ledger(ledger), timeout=10, what="the run to start")
        wall = time.time()
        t0 = time.monotonic()
        requested = await app.abort(task.id, "user asked")
        assert requested.status is Status.RUNNING and requested.abort_requested == "user asked"
        done = await app.wait_task(task.id, timeout=10)
        seen = time.monotonic() - t0
        assert done.status is Status.ABORTED and done.reason == "user asked"
        assert done.result is None and done.finished_at is not None
        latency = done.finished_at - wall
        print(f"\nabort across processes: stored after {latency * 1000:.0f} ms, "
              f"seen here after {seen * 1000:.0f} ms")
        assert latency <= 1.0 and seen <= 1.1
        # the worker is still there and has nothing left to write about the task
        probe = await app.add("ledger", {})
        assert await app.wait(probe.id, timeout=10) == worker.pid
        final = await app.get(task.id)
        assert final.version == done.version and final.status is Status.ABORTED
        assert [e.type for e in final.errors] == ["Aborted"] and final.rescues == 0
        await until(lambda: ends, timeout=5, what="the aborted event")
        assert ends == ["task.aborted"]
    finally:
        if worker is not None:
            kill_worker(worker)
        await app.close()


# -- 9. graceful stop across processes ---------------------------------------------------


async def test_sigterm_hands_the_running_task_back(shared_url: str, tmp_path: Path) -> None:
    """SIGTERM: the worker exits 0 within its stop timeout and its running task
    is queued again at once (no lease wait: LEASE is 30 s), then another worker
    runs it."""
    ledger = tmp_path / "ledger.txt"
    env = {"CONVEYOR_DB": shared_url, "LEDGER": str(ledger), "LEASE": "30",
           "STOP_TIMEOUT": "0.5"}
    app = Conveyor(shared_url)
    first = second = None
    try:
        first = await asyncio.to_thread(start_worker_logged, env, tmp_path / "first.log")
        task = await app.add("first_run_slow", {"marker": str(tmp_path / "marker"), "sleep": 60})
        await until(lambda: read_ledger(ledger), timeout=10, what="the first run to start")
        t0 = time.monotonic()
        first.terminate()
        code = await asyncio.to_thread(first.wait, 15)
        took = time.monotonic() - t0
        assert code == 0, (tmp_path / "first.log").read_text()
        assert took < 5.0
        back = await app.get(task.id)
        assert back.status is Status.QUEUED, back
        assert back.attempts == 0 and back.rescues == 0
        assert back.worker is None and back.lease_until is None and back.token is None
        assert not back.errors
        assert await app.workers() == []  # it unregistered on the way out

        second = await asyncio.to_thread(start_worker_logged, env, tmp_path / "second.log")
        done = await app.wait_task(task.id, timeout=10)
        assert done.status is Status.SUCCEEDED and done.result == second.pid
        assert done.attempts == 1 and done.rescues == 0
        assert [(a, p) for _, a, p in read_ledger(ledger)] == [(1, first.pid), (1, second.pid)]
        print(f"\nSIGTERM: worker exited in {took:.2f}s")
    finally:
        for proc in (first, second):
            if proc is not None:
                kill_worker(proc)
        await app.close()


async def test_sigterm_exits_even_with_a_stuck_sync_handler(shared_url: str,
                                                            tmp_path: Path) -> None:
    """A sync handler blocked in a call that ignores aborts (a network call with
    no timeout) must not keep its worker process alive after SIGTERM: the task
    is handed back and the process exits within its stop timeout plus a little."""
    ledger = tmp_path / "ledger.txt"
    env = {"CONVEYOR_DB": shared_url, "LEDGER": str(ledger), "LEASE": "30",
           "STOP_TIMEOUT": "0.5"}
    app = Conveyor(shared_url)
    worker = None
    try:
        worker = await asyncio.to_thread(start_worker_logged, env, tmp_path / "worker.log")
        task = await app.add("stuck_sync", {"sleep": 60})
        await until(lambda: read_ledger(ledger), timeout=10, what="the run to start")
        t0 = time.monotonic()
        worker.terminate()
        back = await until(status_is(app, task.id, Status.QUEUED), timeout=5,
                           what="the task to be handed back")
        assert back.attempts == 0 and back.rescues == 0
        try:
            code = await asyncio.to_thread(worker.wait, 8)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - t0
        assert code == 0, (f"the worker still runs {took:.1f}s after SIGTERM: its handler "
                           "thread keeps the process from exiting")
    finally:
        if worker is not None:
            kill_worker(worker)
        await app.close()


async def test_a_lost_lease_is_logged_once_while_a_sync_handler_runs_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync handler goes on after its lease is lost (a thread cannot be stopped):
    the worker says so once, not at every heartbeat until the thread ends."""
    import logging
    import sqlite3
    import threading

    caplog.set_level(logging.WARNING, logger="conveyor.worker")
    db = tmp_path / "tasks.db"
    app = Conveyor(f"sqlite:///{db}", lease=0.3)  # a heartbeat every 0.1 s
    entered, release = threading.Event(), threading.Event()
    beats: list[float] = []
    heartbeat = app.storage.heartbeat

    async def counted(*args: Any, **kwargs: Any) -> Any:
        reply = await heartbeat(*args, **kwargs)
        beats.append(time.monotonic())
        return reply

    monkeypatch.setattr(app.storage, "heartbeat", counted)

    @app.handler("stuck")
    def stuck(ctx: object) -> str:
        entered.set()
        release.wait(20)
        return "late"

    def lost_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()]

    async with app:
        task = await app.add("stuck")
        assert await asyncio.to_thread(entered.wait, 10)
        with sqlite3.connect(db) as conn:  # another worker took the task over
            conn.execute("UPDATE conveyor_tasks SET token = 'taken' WHERE id = ?", (task.id,))
        await until(lost_lines, timeout=10, what="the worker to notice the lost lease")
        noticed = len(beats)
        await until(lambda: len(beats) >= noticed + 5, timeout=10,
                    what="five more heartbeats with the handler still running")
        release.set()
    assert lost_lines() == [f"task {task.id}: lease lost; stopping this run"]


async def test_an_async_handler_that_swallows_the_cancellation_is_cancelled_again(
        tmp_path: Path) -> None:
    """After a lost lease each heartbeat cancels an async handler again (said once in
    the log): one that swallows a cancellation (a cleanup that awaits; one lost on
    the way, CPython gh-86296) does not run on while the task runs elsewhere."""
    import sqlite3

    db = tmp_path / "tasks.db"
    app = Conveyor(f"sqlite:///{db}", lease=0.3)  # a heartbeat every 0.1 s
    entered, again = asyncio.Event(), asyncio.Event()

    @app.handler("swallow")
    async def swallow(ctx: object) -> str:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # swallowed
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            again.set()
            raise
        return "late"

    async with app:
        task = await app.add("swallow")
        await asyncio.wait_for(entered.wait(), 10)
        with sqlite3.connect(db) as conn:  # another worker took the task over
            conn.execute("UPDATE conveyor_tasks SET token = 'taken' WHERE id = ?", (task.id,))
        await asyncio.wait_for(again.wait(), 10)  # the next heartbeat's cancellation
