"""A worker in a script of one's own stops gracefully when a deploy stops it, as
``conveyor worker`` does: SIGTERM to ``asyncio.run(app.run())`` or to
``SyncConveyor.run()``, and a script that ends without ``close()`` after
``SyncConveyor.start()``. Each killed the process at once (or let it end) with its
task left running: the task came back only when its lease ran out, counting a
rescue, and after ``max_rescues`` deploys it failed ``worker_lost``."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest

from conveyor import Conveyor, Status

SCRIPT = Path(__file__).with_name("_sigterm_script.py")


@pytest.mark.parametrize("mode", ["async", "sync-run", "sync-exit"])
async def test_a_deploy_hands_the_running_task_back(tmp_path: Path, mode: str) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    async with Conveyor(url) as app:
        task = await app.add("long")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), url, mode,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while (await app.get(task.id)).status is not Status.RUNNING:  # in the script
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
