"""A worker in a script of one's own stops gracefully when a deploy stops it, as
``conveyor worker`` does: SIGTERM to ``asyncio.run(app.run())`` or to
``SyncConveyor.run()``, and a script that ends without ``close()`` after
``SyncConveyor.start()``. Each killed the process at once (or let it end) with its
task left running: the task came back only when its lease ran out, counting a
rescue, and after ``max_rescues`` deploys it failed ``worker_lost``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, Status

SCRIPT = Path(__file__).with_name("_sigterm_script.py")


@pytest.mark.parametrize("mode", ["async", "two-runs", "sync-run", "sync-exit"])
async def test_a_deploy_hands_the_running_task_back(tmp_path: Path, mode: str) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    async with Conveyor(url) as app:
        task = await app.add("long")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), url, mode,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            # until the task runs in the script (and, with two runs, both have started:
            # a SIGTERM before the second run() is under way reaches the first alone)
            while ((await app.get(task.id)).status is not Status.RUNNING
                   or (mode == "two-runs" and len(await app.workers()) < 2)):
                assert time.monotonic() < deadline and proc.returncode is None
                await asyncio.sleep(0.02)
            if mode != "sync-exit":
                proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err
        assert b"returned" in out, err
        # the stop ran while threads could still be handed work (an atexit hook came
        # after concurrent.futures had shut down: "cannot schedule new futures")
        assert b"Traceback" not in err and b"lease keeper failed" not in err, err
        back = await app.get(task.id)
    assert back.status is Status.QUEUED, back
    assert (back.attempts, back.rescues) == (0, 0)  # handed back: refunded, not rescued


async def test_run_leaves_a_sigterm_handler_the_program_put_in_place_alone(
        tmp_path: Path) -> None:
    """A program that sets its own SIGTERM handler while ``run()`` runs keeps it
    after ``run()`` ends (the end of ``run()`` removed it: the next SIGTERM killed
    the process)."""
    loop = asyncio.get_running_loop()
    app = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}")

    @app.handler("long")
    async def long(ctx: Any) -> None: ...

    await app.start()
    running = asyncio.create_task(app.run())
    try:
        await asyncio.sleep(0)  # run() takes SIGTERM at once: its worker runs already
        assert signal.SIGTERM in loop._signal_handlers  # type: ignore[attr-defined]
        mine: list[str] = []
        loop.add_signal_handler(signal.SIGTERM, mine.append, "mine")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    try:
        handle = loop._signal_handlers.get(signal.SIGTERM)  # type: ignore[attr-defined]
        assert handle is not None and handle._callback == mine.append
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


THREAD_AFTER_MAIN = """
import sys, threading
from conveyor import SyncConveyor

conv = SyncConveyor(sys.argv[1])

@conv.handler("job")
def job(ctx):
    return "done"

conv.start()
main_ended = threading.Event()

def producer():
    main_ended.wait(30)  # the program's own thread goes on after the main one
    task = conv.add("job")
    print("result", conv.wait(task.id, timeout=30), flush=True)

threading.Thread(target=producer).start()  # not a daemon
main_ended.set()
"""


async def test_the_exit_stop_waits_for_the_programs_own_threads(tmp_path: Path) -> None:
    """The stop at the interpreter's exit comes once the program's own (non-daemon)
    threads have ended: it ran when the main thread ended, and a thread still adding
    and waiting found no worker (WaitTimeout)."""
    script = tmp_path / "thread_after_main.py"
    script.write_text(THREAD_AFTER_MAIN, encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), f"sqlite:///{tmp_path / 'tasks.db'}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err
    assert b"result done" in out, (out, err)
