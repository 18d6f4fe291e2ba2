"""The task model: records, statuses, typed outcomes and the transition policy.

This module does no I/O. Every other layer speaks in these types.

Times are floats: seconds since the Unix epoch (UTC), as returned by
:func:`time.time`. They travel as numbers on every wire, which keeps them
exact and language-neutral.
"""

from __future__ import annotations

import enum
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeAlias, TypeVar

from .errors import ValidationError

_T = TypeVar("_T")

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_RESCUES",
    "DEFAULT_UNIQUE_SCOPE",
    "FIELDS",
    "JSON_FIELDS",
    "MAX_CONDITION_LIMIT",
    "MAX_DEPTH",
    "MAX_ERRORS",
    "MAX_ERROR_MESSAGE",
    "MAX_SECONDS",
    "MAX_TIME",
    "MAX_TRACEBACK",
    "MIN_TIME",
    "TERMINAL",
    "Aborted",
    "Backoff",
    "Condition",
    "ErrorInfo",
    "FieldKind",
    "LogLevel",
    "LogRecord",
    "Outcome",
    "PermanentFailure",
    "Policy",
    "Progress",
    "Raised",
    "Reschedule",
    "Retry",
    "Returned",
    "Status",
    "Task",
    "TaskSpec",
    "TimedOut",
    "Transition",
    "check_time",
    "cut_text",
    "default_policy",
    "new_id",
    "seconds",
]

JSON: TypeAlias = Any
"""Any value that :func:`json.dumps` accepts without a custom encoder."""


class Status(enum.StrEnum):
    """Where a task is in its life. See the lifecycle in the user guide."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        """Whether a task in this status has ended (succeeded, failed or aborted)."""
        return self in TERMINAL


TERMINAL: frozenset[Status] = frozenset({Status.SUCCEEDED, Status.FAILED, Status.ABORTED})
"""The statuses a task ends in: it never changes again (unless retried by hand)."""
DEFAULT_UNIQUE_SCOPE: tuple[Status, ...] = (Status.QUEUED, Status.RUNNING)
"""The statuses in which a task holds its ``unique_key`` unless ``unique_scope`` says
otherwise: a duplicate is refused while the first is queued or running."""
DEFAULT_MAX_ATTEMPTS = 1
"""Attempts a task gets when neither the task nor its handler sets ``max_attempts``:
no retry unless asked for."""
DEFAULT_MAX_RESCUES = 3
"""How many times a task whose worker died (its lease expired) is put back in the
queue before it fails (``Conveyor(max_rescues=...)``)."""

_STATUS_NAMES = frozenset(s.value for s in Status)


class LogLevel(enum.IntEnum):
    """Task log levels. A higher number is more severe.

    ``max_level`` arguments select logs *up to a level of detail*: ``"info"``
    keeps ``error``, ``warning`` and ``info`` and leaves out ``debug``.
    """

    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40

    @classmethod
    def parse(cls, value: LogLevel | str | int) -> LogLevel:
        """A level from a level, its name (``"info"``, any case) or its number; anything else is
        a ValidationError."""
        if isinstance(value, LogLevel):
            return value
        if isinstance(value, bool):
            raise ValidationError(f"log level must be a name or a number, not {value!r}")
        if isinstance(value, int):
            try:
                return cls(value)
            except ValueError:
                pass
        elif isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                pass
        names = ", ".join(level.name.lower() for level in cls)
        raise ValidationError(f"unknown log level {value!r}: expected one of {names}")


# ---------------------------------------------------------------------------
# identifiers

_id_lock = threading.Lock()
_last_ms = 0
_seq = 0
_random = b""
_random_at = 0


def new_id() -> str:
    """A new UUIDv7 string: time-ordered, unique, sortable as text.

    Ids made in one process are strictly increasing, even within one
    millisecond (a 12-bit counter fills the ``rand_a`` field).
    """
    global _last_ms, _seq, _random, _random_at
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _seq += 1
            if _seq > 0xFFF:
                _last_ms += 1
                _seq = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _seq = random.getrandbits(8)  # leave room to count up within the ms
        seq = _seq
        if _random_at >= len(_random):  # random bytes from the OS, 64 ids at a time
            _random, _random_at = os.urandom(512), 0
        rand_b = int.from_bytes(_random[_random_at:_random_at + 8], "big") & 0x3FFFFFFFFFFFFFFF
        _random_at += 8
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def storable_text(text: str) -> str:
    """Text that is valid UTF-8 (lone surrogates escaped as ``\\udXXX``), so it can
    always be stored."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


