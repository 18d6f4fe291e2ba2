"""conveyor: a durable task runner and task hub.

::

    from typing import Any

    from conveyor import Conveyor, Context

    app = Conveyor("sqlite:///tasks.db")

    @app.handler("files:download")
    async def download(ctx: Context) -> dict[str, Any]:
        await ctx.progress(1, total=1)
        return {"ok": True}

    task = await app.add("files:download", {"url": "..."})
    result = await app.wait(task.id, timeout=60)
"""

from ._worker import ErrorItem, ResultItem
from .app import DEFAULT_URL, Conveyor
from .context import Context, TaskAbortRequested, TaskLogger
from .errors import (
    ConfigurationError,
    ConveyorError,
    DrainTimeout,
    DuplicateTask,
    InvalidTransition,
    LeaseLost,
    QueryError,
    SchemaError,
    StorageError,
    TaskAborted,
    TaskFailed,
    TaskNotFound,
    UnknownAction,
    ValidationError,
    WaitTimeout,
)
from .events import Event, EventOverflow, Subscription
from .model import (
    Aborted,
    Backoff,
    Condition,
    ErrorInfo,
    LogLevel,
    LogRecord,
    Outcome,
    PermanentFailure,
    Policy,
    Progress,
    Raised,
    Reschedule,
    Retry,
    Returned,
    Status,
    Task,
    TimedOut,
    Transition,
    default_policy,
)
from .sync import SyncConveyor

__version__ = "0.1.0"
"""The version of this conveyor (the package's version)."""

__all__ = [
    "DEFAULT_URL",
    "Aborted",
    "Backoff",
    "Condition",
    "ConfigurationError",
    "Context",
    "Conveyor",
    "ConveyorError",
    "DrainTimeout",
    "DuplicateTask",
    "ErrorInfo",
    "ErrorItem",
    "Event",
    "EventOverflow",
    "InvalidTransition",
    "LeaseLost",
    "LogLevel",
    "LogRecord",
    "Outcome",
    "PermanentFailure",
    "Policy",
    "Progress",
    "QueryError",
    "Raised",
    "Reschedule",
    "ResultItem",
    "Retry",
    "Returned",
    "SchemaError",
    "Status",
    "StorageError",
    "Subscription",
    "SyncConveyor",
    "Task",
    "TaskAbortRequested",
    "TaskAborted",
    "TaskFailed",
    "TaskLogger",
    "TaskNotFound",
    "TimedOut",
    "Transition",
    "UnknownAction",
    "ValidationError",
    "WaitTimeout",
    "__version__",
    "default_policy",
]
