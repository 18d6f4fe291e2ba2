"""Every error conveyor raises on purpose derives from :class:`ConveyorError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import ErrorInfo, Task

__all__ = [
    "ConfigurationError",
    "ConveyorError",
    "DrainTimeout",
    "DuplicateTask",
    "InvalidTransition",
    "LeaseLost",
    "QueryError",
    "SchemaError",
    "StorageError",
    "TaskAborted",
    "TaskFailed",
    "TaskNotFound",
    "UnknownAction",
    "ValidationError",
    "WaitTimeout",
]


class ConveyorError(Exception):
    """Base class of conveyor's errors."""


class ValidationError(ConveyorError, ValueError):
    """Input was refused; nothing was written. The message says what and where."""


class QueryError(ValidationError):
    """A filter or sort was malformed. ``path`` points at the offending part."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class ConfigurationError(ConveyorError, ValueError):
    """A URL, option or registration does not make sense (also a ``ValueError``,
    as :class:`ValidationError` is)."""


class UnknownAction(ConveyorError, LookupError):
    """No handler is registered for an action where one is needed.

    Reserved: conveyor does not raise it today. Adding a task of an action that no
    process handles is accepted (a worker may start later, or run elsewhere); the
    CLI's ``add`` warns about it instead."""


class StorageError(ConveyorError):
    """The storage backend cannot be reached or used."""


class SchemaError(StorageError):
    """The database schema is missing, or newer than this version of conveyor."""


def _shown_id(task_id: str) -> str:
    """An id as a message shows it: quoted when it has spaces or characters that do
    not print, which would otherwise look the same as an id that exists (or as two)."""
    plain = task_id and task_id.isprintable() and not any(c.isspace() for c in task_id)
    return task_id if plain else repr(task_id)


class TaskNotFound(ConveyorError, LookupError):
    """No task has this id (``detail``, when given, says more: a task deleted while
    it was followed)."""

    def __init__(self, task_id: str, detail: str | None = None) -> None:
        self.task_id = task_id
        message = f"no task with id {_shown_id(task_id)}"
        super().__init__(message if detail is None else f"{message} ({detail})")


class InvalidTransition(ConveyorError):
    """The operation does not apply to the task in its current status
    (for example: abort of a finished task, retry of a queued one)."""

    def __init__(self, message: str, task: Task | None = None) -> None:
        self.task = task
        super().__init__(message)


class DuplicateTask(InvalidTransition):
    """A task in scope (see the guide's dedupe) already holds this unique key, where
    returning that task is not possible: :meth:`Conveyor.retry` of a task whose key
    another task took meanwhile
    (an :class:`InvalidTransition`; ``task`` is the task retried)."""


class LeaseLost(ConveyorError):
    """A worker's claim on a task was taken over; its write was refused (fencing).

    Reserved: conveyor does not raise it today. A worker whose heartbeat is refused
    stops that run as an abort with reason ``lease lost`` (the handler sees
    ``ctx.aborted``; an async one is cancelled), and a refused finish is logged and
    its result dropped."""


class WaitTimeout(ConveyorError, TimeoutError):
    """:meth:`Conveyor.wait` gave up before the task ended."""

    def __init__(self, task_id: str, timeout: float) -> None:
        self.task_id = task_id
        self.timeout = timeout
        super().__init__(f"task {task_id} did not end within {timeout:g}s")


class DrainTimeout(ConveyorError, TimeoutError):
    """:meth:`Conveyor.drain` gave up with tasks still due or running: ``left`` of
    them when it last counted, after ``timeout`` seconds."""

    def __init__(self, left: int, timeout: float) -> None:
        self.left = left
        self.timeout = timeout
        super().__init__(f"{left} task(s) still due or running after {timeout:g}s of drain()")


class TaskFailed(ConveyorError):
    """The awaited task ended ``failed``. ``task.error`` holds the last error."""

    def __init__(self, task: Task) -> None:
        self.task = task
        err = task.error
        detail = f"{err.type}: {err.message}" if err else (task.reason or "failed")
        super().__init__(f"task {task.id} ({task.action}) failed: {detail}")

    @property
    def error(self) -> ErrorInfo | None:
        """The task's last error (:class:`ErrorInfo`), or None."""
        return self.task.error


class TaskAborted(ConveyorError):
    """The awaited task ended ``aborted``. ``task.reason`` says why."""

    def __init__(self, task: Task) -> None:
        self.task = task
        super().__init__(f"task {task.id} ({task.action}) was aborted: {task.reason or 'aborted'}")