MAX_ERROR_MESSAGE = 100_000
"""The longest error message stored, in characters (longer ones are cut, with a
note of how much): a handler's exception that holds a whole response body, say,
would otherwise put megabytes into every one of the task's errors."""
MAX_TRACEBACK = 200_000
"""The longest traceback stored with an error, in characters (cut likewise)."""


def cut_text(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and a note of how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} [cut: {len(text) - limit} more characters]"


def new_token() -> str:
    """A fencing token for one claim of a task."""
    return secrets.token_hex(8)


MAX_SECONDS = 36525 * 86400.0
"""The longest duration conveyor accepts (a delay, timeout, interval, lease, backoff
time, retention...): 100 years, in seconds. Now plus any duration is then a time
that :data:`MAX_TIME` allows."""
MAX_ERRORS = 100
"""How many errors ``Task.errors`` keeps: the most recent ones (a policy that
queues a failing task again for ever would otherwise grow its record without
end; every claim and finish rewrites it)."""
MIN_TIME = -62135596800.0
"""The earliest time a task may hold (``run_at``): 0001-01-01T00:00:00Z, in epoch seconds."""
MAX_TIME = 253402300800.0
"""The end of the times a task may hold (``run_at``), not included:
10000-01-01T00:00:00Z in epoch seconds, so every time is a :class:`~datetime.datetime`
of the years 1 to 9999 (UTC)."""


def _as_float(value: int | float) -> float:
    """``float(value)``, with an integer beyond floats as an infinity of its sign (which
    every check of a finite number or a range then refuses)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _shown(value: Any) -> str:
    """``repr(value)`` for messages, also for an integer too long to print."""
    if isinstance(value, int) and value.bit_length() > 1000:
        return f"an integer of about {value.bit_length() * 30103 // 100000} digits"
    return repr(value)


def seconds(value: float | int | timedelta | None, what: str, *, allow_none: bool = True,
            allow_zero: bool = True) -> float | None:
    """Normalise a duration given as seconds or a timedelta; refuse bad values
    (not a number, not finite, negative, zero unless ``allow_zero``, or more than
    :data:`MAX_SECONDS`)."""
    if value is None:
        if allow_none:
            return None
        raise ValidationError(f"{what} is required")
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{what} must be a number of seconds or a timedelta, not {value!r}")
    else:
        result = _as_float(value)
    if result != result or result in (float("inf"), float("-inf")):
        raise ValidationError(f"{what} must be a finite number of seconds, not {_shown(value)}")
    if result < 0 or (result == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValidationError(f"{what} must be {bound} seconds, not {_shown(value)}")
    if result > MAX_SECONDS:
        raise ValidationError(
            f"{what} must be at most {MAX_SECONDS:.0f} seconds (100 years), not {_shown(value)}")
    return result


def check_time(value: Any, what: str) -> float:
    """A time given as a :class:`~datetime.datetime` (naive means UTC) or seconds
    since the epoch, as epoch seconds; refuse anything else, and times outside
    the years 1 to 9999 (UTC), from :data:`MIN_TIME` up to :data:`MAX_TIME`."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        try:
            result = moment.timestamp()
        except (OverflowError, OSError, ValueError):
            result = math.nan
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(
            f"{what} must be a datetime or seconds since the epoch, not {value!r}")
    else:
        result = _as_float(value)
    if not MIN_TIME <= result < MAX_TIME:  # NaN and infinities fail too
        raise ValidationError(
            f"{what} must be a time in the years 1 to 9999 (UTC): epoch seconds from "
            f"{MIN_TIME:.0f} to below {MAX_TIME:.0f}, not {_shown(value)}")
    return result


