"""The REST API: everything the library can do, JSON in and out, under ``/api/v1``.

Every route authenticates first (401 / 403 / 429 through
:func:`auth_error_response`), then reads and checks its input, then acts.
Bad input is a 400 (the request cannot be read: malformed JSON, bad
encoding), 413 (too large), 415 (not JSON) or 422 (readable but invalid: an
unknown field, a wrong type, a malformed filter, a payload the library
refuses), and nothing is written. Errors are ``{"error": {"code", "message"}}``.

Permissions (see :class:`~conveyor.hub.Credential`): adding needs the publish
right on every task's action; reading a task needs publish or subscribe on
its action (tasks a credential may not read are answered 404, as if they did
not exist); find, count, stats, workers and metrics only ever see the actions
a credential may read (the restriction is part of the query, before sort,
skip and limit); abort, retry, prioritize and delete need the admin right.

The reference is ``docs/http.md``; the OpenAPI document is served at
``/openapi.json`` (see :mod:`._openapi`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import pydantic
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .. import _json
from .._specs import ADD_OPTIONS
from ..client._unserved import UNSERVED_HEADER
from ..errors import (
    ConveyorError,
    DuplicateTask,
    InvalidTransition,
    QueryError,
    StorageError,
    TaskNotFound,
    ValidationError,
    WaitTimeout,
)
from ..model import LogLevel, Task
from ..query import Filter, parse_filter, parse_query
from ..query._tree import scoped
from ..storage import WorkerInfo
from ._credentials import Credential, matches_pattern, read_scope
from ._http import auth_error_response, error_response, request_credential
from ._hub import WORKER_STALE_AFTER, AuthError, Hub
from ._metrics import Metrics
from ._publish import KeyHeld, add_as
from ._schemas import (
    MAX_LIMIT,
    MAX_SKIP,
    MAX_WAIT,
    AbortIn,
    BatchIn,
    CountIn,
    DeleteIn,
    FindIn,
    PrioritizeIn,
    RetryIn,
    TaskIn,
)
from ._ws_proto import MAX_DEPTH

__all__ = [
    "API",
    "MAX_BODY",
    "MAX_DEPTH",
    "UNSERVED_HEADER",
    "WORKER_STALE_AFTER",
    "Problem",
    "rest_exception_handlers",
    "rest_routes",
    "scope_filter",
]

log = logging.getLogger("conveyor.hub")

API = "/api/v1"
MAX_BODY = 16 << 20
"""Largest request body, in bytes (a payload is also held to the app's ``max_payload``)."""
DEFAULT_WAIT = 30.0
MAX_LOG_LIMIT = 10_000

M = TypeVar("M", bound=pydantic.BaseModel)
Handler = Callable[[Request, Credential], Awaitable[Response]]


class Problem(Exception):
    """An error answer: HTTP ``status``, a stable ``code``, a ``message``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


# -- routing -------------------------------------------------------------------------


def _endpoint(hub: Hub, handlers: Mapping[str, Handler], literals: Mapping[str, str]
              ) -> Callable[[Request], Awaitable[Response]]:
    """One endpoint for a path: authenticate, dispatch on the method, turn errors
    into answers. ``literals``: values of ``{task_id}`` that name another route
    (``/tasks/count``), with the methods it allows: other methods get a 405."""

    async def endpoint(request: Request) -> Response:
        try:
            cred = request_credential(hub, request)
        except AuthError as exc:
            return auth_error_response(exc)
        allow = literals.get(request.path_params.get("task_id", ""))
        if allow is not None:
            response = error_response(405, "method_not_allowed",
                                      f"{request.method} is not allowed on {request.url.path}")
            response.headers["Allow"] = allow
            return response
        method = "GET" if request.method == "HEAD" else request.method
        handler = handlers.get(method)
        if handler is None:  # pragma: no cover - Starlette answers 405 first
            return error_response(405, "method_not_allowed", "method not allowed")
        try:
            return await handler(request, cred)
        except AuthError as exc:  # revoked during a long poll
            return auth_error_response(exc)
        except ClientDisconnect:  # gone mid-request (its body): nobody reads an answer
            log.debug("client left during %s %s", request.method, request.url.path)
            return Response(status_code=204)
        except Problem as exc:
            return error_response(exc.status, exc.code, exc.message, **exc.extra)
        except QueryError as exc:
            return error_response(422, "invalid_query", str(exc), path=exc.path or "body")
        except ValidationError as exc:
            # raised by the library on a body, or on the task id of the URL
            message = str(exc)
            where = (library_path(message) if method == "POST"
                     and not message.startswith("a task id") else "task_id")
            return error_response(422, "invalid", message, path=where)
        except TaskNotFound as exc:
            return error_response(404, "not_found", str(exc))
        except InvalidTransition as exc:
            # a retry whose unique key another task took: the client raises DuplicateTask
            extra = {"duplicate": True} if isinstance(exc, DuplicateTask) else {}
            return error_response(409, "invalid_transition", str(exc), **extra)
        except StorageError as exc:
            log.warning("storage error on %s %s: %s", request.method, request.url.path, exc)
            return error_response(503, "storage_unavailable", f"storage unavailable: {exc}")
        except ConveyorError as exc:
            return error_response(409, "refused", str(exc))

    return endpoint


def _path(hub: Hub, path: str, literals: Mapping[str, str] | None = None,
          **handlers: Handler) -> Route:
    methods = [m.upper() for m in handlers]
    return Route(path, _endpoint(hub, {m.upper(): h for m, h in handlers.items()},
                                 literals or {}), methods=methods)


def rest_exception_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """JSON bodies for Starlette's own answers (unknown path 404, wrong method
    405) and for unexpected errors (500)."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {404: f"no route {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail))
        response = error_response(exc.status_code, code, message)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal", f"internal error ({type(exc).__name__})")

    return {HTTPException: http_error, Exception: server_error}


