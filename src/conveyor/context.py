"""What a handler receives: :class:`Context`.

The same handler code works as an async function on the event loop and as a
plain function in a worker thread: ``ctx.progress(...)``, ``ctx.log.info(...)``
and ``ctx.emit(...)`` are ordinary calls that are also awaitable, so both
``await ctx.progress(1, total=3)`` and ``ctx.progress(1, total=3)`` work.
"""

from __future__ import annotations

import asyncio
import reprlib
import threading
from collections.abc import Generator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, Protocol

from typing_extensions import TypeVar

from . import _json
from .errors import ConveyorError, ValidationError
from .model import MAX_ERROR_MESSAGE, LogLevel, Progress, Task, cut_text, storable_text
from .model import seconds as check_seconds

__all__ = ["Context", "TaskAbortRequested", "TaskLogger"]

P = TypeVar("P", default=Any)  # a bare Context is Context[Any]
_EVENT_LOCK = threading.Lock()


class TaskAbortRequested(ConveyorError):
    """Raised by :meth:`Context.check_aborted` (and ``ctx.sleep``) once the task
    was asked to abort; let it propagate and the task ends ``aborted``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"abort requested: {reason}")


class _Done:
    """An already-finished awaitable, so that sync calls can also be awaited."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover


_DONE = _Done()


class RunChannel(Protocol):
    """How a context reports to its worker (implemented by the runner)."""

    def progress(self, task_id: str, progress: Progress) -> None: ...
    def log(self, task_id: str, level: LogLevel, message: str,
            data: dict[str, Any] | None) -> None: ...
    def emit(self, task_id: str, value: Any) -> None: ...


class TaskLogger:
    """Writes the task's log, kept with the task in storage.

    ``ctx.log.info("chunk %s of %s", i, n)`` formats like :mod:`logging`;
    pass ``data={...}`` to attach structured JSON to the line (copied at the call,
    as JSON: later changes to the dict are not logged). A bad level or
    ``data`` (not a dict of JSON values) raises :class:`ValidationError` in the
    handler, and nothing is written.
    """

    __slots__ = ("_channel", "_task_id")

    def __init__(self, channel: RunChannel, task_id: str) -> None:
        self._channel = channel
        self._task_id = task_id

    def log(self, level: LogLevel | str | int, message: str, *args: Any,
            data: dict[str, Any] | None = None) -> _Done:
        """Write one log line at ``level``; ``message % args`` as in :mod:`logging`; ``data`` (a
        dict with text keys and JSON values) is attached as JSON. A message over 100,000
        characters is cut there, ending ``[cut: N more characters]``."""
        parsed = LogLevel.parse(level)
        if data is not None:
            data = _check_data(data)
        text = str(message)
        if args:
            try:
                text = text % args
            except (TypeError, ValueError):
                text = " ".join([text, *map(str, args)])
        # a lone surrogate (undecodable bytes read as text) is escaped, never refused
        # by the storage when the line is written with the others; a line is cut at
        # MAX_ERROR_MESSAGE characters, as a remote service's is by the hub
        self._channel.log(self._task_id, parsed,
                          cut_text(storable_text(text), MAX_ERROR_MESSAGE), data)
        return _DONE

    def debug(self, message: str, *args: Any, data: dict[str, Any] | None = None) -> _Done:
        """Write a DEBUG line."""
        return self.log(LogLevel.DEBUG, message, *args, data=data)

    def info(self, message: str, *args: Any, data: dict[str, Any] | None = None) -> _Done:
        """Write an INFO line."""
        return self.log(LogLevel.INFO, message, *args, data=data)

    def warning(self, message: str, *args: Any, data: dict[str, Any] | None = None) -> _Done:
        """Write a WARNING line (``warn`` is the same)."""
        return self.log(LogLevel.WARNING, message, *args, data=data)

    warn = warning

    def error(self, message: str, *args: Any, data: dict[str, Any] | None = None) -> _Done:
        """Write an ERROR line."""
        return self.log(LogLevel.ERROR, message, *args, data=data)


def _check_data(data: Any) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValidationError(
            f"log data must be a dict (or None), not {type(data).__name__} "
            f"{reprlib.repr(data)}")
    for key in data:
        if not isinstance(key, str):
            raise ValidationError(f"log data keys must be strings, not {key!r}")
    copy: dict[str, Any] = _json.copy_checked(data, "log data")
    return copy


