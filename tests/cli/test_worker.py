"""``conveyor worker`` in a subprocess, fed by ``conveyor add --wait``, stopped by signals."""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from ._support import (
    CLI,
    STARTED_AT_IMPORT,
    Background,
    add,
    assert_error,
    clean_env,
    cli,
    eventually,
    get,
)

APP_MODULE = textwrap.dedent('''
    import asyncio
    import os

    from conveyor import Context, Conveyor, SyncConveyor

    app = Conveyor(os.environ["CONVEYOR_DB"], name="cli-test")

    @app.handler("t:echo")
    async def echo(ctx: Context) -> object:
        for step in range(1, 4):
            ctx.log.info("step %d", step)
            ctx.progress(step, total=3, message=f"step {step}")
            await asyncio.sleep(0.05)
        return {"echo": ctx.payload}

    @app.handler("t:fail")
    async def fail(ctx: Context) -> object:
        ctx.log.error("about to fail")
        raise ValueError("boom")

    @app.handler("t:short")
    async def short(ctx: Context) -> object:
        ctx.progress(0, total=1)
        await asyncio.sleep(1.0)
        return "finished"

    @app.handler("t:quiet")
    async def quiet(ctx: Context) -> object:
        ctx.log.info("one line, then nothing for a long time")
        await asyncio.sleep(300)
        return "never"

    @app.handler("t:block")
    async def block(ctx: Context) -> object:
        ctx.progress(0, total=1, message="blocking")
        await asyncio.sleep(300)
        return "never"

    sync_app = SyncConveyor(os.environ["CONVEYOR_DB"])

    @sync_app.handler("t:sync")
    def sync_handler(ctx: Context) -> object:
        return ctx.payload

    plain = Conveyor()  # no URL: $CONVEYOR_DB, as the command line reads it

    @plain.handler("t:plain")
    async def plain_handler(ctx: Context) -> object:
        return "plain"

    empty = Conveyor(os.environ["CONVEYOR_DB"])
    not_an_app = 42
''')


@pytest.fixture
def project(tmp_path: Path, db: str) -> Path:
    (tmp_path / "cliworkerapp.py").write_text(APP_MODULE, encoding="utf-8")
    return tmp_path


def start_worker(background: Callable[..., Background], project: Path, db: str,
                 *args: str) -> Background:
    worker = background("worker", "cliworkerapp:app", *args, cwd=project,
                        env=clean_env(CONVEYOR_DB=db))
    worker.wait_for("started")
    return worker


def test_worker_runs_tasks_added_with_wait_and_stops_on_sigint(
        background: Callable[..., Background], project: Path, db: str) -> None:
    worker = start_worker(background, project, db)
    started = worker.out[0]
    assert "t:echo" in started and "t:fail" in started and "concurrency 32" in started

    ok = cli("add", "t:echo", '{"n": 1}', "--wait", "--db", db)
    assert ok.code == 0, ok
    assert json.loads(ok.out) == {"echo": {"n": 1}}
    assert "warning" not in ok.err and "Traceback" not in ok.err
    assert ok.err.startswith("added task ")

    failed = cli("add", "t:fail", "--wait", "--db", db)
    assert failed.code == 1, failed
    assert failed.out == ""
    line = [x for x in failed.err.splitlines() if x.startswith("error: ")]
    assert len(line) == 1 and "failed: ValueError: boom" in line[0], failed
    assert "Traceback" not in failed.err

    as_json = cli("add", "t:echo", '"x"', "--wait", "--json", "--db", db)
    assert as_json.code == 0, as_json
    task = json.loads(as_json.out)
    assert task["status"] == "succeeded" and task["result"] == {"echo": "x"}

    # tail of a finished task prints its logs and exits with its outcome
    tailed = cli("tail", task["id"], "--db", db)
    assert tailed.code == 0, tailed
    assert [ln.split()[-2:] for ln in tailed.out.splitlines()] == [
        ["step", "1"], ["step", "2"], ["step", "3"]]
    failed_id = failed.err.split()[2]
    tail_failed = cli("tail", failed_id, "--level", "error", "--db", db)
    assert tail_failed.code == 1, tail_failed
    assert "about to fail" in tail_failed.out

    workers = cli("workers", "--json", "--db", db)
    (info,) = json.loads(workers.out)
    assert info["alive"] and "t:echo" in info["actions"]

    worker.signal(signal.SIGINT)
    assert worker.wait() == 0, (worker.out, worker.err)
    assert worker.out[-1].startswith("worker ") and "stopped (SIGINT)" in worker.out[-1]
    assert "Traceback" not in "\n".join(worker.err)
    assert json.loads(cli("workers", "--json", "--db", db).out) == []


