"""Conversions between :class:`Task` and the column values of the SQL backends.

JSON columns hold JSON text (SQLite) or JSON values (PostgreSQL, which
decodes them itself); :func:`row_to_task` accepts both.
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
)

__all__ = [
    "COLUMNS",
    "decode_json",
    "encode_conditions",
    "encode_scope",
    "row_to_task",
    "task_to_row",
]

COLUMNS: tuple[str, ...] = (
    "id", "action", "payload", "status", "priority", "run_at", "created_at", "updated_at",
    "started_at", "finished_at", "attempts", "max_attempts", "rescues", "run_timeout",
    "pickup_timeout", "pickup_deadline", "backoff", "worker", "lease_until", "token", "abort_requested",
    "progress", "result", "error", "errors", "reason", "unique_key", "unique_scope",
    "concurrency", "tags", "parent_id", "public_url", "version",
)


def decode_json(value: Any) -> Any:
    if isinstance(value, str | bytes):
        return _json.loads(value)
    return value


def encode_scope(scope: Sequence[Status]) -> str:
    return "|" + "|".join(s.value for s in scope) + "|"


def decode_scope(text: str) -> tuple[Status, ...]:
    return tuple(Status(part) for part in text.split("|") if part)


def encode_conditions(conditions: Sequence[Condition]) -> str | None:
    if not conditions:
        return None
    return _json.dumps([c.to_json() for c in conditions])


def task_to_row(task: Task) -> dict[str, Any]:
    """Column values for a task, JSON columns as text."""
    return {
        "id": task.id,
        "action": task.action,
        "payload": _json.dumps(task.payload),
        "status": task.status.value,
        "priority": task.priority,
        "run_at": task.run_at,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "rescues": task.rescues,
        "run_timeout": task.run_timeout,
        "pickup_timeout": task.pickup_timeout,
        "pickup_deadline": task.pickup_deadline,
        "backoff": _json.dumps(task.backoff.to_json()) if task.backoff else None,
        "worker": task.worker,
        "lease_until": task.lease_until,
        "token": task.token,
        "abort_requested": task.abort_requested,
        "progress": _json.dumps(task.progress.to_json()) if task.progress else None,
        "result": None if task.result is None else _json.dumps(task.result),
        "error": _json.dumps(task.error.to_json()) if task.error else None,
        "errors": _json.dumps([e.to_json() for e in task.errors]),
        "reason": task.reason,
        "unique_key": task.unique_key,
        "unique_scope": encode_scope(task.unique_scope),
        "concurrency": encode_conditions(task.concurrency),
        "tags": _json.dumps(task.tags),
        "parent_id": task.parent_id,
        "public_url": task.public_url,
        "version": task.version,
    }


def row_to_task(row: Any) -> Task:
    """A task from a row: anything indexable by column name (a mapping, a
    ``sqlite3.Row``), or a tuple or list in :data:`COLUMNS` order."""
    r: Any = dict(zip(COLUMNS, row, strict=True)) if isinstance(row, tuple | list) else row
    backoff = decode_json(r["backoff"])
    progress = decode_json(r["progress"])
    error = decode_json(r["error"])
    errors = decode_json(r["errors"]) or []
    conditions = decode_json(r["concurrency"]) or []
    return Task(
        id=r["id"],
        action=r["action"],
        payload=decode_json(r["payload"]),
        status=Status(r["status"]),
        priority=r["priority"],
        run_at=r["run_at"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        rescues=r["rescues"],
        run_timeout=r["run_timeout"],
        pickup_timeout=r["pickup_timeout"],
        pickup_deadline=r["pickup_deadline"],
        backoff=Backoff(**backoff) if backoff else None,
        worker=r["worker"],
        lease_until=r["lease_until"],
        token=r["token"],
        abort_requested=r["abort_requested"],
        progress=Progress.from_json(progress) if progress else None,
        result=decode_json(r["result"]),
        error=ErrorInfo.from_json(error) if error else None,
        errors=tuple(ErrorInfo.from_json(e) for e in errors),
        reason=r["reason"],
        unique_key=r["unique_key"],
        unique_scope=decode_scope(r["unique_scope"]),
        concurrency=tuple(Condition.parse(c) for c in conditions),
        tags=decode_json(r["tags"]) or {},
        parent_id=r["parent_id"],
        public_url=r["public_url"],
        version=r["version"],
    )
