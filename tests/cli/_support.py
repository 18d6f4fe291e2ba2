"""Helpers for the CLI acceptance tests: run the real CLI in subprocesses, and look
into the SQLite file it used."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from conveyor import Conveyor, Task

T = TypeVar("T")

CLI = [sys.executable, "-m", "conveyor.cli"]
TIMEOUT = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.pop("COLUMNS", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Result:
    args: Sequence[str]
    code: int
    out: str
    err: str

    def __repr__(self) -> str:
        return f"Result({list(self.args)!r}, code={self.code}, out={self.out!r}, err={self.err!r})"


def cli(*args: str, cwd: Path | None = None, input: str | None = None,
        env: dict[str, str] | None = None, timeout: float = TIMEOUT) -> Result:
    """Run ``python -m conveyor.cli ARGS`` and collect its exit code and output."""
    proc = subprocess.run([*CLI, *args], cwd=cwd, input=input, capture_output=True, text=True,
                          env=env if env is not None else clean_env(), timeout=timeout,
                          check=False)
    return Result(args, proc.returncode, proc.stdout, proc.stderr)


def assert_error(result: Result, code: int, *needles: str) -> str:
    """The command failed with ``code`` and exactly one ``error: ...`` line on stderr
    containing every needle, and no traceback. Returns the line."""
    assert result.code == code, result
    assert "Traceback" not in result.err, result
    lines = result.err.splitlines()
    assert len(lines) == 1, result
    line = lines[0]
    assert line.startswith("error: "), result
    for needle in needles:
        assert needle in line, (needle, result)
    return line


def run(coro_fn: Callable[[Conveyor], Any], url: str) -> Any:
    """Run ``await coro_fn(app)`` on a fresh app on ``url`` and close it."""

    async def go() -> Any:
        app = Conveyor(url)
        try:
            return await coro_fn(app)
        finally:
            await app.close()

    return asyncio.run(go())


def count(url: str, filter: dict[str, Any] | None = None) -> int:
    return int(run(lambda app: app.count(filter), url))


def get(url: str, task_id: str) -> Task:
    task = run(lambda app: app.get(task_id), url)
    assert isinstance(task, Task)
    return task


def find(url: str, filter: dict[str, Any] | None = None) -> list[Task]:
    return list(run(lambda app: app.find(filter, sort="created_at"), url))


def add(url: str, action: str, payload: Any = None, **options: Any) -> Task:
    task = run(lambda app: app.add(action, payload, **options), url)
    assert isinstance(task, Task)
    return task


def eventually(check: Callable[[], T | None], *, timeout: float = 20.0,
               interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Background:
    """A CLI subprocess running in the background; its output lines are collected."""

    def __init__(self, *args: str, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen([*CLI, *args], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=env if env is not None else clean_env())
        self.out: list[str] = []
        self.err: list[str] = []
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out, "out"),
                             daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err, "err"),
                             daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, sink: list[str], name: str) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def wait_for(self, needle: str, *, stream: str = "out", timeout: float = 20.0) -> str:
        """The first line of ``stream`` containing ``needle`` (waits for it)."""
        lines = self.out if stream == "out" else self.err

        def find_line() -> str | None:
            for line in list(lines):
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                for reader in self._readers:
                    reader.join(2)
                for line in list(lines):
                    if needle in line:
                        return line
                raise AssertionError(f"{self.args} exited with {self.proc.returncode} before "
                                     f"printing {needle!r}: out={self.out} err={self.err}")
            return None

        return eventually(find_line, timeout=timeout, what=f"{needle!r} from {self.args}")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def stop(self) -> None:
        """Make sure the process is gone (used in teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


# a module that starts its app's worker when imported (a web module's habit): its
# worker runs on its own database, which --db cannot move
STARTED_AT_IMPORT = textwrap.dedent('''
    import os

    from conveyor import Context, SyncConveyor

    conv = SyncConveyor(os.environ["CONVEYOR_DB"])

    @conv.handler("w:x")
    def x(ctx: Context) -> object:
        return ctx.payload

    conv.start()  # a web module that starts its worker at import
''')
