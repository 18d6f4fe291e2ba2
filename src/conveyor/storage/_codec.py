"""Conversions between :class:`Task` and the column values of the SQL backends.

JSON columns hold JSON text (SQLite) or JSON values (PostgreSQL, whose
driver decodes them); :func:`row_to_task` accepts both. Rows are tuples in
:data:`COLUMNS` order (extra trailing columns are ignored) or mappings by
column name. Decoding is on the hot path of every claim, so it avoids work
for the common empty values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import _json
from ..model import (
    Backoff,
    Condition,
    ErrorInfo,
    Progress,
    Status,
    Task,
    _task_from_values,
)

__all__ = [
    "COLUMNS",
    "claimed_to_task",
    "decode_json",
    "decode_scope",
    "encode_conditions",
    "encode_scope",
    "row_to_task",
    "task_to_row",
    "task_to_values",
]

COLUMNS: tuple[str, ...] = (
    "id", "action", "payload", "status", "priority", "run_at", "created_at", "updated_at",
    "started_at", "finished_at", "attempts", "max_attempts", "rescues", "run_timeout",
    "pickup_timeout", "pickup_deadline", "backoff", "worker", "lease_until", "token",
    "abort_requested", "progress", "result", "error", "errors", "reason", "unique_key",
    "unique_scope", "concurrency", "tags", "parent_id", "public_url", "version",
)
_N = len(COLUMNS)
_STATUS = {s.value: s for s in Status}
_SCOPES: dict[str, tuple[Status, ...]] = {}
_loads = _json.loads


def decode_json(value: Any) -> Any:
    if isinstance(value, str | bytes):
        return _loads(value)
    return value


_SCOPE_TEXT: dict[tuple[Status, ...], str] = {}


def encode_scope(scope: Sequence[Status]) -> str:
    key = tuple(scope)
    text = _SCOPE_TEXT.get(key)
    if text is None:
        text = "|" + "|".join(s.value for s in scope) + "|"
        if len(_SCOPE_TEXT) < 256:
            _SCOPE_TEXT[key] = text
    return text


def decode_scope(text: str) -> tuple[Status, ...]:
    scope = _SCOPES.get(text)
    if scope is None:
        scope = tuple(_STATUS[part] for part in text.split("|") if part)
        if len(_SCOPES) < 1024:
            _SCOPES[text] = scope
    return scope


def encode_conditions(conditions: Sequence[Condition]) -> str | None:
    if not conditions:
        return None
    return _json.dumps([c.to_json() for c in conditions])


def task_to_values(task: Task, payload_json: str | None = None) -> list[Any]:
    """Column values in :data:`COLUMNS` order, JSON columns as text."""
    dumps = _json.dumps
    return [
        task.id, task.action,
        dumps(task.payload) if payload_json is None else payload_json,
        task.status.value, task.priority, task.run_at, task.created_at, task.updated_at,
        task.started_at, task.finished_at, task.attempts, task.max_attempts, task.rescues,
        task.run_timeout, task.pickup_timeout, task.pickup_deadline,
        dumps(task.backoff.to_json()) if task.backoff else None,
        task.worker, task.lease_until, task.token, task.abort_requested,
        dumps(task.progress.to_json()) if task.progress else None,
        None if task.result is None else dumps(task.result),
        dumps(task.error.to_json()) if task.error else None,
        dumps([e.to_json() for e in task.errors]) if task.errors else "[]",
        task.reason, task.unique_key, encode_scope(task.unique_scope),
        encode_conditions(task.concurrency),
        dumps(task.tags) if task.tags else "{}",
        task.parent_id, task.public_url, task.version,
    ]


def task_to_row(task: Task) -> dict[str, Any]:
    """Column values by name, JSON columns as text."""
    return dict(zip(COLUMNS, task_to_values(task), strict=True))


def _json_or_none(value: Any) -> Any:
    if value is None:
        return None
    return _loads(value) if isinstance(value, str | bytes) else value


def row_to_task(row: Any, decoded: bool = False) -> Task:
    """A task from a row: a tuple or list in :data:`COLUMNS` order, or anything
    indexable by column name (a mapping, a ``sqlite3.Row``).

    With ``decoded=True`` the JSON columns already hold Python values (rows
    returned as JSON, PostgreSQL jsonb); otherwise text is decoded."""
    if decoded:
        return _decoded_to_task(row if isinstance(row, tuple | list)
                                else [row[name] for name in COLUMNS])
    if isinstance(row, tuple | list):
        values = row[:_N] if len(row) > _N else row
    else:
        values = [row[name] for name in COLUMNS]
    (id_, action, payload, status, priority, run_at, created_at, updated_at, started_at,
     finished_at, attempts, max_attempts, rescues, run_timeout, pickup_timeout,
     pickup_deadline, backoff, worker, lease_until, token, abort_requested, progress, result,
     error, errors, reason, unique_key, unique_scope, concurrency, tags, parent_id, public_url,
     version) = values
    if backoff is not None:
        backoff = Backoff(**_json_or_none(backoff))
    if progress is not None:
        progress = Progress.from_json(_json_or_none(progress))
    if error is not None:
        error = ErrorInfo.from_json(_json_or_none(error))
    if errors is None or errors == "[]" or errors == []:
        errors = ()
    else:
        errors = tuple(ErrorInfo.from_json(e) for e in _json_or_none(errors))
    if concurrency is not None:
        concurrency = tuple(Condition.parse(c) for c in _json_or_none(concurrency))
    else:
        concurrency = ()
    if tags is None or tags == "{}":
        tags = {}
    else:
        tags = _json_or_none(tags)
    return _task_from_values((
        id_, action, _json_or_none(payload), _STATUS[status], priority, run_at, created_at,
        updated_at, started_at, finished_at, attempts, max_attempts, rescues, run_timeout,
        pickup_timeout, pickup_deadline, backoff, worker, lease_until, token, abort_requested,
        progress, _json_or_none(result), error, errors, reason, unique_key,
        decode_scope(unique_scope) if isinstance(unique_scope, str) else tuple(unique_scope),
        concurrency, tags, parent_id, public_url, version, None,
    ))


def claimed_to_task(values: Sequence[Any], worker: str, token: str, lease_until: float,
                    now: float) -> Task:
    """A task just claimed, from a row of the SQLite ``claimed_rows`` query (decoded
    JSON, without the columns the claim set: they are the arguments)."""
    (id_, action, payload, priority, run_at, created_at, finished_at, attempts,
     max_attempts, rescues, run_timeout, pickup_timeout, backoff, abort_requested, progress,
     result, error, errors, reason, unique_key, unique_scope, concurrency, tags, parent_id,
     public_url, version) = values
    return _decoded_to_task((
        id_, action, payload, "running", priority, run_at, created_at, now, now, finished_at,
        attempts, max_attempts, rescues, run_timeout, pickup_timeout, None, backoff, worker,
        lease_until, token, abort_requested, progress, result, error, errors, reason,
        unique_key, unique_scope, concurrency, tags, parent_id, public_url, version))


def _decoded_to_task(values: Sequence[Any]) -> Task:
    (id_, action, payload, status, priority, run_at, created_at, updated_at, started_at,
     finished_at, attempts, max_attempts, rescues, run_timeout, pickup_timeout,
     pickup_deadline, backoff, worker, lease_until, token, abort_requested, progress, result,
     error, errors, reason, unique_key, unique_scope, concurrency, tags, parent_id, public_url,
     version) = values[:_N]
    return _task_from_values((
        id_, action, payload, _STATUS[status], priority, run_at, created_at, updated_at,
        started_at, finished_at, attempts, max_attempts, rescues, run_timeout, pickup_timeout,
        pickup_deadline, None if backoff is None else Backoff(**backoff), worker, lease_until,
        token, abort_requested, None if progress is None else Progress.from_json(progress),
        result, None if error is None else ErrorInfo.from_json(error),
        tuple(ErrorInfo.from_json(e) for e in errors) if errors else (),
        reason, unique_key,
        decode_scope(unique_scope) if isinstance(unique_scope, str) else tuple(unique_scope),
        tuple(Condition.parse(c) for c in concurrency) if concurrency else (),
        tags if tags is not None else {}, parent_id, public_url, version, None,
    ))
