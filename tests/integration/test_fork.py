"""An app used before ``os.fork()`` works in the child (gunicorn --preload, fork
pools): the child opens its own connections and loop, and leaves the parent's alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import PG_ENV, backend_url, drop_pg_schema

pytestmark = pytest.mark.serial  # forks of a process with busy threads: alone

ROOT = Path(__file__).resolve().parents[2]
KINDS = ["sqlite", *(["postgres"] if os.environ.get(PG_ENV) else [])]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_app_used_before_a_fork_works_in_the_child_and_the_parent(
        kind: str, mode: str, tmp_path: Path) -> None:
    url = backend_url(kind, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.fork_main", mode, url],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.returncode is None:  # the whole group: a hung child too
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        if kind == "postgres":
            drop_pg_schema(url)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, (out, err)
    child, parent = lines
    # the child ran a worker: its own task and the one the parent added before the fork
    expected = {"mine": 42, "parents": 10}
    if mode == "sync":  # and the on() callback registered before the fork saw both start
        expected["started"] = True
    assert child == {"child": expected}, err
    # the parent's connections survived the child (a PostgreSQL session closed by the
    # child would fail here), and it sees what the child did
    assert parent == {"child_exit": 0, "parent": {"count": 2, "first": "succeeded"}}


def test_forks_while_sqlite_threads_are_busy_leave_no_child_hung(tmp_path: Path) -> None:
    """SQLite's process-wide mutexes and lock records are copied by a fork: a child
    forked while the app's database thread or change watcher was inside SQLite used
    to hang on its first SQLite call (several of 40 forks without the fork guard).
    The parent's app goes on working across them."""
    url = backend_url("sqlite", tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.fork_main", "stress", url],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {
        "ok": 40, "failed": 0, "hung": 0, "parent_errors": []}, \
        proc.stderr
