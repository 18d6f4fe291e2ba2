"""Starting and stopping real worker processes for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def start_worker(env: Mapping[str, str], target: str = "tests.integration.apps:app",
                 ready_timeout: float = 30.0) -> subprocess.Popen[str]:
    """Start a worker process and wait until it says it is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.worker_main", target],
        cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout
    line = proc.stdout.readline()  # blocks until the worker prints or exits
    if line.strip() != "ready" or time.monotonic() > deadline:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise RuntimeError(f"worker did not start: {line!r} {err}")
    return proc


def stop_worker(proc: subprocess.Popen[str], sig: int = signal.SIGTERM,
                timeout: float = 30.0) -> int:
    """Signal a worker, wait for it to exit, close its pipes; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.communicate(timeout=timeout)
        return proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise


@contextmanager
def workers(n: int, env: Mapping[str, str]) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(n):
            procs.append(start_worker(env))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def read_ledger(path: Path) -> list[tuple[str, int, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        task_id, attempt, pid = line.split()
        out.append((task_id, int(attempt), int(pid)))
    return out
