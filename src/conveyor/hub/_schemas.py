"""The REST API's wire schemas (pydantic v2).

Request models are strict (no type coercion: ``"1"`` is not a number, ``true``
is not an integer) and refuse unknown fields. They check the shape of a
request; the meaning (a payload against a handler's model, a filter, ``delay``
and ``run_at`` together, ...) is checked by the library itself, so the REST
API accepts exactly what :meth:`conveyor.Conveyor.add` accepts, in JSON.

Response models describe :meth:`conveyor.Task.to_json` and the other bodies
the routes return; they are used for the OpenAPI document only (responses
are built from the library's own ``to_json``).

Filters and sorts are validated by the query language, not by these models;
:data:`QUERY_SCHEMAS` describes them for the OpenAPI document as far as JSON
Schema can: the field names and paths, the operators, the forms of a sort
(the operands' types and the filter's size are left to the query language).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from .._specs import MAX_ABORT_REASON, MAX_ATTEMPTS, MAX_CONDITION_TERMS, MAX_CONDITIONS
from ..model import FIELDS, JSON_FIELDS
from ..query._parse import FIELD_OPERATORS

__all__ = [
    "ACTION_REGEX",
    "MAX_BATCH",
    "MAX_LIMIT",
    "MAX_SKIP",
    "MAX_WAIT",
    "QUERY_MARK",
    "QUERY_SCHEMAS",
    "SORT_PARAM_SCHEMA",
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
def _float_range(value: Any) -> Any:
    """An integer past a float's range is refused by name (pydantic said "input should
    be a valid number" of a number), as the Python API and the WebSocket say it."""
    if type(value) is int and abs(value) > sys.float_info.max:
        raise PydanticCustomError(
            "float_range", "must be a finite number, not an integer of about {digits} digits",
            {"digits": len(str(abs(value))) - 1})
    return value


Number = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_float_range)]
JSONObject = dict[str, Any]


# -- the query language, as JSON Schema ---------------------------------------------------


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_SEGMENT = r'[^."\\\x00-\x1f]+'
"""A segment of a path into a JSON field (no dot, quote, backslash or control character)."""
_COMMA_SEGMENT = r'(?:[^.,"\\\x00-\x1f]*[^.,"\\\s\x00-\x1f])'
"""The same in the comma form of ``?sort=`` (no comma, no space at the end)."""


def _field(segment: str) -> str:
    """A field name, or a JSON field with a dotted path (``payload.user.id``)."""
    plain = "|".join(name for name in FIELDS if name not in JSON_FIELDS)
    nested = "|".join(name for name in FIELDS if name in JSON_FIELDS)
    return rf"(?:{plain}|(?:{nested})(?:\.{segment})*)"


_WORD = ("(?:[aA][sS][cC]|[dD][eE][sS][cC])"
         "(?:[eE][nN][dD][iI][nN][gG])?")  # asc, desc, ascending, descending, any case
_DIRECTION = f"^{_WORD}$"

QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "Filter": {
        "type": "object",
        "description": "A filter of the query language (docs/query.md): field names, or "
                       "JSON fields with a dotted path (payload.user.id), each with a "
                       "condition, and the logical operators $and, $or (non-empty lists of "
                       "filters) and $not. {} matches every task.",
        "properties": {"$and": {"type": "array", "minItems": 1, "items": _ref("Filter")},
                       "$or": {"type": "array", "minItems": 1, "items": _ref("Filter")},
                       "$not": _ref("Filter")},
        "patternProperties": {f"^{_field(_SEGMENT)}$": _ref("Condition")},
        "additionalProperties": False,
    },
    "Condition": {
        "description": "A JSON scalar to compare with, or an object of operators (each "
                       "operand of the field's type: see docs/query.md).",
        "anyOf": [{"type": ["string", "number", "boolean", "null"]},
                  {"type": "object", "minProperties": 1,
                   "propertyNames": {"enum": list(FIELD_OPERATORS)},
                   "dependentRequired": {"$options": ["$regex"]}}],
    },
    "SortField": {"type": "string", "pattern": f"^{_field(_SEGMENT)}$"},
    "SignedSortField": {"type": "string", "pattern": f"^[+-]?{_field(_SEGMENT)}$",
                        "description": "A field, '-' in front for descending."},
    "SortDirection": {"anyOf": [{"type": "integer", "enum": [1, -1]},
                                {"type": "string", "pattern": _DIRECTION}],
                      "description": "1 or 'asc' (ascending), -1 or 'desc' (descending)."},
    "SortPair": {"type": "array", "prefixItems": [_ref("SortField"), _ref("SortDirection")],
                 "minItems": 2, "maxItems": 2},
    "Sort": {
        "description": "A field ('-field' for descending), a [field, direction] pair, a "
                       "list of fields, pairs and {field: direction} objects, or an object "
                       "of field: direction. An empty list or object is no sort.",
        "anyOf": [_ref("SignedSortField"), _ref("SortPair"),
                  {"type": "array", "items": {"anyOf": [
                      _ref("SignedSortField"), _ref("SortPair"),
                      {"type": "object", "minProperties": 1, "maxProperties": 1,
                       "propertyNames": _ref("SortField"),
                       "additionalProperties": _ref("SortDirection")}]}},
                  {"type": "object", "propertyNames": _ref("SortField"),
                   "additionalProperties": _ref("SortDirection")}],
    },
}
"""The schemas of filters and sorts, for the OpenAPI document's components."""


