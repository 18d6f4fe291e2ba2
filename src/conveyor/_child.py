"""The child process of a ``mode="process"`` handler.

Started as ``python -m conveyor._child MODULE QUALNAME``: imports MODULE, finds
the :class:`Conveyor` app in it that registered the handler ``QUALNAME``
(handlers only ever come from an app's registry), then runs tasks one at a
time. It talks to its worker with JSON lines, never pickle:

- worker -> child on stdin: ``{"task": <task json>}``, ``{"abort": reason}``;
- child -> worker on its protocol pipe (the original stdout; the handler's
  own prints go to stderr): ``{"progress": ...}``, ``{"log": ...}``,
  ``{"emit": value}``, then one of ``{"result": value}``,
  ``{"retry": {"after": s, "reason": r}}``, ``{"reschedule": {"after": s,
  "result": v}}``, ``{"error": {"type", "message", "traceback",
  "retryable"}}``, ``{"aborted": reason}``.

The worker kills the child when an abort or a run timeout is not honoured
within the handler's grace period.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import importlib.util
import inspect
import os
import sys
import threading
import traceback
from typing import IO, Any

from . import _json
from .context import Context, TaskAbortRequested
from .model import LogLevel, Progress, Reschedule, Retry, Status, Task

__all__ = ["main"]


class _Channel:
    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = _json.dumps(message)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def progress(self, task_id: str, progress: Progress) -> None:
        self.send({"progress": progress.to_json()})

    def log(self, task_id: str, level: LogLevel, message: str,
            data: dict[str, Any] | None) -> None:
        self.send({"log": {"level": int(level), "message": message, "data": data}})

    def emit(self, task_id: str, value: Any) -> None:
        self.send({"emit": value})


def _find_handler(module_name: str, qualname: str) -> Any:
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
    for value in vars(module).values():
        app = value.app if isinstance(value, SyncConveyor) else value
        if isinstance(app, Conveyor):
            for handler in app.registry.handlers():
                if getattr(handler.fn, "__qualname__", None) == qualname:
                    return handler
    raise LookupError(f"no Conveyor app in {module_name} registers {qualname}")


def _task_from_json(raw: dict[str, Any]) -> Task:
    return Task(id=raw["id"], action=raw["action"], payload=raw["payload"],
                status=Status(raw["status"]), priority=raw["priority"], run_at=raw["run_at"],
                created_at=raw["created_at"], updated_at=raw["updated_at"],
                started_at=raw["started_at"], attempts=raw["attempts"],
                max_attempts=raw["max_attempts"], rescues=raw["rescues"],
                run_timeout=raw["run_timeout"], worker=raw["worker"], tags=raw["tags"],
                parent_id=raw["parent_id"], result=raw["result"], version=raw["version"])


def _run_one(handler: Any, task: Task, channel: _Channel, current: list[Context[Any]]) -> None:
    try:
        payload = handler.load_payload(task.payload)
        ctx: Context[Any] = Context(task, payload, handler.environment, channel)
        current[:] = [ctx]
        if handler.is_async:
            value = asyncio.run(handler.fn(ctx))
        else:
            value = contextvars.copy_context().run(handler.fn, ctx)
        if ctx.aborted:
            channel.send({"aborted": ctx.abort_reason or "aborted"})
        elif isinstance(value, Retry):
            channel.send({"retry": {"after": value.after, "reason": value.reason}})
        elif isinstance(value, Reschedule):
            channel.send({"reschedule": {"after": value.after, "result": value.result}})
        else:
            channel.send({"result": handler.dump_result(value)})
    except TaskAbortRequested as exc:
        channel.send({"aborted": exc.reason})
    except Exception as exc:
        channel.send({"error": {"type": type(exc).__name__, "message": str(exc),
                                "traceback": "".join(traceback.format_exception(exc)),
                                "retryable": handler.retries(exc)}})
    finally:
        current[:] = []


def main(argv: list[str]) -> int:
    module_name, qualname = argv
    # the protocol owns the real stdout; the handler's prints go to stderr
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    channel = _Channel(proto)
    try:
        handler = _find_handler(module_name, qualname)
    except Exception as exc:
        channel.send({"fatal": f"{type(exc).__name__}: {exc}"})
        return 2
    if inspect.iscoroutinefunction(handler.fn) and not handler.is_async:  # pragma: no cover
        return 2
    channel.send({"ready": os.getpid()})
    current: list[Context[Any]] = []
    work: list[Task] = []
    ready = threading.Event()

    def read_commands() -> None:
        for line in sys.stdin:
            message = _json.loads(line)
            if "task" in message:
                work.append(_task_from_json(message["task"]))
                ready.set()
            elif "abort" in message:
                for ctx in list(current):
                    ctx._request_abort(str(message["abort"]))
        os._exit(0)  # the worker closed our stdin: it is gone or done with us

    threading.Thread(target=read_commands, daemon=True).start()
    while True:
        ready.wait()
        ready.clear()
        while work:
            _run_one(handler, work.pop(0), channel, current)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