def rest_routes(hub: Hub) -> list[BaseRoute]:
    """The REST routes, ``/metrics`` and ``/openapi.json``; registers the metrics service."""
    from ._openapi import openapi_document

    metrics = Metrics(hub)
    hub.services.append(metrics)
    api = _Api(hub)
    document: dict[str, Any] = {}

    async def get_metrics(request: Request, cred: Credential) -> Response:
        _no_query(request)
        body = await metrics.render(cred)
        return Response(body, media_type=metrics.content_type)

    async def get_openapi(request: Request, cred: Credential) -> Response:
        _no_query(request)
        if not document:
            document.update(openapi_document(hub))
        return JSONResponse(document)

    # /tasks/count and its siblings, reached with a method they do not take,
    # would otherwise be read as /tasks/{task_id}
    lit = {"batch": "POST", "search": "POST", "count": "GET, HEAD, POST", "delete": "POST"}
    return [
        _path(hub, f"{API}/tasks", get=api.find_get, post=api.add),
        _path(hub, f"{API}/tasks/batch", post=api.add_batch),
        _path(hub, f"{API}/tasks/search", post=api.find_post),
        _path(hub, f"{API}/tasks/count", get=api.count_get, post=api.count_post),
        _path(hub, f"{API}/tasks/delete", post=api.delete_many),
        _path(hub, f"{API}/tasks/{{task_id}}", lit, get=api.get, delete=api.delete_one),
        _path(hub, f"{API}/tasks/{{task_id}}/wait", get=api.wait),
        _path(hub, f"{API}/tasks/{{task_id}}/logs", get=api.logs),
        _path(hub, f"{API}/tasks/{{task_id}}/abort", post=api.abort),
        _path(hub, f"{API}/tasks/{{task_id}}/retry", post=api.retry),
        _path(hub, f"{API}/tasks/{{task_id}}/prioritize", post=api.prioritize),
        _path(hub, f"{API}/stats", get=api.stats),
        _path(hub, f"{API}/workers", get=api.workers),
        _path(hub, "/metrics", get=get_metrics),
        _path(hub, "/openapi.json", get=get_openapi),
    ]


