"""The REST API's wire schemas (pydantic v2).

Request models are strict (no type coercion: ``"1"`` is not a number, ``true``
is not an integer) and refuse unknown fields. They check the shape of a
request; the meaning (a payload against a handler's model, a filter, ``delay``
and ``run_at`` together, ...) is checked by the library itself, so the REST
API accepts exactly what :meth:`conveyor.Conveyor.add` accepts, in JSON.

Response models describe :meth:`conveyor.Task.to_json` and the other bodies
the routes return; they are used for the OpenAPI document only (responses
are built from the library's own ``to_json``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ACTION_REGEX",
    "MAX_BATCH",
    "MAX_LIMIT",
    "MAX_SKIP",
    "MAX_WAIT",
    "AbortIn",
    "BatchIn",
    "BatchOut",
    "CountIn",
    "CountOut",
    "DeleteIn",
    "DeletedOut",
    "ErrorOut",
    "FindIn",
    "HealthOut",
    "LogsOut",
    "PrioritizeIn",
    "RetryIn",
    "StatsOut",
    "TaskIn",
    "TaskListOut",
    "TaskOut",
    "WorkersOut",
]

ACTION_REGEX = r"^[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,199}$"
"""Valid action names (the library's own rule)."""
MAX_BATCH = 1000
"""Most tasks in one batch add, most ids in one delete."""
MAX_LIMIT = 1000
"""Most tasks one find returns."""
MAX_SKIP = 10**9
MAX_WAIT = 60.0
"""Longest wait of one long poll, in seconds."""
MAX_INT = 2**63 - 1

Status = Literal["queued", "running", "succeeded", "failed", "aborted"]
Level = Literal["debug", "info", "warning", "error"]
Number = Annotated[float, Field(allow_inf_nan=False)]
JSONObject = dict[str, Any]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- requests ---------------------------------------------------------------------------


class BackoffIn(_In):
    """Exponential backoff between attempts (every key optional)."""

    base: Annotated[Number, Field(ge=0)] | None = None
    factor: Annotated[Number, Field(ge=1)] | None = None
    maximum: Annotated[Number, Field(ge=0)] | None = None
    jitter: Annotated[Number, Field(ge=0, le=1)] | None = None


class ConditionIn(_In):
    """A concurrency condition: run only while fewer than ``limit`` tasks whose
    status is in ``scope`` match ``query``."""

    query: JSONObject
    limit: Annotated[int, Field(ge=1, le=MAX_INT)] = 1
    scope: Status | Annotated[list[Status], Field(min_length=1)] = "running"


class TaskIn(_In):
    """A task to add: an action, a payload and the options of ``Conveyor.add``."""

    action: Annotated[str, Field(pattern=ACTION_REGEX, description="The action name.")]
    payload: Any = Field(None, description="Any JSON value (default null).")
    priority: Number | None = Field(None, description="Lower runs first (default 0).")
    delay: Annotated[Number, Field(ge=0)] | None = Field(
        None, description="Seconds from now before it may run (not with run_at).")
    run_at: Number | None = Field(
        None, description="Epoch seconds before which it does not run (not with delay).")
    tags: JSONObject | None = Field(None, description="Tag names (no dots) to JSON values.")
    max_attempts: Annotated[int, Field(ge=1, le=MAX_INT)] | None = None
    timeout: Annotated[Number, Field(gt=0)] | None = Field(None, description="Run timeout, s.")
    pickup_timeout: Annotated[Number, Field(gt=0)] | None = None
    backoff: Annotated[Number, Field(ge=0)] | BackoffIn | None = None
    unique_key: Annotated[str, Field(min_length=1, max_length=512)] | None = Field(
        None, description="Return the live task holding this key instead of a new one.")
    unique_fields: Annotated[list[Annotated[str, Field(min_length=1)]],
                             Field(min_length=1)] | None = Field(
        None, description="Payload fields to build the unique key from (not with unique_key).")
    unique_scope: Annotated[list[Status], Field(min_length=1)] | None = Field(
        None, description="Statuses the unique key is held in (must include queued).")
    concurrency: list[ConditionIn] | None = None
    parent_id: Annotated[str, Field(min_length=1, max_length=100)] | None = None


class BatchIn(_In):
    """Tasks to add all at once, or none."""

    tasks: Annotated[list[TaskIn], Field(min_length=1, max_length=MAX_BATCH)]


class FindIn(_In):
    """A query: filter (the query language), sort, limit and skip."""

    filter: JSONObject | None = None
    sort: str | list[Any] | JSONObject | None = Field(
        None, description="A field, '-field', a list of them, or an object of field: 1 / -1.")
    limit: Annotated[int, Field(ge=0, le=MAX_LIMIT)] = 100
    skip: Annotated[int, Field(ge=0, le=MAX_SKIP)] = 0


class CountIn(_In):
    filter: JSONObject | None = None


class AbortIn(_In):
    reason: Annotated[str, Field(min_length=1, max_length=1000)] = "aborted"


class RetryIn(_In):
    delay: Annotated[Number, Field(ge=0)] | None = None


class PrioritizeIn(_In):
    priority: Number


class DeleteIn(_In):
    """Finished tasks to delete: give ``ids`` or ``filter``, not both."""

    ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]],
                   Field(min_length=1, max_length=MAX_BATCH)] | None = None
    filter: JSONObject | None = None