# ---------------------------------------------------------------------------
# parts of a task


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error kept with a task: the exception type, its message and traceback."""

    type: str
    message: str
    traceback: str | None = None
    attempt: int | None = None
    at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The error as JSON, as stored and sent over the wire."""
        return {
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "attempt": self.attempt,
            "at": self.at,
        }

    @classmethod
    def bounded(cls, type: str, message: str, traceback: str | None = None, *,
                attempt: int | None = None, at: float | None = None) -> ErrorInfo:
        """An error with its message cut at :data:`MAX_ERROR_MESSAGE` characters and
        its traceback at :data:`MAX_TRACEBACK` (a note says how many went): what a
        handler, in-process or remote, reports."""
        return cls(type, cut_text(message, MAX_ERROR_MESSAGE),
                   None if traceback is None else cut_text(traceback, MAX_TRACEBACK),
                   attempt=attempt, at=at)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ErrorInfo:
        """An error from its JSON form."""
        return cls(
            type=str(raw.get("type", "Error")),
            message=str(raw.get("message", "")),
            traceback=raw.get("traceback"),
            attempt=raw.get("attempt"),
            at=raw.get("at"),
        )

    @classmethod
    def from_exception(cls, exc: BaseException, *, attempt: int | None = None,
                       with_traceback: bool = True) -> ErrorInfo:
        """The error of an exception a handler raised: its type, message and (unless
        ``with_traceback=False``) traceback."""
        import traceback as tb

        text = storable_text("".join(tb.format_exception(exc))) if with_traceback else None
        try:
            message = str(exc)
        except Exception:  # a __str__ that fails or returns no str
            message = f"<{type(exc).__name__}: str() failed>"
        return cls.bounded(type(exc).__name__, storable_text(message), text,
                           attempt=attempt, at=time.time())


@dataclass(frozen=True, slots=True)
class Progress:
    """The latest progress snapshot of a running task."""

    current: float | None = None
    total: float | None = None
    message: str | None = None
    data: dict[str, Any] | None = None

    @property
    def fraction(self) -> float | None:
        """``current / total`` clamped to 0..1, or None when either is unknown."""
        if self.current is None or not self.total:
            return None
        return max(0.0, min(1.0, self.current / self.total))

    def to_json(self) -> dict[str, Any]:
        """The progress as JSON (``{"current", "total", "message"}`` and ``data`` if any)."""
        out: dict[str, Any] = {"current": self.current, "total": self.total,
                               "message": self.message}
        if self.data:
            out["data"] = self.data
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Progress:
        """Progress from its JSON form."""
        return cls(current=raw.get("current"), total=raw.get("total"),
                   message=raw.get("message"), data=raw.get("data"))


MAX_CONDITION_LIMIT = 2**63 - 1
"""The largest ``limit`` of a concurrency condition (a 64-bit integer, as every
backend stores and compares it)."""

MAX_DEPTH = 512
"""Deepest nesting of arrays and objects in a value conveyor stores (a payload, a
result, tags, log or progress data, an emitted value; the value itself is the first
level): a deeper one is a :class:`ValidationError`, the same on every backend. (The
bound was Python's recursion limit, met at different depths by each backend's own
encoding: a PostgreSQL worker retried for ever to store a result about 980 deep.)"""


@dataclass(frozen=True, slots=True)
class Condition:
    """A concurrency condition: claim the task only while fewer than ``limit``
    tasks in ``scope`` match ``query``.

    ``{"scope": "running", "query": {"payload.book": "X"}, "limit": 1}`` runs at
    most one task for book X at a time, across every worker.
    """

    query: Mapping[str, Any]
    limit: int = 1
    scope: tuple[Status, ...] = (Status.RUNNING,)

    def to_json(self) -> dict[str, Any]:
        """The condition as JSON (``{"scope", "query", "limit"}``)."""
        scope: Any = self.scope[0].value if len(self.scope) == 1 else [s.value for s in self.scope]
        return {"scope": scope, "query": dict(self.query), "limit": self.limit}

    @classmethod
    def parse(cls, raw: Condition | Mapping[str, Any], where: str = "condition") -> Condition:
        """Validate a condition given as a mapping; the query is checked by the caller."""
        if isinstance(raw, Condition):
            return raw
        if not isinstance(raw, Mapping):
            raise ValidationError(f"{where} must be an object with scope, query and limit")
        unknown = set(raw) - {"scope", "query", "limit"}
        if unknown:
            raise ValidationError(f"{where} has unknown key(s): {', '.join(sorted(unknown))}")
        query = raw.get("query")
        if not isinstance(query, Mapping):
            raise ValidationError(f"{where}.query must be a filter object")
        limit = raw.get("limit", 1)
        if (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
                or limit > MAX_CONDITION_LIMIT):
            raise ValidationError(f"{where}.limit must be an integer from 1 to "
                                  f"{MAX_CONDITION_LIMIT} (2**63 - 1), not {limit!r}")
        scope_raw = raw.get("scope", "running")
        names = [scope_raw] if isinstance(scope_raw, str) else scope_raw
        if not isinstance(names, list | tuple) or not names:
            raise ValidationError(f"{where}.scope must be a status or a list of statuses")
        scope: list[Status] = []
        for name in names:
            try:
                scope.append(Status(name))
            except ValueError:
                allowed = ", ".join(s.value for s in Status)
                raise ValidationError(
                    f"{where}.scope: unknown status {name!r} (expected one of {allowed})"
                ) from None
        return cls(query=dict(query), limit=limit, scope=tuple(scope))


