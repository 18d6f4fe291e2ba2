"""Validation of new tasks: turns ``add`` arguments into a :class:`TaskSpec`.

Everything is checked before anything is written; each error names the
argument and the problem.
"""

from __future__ import annotations

import math
import reprlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import _json
from ._registry import check_action, is_model
from .errors import QueryError, ValidationError
from .model import (
    DEFAULT_UNIQUE_SCOPE,
    Backoff,
    Condition,
    Status,
    TaskSpec,
    _as_float,
    _shown,
    _spec_from_values,
    check_time,
    new_id,
    normalise_tags,
    seconds,
)
from .query import comparisons, parse_filter

if TYPE_CHECKING:
    from ._registry import Handler

__all__ = [
    "ADD_OPTIONS",
    "MAX_ABORT_REASON",
    "build_spec",
    "check_abort_reason",
    "check_backoff",
    "check_max_attempts",
    "check_priority",
    "check_tags",
    "check_task_id",
    "check_unicode",
    "in_batch",
    "task_ids",
    "unique_key_from_fields",
    "unique_scope",
    "unpack_item",
]

ADD_OPTIONS = frozenset({
    "priority", "delay", "run_at", "tags", "max_attempts", "timeout", "pickup_timeout",
    "backoff", "unique_key", "unique_fields", "unique_scope", "concurrency", "parent_id",
})

MAX_UNIQUE_KEY = 512
MAX_CONDITIONS = 16
"""The most concurrency conditions one task may have."""
MAX_CONDITION_TERMS = 100
"""The most comparisons the queries of one task's conditions may hold in all (counted as
filters count them): they run at every claim of the task."""


# The checks of the options a task and a handler share (the handler's are the
# defaults of its tasks): ``add`` and ``build_handler`` use the same ones.


def in_batch(exc: ValidationError, index: int) -> ValidationError:
    """The error of one task of a batch (``add_many``), its message led by ``task N:``;
    a :class:`QueryError` stays one (its ``path`` that within the task)."""
    if isinstance(exc, QueryError):
        error = QueryError(exc.reason, exc.path)
        error.args = (f"task {index}: {exc}",)
        return error
    return ValidationError(f"task {index}: {exc}")


def check_task_id(task_id: Any) -> None:
    """A task id given to a call: a non-empty string of at most 100 characters."""
    if not isinstance(task_id, str) or not task_id or len(task_id) > 100:
        raise ValidationError("a task id is a non-empty string of at most 100 characters, "
                              f"not {reprlib.repr(task_id)}")
    check_unicode(task_id, "a task id")


MAX_ABORT_REASON = 1000
"""The longest abort reason, in characters (the same at every entry point)."""


def check_abort_reason(reason: Any) -> str:
    """An abort reason: a string of valid Unicode, not blank, of at most
    ``MAX_ABORT_REASON`` characters."""
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError("abort reason must be a non-empty string (not only spaces)")
    if len(reason) > MAX_ABORT_REASON:
        raise ValidationError(f"abort reason is longer than {MAX_ABORT_REASON} characters")
    return check_unicode(reason, "the abort reason")


def task_ids(target: Any) -> list[str]:
    """The ids ``delete`` was given (one id or several; a filter is read elsewhere),
    every one checked before anything is deleted."""
    if isinstance(target, str):
        ids = [target]
    elif isinstance(target, bytes | bytearray) or not isinstance(target, Iterable):
        raise ValidationError("delete takes a task id, a list of ids or a filter, not "
                              f"{reprlib.repr(target)}")
    else:
        ids = list(target)
    for task_id in ids:
        check_task_id(task_id)
    return ids


def check_unicode(text: str, what: str) -> str:
    """``text`` when it is valid Unicode (storable as UTF-8); else :class:`ValidationError`
    naming ``what`` (a lone surrogate, as from undecodable command-line bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} holds text that is not valid Unicode (a lone "
                              f"surrogate): {reprlib.repr(text)}") from None
    return text


def check_priority(value: Any) -> float:
    """A priority: a finite number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"priority must be a number, not {value!r}")
    result = _as_float(value)
    if not math.isfinite(result):
        raise ValidationError(f"priority must be a finite number, not {_shown(value)}")
    return result + 0.0  # -0.0 is 0.0, as every backend stores it


MAX_ATTEMPTS = 2**31 - 1
"""The most ``max_attempts`` may be (what every backend stores as an integer)."""