# -- responses --------------------------------------------------------------------------


class ErrorInfoOut(_Out):
    type: str
    message: str
    traceback: str | None
    attempt: int | None
    at: float | None


class ProgressOut(_Out):
    current: float | None
    total: float | None
    message: str | None
    data: JSONObject | None = None


class BackoffOut(_Out):
    base: float
    factor: float
    maximum: float
    jitter: float


class ConditionOut(_Out):
    scope: Status | list[Status]
    query: JSONObject
    limit: int


class LogOut(_Out):
    task_id: str
    seq: int
    ts: float
    level: Level
    message: str
    data: JSONObject | None


class TaskOut(_Out):
    """A task as ``Task.to_json()`` gives it; ``public_url`` is its live stream."""

    id: str
    action: str
    payload: Any
    status: Status
    priority: float
    run_at: float
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    max_attempts: int | None
    rescues: int
    run_timeout: float | None
    pickup_timeout: float | None
    pickup_deadline: float | None
    backoff: BackoffOut | None
    worker: str | None
    lease_until: float | None
    abort_requested: str | None
    progress: ProgressOut | None
    result: Any
    error: ErrorInfoOut | None
    errors: list[ErrorInfoOut]
    reason: str | None
    unique_key: str | None
    unique_scope: list[Status]
    concurrency: list[ConditionOut]
    tags: JSONObject
    parent_id: str | None
    public_url: str = Field(description="The task's WebSocket stream (progress and logs).")
    version: int
    logs: list[LogOut] | None = Field(None, description="Only with ?logs=true.")


class BatchOut(_Out):
    tasks: list[TaskOut]
    created: list[bool] = Field(
        description="For each task, in the order given: true if it was added, false if a "
                    "live task held its unique_key and that task is in `tasks` instead.")


class TaskListOut(_Out):
    tasks: list[TaskOut]
    limit: int
    skip: int


class CountOut(_Out):
    count: int


class StatsOut(_Out):
    stats: dict[str, dict[str, int]] = Field(
        description="Task counts per action and status (only non-zero ones).")


class WorkerOut(_Out):
    id: str
    host: str
    pid: int
    actions: list[str]
    concurrency: int
    started_at: float
    last_seen: float
    running: int
    info: JSONObject
    alive: bool = Field(description="Whether it sent a heartbeat in the last 90 s.")


class WorkersOut(_Out):
    workers: list[WorkerOut]


class LogsOut(_Out):
    task_id: str
    status: Status = Field(description="The task's status, read before its logs.")
    logs: list[LogOut]
    next_seq: int = Field(description="Pass it as after_seq to read the lines that follow.")


class DeletedOut(_Out):
    deleted: list[str]


class ErrorBody(_Out):
    code: str = Field(description="A stable, machine-readable code.")
    message: str = Field(description="What went wrong, for people.")
    path: str | None = Field(None, description="Where in the input (query errors).")


class ErrorOut(_Out):
    error: ErrorBody


class HealthOut(_Out):
    status: str
    detail: str | None = None