@dataclass(frozen=True, slots=True, init=False)
class Backoff:
    """Exponential backoff with jitter between attempts.

    The delay before attempt ``n + 1`` after ``n`` failed attempts is
    ``d = min(maximum, base * factor ** (n - 1))``, then spread by ``jitter``:
    an amount drawn at random between ``-jitter * d`` and ``+jitter * d`` is
    added (0.2 means +/- 20%). The jitter applies after the cap, so a delay
    can reach ``maximum * (1 + jitter)``. ``factor`` is at least 1 and
    ``jitter`` from 0 to 1; a task's or handler's backoff (``add``,
    ``handler``) also keeps ``base`` and ``maximum`` to :data:`MAX_SECONDS`.
    ``base`` and ``maximum`` may be given as :class:`~datetime.timedelta`
    (kept as their seconds).
    """

    base: float = 1.0
    factor: float = 2.0
    maximum: float = 600.0
    jitter: float = 0.2

    # written out (not generated) so that a type checker takes the timedelta the
    # run time takes, while the fields read back as floats
    def __init__(self, base: float | timedelta = 1.0, factor: float = 2.0,
                 maximum: float | timedelta = 600.0, jitter: float = 0.2) -> None:
        # base and maximum: a duration like every other one
        object.__setattr__(self, "base",
                           base.total_seconds() if isinstance(base, timedelta) else base)
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "maximum",
                           maximum.total_seconds() if isinstance(maximum, timedelta) else maximum)
        object.__setattr__(self, "jitter", jitter)
        for name in ("base", "factor", "maximum", "jitter"):
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValidationError(f"backoff {name} must be a finite number, not {value!r}")
            least = 1 if name == "factor" else 0
            if isinstance(value, bool) or not isinstance(value, int | float) or value < least:
                rule = "from 0 to 1" if name == "jitter" else f">= {least}"
                raise ValidationError(f"backoff {name} must be a number {rule}, not {value!r}")
        if self.jitter > 1:
            raise ValidationError(f"backoff jitter must be a number from 0 to 1, "
                                  f"not {self.jitter!r}")

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt after ``failed_attempts`` failures
        (with jitter drawn from ``rng``)."""
        n = max(1, failed_attempts)
        try:
            raw = min(self.maximum, self.base * self.factor ** min(n - 1, 64))
        except OverflowError:
            raw = self.maximum
        if self.jitter:
            spread = raw * self.jitter
            raw += (rng or random).uniform(-spread, spread)
        return max(0.0, raw)

    def to_json(self) -> dict[str, float]:
        """The backoff as JSON (``{"base", "factor", "maximum", "jitter"}``)."""
        return {"base": self.base, "factor": self.factor, "maximum": self.maximum,
                "jitter": self.jitter}

    @classmethod
    def parse(cls, raw: Backoff | Mapping[str, Any] | float | int | timedelta | None,
              ) -> Backoff | None:
        """A backoff from its JSON form, or from a number of seconds or a timedelta (the
        ``base``, the other fields at their defaults); None stays None."""
        if raw is None or isinstance(raw, Backoff):
            return raw
        if isinstance(raw, bool):
            raise ValidationError(
                "backoff must be a number of seconds or an object (or a timedelta)")
        if isinstance(raw, int | float | timedelta):
            return cls(base=raw.total_seconds() if isinstance(raw, timedelta) else float(raw))
        if isinstance(raw, Mapping):
            unknown = set(raw) - {"base", "factor", "maximum", "jitter"}
            if unknown:
                raise ValidationError(f"backoff has unknown key(s): {', '.join(sorted(unknown))}")
            return cls(**{k: v for k, v in raw.items()})
        raise ValidationError(
            f"backoff must be a number of seconds or an object (or a timedelta), not {raw!r}")


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One line of a task's log."""

    task_id: str
    seq: int
    ts: float
    level: LogLevel
    message: str
    data: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The log line as JSON, as sent over the wire."""
        return {"task_id": self.task_id, "seq": self.seq, "ts": self.ts,
                "level": self.level.name.lower(), "message": self.message, "data": self.data}


# ---------------------------------------------------------------------------
# the task record


@dataclass(frozen=True, slots=True)
class Task:
    """One persisted task. Instances are snapshots: read one again to see changes."""

    id: str
    action: str
    payload: JSON
    status: Status
    priority: float = 0.0
    run_at: float = 0.0
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    max_attempts: int | None = None
    rescues: int = 0
    run_timeout: float | None = None
    pickup_timeout: float | None = None
    pickup_deadline: float | None = None
    """For a queued task with a pickup timeout: when it fails unless started."""
    backoff: Backoff | None = None
    worker: str | None = None
    lease_until: float | None = None
    token: str | None = None
    abort_requested: str | None = None
    progress: Progress | None = None
    result: JSON = None
    error: ErrorInfo | None = None
    errors: tuple[ErrorInfo, ...] = ()
    reason: str | None = None
    unique_key: str | None = None
    unique_scope: tuple[Status, ...] = DEFAULT_UNIQUE_SCOPE
    concurrency: tuple[Condition, ...] = ()
    tags: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None
    public_url: str | None = None
    version: int = 1
    logs: tuple[LogRecord, ...] | None = None
    """The task's logs when it was read with ``logs=True``; None otherwise."""

    @property
    def terminal(self) -> bool:
        """Whether the task has ended (its status is in :data:`TERMINAL`)."""
        return self.status in TERMINAL

    def to_json(self) -> dict[str, Any]:
        """The task as a JSON-ready dict (the wire form used by the CLI and the hub).

        The fencing ``token`` is left out: it belongs to the worker holding the task.
        """
        return {
            "id": self.id,
            "action": self.action,
            "payload": self.payload,
            "status": self.status.value,
            "priority": self.priority,
            "run_at": self.run_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "rescues": self.rescues,
            "run_timeout": self.run_timeout,
            "pickup_timeout": self.pickup_timeout,
            "pickup_deadline": self.pickup_deadline,
            "backoff": self.backoff.to_json() if self.backoff else None,
            "worker": self.worker,
            "lease_until": self.lease_until,
            "abort_requested": self.abort_requested,
            "progress": self.progress.to_json() if self.progress else None,
            "result": self.result,
            "error": self.error.to_json() if self.error else None,
            "errors": [e.to_json() for e in self.errors],
            "reason": self.reason,
            "unique_key": self.unique_key,
            "unique_scope": [s.value for s in self.unique_scope],
            "concurrency": [c.to_json() for c in self.concurrency],
            "tags": self.tags,
            "parent_id": self.parent_id,
            "public_url": self.public_url,
            "version": self.version,
            **({"logs": [r.to_json() for r in self.logs]} if self.logs is not None else {}),
        }


