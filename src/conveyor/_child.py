"""The child process of a ``mode="process"`` handler.

Started as ``python -m conveyor._child MODULE QUALNAME``: imports MODULE, finds
the :class:`Conveyor` app in it that registered the handler ``QUALNAME``
(handlers only ever come from an app's registry), then runs tasks one at a
time. It talks to its worker with JSON lines, never pickle:

- worker -> child on stdin: ``{"task": <task json>, "run": key, "max_payload":
  bytes}`` (the app's bound, for ``ctx.emit``), ``{"abort": reason, "run": key}``
  (the key names one run: an abort that comes before its run starts is kept for
  it; one for a run that has ended is dropped);
- child -> worker on its protocol pipe (the original stdout; the handler's
  own prints go to stderr): ``{"started": true}`` when it takes a run (a child
  that dies before it is replaced), ``{"progress": ...}``, ``{"log": ...}``,
  ``{"emit": value}``, then one of ``{"result": value}``,
  ``{"retry": {"after": s, "reason": r}}``, ``{"reschedule": {"after": s,
  "result": v}}``, ``{"error": {"type", "message", "traceback",
  "retryable"}}``, ``{"aborted": reason}``.

Each line is written by :func:`conveyor._children.encode_line`: a lone surrogate
crosses as an escape and arrives as it was given. What the handler hands the
context is checked here as in-process (``ctx.emit`` of a value that is not JSON,
or over ``max_payload``, raises ``ValidationError`` in the handler); an error's
message and traceback are escaped as in-process (:func:`conveyor.model.storable_text`).

An abort (or the run timeout, which the worker sends as an abort) cancels an
async handler, as on the worker's event loop; a sync one sees ``ctx.aborted``.
The worker kills the child when the abort is not honoured within the
handler's grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import importlib.util
import inspect
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import IO, Any

from . import _json
from ._children import ARGV_ENV, encode_line
from ._taskjson import task_from_json
from .context import Context, TaskAbortRequested
from .model import LogLevel, Progress, Reschedule, Retry, Task, storable_text

__all__ = ["main"]

Cancel = Callable[[], object]


class _Channel:
    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()
        self.max_payload: int | None = None  # the worker's, for the run under way

    def send(self, message: dict[str, Any]) -> None:
        line = encode_line(message)
        with self._lock:
            self._out.write(line)
            self._out.flush()

    def progress(self, task_id: str, progress: Progress) -> None:
        self.send({"progress": progress.to_json()})

    def log(self, task_id: str, level: LogLevel, message: str,
            data: dict[str, Any] | None) -> None:
        self.send({"log": {"level": int(level), "message": message, "data": data}})

    def emit(self, task_id: str, value: Any) -> None:
        # as the worker checks it in-process: the handler gets the ValidationError
        _json.dumps_checked(value, "emitted result", limit=self.max_payload)
        self.send({"emit": value})


def _find_handler(module_name: str, qualname: str, action: str, app_name: str) -> Any:
    """The handler of ``action`` in the app named ``app_name`` in the module (any app
    of the module when the worker's app has no name there), whose function is
    ``qualname``."""
    from .app import Conveyor
    from .sync import SyncConveyor

    if os.path.isabs(module_name) and module_name.endswith(".py"):
        spec = importlib.util.spec_from_file_location("__conveyor_main__", module_name)
        if spec is None or spec.loader is None:
            raise LookupError(f"cannot load {module_name}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["__conveyor_main__"] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    named = getattr(module, app_name, None) if app_name else None
    # the worker's app by its name; without one here (a factory's app, or one built
    # under `if __name__ == "__main__":`), the apps of the module
    values = [named] if named is not None else list(vars(module).values())
    for value in values:
        app = value.app if isinstance(value, SyncConveyor) else value
        if isinstance(app, Conveyor):
            handler = app.registry.get(action)
            if handler is not None and getattr(handler.fn, "__qualname__", None) == qualname:
                return handler
    if named is not None:
        raise LookupError(f"the app {app_name!r} of {module_name} does not register "
                          f"{qualname} for {action!r}")
    where = (f"the worker's app, {app_name!r}, is not a name of {module_name} when it is "
             "imported (built under `if __name__ == \"__main__\":`?)" if app_name else
             f"the worker's app is not a module-level name of {module_name}")
    raise LookupError(f"no Conveyor app in {module_name} registers {qualname} for {action!r}: "
                      f"{where}; the child finds a process handler through the apps of its "
                      "module")


async def _cancellable(handler: Any, ctx: Context[Any], runs: _Runs) -> Any:
    """An async handler as a task that an abort cancels, as on the worker's loop."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    runs.set_cancel(lambda: loop.call_soon_threadsafe(task.cancel))
    try:
        if ctx.aborted:  # asked before the line above
            raise asyncio.CancelledError
        return await handler.fn(ctx)
    finally:
        runs.set_cancel(None)


class _Runs:
    """The runs the worker sent, the one running now and the aborts asked for, shared
    by the main thread (which runs them) and the thread reading the worker's lines."""

    def __init__(self) -> None:
        self.queued: list[tuple[Task, str, int | None]] = []  # + the run's max_payload
        self.ready = threading.Event()
        self.key: str | None = None  # the run under way
        self.ctx: Context[Any] | None = None
        self.cancel: Cancel | None = None  # cancels its async handler
        self.aborts: dict[str, str] = {}  # run key -> reason, for runs not started
        self.lock = threading.Lock()

    def add(self, task: Task, key: str, max_payload: int | None) -> None:
        with self.lock:
            self.queued.append((task, key, max_payload))
        self.ready.set()

    def abort(self, key: str, reason: str) -> None:
        with self.lock:
            ctx, cancel = (self.ctx, self.cancel) if key == self.key else (None, None)
            if ctx is None:
                if key == self.key or any(k == key for _, k, _ in self.queued):
                    self.aborts[key] = reason  # asked before its handler started
                return  # else: a run that has ended
        ctx._request_abort(reason)
        if cancel is not None:
            with contextlib.suppress(RuntimeError):  # its loop has just closed
                cancel()

    def start(self) -> tuple[Task, int | None]:
        """Take the next run: it is the one under way from now on."""
        with self.lock:
            task, self.key, max_payload = self.queued.pop(0)
            self.ctx = self.cancel = None
            return task, max_payload

    def attach(self, ctx: Context[Any]) -> None:
        """The run's context: an abort asked for meanwhile applies to it now."""
        with self.lock:
            self.ctx = ctx
            reason = self.aborts.pop(self.key or "", None)
        if reason is not None:
            ctx._request_abort(reason)

    def set_cancel(self, cancel: Cancel | None) -> None:
        with self.lock:
            self.cancel = cancel

    def end(self) -> None:
        with self.lock:
            if self.key is not None:
                self.aborts.pop(self.key, None)
            self.key = self.ctx = self.cancel = None


def _run_one(handler: Any, channel: _Channel, runs: _Runs) -> None:
    task, channel.max_payload = runs.start()
    channel.send({"started": True})  # from here on, a death is the run's
    ctx: Context[Any] | None = None
    try:
        payload = handler.load_payload(task.payload)
        ctx = Context(task, payload, handler.environment, channel)
        runs.attach(ctx)
        if handler.is_async:
            value = asyncio.run(_cancellable(handler, ctx, runs))
        elif ctx.aborted:  # asked before the handler started: it is not called
            raise TaskAbortRequested(ctx.abort_reason or "aborted")
        else:
            value = contextvars.copy_context().run(handler.fn, ctx)
        if ctx.aborted:
            channel.send({"aborted": ctx.abort_reason or "aborted"})
        elif isinstance(value, Retry):
            channel.send({"retry": {"after": value.after, "reason": value.reason}})
        else:
            channel.send(_returned(handler, value))
    except TaskAbortRequested as exc:
        channel.send({"aborted": exc.reason})
    except asyncio.CancelledError:  # cancelled by an abort (nothing else cancels it here)
        channel.send({"aborted": (ctx.abort_reason if ctx else None) or "aborted"})
    except BaseException as exc:  # sys.exit() too ends the run, not the child, as
        # in-process, where a BaseException the handler raises is the run's error
        # (one that is not an Exception killed the child: "the handler's process died")
        channel.send(_error(exc, handler.retries(exc)))
    finally:
        runs.end()


def _error(exc: BaseException, retryable: bool) -> dict[str, Any]:
    """The message of a run that ended with ``exc``: its message and traceback as
    in-process (:meth:`conveyor.ErrorInfo.from_exception`, which the worker's bound on
    their length completes): a lone surrogate escaped, a failing ``__str__`` named
    (either killed the child, and the run's error became "the handler's process
    died")."""
    try:
        message = str(exc)
    except Exception:  # a __str__ that fails or returns no str
        message = f"<{type(exc).__name__}: str() failed>"
    return {"error": {"type": type(exc).__name__, "message": storable_text(message),
                      "traceback": storable_text("".join(traceback.format_exception(exc))),
                      "retryable": retryable}}


def _returned(handler: Any, value: Any) -> dict[str, Any]:
    """The message for what the handler returned (a value, or a ``Reschedule``): a
    value that is not JSON, or does not fit the result model, fails the run and is not
    retried, as in the worker's process (it was taken for the handler's error, and
    retried)."""
    try:
        if isinstance(value, Reschedule):
            _json.dumps_checked(value.result, "Reschedule(result=...)")
            return {"reschedule": {"after": value.after, "result": value.result}}
        result = handler.dump_result(value)
        _json.dumps_checked(result, "result")
        return {"result": result}
    except Exception as exc:  # conveyor's ValidationError, or pydantic's for the model
        return _error(exc, retryable=False)


def main(argv: list[str]) -> int:
    # A service manager's stop may signal every process of the service (systemd's
    # default): the worker decides when this one ends (it waits for the run within
    # its stop timeout, then kills it; a closed stdin ends it too).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    module_name, qualname, action, app_name = argv
    # the protocol owns the real stdout; the handler's prints go to stderr
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    channel = _Channel(proto)
    given = os.environ.pop(ARGV_ENV, None)
    if given is not None:
        sys.argv = _json.loads(given)
    try:
        handler = _find_handler(module_name, qualname, action, app_name)
    except SystemExit as exc:  # the module's code at import (a script's argparse)
        channel.send({"fatal": f"SystemExit: importing {module_name} in the handler "
                               f"process exited with {exc.code!r} (its output says why)"})
        return 2
    except Exception as exc:
        channel.send({"fatal": storable_text(f"{type(exc).__name__}: {exc}")})
        return 2
    if inspect.iscoroutinefunction(handler.fn) and not handler.is_async:  # pragma: no cover
        return 2
    channel.send({"ready": os.getpid()})
    runs = _Runs()

    def read_commands() -> None:
        for line in sys.stdin:
            message = _json.loads(line)
            key = str(message.get("run", ""))
            if "task" in message:
                bound = message.get("max_payload")
                runs.add(task_from_json(message["task"]), key,
                         bound if isinstance(bound, int) else None)
            elif "abort" in message:
                runs.abort(key, str(message["abort"]))
        os._exit(0)  # the worker closed our stdin: it is gone or done with us

    threading.Thread(target=read_commands, daemon=True).start()
    while True:
        runs.ready.wait()
        runs.ready.clear()
        while runs.queued:  # only this thread takes from it
            _run_one(handler, channel, runs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