class Context(Generic[P]):
    """The handler's view of the task it runs.

    - ``ctx.task``: the :class:`Task` as claimed (status ``running``);
    - ``ctx.payload``: the payload, or an instance of the handler's pydantic
      payload model (declare it as ``ctx: Context[MyModel]``);
    - ``ctx.env`` (also ``ctx.environment``): the handler's environment;
    - ``ctx.attempt``: this run's attempt number, from 1;
    - ``ctx.progress(current, total=None, message=None, **data)``;
    - ``ctx.log``: a :class:`TaskLogger`;
    - ``ctx.emit(value)``: publish an intermediate result (``task.result``
      events and the app's result sinks);
    - ``ctx.aborted`` / ``ctx.abort_reason``: set once an abort or a run
      timeout was requested. Async handlers are also cancelled; sync
      handlers should look at ``ctx.aborted`` (or call
      ``ctx.check_aborted()``, or wait with ``ctx.wait_aborted(seconds)``).
    """

    if TYPE_CHECKING:
        payload: P

    def __init__(self, task: Task, payload: Any, environment: Any, channel: RunChannel) -> None:
        self.task = task
        self.payload = payload
        self.environment = environment
        self._channel = channel
        self._log: TaskLogger | None = None
        self._aborted = False
        self._abort_reason: str | None = None
        self._abort_event: threading.Event | None = None  # made when a sync handler waits

    # -- shortcuts ----------------------------------------------------------

    @property
    def log(self) -> TaskLogger:
        """The task's logger (see :class:`TaskLogger`)."""
        if self._log is None:
            self._log = TaskLogger(self._channel, self.task.id)
        return self._log

    @property
    def env(self) -> Any:
        """The handler's environment (what ``handler(..., environment=...)`` was given)."""
        return self.environment

    @property
    def id(self) -> str:
        """The task's id."""
        return self.task.id

    @property
    def action(self) -> str:
        """The task's action."""
        return self.task.action

    @property
    def attempt(self) -> int:
        """Which attempt this run is (1 for the first)."""
        return self.task.attempts

    @property
    def tags(self) -> Mapping[str, Any]:
        """The task's tags."""
        return self.task.tags

    # -- reporting ----------------------------------------------------------

    def progress(self, current: float | None = None, total: float | None = None,
                 message: str | None = None, **data: Any) -> _Done:
        """Report progress. Events carry every call; storage keeps a snapshot
        at most every ``progress_interval`` seconds and always the last one.
        ``current`` and ``total`` are finite numbers (or None), ``message`` text
        (a lone surrogate in it is escaped, ``\\ud800``, as in a log line),
        ``data`` JSON values; anything else raises :class:`ValidationError` in
        the handler, and nothing is reported."""
        for name, value in (("current", current), ("total", total)):
            if value is not None and not _json.is_finite_number(value):
                raise ValidationError(
                    f"progress {name} must be a finite number, not {value!r}")
        if message is not None:
            if not isinstance(message, str):
                raise ValidationError(f"progress message must be text, not {message!r}")
            message = storable_text(message)  # a lone surrogate escaped, as in a log line
        if data:
            data = _json.copy_checked(data, "progress data")
        self._channel.progress(self.task.id, Progress(current, total, message, data or None))
        return _DONE

    def emit(self, value: Any) -> _Done:
        """Publish an intermediate result."""
        self._channel.emit(self.task.id, value)
        return _DONE

    # -- abort --------------------------------------------------------------

    @property
    def aborted(self) -> bool:
        """Whether an abort was requested for this run."""
        return self._aborted

    @property
    def abort_reason(self) -> str | None:
        """Why the abort was requested, or None."""
        return self._abort_reason

    def check_aborted(self) -> None:
        """Raise :class:`TaskAbortRequested` if the task was asked to abort."""
        if self._aborted:
            raise TaskAbortRequested(self._abort_reason or "aborted")

    def wait_aborted(self, timeout: float | timedelta | None = None) -> bool:
        """Block (in a sync handler) up to ``timeout`` seconds; True if an abort came."""
        wait = check_seconds(_not_negative(timeout), "wait_aborted timeout")
        if self._aborted:
            return True
        with _EVENT_LOCK:
            if self._abort_event is None:
                self._abort_event = threading.Event()
            event = self._abort_event
        if self._aborted:
            return True
        return event.wait(wait)

    async def sleep(self, seconds: float | timedelta) -> None:
        """Sleep; raise :class:`TaskAbortRequested` if the task was aborted when the
        sleep starts or ends. An abort or the run timeout cancels an async handler
        (on the worker's event loop, or in its process with ``mode="process"``), so
        the sleep ends at once with :class:`asyncio.CancelledError`."""
        delay = check_seconds(_not_negative(seconds), "sleep", allow_none=False)
        self.check_aborted()
        await asyncio.sleep(delay or 0.0)
        self.check_aborted()

    def _request_abort(self, reason: str) -> None:
        if not self._aborted:
            self._abort_reason = reason
            self._aborted = True
            with _EVENT_LOCK:
                event = self._abort_event
            if event is not None:
                event.set()


def _not_negative(value: Any) -> Any:
    """A negative number of seconds as 0 (as ``asyncio.sleep`` and ``Event.wait`` take
    it: ``ctx.sleep(deadline - time.time())`` past the deadline returns at once)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        return 0.0
    if isinstance(value, timedelta) and value < timedelta(0):
        return 0.0
    return value