def check_max_attempts(value: Any) -> int | None:
    """``max_attempts``: None or an integer from 1 to :data:`MAX_ATTEMPTS` (not a bool)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValidationError(f"max_attempts must be an integer >= 1, not {value!r}")
    if value is not None and value > MAX_ATTEMPTS:
        raise ValidationError(
            f"max_attempts must be an integer >= 1 and at most {MAX_ATTEMPTS}, not {value!r}")
    return value


def check_backoff(value: Any) -> Backoff | None:
    """``backoff``: None, seconds, a mapping or a :class:`Backoff` (whose numbers
    must be finite: a backoff is stored as JSON, which has no NaN or infinity;
    ``base`` and ``maximum`` are durations, at most :data:`MAX_SECONDS`)."""
    backoff = Backoff.parse(value)
    if backoff is not None:
        seconds(backoff.base, "backoff base")
        seconds(backoff.maximum, "backoff maximum")
        if not math.isfinite(_as_float(backoff.factor)):  # an int beyond floats
            raise ValidationError(
                f"backoff factor must be a finite number, not {_shown(backoff.factor)}")
    return backoff


def check_tags(value: Any) -> dict[str, Any]:
    """``tags``: None or a mapping of names (non-empty strings without dots) to values."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"tags must be a dict of tag names to values, not {type(value).__name__} "
            f"{reprlib.repr(value)}")
    try:
        return normalise_tags(value)
    except ValidationError as exc:
        raise ValidationError(f"tags: {exc}") from None


def _lookup(payload: Any, path: str) -> Any:
    """The payload's field ``path``: a top-level field of that very name, else the
    path read through objects, a name per dot (``"customer.id"``)."""
    if isinstance(payload, Mapping) and path in payload:
        return payload[path]
    value = payload
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise ValidationError(f"unique_fields: payload has no field {path!r}")
        value = value[part]
    return value


def unique_key_from_fields(action: str, payload: Any, fields: Sequence[str]) -> str:
    """The dedupe key built from payload fields (a name is a top-level field, or a
    path through objects such as ``"customer.id"``): ``action``, a colon, then the fields
    and their values as a JSON object in name order (``mail:send:{"to":"ann"}``), so
    different fields with equal values make different keys; a whole float is
    written as an int (42.0 and 42 make one key), and the keys of objects inside
    the values in name order too (``{"city":..,"zip":..}`` whatever order it came
    in: PostgreSQL gives objects back in its own order)."""
    if isinstance(fields, str) or not isinstance(fields, Sequence) or not fields:
        raise ValidationError("unique_fields must be a non-empty list of payload field names")
    for name in fields:
        if not isinstance(name, str) or not name:
            raise ValidationError(f"unique_fields: field names are strings, not {name!r}")
    named = {name: _same_number(_lookup(payload, name)) for name in sorted(fields)}
    return f"{action}:{_json.dumps(named)}"


def _same_number(value: Any) -> Any:
    """``value`` with whole floats as ints, so that 42.0 and 42 (one number in JSON)
    make one key, and objects' keys in name order (one object in JSON whatever the
    order); inside lists and objects too."""
    if type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _same_number(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_same_number(v) for v in value]
    return value


def unique_scope(value: Any) -> tuple[Status, ...]:
    """A ``unique_scope`` option as statuses (the default for None); a
    :class:`ValidationError` when it is not a list of statuses holding ``queued``."""
    if value is None:
        return DEFAULT_UNIQUE_SCOPE
    items = [value] if isinstance(value, str | Status) else value
    if not isinstance(items, Sequence) or not items:
        raise ValidationError("unique_scope must be a list of statuses")
    scope: list[Status] = []
    for item in items:
        try:
            scope.append(Status(item))
        except ValueError:
            raise ValidationError(f"unique_scope: unknown status {item!r}") from None
    if Status.QUEUED not in scope:
        raise ValidationError("unique_scope must include 'queued' (a new task starts queued)")
    return tuple(dict.fromkeys(scope))


def _conditions(value: Any) -> tuple[Condition, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, Mapping | Condition) else value
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise ValidationError("concurrency must be a condition or a list of conditions")
    if len(items) > MAX_CONDITIONS:
        raise ValidationError(f"concurrency: at most {MAX_CONDITIONS} conditions per task "
                              f"(not {len(items)})")
    out = []
    terms = 0
    for i, raw in enumerate(items):
        cond = Condition.parse(raw, where=f"concurrency[{i}]")
        try:
            terms += comparisons(parse_filter(cond.query))
        except QueryError as exc:
            raise ValidationError(f"concurrency[{i}].query: {exc}") from None
        if terms > MAX_CONDITION_TERMS:
            raise ValidationError(
                f"concurrency: the conditions' queries hold more than {MAX_CONDITION_TERMS} "
                "comparisons in all (each $in or $nin item counts as one); every claim of the "
                "task runs them")
        out.append(cond)
    return tuple(out)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _as_stored(payload: Any, text: str) -> Any:
    """``payload`` as the storage will give it back (``text`` is its JSON).

    A task returned by ``add`` then equals the one ``get`` reads: tuples become
    lists, non-text keys text, subclasses (enums, ``OrderedDict``) plain values.
    A scalar or a flat dict of scalars is already in that form and kept as is.
    """
    kind = type(payload)
    if kind in _SCALARS:
        return payload
    if kind is dict and len(payload) <= 16:
        for key, value in payload.items():
            if type(key) is not str or type(value) not in _SCALARS:
                break
        else:
            return payload
    return _json.loads(text)