_TASK_NAMES = tuple(f.name for f in fields(Task))


def _builder(cls: type[_T]) -> Callable[[Sequence[Any]], _T]:
    """A function that makes a ``cls`` (a frozen, slotted dataclass without
    ``__post_init__``) from its field values in order, one slot setter call per
    field written out (no loop, no ``object.__setattr__``): storage decodes a task
    per claimed row, and a bulk add makes a spec and a task per item."""
    setters = [cls.__dict__[f.name].__set__ for f in fields(cls)]  # type: ignore[arg-type]
    n = len(setters)
    names = ", ".join(f"v{i}" for i in range(n))
    lines = ["def build(values, new=object.__new__, cls=cls):",
             "    obj = new(cls)",
             f"    {names}, = values",
             *(f"    s{i}(obj, v{i})" for i in range(n)),
             "    return obj"]
    scope: dict[str, Any] = {f"s{i}": setter for i, setter in enumerate(setters)}
    scope["cls"] = cls
    exec("\n".join(lines), scope)  # fixed text built from the field count alone
    build: Callable[[Sequence[Any]], _T] = scope["build"]
    return build


_task_from_values = _builder(Task)
_task_from_values.__doc__ = """``Task(*values)`` with every field given in order, without the
frozen dataclass's per-field ``object.__setattr__`` (storage decodes many tasks)."""


