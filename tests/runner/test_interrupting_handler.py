"""An async handler whose own code raises KeyboardInterrupt ends its process (it may
be the user's Ctrl-C), but was handed back to the queue at the stop with its attempt
refunded: every restart ran it and died again, for ever, and the task kept no trace.
Its lease is now left to expire, as after a crash: rescues count, and after
``max_rescues`` the task fails ``worker_lost``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import Conveyor, Status

from ..conftest import BACKENDS, backend_url, drop_pg_schema

SCRIPT = Path(__file__).with_name("_interrupting_handler.py")


@pytest.mark.parametrize("kind", [b for b in BACKENDS if b != "memory"])
async def test_a_handler_raising_keyboard_interrupt_is_not_a_poison_pill(
        kind: str, tmp_path: Path) -> None:
    url = backend_url(kind, tmp_path)
    app = Conveyor(url)
    try:
        task = await app.add("x:interrupt")
        runs = 0
        while runs < 8:
            runs += 1
            done = await asyncio.to_thread(
                subprocess.run, [sys.executable, str(SCRIPT), url, task.id],
                capture_output=True, text=True, timeout=60)
            now = await app.get(task.id)
            if now.status is not Status.RUNNING and now.status is not Status.QUEUED:
                assert done.returncode == 0 and "worker lost too many times" in done.stderr
                break
            assert "KeyboardInterrupt" in done.stderr, done.stderr
            # each restart finds it running (its lease left to expire), not queued again
            assert now.status is Status.RUNNING and now.attempts == 1
        ended = await app.get(task.id)
        assert ended.status is Status.FAILED and ended.reason == "worker_lost"
        assert ended.rescues == 2 and runs <= 4
    finally:
        await app.close()
        if kind == "postgres":
            drop_pg_schema(url)