def test_an_app_built_without_a_url_works_on_conveyor_db(
        background: Callable[..., Background], project: Path, db: str) -> None:
    """`CONVEYOR_DB=... conveyor worker mod:app` with `app = Conveyor()`: the worker and
    `conveyor add` meet on the database the variable names."""
    worker = background("worker", "cliworkerapp:plain", cwd=project,
                        env=clean_env(CONVEYOR_DB=db))
    worker.wait_for("started")
    done = cli("add", "t:plain", "--wait", "--json", env=clean_env(CONVEYOR_DB=db))
    assert done.code == 0, done
    assert json.loads(done.out)["result"] == "plain"
    assert not (project / "conveyor.db").exists()
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_tail_follows_a_running_task_to_its_end(
        background: Callable[..., Background], project: Path, db: str) -> None:
    worker = start_worker(background, project, db)
    task = add(db, "t:short")
    tailed = cli("tail", task.id, "--db", db)
    assert tailed.code == 0, tailed
    assert "succeeded" in tailed.err
    assert get(db, task.id).status == "succeeded"
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_tail_stops_at_once_when_its_reader_goes_away(
        background: Callable[..., Background], project: Path, db: str) -> None:
    """`conveyor tail ID | head -1` on a task that logs nothing more for minutes: the
    closed pipe is noticed without waiting for the next line (it waited for the task)."""
    worker = start_worker(background, project, db, "--stop-timeout", "0.2")  # the task
    # runs for 300 s: the stop hands it back instead of waiting the default 10 s
    task = add(db, "t:quiet")
    proc = subprocess.Popen([*CLI, "tail", task.id, "--db", db], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env())
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert b"one line" in proc.stdout.readline()
        proc.stdout.close()  # the reader goes away, as `| head -1` does
        code = proc.wait(20)  # the task itself runs for 300 s
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.stderr.close()
    assert code == 1 and err == b"", err.decode()
    assert get(db, task.id).status == "running"
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_add_wait_waits_for_a_worker_that_starts_later(
        background: Callable[..., Background], project: Path, db: str) -> None:
    waiting = background("add", "t:echo", "[1]", "--wait", "--db", db)
    warning = waiting.wait_for("warning:", stream="err")
    assert warning == ("warning: no running worker handles 't:echo'; "
                       "the task will wait until one does")
    worker = start_worker(background, project, db)
    assert waiting.wait() == 0, (waiting.out, waiting.err)
    assert json.loads("\n".join(waiting.out)) == {"echo": [1]}
    worker.signal(signal.SIGINT)
    assert worker.wait() == 0