def _task_replace(task: Task, **changes: Any) -> Task:
    """``dataclasses.replace(task, **changes)`` at a third of the cost (no ``__init__``
    and per-field ``object.__setattr__``); the names must be fields of Task."""
    return _task_from_values([changes[name] if name in changes else getattr(task, name)
                              for name in _TASK_NAMES])


# Field names a filter may use, and how each compares. JSON fields may be
# followed by a dotted path into their value (``payload.user.id``).
class FieldKind(enum.Enum):
    """The kind of a task field in the query language (docs/query.md): text, number, time
    (epoch seconds) or JSON (a document that dotted paths reach into)."""

    TEXT = "text"
    NUMBER = "number"
    TIME = "time"
    JSON = "json"


FIELDS: Mapping[str, FieldKind] = {
    "id": FieldKind.TEXT,
    "action": FieldKind.TEXT,
    "status": FieldKind.TEXT,
    "priority": FieldKind.NUMBER,
    "run_at": FieldKind.TIME,
    "created_at": FieldKind.TIME,
    "updated_at": FieldKind.TIME,
    "started_at": FieldKind.TIME,
    "finished_at": FieldKind.TIME,
    "attempts": FieldKind.NUMBER,
    "max_attempts": FieldKind.NUMBER,
    "rescues": FieldKind.NUMBER,
    "run_timeout": FieldKind.NUMBER,
    "pickup_timeout": FieldKind.NUMBER,
    "worker": FieldKind.TEXT,
    "lease_until": FieldKind.TIME,
    "abort_requested": FieldKind.TEXT,
    "reason": FieldKind.TEXT,
    "unique_key": FieldKind.TEXT,
    "parent_id": FieldKind.TEXT,
    "version": FieldKind.NUMBER,
    "payload": FieldKind.JSON,
    "tags": FieldKind.JSON,
    "result": FieldKind.JSON,
    "error": FieldKind.JSON,
    "progress": FieldKind.JSON,
}
"""The task fields the query language knows, with their kinds (docs/query.md)."""
JSON_FIELDS = frozenset(name for name, kind in FIELDS.items() if kind is FieldKind.JSON)
"""The fields holding JSON documents, whose inner fields a query can reach with dots."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What :meth:`Storage.add` inserts: a validated new task.

    ``payload`` is already JSON-ready; ``run_at`` is absolute, or None for
    the time the storage adds it (its ``created_at``, so a task added without a
    delay has ``run_at == created_at``).
    """

    id: str
    action: str
    payload: JSON
    priority: float = 0.0
    run_at: float | None = None
    max_attempts: int | None = None
    run_timeout: float | None = None
    pickup_timeout: float | None = None
    backoff: Backoff | None = None
    unique_key: str | None = None
    unique_scope: tuple[Status, ...] = DEFAULT_UNIQUE_SCOPE
    concurrency: tuple[Condition, ...] = ()
    tags: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None


_spec_from_values = _builder(TaskSpec)
"""``TaskSpec(*values)`` with every field given in order (see :func:`_builder`)."""


# ---------------------------------------------------------------------------
# outcomes: what a handler run came to


@dataclass(frozen=True, slots=True, init=False)
class Retry:
    """Return this from a handler to run the task again after ``after`` seconds
    (or a :class:`~datetime.timedelta`, kept as its seconds).

    The attempt counts against ``max_attempts``; ``after=None`` uses the backoff.
    """

    after: float | None = None
    reason: str | None = None

    # written out (not generated): ``after`` takes a timedelta, and reads back as seconds
    def __init__(self, after: float | timedelta | None = None,
                 reason: str | None = None) -> None:
        object.__setattr__(self, "after", seconds(after, "Retry(after=...)"))
        if reason is not None:
            if not isinstance(reason, str):
                raise ValidationError(
                    f"Retry(reason=...) must be a string or None, not {reason!r}")
            # a lone surrogate is escaped, as in a log line or an error's message
            reason = storable_text(reason)
        object.__setattr__(self, "reason", reason)