# -- input ---------------------------------------------------------------------------


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) and
    bodies that are not JSON (415)."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise Problem(400, "bad_request", "Content-Length is not a number") from None
        if declared > limit:
            raise Problem(413, "too_large", f"the body is {declared} bytes, over the limit of "
                                            f"{limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, "too_large", f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if body.strip():
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json"):
            raise Problem(415, "unsupported_media_type",
                          "the body must be JSON (Content-Type: application/json), not "
                          f"{kind or 'a body without a Content-Type'}")
    return body


def loads(text: bytes | str, what: str = "the body") -> Any:
    """Parse JSON strictly (:func:`conveyor._json.loads_strict`), nesting at most
    :data:`MAX_DEPTH` deep. Raises :class:`Problem` (400)."""
    try:
        return _json.loads_strict(text, what, MAX_DEPTH)
    except ValueError as exc:
        raise Problem(400, "invalid_json", str(exc)) from None


_TAG = re.compile(r"^(float|int|str|bool|none|list\[.*\]|dict\[.*\]|[A-Z]\w*|literal\[.*\]"
                  r"|constrained-.*|function-.*|json-or-python\[.*\])$")


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _TAG.match(part):
            out += f".{part}" if out else part
    return out or "body"


def validation_message(exc: pydantic.ValidationError, limit: int = 3) -> tuple[str, str]:
    """A readable message for a pydantic error (its first few problems) and the
    location of the first."""
    parts = []
    seen = set()
    first = ""
    for err in exc.errors(include_url=False, include_input=False):
        where = _location(tuple(err["loc"]))
        first = first or where
        if err["type"] == "extra_forbidden":
            text = f"{where}: unknown field"
        elif err["type"] == "missing":
            text = f"{where}: required"
        elif err["type"] == "string_pattern_mismatch" and where.endswith("action"):
            text = (f"{where}: invalid action name: use 1-200 letters, digits and _ . : / - "
                    "(for example 'mail:send')")
        else:
            text = f"{where}: {err['msg'][0].lower()}{err['msg'][1:]}"
        if text not in seen:
            seen.add(text)
            parts.append(text)
    more = len(parts) - limit
    message = "; ".join(parts[:limit]) + (f" (and {more} more)" if more > 0 else "")
    return message, first


_INDEX = re.compile(r"task (\d+): ")
_FIELD = re.compile(r"([A-Za-z_]\w*(?:\[\d+\]|\.[\w$]+)*): ")
_EITHER = re.compile(r"give (\w+) or (\w+)")
_NAMED = re.compile(r"([a-z_]+) ")
_TASK_FIELDS = frozenset({"action", "payload", *ADD_OPTIONS})


def library_path(message: str, *, batch: bool = False, size: int = 1) -> str:
    """The ``path`` of a :class:`ValidationError` raised by the library on a body:
    the field its message starts with (``tags: ...``, ``task 1: delay: ...``,
    ``payload is 2048 bytes, over the limit ...``), the first of two fields it
    says not to combine, else the whole body (or task)."""
    prefix = ""
    found = _INDEX.match(message)
    if found:
        prefix, message = f"tasks[{found[1]}]", message[found.end():]
    elif batch:
        prefix = "tasks[0]" if size == 1 else "tasks"
    field = _FIELD.match(message) or _EITHER.match(message)
    if field is None:
        named = _NAMED.match(message)
        if named is not None and named[1] in _TASK_FIELDS:
            field = named
    if field is None or (prefix == "tasks" and not found):
        return prefix or "body"
    return f"{prefix}.{field[1]}" if prefix else field[1]


def validate(model: type[M], value: Any) -> M:
    """``value`` as ``model`` (strict), or a 422 that names the fields."""
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        kind = {"dict": "object", "list": "array", "str": "string", "bool": "boolean",
                "int": "number", "float": "number"}.get(kind, kind)
        raise Problem(422, "invalid", f"the body must be a JSON object, not {kind}", path="body")
    try:
        return model.model_validate(value)
    except pydantic.ValidationError as exc:
        message, where = validation_message(exc)
        raise Problem(422, "invalid", message, path=where) from None


async def body_as(request: Request, model: type[M], *, required: bool = True) -> M:
    body = await read_body(request)
    if not body.strip():
        if required:
            raise Problem(422, "invalid", "a JSON body is required", path="body")
        return model()
    return validate(model, loads(body))


def query_params(request: Request, allowed: set[str]) -> dict[str, str]:
    """The query parameters, each at most once; unknown ones are refused (422), and
    so is one whose percent-escapes are not UTF-8 (``filter`` and ``sort``: 400
    ``invalid_json``, as a body that is not UTF-8). Starlette's own parsing
    replaced such bytes with U+FFFD, and the query ran with them."""
    out: dict[str, str] = {}
    raw = request.scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(raw, keep_blank_values=True, errors="surrogateescape"):
        if not (_utf8(name) and _utf8(value)):
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            if name in ("filter", "sort"):
                raise Problem(400, "invalid_json", f"query parameter {name!r} is not UTF-8")
            raise Problem(422, "invalid", f"query parameter {shown!r} is not UTF-8",
                          path=shown)
        if name not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise Problem(422, "invalid", f"unknown query parameter {name!r} (accepted: {names})",
                          path=name)
        if name in out:
            raise Problem(422, "invalid", f"query parameter {name!r} is given more than once",
                          path=name)
        out[name] = value
    return out


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a byte of no UTF-8 sequence, kept as a surrogate
        return False
    return True


def _no_query(request: Request) -> None:
    query_params(request, set())


def int_param(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    text = raw
    if not re.fullmatch(r"[+-]?[0-9]+", text):  # ASCII digits only, no spaces
        raise Problem(422, "invalid", f"{name} must be an integer, not {raw!r}", path=name)
    if len(text.lstrip("+-").lstrip("0")) > 20:  # no huge int() of a hostile value
        raise Problem(422, "invalid", f"{name} must be between {lo} and {hi}, not "
                                      f"{text[:24]}...", path=name)
    value = int(text)
    if not lo <= value <= hi:
        raise Problem(422, "invalid", f"{name} must be between {lo} and {hi}, not {value}",
                      path=name)
    return value


_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def float_param(params: Mapping[str, str], name: str, default: float, lo: float,
                hi: float) -> float:
    raw = params.get(name)
    if raw is None:
        return default
    if not _NUMBER.fullmatch(raw):  # float() would take spaces, '_', other digits, 'inf'
        raise Problem(422, "invalid", f"{name} must be a number, not {raw!r}", path=name)
    value = float(raw)
    if not lo <= value <= hi:  # also refuses nan
        raise Problem(422, "invalid", f"{name} must be between {lo:g} and {hi:g}, not {raw!r}",
                      path=name)
    return value


def bool_param(params: Mapping[str, str], name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    value = {"true": True, "1": True, "false": False, "0": False}.get(raw.strip().lower())
    if value is None:
        raise Problem(422, "invalid", f"{name} must be true or false, not {raw!r}", path=name)
    return value


def level_param(params: Mapping[str, str], name: str = "max_level") -> LogLevel:
    raw = params.get(name)
    if raw is None:
        return LogLevel.DEBUG
    try:
        level = LogLevel[raw.strip().upper()]
    except KeyError:
        names = ", ".join(level.name.lower() for level in LogLevel)
        raise Problem(422, "invalid", f"{name} must be one of {names}, not {raw!r}",
                      path=name) from None
    return level


def filter_param(params: Mapping[str, str]) -> dict[str, Any] | None:
    raw = params.get("filter")
    if raw is None:
        return None
    if not raw.strip():
        raise Problem(422, "invalid_query", "filter: the filter is empty: give a JSON object "
                                            "({} matches every task) or leave filter out",
                      path="filter")
    value = loads(raw, "the filter parameter")
    if not isinstance(value, dict):
        raise Problem(422, "invalid_query", "filter: a filter is a JSON object", path="filter")
    return value


def sort_param(params: Mapping[str, str]) -> Any:
    """``sort``: fields separated by commas (``-created_at,priority``), or JSON."""
    raw = params.get("sort")
    if raw is None:
        return None
    text = raw.strip()
    if text and text[0] in "[{\"":
        return loads(text, "the sort parameter")
    fields = [part.strip() for part in text.split(",")]
    if not all(fields):
        raise Problem(422, "invalid_query", f"sort: every field must be named (comma-separated "
                                            f"fields such as -priority,created_at), not {raw!r}",
                      path="sort")
    return fields


# -- permissions -------------------------------------------------------------------------


def scope_filter(cred: Credential, filter: Mapping[str, Any] | None
                 ) -> tuple[bool, Filter | None]:
    """``filter`` restricted to the actions ``cred`` may read: ``(any, filter)``.
    ``any`` is False when the credential may read no action at all. Errors in the
    caller's filter keep its own paths (``filter.payload...``), also those the
    storage finds."""
    patterns = cred.readable
    if cred.admin or "*" in patterns:
        return True, parse_filter(filter) if filter else None
    if not patterns:
        return False, None
    return True, scoped(read_scope(patterns), parse_filter(filter))


def require_admin(cred: Credential, what: str) -> None:
    if not cred.admin:
        raise Problem(403, "forbidden", f"credential {cred.name!r} may not {what}: that needs "
                                        "the admin right")


def worker_visible(cred: Credential, worker: WorkerInfo) -> WorkerInfo | None:
    """The worker as ``cred`` may see it: only the actions it may read; None if none."""
    if cred.admin:
        return worker
    readable = cred.readable
    # a worker's action may itself be a pattern (mail:*): shown to those holding it
    actions = tuple(a for a in worker.actions if matches_pattern(a, readable))
    if not actions:
        return None
    return replace(worker, actions=actions)


# -- the routes --------------------------------------------------------------------------


class _Api:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.app = hub.app

    def task_json(self, task: Task) -> dict[str, Any]:
        data = task.to_json()
        data["public_url"] = self.hub.task_url(task.id)
        return data

    async def readable_task(self, cred: Credential, task_id: str, *, logs: bool = False,
                            max_level: LogLevel = LogLevel.DEBUG) -> Task:
        task = await self.app.get(task_id, logs=logs, max_level=max_level)
        if not cred.can_read(task.action):
            raise TaskNotFound(task_id)
        return task

    # -- adding

    def _check_publish(self, cred: Credential, tasks: list[TaskIn]) -> None:
        for i, task in enumerate(tasks):
            if not cred.can_publish(task.action):
                where = f"task {i}: " if len(tasks) > 1 else ""
                raise Problem(403, "forbidden", f"{where}credential {cred.name!r} may not "
                                                f"publish {task.action!r}")

    async def _add(self, cred: Credential, tasks: list[TaskIn], *,
                   batch: bool) -> tuple[list[Task], list[bool]]:
        try:
            added = await add_as(self.app, cred,
                                 [t.model_dump(exclude_unset=True) for t in tasks])
        except KeyHeld as exc:
            raise Problem(409, "unique_key_held", str(exc)) from None
        except QueryError:
            raise
        except ValidationError as exc:
            message = str(exc)
            raise Problem(422, "invalid", message,
                          path=library_path(message, batch=batch, size=len(tasks))) from None
        return [task for task, _ in added], [created for _, created in added]

    async def _unserved_header(self, tasks: list[Task]) -> dict[str, str]:
        """``X-Conveyor-Unserved``: the actions of unfinished tasks no live worker runs."""
        unserved = await self.hub.unserved(t.action for t in tasks if not t.terminal)
        return {UNSERVED_HEADER: ", ".join(unserved)} if unserved else {}

    async def add(self, request: Request, cred: Credential) -> Response:
        _no_query(request)
        task_in = await body_as(request, TaskIn)
        self._check_publish(cred, [task_in])
        (task,), (created,) = await self._add(cred, [task_in], batch=False)
        return JSONResponse(self.task_json(task), status_code=201 if created else 200,
                            headers=await self._unserved_header([task]))

    async def add_batch(self, request: Request, cred: Credential) -> Response:
        _no_query(request)
        batch = await body_as(request, BatchIn)
        self._check_publish(cred, batch.tasks)
        tasks, created = await self._add(cred, batch.tasks, batch=True)
        return JSONResponse({"tasks": [self.task_json(t) for t in tasks], "created": created},
                            status_code=201 if any(created) else 200,
                            headers=await self._unserved_header(tasks))

    # -- reading

    async def get(self, request: Request, cred: Credential) -> Response:
        params = query_params(request, {"logs", "max_level"})
        with_logs = bool_param(params, "logs", False)
        level = level_param(params)
        task = await self.readable_task(cred, request.path_params["task_id"], logs=with_logs,
                                        max_level=level)
        return JSONResponse(self.task_json(task))

    async def _find(self, cred: Credential, query: FindIn) -> Response:
        parse_query(query.filter, query.sort, query.limit, query.skip,  # errors name the input
                    bounded=True)
        readable, where = scope_filter(cred, query.filter)
        tasks = await self.app.find(where, sort=query.sort, limit=query.limit,
                                    skip=query.skip) if readable else []
        return JSONResponse({"tasks": [self.task_json(t) for t in tasks],
                             "limit": query.limit, "skip": query.skip})

    async def find_get(self, request: Request, cred: Credential) -> Response:
        params = query_params(request, {"filter", "sort", "limit", "skip"})
        query = FindIn.model_construct(filter=filter_param(params), sort=sort_param(params),
                                       limit=int_param(params, "limit", 100, 0, MAX_LIMIT),
                                       skip=int_param(params, "skip", 0, 0, MAX_SKIP))
        return await self._find(cred, query)

    async def find_post(self, request: Request, cred: Credential) -> Response:
        _no_query(request)
        return await self._find(cred, await body_as(request, FindIn, required=False))

    async def _count(self, cred: Credential, filter: dict[str, Any] | None) -> Response:
        parse_filter(filter, bounded=True)
        readable, where = scope_filter(cred, filter)
        return JSONResponse({"count": await self.app.count(where) if readable else 0})

    async def count_get(self, request: Request, cred: Credential) -> Response:
        params = query_params(request, {"filter"})
        return await self._count(cred, filter_param(params))

    async def count_post(self, request: Request, cred: Credential) -> Response:
        _no_query(request)
        body = await body_as(request, CountIn, required=False)
        return await self._count(cred, body.filter)

    async def stats(self, request: Request, cred: Credential) -> Response:
        _no_query(request)
        stats = await self.hub.stats.read()
        if not cred.admin:
            stats = {a: counts for a, counts in stats.items() if cred.can_read(a)}
        return JSONResponse({"stats": stats})

    async def workers(self, request: Request, cred: Credential) -> Response:
        _no_query(request)
        now = time.time()
        out = []
        for worker in await self.app.workers():
            shown = worker_visible(cred, worker)
            if shown is None:
                continue
            if shown.actions != worker.actions:
                # some of its actions are hidden: so are their running tasks, and the
                # worker's info (another credential's name, its service)
                running = await self.app.find({"worker": worker.id, "status": "running"})
                shown = replace(shown, info={}, running=sum(
                    1 for t in running if cred.can_read(t.action)))
            out.append({**shown.to_json(), "alive": now - shown.last_seen < WORKER_STALE_AFTER})
        return JSONResponse({"workers": out})

    async def logs(self, request: Request, cred: Credential) -> Response:
        params = query_params(request, {"after_seq", "max_level", "limit"})
        after = int_param(params, "after_seq", 0, 0, 2**63 - 1)
        level = level_param(params)
        limit = int_param(params, "limit", 1000, 1, MAX_LOG_LIMIT)
        task = await self.readable_task(cred, request.path_params["task_id"])
        records = await self.app.storage.read_logs(task.id, after, level, limit)
        next_seq = records[-1].seq if records else after
        return JSONResponse({"task_id": task.id, "status": task.status.value,
                             "logs": [r.to_json() for r in records], "next_seq": next_seq})

    async def wait(self, request: Request, cred: Credential) -> Response:
        params = query_params(request, {"timeout"})
        timeout = float_param(params, "timeout", DEFAULT_WAIT, 0.0, MAX_WAIT)
        task = await self.readable_task(cred, request.path_params["task_id"])
        if not task.terminal and timeout > 0:
            ended = await _until_disconnected(request,
                                              self.app.wait_task(task.id, timeout=timeout))
            if ended is None:  # the client left: nobody reads the answer
                return Response(status_code=204)
            credentials = self.hub.credentials
            if cred.key_id and credentials is not None and not credentials.is_live(cred.key_id):
                raise AuthError(401, "invalid or revoked key")  # revoked while it waited
            if isinstance(ended, Task):
                task = ended
            else:
                task = await self.app.get(task.id)
        if task.terminal:
            return JSONResponse(self.task_json(task))
        return JSONResponse(self.task_json(task), status_code=202, headers={"Retry-After": "0"})

    # -- control

    async def abort(self, request: Request, cred: Credential) -> Response:
        _no_query(request)
        require_admin(cred, "abort tasks")
        body = await body_as(request, AbortIn, required=False)
        task = await self.app.abort(request.path_params["task_id"], body.reason)
        return JSONResponse(self.task_json(task))

    async def retry(self, request: Request, cred: Credential) -> Response:
        _no_query(request)
        require_admin(cred, "retry tasks")
        body = await body_as(request, RetryIn, required=False)
        task = await self.app.retry(request.path_params["task_id"], delay=body.delay)
        return JSONResponse(self.task_json(task))

    async def prioritize(self, request: Request, cred: Credential) -> Response:
        _no_query(request)
        require_admin(cred, "prioritize tasks")
        body = await body_as(request, PrioritizeIn)
        task = await self.app.prioritize(request.path_params["task_id"], body.priority)
        return JSONResponse(self.task_json(task))

    async def delete_one(self, request: Request, cred: Credential) -> Response:
        _no_query(request)
        require_admin(cred, "delete tasks")
        task = await self.app.get(request.path_params["task_id"])
        if not task.terminal:
            raise InvalidTransition(f"task {task.id} is {task.status.value}: only finished "
                                    "tasks can be deleted", task)
        deleted = await self.app.delete(task.id)
        if not deleted:  # deleted meanwhile by someone else
            raise TaskNotFound(task.id)
        return JSONResponse({"deleted": deleted})

    async def delete_many(self, request: Request, cred: Credential) -> Response:
        _no_query(request)
        require_admin(cred, "delete tasks")
        body = await body_as(request, DeleteIn)
        if (body.ids is None) == (body.filter is None):
            # both: named by the first, as other options that must not be combined are
            raise Problem(422, "invalid", "give ids or filter (not both)",
                          path="body" if body.ids is None else "ids")
        if body.filter is not None:
            parse_filter(body.filter, bounded=True)
            deleted = await self.app.delete(body.filter)
        else:
            deleted = await self.app.delete(list(dict.fromkeys(body.ids or ())))
        return JSONResponse({"deleted": deleted})


_T = TypeVar("_T")


async def _until_disconnected(request: Request, work: Awaitable[_T]
                              ) -> _T | WaitTimeout | None:
    """Run ``work`` until it ends or the client disconnects (then None). A
    :class:`WaitTimeout` is returned, not raised."""
    job: asyncio.Task[_T] = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (job, watch):
            if not t.done():
                t.cancel()
        for t in (job, watch):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    if not job.done() or job.cancelled():
        return None
    exc = job.exception()
    if isinstance(exc, WaitTimeout):
        return exc
    if exc is not None:
        raise exc
    return job.result()


async def _disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