def _sort_param() -> str:
    signed = rf"[+-]?{_field(_COMMA_SEGMENT)}"
    comma = rf"{signed}(?:\s*,\s*{signed})*"
    w = r"[ \t\n\r]*"  # JSON's white space
    field = f'"{_field(_SEGMENT)}"'
    direction = f'(?:-?1|"{_WORD}")'
    pair = rf"\[{w}{field}{w},{w}{direction}{w}\]"
    entry = f"{field}{w}:{w}{direction}"
    item = rf'(?:"[+-]?{_field(_SEGMENT)}"|{pair}|\{{{w}{entry}{w}\}})'
    json = (rf'(?:"[+-]?{_field(_SEGMENT)}"|{pair}|\[{w}(?:{item}(?:{w},{w}{item})*{w})?\]'
            rf"|\{{{w}(?:{entry}(?:{w},{w}{entry})*{w})?\}})")
    return rf"^\s*(?:{comma}|{json})\s*$"


SORT_PARAM_SCHEMA: dict[str, Any] = {"type": "string", "pattern": _sort_param()}
"""``?sort=``: fields separated by commas, or a sort as JSON."""

QUERY_MARK = "x-conveyor-query"
"""Marks where a model's JSON schema is one of :data:`QUERY_SCHEMAS`; the OpenAPI
document puts a ``$ref`` there (pydantic resolves the refs it is given itself)."""
_Filter = Annotated[JSONObject, WithJsonSchema({QUERY_MARK: "Filter"})]
_Sort = Annotated[str | list[Any] | JSONObject, WithJsonSchema({QUERY_MARK: "Sort"})]


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

    query: _Filter
    limit: Annotated[int, Field(ge=1, le=MAX_INT)] = 1  # MAX_CONDITION_LIMIT
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
    max_attempts: Annotated[int, Field(ge=1, le=MAX_ATTEMPTS)] | None = None
    timeout: Annotated[Number, Field(gt=0)] | None = Field(None, description="Run timeout, s.")
    pickup_timeout: Annotated[Number, Field(gt=0)] | None = None
    backoff: Annotated[Number, Field(ge=0)] | BackoffIn | None = None
    unique_key: Annotated[str, Field(min_length=1, max_length=512)] | None = Field(
        None, description="Return the task holding this key (in scope) instead of a new one.")
    unique_fields: Annotated[list[Annotated[str, Field(min_length=1)]],
                             Field(min_length=1)] | None = Field(
        None, description="Payload fields to build the unique key from (not with unique_key).")
    unique_scope: Status | Annotated[list[Status], Field(
        min_length=1, json_schema_extra={"contains": {"const": "queued"}})] | None = Field(
        None, description="Statuses the unique key is held in (must include queued); "
                          "one status or a list, as for Conveyor.add.")
    concurrency: ConditionIn | Annotated[list[ConditionIn], Field(
        max_length=MAX_CONDITIONS)] | None = Field(
        None, description=f"One condition or a list: at most {MAX_CONDITIONS} conditions, "
                          f"with {MAX_CONDITION_TERMS} comparisons in all.")
    parent_id: Annotated[str, Field(min_length=1, max_length=100)] | None = None


class BatchIn(_In):
    """Tasks to add all at once, or none."""

    tasks: Annotated[list[TaskIn], Field(min_length=1, max_length=MAX_BATCH)]


class FindIn(_In):
    """A query: filter (the query language), sort, limit and skip."""

    filter: _Filter | None = None
    sort: _Sort | None = None
    limit: Annotated[int, Field(ge=0, le=MAX_LIMIT)] = 100
    skip: Annotated[int, Field(ge=0, le=MAX_SKIP)] = 0


class CountIn(_In):
    filter: _Filter | None = None


class AbortIn(_In):
    reason: Annotated[str, Field(min_length=1, max_length=MAX_ABORT_REASON)] = "aborted"


class RetryIn(_In):
    delay: Annotated[Number, Field(ge=0)] | None = None


class PrioritizeIn(_In):
    priority: Number


class DeleteIn(_In):
    """Finished tasks to delete: give ``ids`` or ``filter``, not both."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"oneOf": [
        {"required": ["ids"], "properties": {"ids": {"type": "array"}}},
        {"required": ["filter"], "properties": {"filter": {"type": "object"}}}]})

    ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]],
                   Field(min_length=1, max_length=MAX_BATCH)] | None = None
    filter: _Filter | None = None


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
                    "task in scope held its unique_key and that task is in `tasks` instead.")


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