class PermanentFailure(Exception):
    """Raise this (or a subclass) from a handler to fail the task now: no retry,
    whatever attempts remain and whatever the handler's ``retry_on`` (BullMQ's
    ``UnrecoverableError``, Celery's ``Reject``, Oban's ``{:cancel, reason}``).

    The run's outcome is ``Raised(error, retryable=False)``: the default policy
    ends the task ``failed`` with this error (its type the class's name, its
    message the exception's). In every kind of handler: async, thread, process
    and a hub's remote service (``conveyor.client``)."""


@dataclass(frozen=True, slots=True, init=False)
class Reschedule:
    """Return this from a handler to queue the task again after ``after`` seconds
    (or a :class:`~datetime.timedelta`, kept as its seconds) without using up an
    attempt (polling)."""

    after: float = 0.0
    result: JSON = None

    # written out (not generated): ``after`` takes a timedelta, and reads back as seconds
    def __init__(self, after: float | timedelta = 0.0, result: JSON = None) -> None:
        object.__setattr__(self, "after",
                           seconds(after, "Reschedule(after=...)", allow_none=False))
        object.__setattr__(self, "result", result)


@dataclass(frozen=True, slots=True)
class Returned:
    """The handler returned a value (already converted to JSON)."""

    value: JSON


@dataclass(frozen=True, slots=True)
class Raised:
    """The handler raised. ``retryable`` says whether the action's retry rules
    allow another attempt for this exception type."""

    error: ErrorInfo
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class Aborted:
    """The run was aborted on request."""

    reason: str = "aborted"


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The run went past its run timeout. ``retryable`` says whether the
    action's ``retry_on`` covers :class:`TimeoutError` (it does by default)."""

    timeout: float
    retryable: bool = True


Outcome: TypeAlias = Returned | Raised | Retry | Reschedule | Aborted | TimedOut
"""How one run of a handler ended, as the transition policy sees it."""


@dataclass(frozen=True, slots=True, init=False)
class Transition:
    """What happens to a task after a run: the policy's answer.

    ``status`` is the next status (a :class:`Status` or its value, ``"queued"``); ``run_at``
    (epoch seconds in the range of :func:`check_time`) is required when it is
    ``queued``. ``error`` is an :class:`ErrorInfo` (added to the task's errors),
    ``reason`` a string, and ``refund_attempt`` gives the attempt back
    (polling). Anything else raises :class:`ValidationError`.
    """

    status: Status
    run_at: float | None = None
    result: JSON = None
    error: ErrorInfo | None = None
    reason: str | None = None
    refund_attempt: bool = False

    # written out (not generated): ``status`` takes a status's value, and reads back as
    # a Status
    def __init__(self, status: Status | Literal["queued", "succeeded", "failed", "aborted"],
                 run_at: float | None = None, result: JSON = None,
                 error: ErrorInfo | None = None, reason: str | None = None,
                 refund_attempt: bool = False) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "status", status)
        setattr_(self, "run_at", run_at)
        setattr_(self, "result", result)
        setattr_(self, "error", error)
        setattr_(self, "reason", reason)
        setattr_(self, "refund_attempt", refund_attempt)
        if type(self.status) is not Status:
            if not isinstance(self.status, str) or self.status not in _STATUS_NAMES:
                raise ValidationError(f"a transition's status must be a status, not "
                                      f"{self.status!r}")
            object.__setattr__(self, "status", Status(self.status))
        if self.error is not None and not isinstance(self.error, ErrorInfo):
            raise ValidationError(f"a transition's error must be an ErrorInfo or None, not "
                                  f"{self.error!r}")
        if self.reason is not None and not isinstance(self.reason, str):
            raise ValidationError(f"a transition's reason must be a string or None, not "
                                  f"{self.reason!r}")
        if not isinstance(self.refund_attempt, bool):
            raise ValidationError(f"a transition's refund_attempt must be True or False, not "
                                  f"{self.refund_attempt!r}")
        if self.status is Status.RUNNING:
            raise ValidationError("a transition cannot lead to 'running'")
        if self.status is Status.QUEUED and self.run_at is None:
            raise ValidationError("a transition back to 'queued' needs run_at")
        if self.run_at is not None:
            object.__setattr__(self, "run_at", check_time(self.run_at, "a transition's run_at"))


