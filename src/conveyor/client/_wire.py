"""What both hub clients send for a task to add: its payload and options as JSON,
in the forms the Python API takes (models, timedeltas, datetimes, ``Backoff``,
``Condition``) turned into the hub's wire forms."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from .._specs import in_batch, unpack_item
from ..errors import ValidationError
from ..model import Backoff, Condition

__all__ = ["item_json", "options_json", "payload_json", "seconds_json"]


def seconds_json(value: Any) -> Any:
    """A duration as seconds (a timedelta converted, anything else as given: the hub
    checks it)."""
    return value.total_seconds() if isinstance(value, timedelta) else value


def payload_json(payload: Any) -> Any:
    """A pydantic model as its JSON (``model_dump(mode="json")``), as ``Conveyor.add``
    stores it; anything else as given."""
    return payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload


def options_json(options: Mapping[str, Any]) -> dict[str, Any]:
    """Add options as JSON: timedeltas as seconds, datetimes as epoch seconds, a
    ``Backoff`` (or a backoff given with timedeltas) and ``Condition`` as their JSON."""
    out = dict(options)
    for name in ("delay", "timeout", "pickup_timeout"):
        if name in out:
            out[name] = seconds_json(out[name])
    run_at = out.get("run_at")
    if isinstance(run_at, datetime):
        out["run_at"] = (run_at if run_at.tzinfo else run_at.replace(tzinfo=UTC)).timestamp()
    backoff = out.get("backoff")
    if isinstance(backoff, Backoff | timedelta) or (
            isinstance(backoff, Mapping)
            and any(isinstance(v, timedelta) for v in backoff.values())):
        parsed = Backoff.parse(backoff)
        out["backoff"] = parsed.to_json() if parsed else None
    concurrency = out.get("concurrency")
    if isinstance(concurrency, Condition | Mapping):
        concurrency = [concurrency]
    if isinstance(concurrency, list | tuple):
        out["concurrency"] = [c.to_json() if isinstance(c, Condition) else c
                              for c in concurrency]
    scope = out.get("unique_scope")
    if isinstance(scope, str):
        scope = [scope]
    if isinstance(scope, list | tuple):
        out["unique_scope"] = [str(s) for s in scope]
    return out


def item_json(item: Any, index: int) -> tuple[str, Any, dict[str, Any]]:
    """One task of ``add_many`` as ``(action, payload, options)`` (the forms
    ``Conveyor.add_many`` takes; options not yet turned into JSON)."""
    try:
        return unpack_item(item)
    except ValidationError as exc:
        raise in_batch(exc, index) from None
