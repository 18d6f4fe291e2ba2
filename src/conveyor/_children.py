"""Child processes for ``mode="process"`` handlers (the worker's side).

Each child runs one task at a time and is reused; a child that does not
honour an abort or a run timeout within the handler's grace period is
killed and replaced. Messages are JSON lines (see :mod:`conveyor._child`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from . import _json
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._registry import Handler

__all__ = ["ARGV_ENV", "ARGV_MAX", "LINE_LIMIT", "SPAWN_TRIES", "Child", "ChildLineTooLong",
           "ChildPool", "HandlerUnavailable", "encode_line", "handler_location"]

ARGV_ENV = "CONVEYOR_WORKER_ARGV"
"""The environment variable that hands a child the worker's ``sys.argv`` (JSON)."""

log = logging.getLogger("conveyor.worker")


def encode_line(message: dict[str, Any]) -> bytes:
    """One message of the pipe between a worker and its child: a line of JSON in UTF-8.
    Text that UTF-8 cannot hold (a lone surrogate: undecodable bytes read as text, such
    as a file name) goes as a ``\\u`` escape, which the reader's JSON decoder turns back
    into the same text: the value arrives as it was given, and what becomes of it is
    decided as in-process (writing it as UTF-8 raised ``UnicodeEncodeError``, which
    killed the child that wrote an error's message)."""
    line = _json.dumps(message)
    try:
        return (line + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(message, allow_nan=False, separators=(",", ":")) + "\n").encode()

ARGV_MAX = 100_000
"""The longest ``sys.argv`` (in bytes of JSON) handed to a handler's child: one
environment string holds at most 128 KiB on Linux, and a longer one fails the
child's start."""
_argv_warned = False


def _worker_argv() -> str | None:
    """The worker's ``sys.argv`` as JSON for its children (each argument as text),
    or None when it is too long to hand over (once, a warning: the children then
    see their own command line)."""
    global _argv_warned
    argv = [str(arg) for arg in getattr(sys, "argv", None) or ()]
    text = json.dumps(argv)  # ASCII: any text (a lone surrogate too) goes in the environment
    if len(text) <= ARGV_MAX:
        return text
    if not _argv_warned:
        _argv_warned = True
        log.warning("the worker's command line (%d arguments) is too long to hand to its "
                    "handler processes (over %d bytes): their sys.argv is their own",
                    len(argv), ARGV_MAX)
    return None


def handler_location(handler: Handler, app: object = None) -> tuple[str, str, str, str]:
    """What a child finds its handler by: the module (or script path) and qualified
    name it imports the function from, the action, and the name ``app`` has in that
    module ("" when it has none there). A function registered for several actions,
    or by several apps of its module, runs with the options (``environment``,
    models, ``retry_on``) of the very handler that claimed the task."""
    fn = handler.fn
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname:
        raise ConfigurationError(
            f"handler for {handler.action!r} runs in a process, so it must be a module-level "
            "function")
    name = _name_in(sys.modules.get(module), app) if app is not None else ""
    if module == "__main__":
        path = getattr(sys.modules["__main__"], "__file__", None)
        if not path:
            raise ConfigurationError(
                f"handler for {handler.action!r}: a process handler cannot live in an "
                "interactive session")
        module = os.path.abspath(path)
    return module, qualname, handler.action, name


def _name_in(module: object, app: object) -> str:
    """The module-level name of ``app`` (or of a SyncConveyor of it) in ``module``."""
    from .sync import SyncConveyor

    for name, value in list(vars(module).items()) if module is not None else ():
        if value is app or (isinstance(value, SyncConveyor) and value.app is app):
            return str(name)
    return ""


SPAWN_TRIES = 3
"""Children started for one acquire when each is killed by a signal before it is ready."""

LINE_LIMIT = 64 * 1024 * 1024
"""Largest line (one message) read from a child: asyncio's default, 64 KiB, failed
results, log lines and progress over it and left the channel out of step (later runs
got the rest of the line as their messages: other tasks' results)."""


class ChildLineTooLong(Exception):
    """A child sent a line over ``LINE_LIMIT``."""


