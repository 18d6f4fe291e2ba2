"""A :class:`Task` and a :class:`LogRecord` from their wire form (``to_json()``): read
by the hub's clients and by process-handler children (which must not import the
clients' HTTP and WebSocket libraries)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import Backoff, Condition, ErrorInfo, LogLevel, LogRecord, Progress, Status, Task

__all__ = ["log_from_json", "task_from_json"]


def task_from_json(raw: Mapping[str, Any]) -> Task:
    """A :class:`Task` from its wire form (``Task.to_json()``)."""
    backoff = raw.get("backoff")
    progress = raw.get("progress")
    error = raw.get("error")
    logs = raw.get("logs")
    return Task(
        id=raw["id"], action=raw["action"], payload=raw.get("payload"),
        status=Status(raw["status"]), priority=raw.get("priority", 0.0),
        run_at=raw.get("run_at", 0.0), created_at=raw.get("created_at", 0.0),
        updated_at=raw.get("updated_at", 0.0), started_at=raw.get("started_at"),
        finished_at=raw.get("finished_at"), attempts=raw.get("attempts", 0),
        max_attempts=raw.get("max_attempts"), rescues=raw.get("rescues", 0),
        run_timeout=raw.get("run_timeout"), pickup_timeout=raw.get("pickup_timeout"),
        pickup_deadline=raw.get("pickup_deadline"),
        backoff=Backoff(**backoff) if backoff else None, worker=raw.get("worker"),
        lease_until=raw.get("lease_until"), abort_requested=raw.get("abort_requested"),
        progress=Progress.from_json(progress) if progress else None,
        result=raw.get("result"), error=ErrorInfo.from_json(error) if error else None,
        errors=tuple(ErrorInfo.from_json(e) for e in raw.get("errors") or ()),
        reason=raw.get("reason"), unique_key=raw.get("unique_key"),
        unique_scope=tuple(Status(s) for s in raw.get("unique_scope") or ("queued", "running")),
        concurrency=tuple(Condition.parse(c) for c in raw.get("concurrency") or ()),
        tags=dict(raw.get("tags") or {}), parent_id=raw.get("parent_id"),
        public_url=raw.get("public_url"), version=raw.get("version", 1),
        logs=tuple(log_from_json(r) for r in logs) if logs is not None else None,
    )


def log_from_json(raw: Mapping[str, Any]) -> LogRecord:
    """A :class:`LogRecord` from its wire form."""
    return LogRecord(task_id=raw["task_id"], seq=raw["seq"], ts=raw["ts"],
                     level=LogLevel.parse(raw["level"]), message=raw["message"],
                     data=raw.get("data"))