def build_spec(action: Any, payload: Any = None, *, handler: Handler | None = None,
               max_payload: int | None = None, now: float | None = None,
               **options: Any) -> TaskSpec:
    """Validate the arguments of ``add`` and return the spec to insert."""
    if is_model(payload) and (handler is None or handler.payload_model is None):
        payload = payload.model_dump(mode="json")  # a model's JSON, typed handler or not
    if not options and handler is None:  # the common case of a bulk add, kept short
        check_action(action)
        text = _json.dumps_checked(payload, "payload", limit=max_payload)
        return _spec_from_values((new_id(), action, _as_stored(payload, text), 0.0, None,
                                  None, None, None, None, None, DEFAULT_UNIQUE_SCOPE, (), {},
                                  None))
    unknown = set(options) - ADD_OPTIONS
    if unknown:
        raise ValidationError(f"unknown option(s) for add: {', '.join(sorted(unknown))}")
    check_action(action)
    if handler is not None:
        payload = handler.validate_payload(payload)
    payload = _as_stored(payload, _json.dumps_checked(payload, "payload", limit=max_payload))

    priority = options.get("priority")
    if priority is None:
        priority = handler.priority if handler and handler.priority is not None else 0.0
    priority = check_priority(priority)

    delay, run_at = options.get("delay"), options.get("run_at")
    if delay is not None and run_at is not None:
        raise ValidationError("give delay or run_at, not both")
    start: float | None = None  # ready once stored: run_at is then created_at
    if run_at is not None:
        start = check_time(run_at, "run_at")
    else:
        wait = seconds(delay, "delay")
        if wait:
            start = (time.time() if now is None else now) + wait

    tags = check_tags(options.get("tags"))
    if tags:  # held as stored, as the payload is
        tags = _as_stored(tags, _json.dumps_checked(tags, "tags", limit=max_payload))

    max_attempts = check_max_attempts(options.get("max_attempts"))
    run_timeout = seconds(options.get("timeout"), "timeout", allow_zero=False)
    pickup_timeout = seconds(options.get("pickup_timeout"), "pickup_timeout", allow_zero=False)
    backoff = check_backoff(options.get("backoff"))
    if handler is not None:
        max_attempts = max_attempts or handler.max_attempts
        run_timeout = run_timeout or handler.run_timeout
        pickup_timeout = pickup_timeout or handler.pickup_timeout
        backoff = backoff or handler.backoff

    unique_key = options.get("unique_key")
    unique_fields = options.get("unique_fields")
    if unique_key is not None and unique_fields is not None:
        raise ValidationError("give unique_key or unique_fields, not both")
    if unique_key is not None:
        if not isinstance(unique_key, str) or not unique_key:
            raise ValidationError(f"unique_key must be a non-empty string, not {unique_key!r}")
        check_unicode(unique_key, "unique_key")
        if "\x00" in unique_key:  # SQLite would cut the key there, PostgreSQL refuses it
            raise ValidationError("unique_key must not contain NUL characters (\\x00)")
    elif unique_fields is not None:
        unique_key = unique_key_from_fields(action, payload, unique_fields)
        if len(unique_key) > MAX_UNIQUE_KEY:
            raise ValidationError(
                f"unique_fields: the key they make is {len(unique_key)} characters long, "
                f"more than a unique key's {MAX_UNIQUE_KEY}")
    if unique_key is not None and len(unique_key) > MAX_UNIQUE_KEY:
        raise ValidationError(f"unique_key is longer than {MAX_UNIQUE_KEY} characters")
    scope = unique_scope(options.get("unique_scope"))

    parent_id = options.get("parent_id")
    if parent_id is not None:
        try:
            check_task_id(parent_id)
        except ValidationError:
            raise ValidationError("parent_id must be a task id (a non-empty string of at most "
                                  f"100 characters), not {reprlib.repr(parent_id)}") from None
        if "\x00" in parent_id:  # SQLite would cut it there (into another task's id)
            raise ValidationError("parent_id: a task id has no NUL character (\\u0000)")

    return TaskSpec(
        id=new_id(), action=action, payload=payload, priority=priority, run_at=start,
        max_attempts=max_attempts, run_timeout=run_timeout, pickup_timeout=pickup_timeout,
        backoff=backoff, unique_key=unique_key, unique_scope=scope,
        concurrency=_conditions(options.get("concurrency")), tags=tags, parent_id=parent_id,
    )


def unpack_item(item: Any) -> tuple[Any, Any, dict[str, Any]]:
    """One task of ``add_many``: ``(action, payload)``, ``(action, payload, options)``
    or a dict with ``action``, as ``(action, payload, options)``."""
    if isinstance(item, Mapping):
        data = dict(item)
        if "action" not in data:
            raise ValidationError("each task needs an 'action'")
        action = data.pop("action")
        payload = data.pop("payload", None)
        return action, payload, data
    if isinstance(item, tuple | list):
        if len(item) == 2:
            return item[0], item[1], {}
        if len(item) == 3 and isinstance(item[2], Mapping):
            return item[0], item[1], dict(item[2])
    raise ValidationError(
        "each task is (action, payload), (action, payload, options) or a dict with 'action'")