_SUCCEEDED = Transition(Status.SUCCEEDED)

Policy: TypeAlias = Callable[[Task, Outcome], Transition]
"""A transition policy: ``policy(task, outcome) -> Transition``. Must not do I/O."""


def default_policy(task: Task, outcome: Outcome, *, now: float | None = None,
                   default_backoff: Backoff = Backoff()) -> Transition:
    """The lifecycle of the design:

    - a returned value: ``succeeded`` with the value as result;
    - ``Reschedule(after)``: ``queued`` again after ``after``, attempt refunded;
    - ``Retry(after)`` or a retryable exception: ``queued`` after the delay
      (backoff when ``after`` is None) while attempts remain, else ``failed``;
    - a run timeout: like an exception of type ``TimeoutError`` (retried while
      attempts remain and the action retries ``TimeoutError``), and when no
      attempt is left, ``aborted`` with reason ``timeout``;
    - an abort: ``aborted`` with the given reason.

    A retry keeps the task's stored ``result`` (the polling state a
    ``Reschedule`` left, read again by the next run); a run that ends the task
    otherwise stores the transition's result (None for a failure).
    """
    if type(outcome) is Returned:
        if outcome.value is None:
            return _SUCCEEDED  # the common case, shared (transitions are frozen)
        return Transition(Status.SUCCEEDED, result=outcome.value)
    now = time.time() if now is None else now
    max_attempts = task.max_attempts or DEFAULT_MAX_ATTEMPTS
    attempts_left = task.attempts < max_attempts
    backoff = task.backoff or default_backoff
    match outcome:
        case Returned(value):
            return Transition(Status.SUCCEEDED, result=value)
        case Reschedule(after, result):
            return Transition(Status.QUEUED, run_at=now + after, result=result,
                              refund_attempt=True)
        case Retry(after, reason):
            error = ErrorInfo.bounded("Retry", reason or "retry requested",
                                      attempt=task.attempts, at=now)
            if attempts_left:
                delay = backoff.delay(task.attempts) if after is None else after
                return Transition(Status.QUEUED, run_at=now + delay, error=error,
                                  result=task.result)
            return Transition(Status.FAILED, error=error, reason="error")
        case Raised(error, retryable):
            if retryable and attempts_left:
                return Transition(Status.QUEUED, run_at=now + backoff.delay(task.attempts),
                                  error=error, result=task.result)
            return Transition(Status.FAILED, error=error, reason="error")
        case TimedOut(timeout, retryable):
            error = ErrorInfo("TimeoutError", f"run timeout of {timeout:g}s exceeded",
                              attempt=task.attempts, at=now)
            if retryable and attempts_left:
                return Transition(Status.QUEUED, run_at=now + backoff.delay(task.attempts),
                                  error=error, result=task.result)
            return Transition(Status.ABORTED, error=error, reason="timeout")
        case Aborted(reason):
            error = ErrorInfo("Aborted", reason, attempt=task.attempts, at=now)
            return Transition(Status.ABORTED, error=error, reason=reason)
    raise TypeError(f"unknown outcome {outcome!r}")  # pragma: no cover


def with_changes(task: Task, **changes: Any) -> Task:
    """A copy of ``task`` with some fields changed (used by backends)."""
    return replace(task, **changes)


def normalise_tags(tags: Mapping[str, Any] | Sequence[tuple[str, Any]] | None) -> dict[str, Any]:
    if tags is None:
        return {}
    items = tags.items() if isinstance(tags, Mapping) else tags
    out: dict[str, Any] = {}
    for key, value in items:
        if not isinstance(key, str) or not key:
            raise ValidationError(f"tag names must be non-empty strings, not {key!r}")
        if "." in key:
            raise ValidationError(f"tag name {key!r} must not contain '.'")
        out[key] = value
    return out
