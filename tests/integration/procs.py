"""Starting and stopping real worker processes for tests."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
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


# -- helpers of the control and crash-safety tests (tests/control) -------------------


def start_worker_logged(env: Mapping[str, str], log_path: Path,
                        target: str = "tests.integration.apps:app",
                        ready_timeout: float = 30.0) -> subprocess.Popen[str]:
    """Start a worker process whose stderr goes to ``log_path`` (appended), so
    that a chatty worker can never block on a full pipe; wait (at most
    ``ready_timeout`` seconds) until it says it is ready."""
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.worker_main", target],
            cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=log, text=True,
        )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], ready_timeout)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        raise RuntimeError(f"worker did not start within {ready_timeout}s: {line!r}; "
                           f"log: {Path(log_path).read_text()[-2000:]}")
    return proc


def kill_worker(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a worker (if it still runs) and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    close_pipes(proc)


def close_pipes(proc: subprocess.Popen[str]) -> None:
    for stream in (proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            stream.close()


class Fleet:
    """A group of worker processes that can be killed and restarted by slot.

    ``killed`` lists the pids that were SIGKILLed (by :meth:`kill`) or found
    dead (by :meth:`restart_dead`), in order.
    """

    def __init__(self, env: Mapping[str, str], log_dir: Path,
                 target: str = "tests.integration.apps:app") -> None:
        self.env = dict(env)
        self.log_dir = Path(log_dir)
        self.target = target
        self.procs: list[subprocess.Popen[str]] = []
        self.started: list[int] = []
        self.killed: list[int] = []

    def _spawn(self) -> subprocess.Popen[str]:
        proc = start_worker_logged(self.env, self.log_dir / f"worker-{len(self.started)}.log",
                                   self.target)
        self.started.append(proc.pid)
        return proc

    def start(self, n: int) -> None:
        for _ in range(n):
            self.procs.append(self._spawn())

    def kill(self, slot: int) -> int:
        """SIGKILL the worker in ``slot``; returns its pid."""
        proc = self.procs[slot]
        kill_worker(proc)
        self.killed.append(proc.pid)
        return proc.pid

    def restart(self, slot: int) -> int:
        """Start a new worker in ``slot`` (the old one must be dead); returns its pid."""
        assert self.procs[slot].poll() is not None
        close_pipes(self.procs[slot])
        self.procs[slot] = self._spawn()
        return self.procs[slot].pid

    def restart_dead(self) -> int:
        """Restart every worker that died on its own; returns how many."""
        n = 0
        for slot, proc in enumerate(self.procs):
            if proc.poll() is not None:
                self.killed.append(proc.pid)
                self.restart(slot)
                n += 1
        return n

    def log_text(self) -> str:
        return "".join(p.read_text() for p in sorted(self.log_dir.glob("worker-*.log")))

    def close(self) -> None:
        for proc in self.procs:
            kill_worker(proc)


def pause(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGSTOP)


def resume(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGCONT)


def read_intervals(path: Path) -> list[tuple[str, str, float, float, int]]:
    """Lines of ``task_id group start end pid`` written by ``record_interval``."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        task_id, group, start, end, pid = line.split()
        out.append((task_id, group, float(start), float(end), int(pid)))
    return out


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant (touching ends do not overlap)."""
    points: list[tuple[float, int]] = []
    for start, end in intervals:
        points.append((start, 1))
        points.append((end, -1))
    points.sort(key=lambda p: (p[0], p[1]))  # an end sorts before a start at the same time
    most = now = 0
    for _, delta in points:
        now += delta
        most = max(most, now)
    return most
