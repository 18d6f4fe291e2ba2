"""A terminal's Ctrl-C (and a service manager's stop, e.g. systemd's default
KillMode) signals the worker's whole process group, handler processes
(``mode="process"``) included: a handler process took the SIGINT itself and its
task failed with ``KeyboardInterrupt`` instead of finishing within the worker's
graceful stop. Handler processes leave the signal to the worker now."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import Conveyor, Status

from ._support import until

APP = '''
import time
from conveyor import Conveyor, Context

app = Conveyor("{url}", stop_timeout=20)


@app.handler("g:slow", mode="process")
def slow(ctx: Context) -> str:
    time.sleep(1.0)
    return "done"
'''

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_to_the_process_group_lets_process_handlers_finish(
        tmp_path: Path, sig: signal.Signals) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    (tmp_path / "group_app.py").write_text(APP.format(url=url), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    async with Conveyor(url) as app:
        task = await app.add("g:slow")
        worker = await asyncio.to_thread(_start_worker, tmp_path, url, env)
        try:
            await until(lambda: _running(app, task.id), timeout=30,
                        what="the handler process to run the task")
            os.killpg(worker.pid, sig)  # the whole group, as a terminal or systemd does
            code = await asyncio.to_thread(worker.wait, 30)
            assert code == 0, (tmp_path / "worker.log").read_text()
            done = await app.get(task.id)
            assert (done.status, done.result) == (Status.SUCCEEDED, "done"), (
                done.error, (tmp_path / "worker.log").read_text())
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()


def _start_worker(tmp_path: Path, url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``conveyor worker`` as the leader of a process group of its own (as a shell
    starts a job), its output in worker.log."""
    with (tmp_path / "worker.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "worker", "group_app:app", "--db", url],
            cwd=tmp_path, env=env, stdout=log, stderr=log, start_new_session=True)


async def _running(app: Conveyor, task_id: str) -> bool:
    return (await app.get(task_id)).status is Status.RUNNING