def test_sigterm_hands_the_running_task_back(
        background: Callable[..., Background], project: Path, db: str) -> None:
    worker = start_worker(background, project, db, "--stop-timeout", "0.2", "--concurrency", "2")
    assert "concurrency 2" in worker.out[0]
    task = add(db, "t:block")
    eventually(lambda: get(db, task.id).status == "running", what="the task to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, (worker.out, worker.err)
    assert "stopped (SIGTERM)" in worker.out[-1]
    assert any("1 running task(s)" in line for line in worker.err), worker.err
    back = get(db, task.id)
    assert back.status == "queued"
    assert back.attempts == 0  # the interrupted attempt was refunded
    assert back.worker is None


def test_sigint_lets_the_running_task_finish(
        background: Callable[..., Background], project: Path, db: str) -> None:
    worker = start_worker(background, project, db)
    task = add(db, "t:short")
    eventually(lambda: get(db, task.id).status == "running", what="the task to start")
    worker.signal(signal.SIGINT)
    assert worker.wait() == 0, (worker.out, worker.err)
    done = get(db, task.id)
    assert done.status == "succeeded" and done.result == "finished"


def test_worker_accepts_a_sync_conveyor_and_the_demo_app(
        background: Callable[..., Background], project: Path, db: str) -> None:
    sync_worker = background("worker", "cliworkerapp:sync_app", cwd=project,
                             env=clean_env(CONVEYOR_DB=db))
    sync_worker.wait_for("started")
    ok = cli("add", "t:sync", '{"a": 1}', "--wait", "--db", db)
    assert ok.code == 0 and json.loads(ok.out) == {"a": 1}, ok
    sync_worker.signal(signal.SIGTERM)
    assert sync_worker.wait() == 0

    demo_worker = background("worker", "conveyor.demo:app", "--db", db, cwd=project)
    demo_worker.wait_for("started")
    assert "demo:flaky" in demo_worker.out[0]
    # handler options (max_attempts=3) are applied by the process that adds the task
    # when it has the handler registered; the CLI does not, so it passes them itself
    flaky = cli("add", "demo:flaky", "--max-attempts", "3", "--wait", "--json", "--db", db)
    assert flaky.code == 0, flaky
    assert json.loads(flaky.out)["attempts"] == 2
    demo_worker.signal(signal.SIGINT)
    assert demo_worker.wait() == 0


@pytest.mark.parametrize(("target", "needles"), [
    ("nosuchmodule:app", ("cannot import 'nosuchmodule'", "no module named")),
    ("cliworkerapp.py:app", ("'cliworkerapp.py' is a file path", "(cliworkerapp:app)")),
    ("sub/cliworkerapp.py", ("is a file path", "(sub.cliworkerapp:app)")),
    ("cliworkerapp:nosuch", ("has no attribute 'nosuch'",)),
    ("cliworkerapp:not_an_app", ("is a int, not a Conveyor application",)),
    ("cliworkerapp:empty", ("no handlers registered",)),
    (":app", ("expected MODULE:APP",)),
])
def test_worker_refuses_bad_targets(project: Path, db: str, target: str,
                                    needles: tuple[str, ...]) -> None:
    result = cli("worker", target, cwd=project, env=clean_env(CONVEYOR_DB=db))
    assert_error(result, 2, *needles)
    assert result.out == ""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_while_waiting_leaves_the_task_queued(
        background: Callable[..., Background], db: str, sig: signal.Signals,
        code: int) -> None:
    """Ctrl-C, and SIGTERM (which ended the command without a word)."""
    waiting = background("add", "nobody:home", "--wait", "--db", db)
    added = waiting.wait_for("added task", stream="err")
    task_id = added.split()[-1]
    waiting.signal(sig)
    assert waiting.wait() == code
    assert f"interrupted: task {task_id} goes on (queued)" in waiting.err
    assert not any("Traceback" in line for line in waiting.err)
    assert get(db, task_id).status == "queued"


def test_burst_runs_what_is_due_then_exits(project: Path, db: str) -> None:
    echoes = [add(db, "t:echo", i) for i in range(3)]
    failing = add(db, "t:fail")
    later = add(db, "t:echo", "later", delay=3600)
    done = cli("worker", "cliworkerapp:app", "--burst", cwd=project,
               env=clean_env(CONVEYOR_DB=db))
    assert done.code == 0, done
    lines = done.out.splitlines()
    assert "drained: 3 succeeded, 1 failed, 0 aborted, 0 retrying, 0 rescheduled" in lines
    assert "stopped (nothing due): 4 task run(s) finished, 4 claimed" in lines[-1]
    assert [get(db, t.id).result for t in echoes] == [{"echo": i} for i in range(3)]
    assert get(db, failing.id).status.value == "failed"
    assert get(db, later.id).status.value == "queued"  # due later: left for later
    assert json.loads(cli("workers", "--json", "--db", db).out) == []


def test_burst_stops_on_sigterm_without_draining(
        background: Callable[..., Background], project: Path, db: str) -> None:
    blocked = add(db, "t:block")
    worker = start_worker(background, project, db, "--burst", "--stop-timeout", "0.5")
    eventually(lambda: get(db, blocked.id).status.value == "running", what="claimed")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, (worker.out, worker.err)
    assert "stopped (SIGTERM)" in worker.out[-1]
    assert not any(line.startswith("drained:") for line in worker.out)
    assert get(db, blocked.id).status.value == "queued"  # handed back




def test_db_refuses_an_app_whose_worker_started_at_import(tmp_path: Path, db: str) -> None:
    """--db replaced the storage of an app whose worker already ran on its own: the
    command said "started on OTHER" while that worker went on running the module's
    database, and OTHER's tasks waited."""
    (tmp_path / "startsatimport.py").write_text(STARTED_AT_IMPORT, encoding="utf-8")
    own = f"sqlite:///{tmp_path / 'own.db'}"
    result = cli("worker", "startsatimport:conv", "--db", db, cwd=tmp_path,
                 env=clean_env(CONVEYOR_DB=own))
    assert_error(result, 2, "startsatimport:conv's worker is already running on",
                 "--db cannot move it")
    assert result.out == ""
