"""The OpenAPI 3.1 document of the hub's HTTP routes, served at ``/openapi.json``.

The paths are written here by hand; every body schema comes from the pydantic
models of :mod:`._schemas` (JSON Schema 2020-12, which OpenAPI 3.1 uses as is),
and the filters and sorts from its :data:`~._schemas.QUERY_SCHEMAS`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ._hub import Hub
from ._rest import API, DEFAULT_WAIT, MAX_LOG_LIMIT, UNSERVED_HEADER
from ._schemas import (
    MAX_LIMIT,
    MAX_SKIP,
    MAX_WAIT,
    QUERY_MARK,
    QUERY_SCHEMAS,
    SORT_PARAM_SCHEMA,
    AbortIn,
    BatchIn,
    BatchOut,
    CountIn,
    CountOut,
    DeletedOut,
    DeleteIn,
    ErrorOut,
    FindIn,
    HealthOut,
    LogsOut,
    PrioritizeIn,
    RetryIn,
    StatsOut,
    TaskIn,
    TaskListOut,
    TaskOut,
    WorkersOut,
)

__all__ = ["openapi_document"]

_INPUTS: tuple[type[BaseModel], ...] = (TaskIn, BatchIn, FindIn, CountIn, AbortIn, RetryIn,
                                        PrioritizeIn, DeleteIn)
_OUTPUTS: tuple[type[BaseModel], ...] = (TaskOut, BatchOut, TaskListOut, CountOut, StatsOut,
                                         WorkersOut, LogsOut, DeletedOut, ErrorOut, HealthOut)

_ERRORS = {
    "400": "The request cannot be read: malformed JSON, bad encoding, too deeply nested.",
    "401": "No key, or a wrong or revoked one.",
    "403": "The credential lacks the right (publish on the action, admin).",
    "404": "No such task (or the credential may not read it).",
    "413": "The body is too large.",
    "415": "The body is not JSON.",
    "422": "The input is invalid: unknown field, wrong type, malformed filter, refused option.",
    "429": "Too many failed logins from this address: locked out for a while.",
    "503": "The storage cannot be used right now.",
}
_UNSERVED = {UNSERVED_HEADER: {
    "schema": {"type": "string"},
    "description": "Present when no live worker runs some of the added tasks' actions: "
                   "those actions, comma-separated. The tasks are stored and wait for one."}}
_KEY_HELD = ("unique_key_held: a unique key is held by a task of an action the credential "
             "may not read; nothing was added.")
_CONFLICT = "The task is in the wrong state for this (for example: abort of a finished task)."


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str,
          headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": _ref(model)}}}
    if headers:
        out["headers"] = headers
    return out


def _op(summary: str, tag: str, ok: dict[str, Any], *, description: str = "",
        params: list[dict[str, Any]] | None = None, body: type[BaseModel] | None = None,
        body_required: bool = True, conflict: bool = False, task: bool = False,
        op_id: str) -> dict[str, Any]:
    responses = dict(ok)
    for code, text in _ERRORS.items():
        if code == "404" and not task:
            continue
        responses[code] = _json(ErrorOut, text)
    if conflict:
        responses["409"] = _json(ErrorOut, _CONFLICT)
    op: dict[str, Any] = {"summary": summary, "operationId": op_id, "tags": [tag],
                          "responses": dict(sorted(responses.items()))}
    if description:
        op["description"] = description
    parameters = list(params or [])
    if task:
        parameters.insert(0, _TASK_ID)
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": body_required,
                             "content": {"application/json": {"schema": _ref(body)}}}
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_TASK_ID = {"name": "task_id", "in": "path", "required": True,
            "schema": {"type": "string", "format": "uuid"}, "description": "The task's id."}
_FILTER = {"name": "filter", "in": "query", "required": False,
           "description": "A filter of the query language (docs/query.md), as JSON.",
           "content": {"application/json": {"schema": {
               "$ref": "#/components/schemas/Filter"}}}}
_LEVEL = _query("max_level", {"type": "string", "enum": ["debug", "info", "warning", "error"],
                              "default": "debug"},
                "Log lines up to this level of detail (info: error, warning and info).")


def _query_refs(node: Any) -> Any:
    """``node`` with the marks of :data:`QUERY_MARK` turned into refs to QUERY_SCHEMAS."""
    if isinstance(node, dict):
        if QUERY_MARK in node:
            return {"$ref": f"#/components/schemas/{node[QUERY_MARK]}"}
        return {key: _query_refs(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_query_refs(item) for item in node]
    return node


def openapi_document(hub: Hub) -> dict[str, Any]:
    """The OpenAPI document of ``hub``'s HTTP routes."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "validation") for m in _INPUTS), *((m, "serialization") for m in _OUTPUTS)]
    _, top = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas = {**_query_refs(top.get("$defs", {})), **QUERY_SCHEMAS}

    task_ok = {"200": _json(TaskOut, "The task.")}
    paths: dict[str, Any] = {
        f"{API}/tasks": {
            "get": _op(
                "Find tasks", "tasks", {"200": _json(TaskListOut, "The tasks found.")},
                op_id="findTasks",
                description="Tasks matching a filter, sorted and paged. Only tasks of "
                            "actions the credential may read are considered.",
                params=[_FILTER,
                        _query("sort", SORT_PARAM_SCHEMA,
                               "Fields separated by commas, '-' in front for descending "
                               "(-created_at,priority), or a sort as JSON (the Sort "
                               "schema)."),
                        _query("limit", {"type": "integer", "minimum": 0,
                                         "maximum": MAX_LIMIT, "default": 100},
                               "Most tasks returned."),
                        _query("skip", {"type": "integer", "minimum": 0, "maximum": MAX_SKIP,
                                        "default": 0}, "Tasks left out first.")]),
            "post": _op(
                "Add a task", "tasks",
                {"201": _json(TaskOut, "The task was added.", headers=_UNSERVED),
                 "200": _json(TaskOut, "A task holding the unique key in scope: that task, "
                                       "nothing added.", headers=_UNSERVED),
                 "409": _json(ErrorOut, _KEY_HELD)},
                op_id="addTask", body=TaskIn,
                description="Needs the publish right on the action."),
        },
        f"{API}/tasks/batch": {
            "post": _op(
                "Add many tasks, all or none", "tasks",
                {"201": _json(BatchOut, "The tasks (in the order given).", headers=_UNSERVED),
                 "200": _json(BatchOut, "Every task was deduplicated: nothing added.",
                              headers=_UNSERVED),
                 "409": _json(ErrorOut, _KEY_HELD)},
                op_id="addTasks", body=BatchIn,
                description="One transaction: every task is validated first and either all "
                            "are added or none is. Needs publish rights on every action."),
        },
        f"{API}/tasks/search": {
            "post": _op("Find tasks (query in the body)", "tasks",
                        {"200": _json(TaskListOut, "The tasks found.")}, op_id="searchTasks",
                        body=FindIn, body_required=False,
                        description="Like GET /tasks, for filters too big for a URL."),
        },
        f"{API}/tasks/count": {
            "get": _op("Count tasks", "tasks", {"200": _json(CountOut, "How many match.")},
                       op_id="countTasks", params=[_FILTER]),
            "post": _op("Count tasks (filter in the body)", "tasks",
                        {"200": _json(CountOut, "How many match.")}, op_id="countTasksPost",
                        body=CountIn, body_required=False),
        },
        f"{API}/tasks/delete": {
            "post": _op("Delete finished tasks", "control",
                        {"200": _json(DeletedOut, "The ids deleted.")}, op_id="deleteTasks",
                        body=DeleteIn,
                        description="By ids or by filter. Tasks that have not ended (and "
                                    "unknown ids) are left alone. Needs the admin right."),
        },
        f"{API}/tasks/{{task_id}}": {
            "get": _op("Get a task", "tasks", task_ok, op_id="getTask", task=True,
                       params=[_query("logs", {"type": "boolean", "default": False},
                                      "Include the task's log lines."), _LEVEL]),
            "delete": _op("Delete a finished task", "control",
                          {"200": _json(DeletedOut, "The id deleted.")}, op_id="deleteTask",
                          task=True, conflict=True,
                          description="409 if it has not ended. Needs the admin right."),
        },
        f"{API}/tasks/{{task_id}}/wait": {
            "get": _op(
                "Wait for a task to end (long poll)", "tasks",
                {"200": _json(TaskOut, "The task ended (any final status)."),
                 "202": _json(TaskOut, "The timeout passed first: the task as it is now; "
                                       "ask again.",
                              headers={"Retry-After": {"schema": {"type": "string"},
                                                       "description": "Always 0."}})},
                op_id="waitTask", task=True,
                params=[_query("timeout", {"type": "number", "minimum": 0,
                                           "maximum": MAX_WAIT, "default": DEFAULT_WAIT},
                               "Seconds to wait at most (0: answer at once).")]),
        },
        f"{API}/tasks/{{task_id}}/logs": {
            "get": _op("Read a task's log", "tasks",
                       {"200": _json(LogsOut, "Log lines after after_seq, oldest first.")},
                       op_id="taskLogs", task=True,
                       params=[_query("after_seq", {"type": "integer", "minimum": 0,
                                                    "maximum": 2**63 - 1, "default": 0},
                                      "Only lines with a greater seq."), _LEVEL,
                               _query("limit", {"type": "integer", "minimum": 1,
                                                "maximum": MAX_LOG_LIMIT, "default": 1000},
                                      "Most lines returned.")]),
        },
        f"{API}/tasks/{{task_id}}/abort": {
            "post": _op("Abort a task", "control", task_ok, op_id="abortTask", task=True,
                        conflict=True, body=AbortIn, body_required=False,
                        description="A queued task ends aborted at once; a running one is "
                                    "asked to stop. Needs the admin right."),
        },
        f"{API}/tasks/{{task_id}}/retry": {
            "post": _op("Queue a failed or aborted task again", "control", task_ok,
                        op_id="retryTask", task=True, conflict=True, body=RetryIn,
                        body_required=False, description="Needs the admin right."),
        },
        f"{API}/tasks/{{task_id}}/prioritize": {
            "post": _op("Change a queued task's priority", "control", task_ok,
                        op_id="prioritizeTask", task=True, conflict=True, body=PrioritizeIn,
                        description="Needs the admin right."),
        },
        f"{API}/stats": {
            "get": _op("Task counts per action and status", "overview",
                       {"200": _json(StatsOut, "Counts of the actions the credential may "
                                               "read.")}, op_id="stats"),
        },
        f"{API}/workers": {
            "get": _op("Workers and their heartbeats", "overview",
                       {"200": _json(WorkersOut, "Registered workers (of the actions the "
                                                 "credential may read).")}, op_id="workers"),
        },
        "/metrics": {
            "get": _op("Prometheus metrics", "operations",
                       {"200": {"description": "The Prometheus text format.",
                                "content": {"text/plain": {"schema": {"type": "string"}}}}},
                       op_id="metrics"),
        },
        "/openapi.json": {
            "get": _op("This document", "operations",
                       {"200": {"description": "The OpenAPI document.",
                                "content": {"application/json": {"schema": {
                                    "type": "object"}}}}}, op_id="openapi"),
        },
        "/healthz": {
            "get": _op("Liveness", "operations", {"200": _json(HealthOut, "Alive.")},
                       op_id="healthz"),
        },
        "/readyz": {
            "get": _op("Readiness", "operations",
                       {"200": _json(HealthOut, "Ready: the storage answers."),
                        "503": _json(HealthOut, "Starting, or the storage does not answer.")},
                       op_id="readyz"),
        },
    }
    for path, item in paths.items():  # /healthz and /readyz take no body and no query
        if path in ("/healthz", "/readyz"):
            for op in item.values():
                for code in ("400", "413", "415", "422"):
                    op["responses"].pop(code, None)
    security_schemes = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "Authorization: Bearer <key> (see conveyor credentials)."},
        "key": {"type": "apiKey", "in": "header", "name": "X-Conveyor-Key"},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "conveyor hub", "version": "1",
                 "description": "The REST API of a conveyor hub. See docs/http.md."},
        "servers": [{"url": hub.config.base_url}],
        "security": [] if hub.credentials is None else [{"bearer": []}, {"key": []}],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": security_schemes},
    }