class HandlerUnavailable(Exception):
    """A new child could not find or import its handler (``kind``: the exception it
    met, such as ``LookupError``): the run fails, not retried (it would meet it again)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class Child:
    """One child process, talking JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process, key: tuple[str, ...]) -> None:
        self.proc = proc
        self.key = key
        self.runs = 0
        """Runs handed to it (see the handler option ``max_runs``)."""

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(encode_line(message))
        await self.proc.stdin.drain()

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None when the child is gone. :class:`ChildLineTooLong`
        for a line over ``LINE_LIMIT`` bytes (the child is then out of step: kill it)."""
        assert self.proc.stdout is not None
        try:
            line = await self.proc.stdout.readline()
        except ValueError:  # asyncio's limit of a line
            raise ChildLineTooLong(
                f"a message of the handler's process is over {LINE_LIMIT} bytes (a "
                f"result, log line, progress or emitted value)") from None
        if not line:
            return None
        message: dict[str, Any] = _json.loads(line)
        return message

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        await self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()


class ChildPool:
    """Idle children per handler, started on demand; at most ``max_idle`` idle in all
    (the worker's slots), the least recently used ended first: each handler kept up
    to a slot's worth of idle children, so a worker with several process handlers
    held many more processes than it could ever use at once."""

    def __init__(self, max_idle: int | None = None, app: object = None) -> None:
        self.max_idle = max_idle
        self.app = app  # the app whose handlers the children run
        self._keys: dict[str, tuple[str, ...]] = {}  # handler_location by action
        self._idle: dict[tuple[str, ...], list[Child]] = {}
        self._lru: dict[Child, None] = {}  # the idle children, least recently used first
        self._all: set[Child] = set()

    async def acquire(self, handler: Handler) -> Child:
        key = self._keys.get(handler.action)
        if key is None:  # once per action: it reads the module's globals
            key = self._keys[handler.action] = handler_location(handler, self.app)
        idle = self._idle.setdefault(key, [])
        while idle:
            child = idle.pop()
            self._lru.pop(child, None)
            if child.alive:
                return child
            self._all.discard(child)
        return await self._spawn(key)

    async def _spawn(self, key: tuple[str, ...]) -> Child:
        """A new child, ready. One killed by a signal before it said so (the OOM
        killer, a signal to the worker's process group in the moment before the
        child has a session of its own) is replaced, up to ``SPAWN_TRIES`` children:
        the task did not fail for it. One that exits by itself (its handler cannot
        be imported) is not."""
        for attempt in range(1, SPAWN_TRIES + 1):
            child, hello = await self._start(key)
            if hello is not None and "ready" in hello:
                return child
            if hello is None:  # its output ended: it is ending; how, its exit code says
                # (not killed first: Popen's kill reaps an exited child itself, and
                # asyncio's watcher then reports 255 for it)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(child.proc.wait(), 5)
            await child.kill()
            self._all.discard(child)
            code = child.proc.returncode
            if hello is None and code is not None and code < 0 and attempt < SPAWN_TRIES:
                log.warning("a handler process was killed by signal %d as it started; "
                            "starting another", -code)
                continue
            fatal = (hello or {}).get("fatal")
            if isinstance(fatal, str):  # the child said why: its handler cannot be had
                kind, _, message = fatal.partition(": ")
                raise HandlerUnavailable(kind or "LookupError", message or fatal)
            raise RuntimeError("could not start a handler process: the child process exited")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start(self, key: tuple[str, ...]) -> tuple[Child, dict[str, Any] | None]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *[p for p in sys.path if p]])
        # the module the child imports sees the worker's command line, as a
        # multiprocessing child does (a script reading its options at import)
        argv = _worker_argv()
        if argv is not None:
            env[ARGV_ENV] = argv
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "conveyor._child", *key,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            limit=LINE_LIMIT,
            # out of the worker's process group: a terminal's Ctrl-C (a signal to the
            # whole group) is the worker's to handle, its graceful stop included; the
            # child ends when the worker kills it or closes its stdin
            start_new_session=True,
        )
        child = Child(proc, key)
        self._all.add(child)
        return child, await child.receive()

    async def release(self, child: Child) -> None:
        if not child.alive:
            self._all.discard(child)
            return
        self._idle.setdefault(child.key, []).append(child)
        self._lru[child] = None
        while self.max_idle is not None and len(self._lru) > self.max_idle:
            oldest = next(iter(self._lru))
            del self._lru[oldest]
            self._idle[oldest.key].remove(oldest)
            await self.discard(oldest)

    async def discard(self, child: Child) -> None:
        self._all.discard(child)
        await child.kill()

    async def close(self) -> None:
        children, self._all = list(self._all), set()
        self._idle.clear()
        self._lru.clear()
        for child in children:
            await child.kill()
