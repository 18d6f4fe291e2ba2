"""The in-memory backend (``memory://``): for unit tests, users' tests and demos.

Everything lives in one process and is lost when it exits. Methods are
thread-safe and may be called from any event loop.

It keeps JSON values as the persistent backends do: every value that goes in
(payload, tags, backoff, conditions, result, progress, errors, log data,
worker info) is stored as it reads back from a JSON column, through
:mod:`conveyor._json` (tuples become lists, keys become text, ...), so
nothing the caller still holds is kept. The stored values are never changed
in place and never handed out: each read returns dicts and lists of its own
(:func:`_copy`: stored values are plain JSON, so a walk over their dicts and
lists copies them, faster than decoding JSON text again).
"""

from __future__ import annotations

import contextlib
import operator
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields, replace
from typing import Any

from .. import _json
from ..errors import DuplicateTask, InvalidTransition, QueryError, StorageError, TaskNotFound
from ..model import (
    TERMINAL,
    Backoff,
    Condition,
    ErrorInfo,
    LogLevel,
    LogRecord,
    Progress,
    Status,
    Task,
    TaskSpec,
    Transition,
    _spec_from_values,
    _task_from_values,
    new_token,
)
from ..query import Filter, Query, apply_query, matches, parse_filter
from . import _ops
from ._feed import Fanout, FanoutFeed, ReadyHooks, is_wakeup
from .base import (
    AddResult,
    Change,
    ClaimLimits,
    Completion,
    HeartbeatReply,
    Lease,
    NewLog,
    RecoverReport,
    Storage,
    WorkerInfo,
    key_holder,
)

__all__ = ["MemoryStorage"]


def _stored(value: Any) -> Any:
    """``value`` as a JSON column gives it back: encoded as the other backends
    encode it, then decoded (raises as they do for values that are not JSON)."""
    return _json.loads(_json.dumps(value))


_NESTED = (dict, list)


def _copy(value: Any) -> Any:
    """A copy of a stored JSON value: new dicts and lists, the (immutable) rest shared.
    A value nested deeper than Python's recursion allows here (one the JSON encoder
    took, a few hundred levels) is copied through JSON text."""
    try:
        return _copy_nested(value)
    except RecursionError:
        return _json.loads(_json.dumps(value))


def _copy_nested(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {k: _copy_nested(v) if type(v) in _NESTED else v for k, v in value.items()}
    if kind is list:
        return [_copy_nested(v) if type(v) in _NESTED else v for v in value]
    return value


_NAMES = tuple(f.name for f in fields(Task))
_values = operator.attrgetter(*_NAMES)
_PAYLOAD, _BACKOFF, _PROGRESS, _RESULT, _CONCURRENCY, _TAGS = (
    _NAMES.index(name)
    for name in ("payload", "backoff", "progress", "result", "concurrency", "tags"))


def _out(task: Task) -> Task:
    """A stored task for a caller: its JSON values its own (the rest is immutable)."""
    values = list(_values(task))
    values[_PAYLOAD] = _copy(values[_PAYLOAD])
    values[_TAGS] = _copy(values[_TAGS])
    values[_RESULT] = _copy(values[_RESULT])
    progress = values[_PROGRESS]
    if progress is not None and progress.data is not None:
        values[_PROGRESS] = Progress(progress.current, progress.total, progress.message,
                                     _copy(progress.data))
    if values[_CONCURRENCY]:
        values[_CONCURRENCY] = tuple(Condition(_copy(c.query), c.limit, c.scope)
                                     for c in values[_CONCURRENCY])
    return _task_from_values(values)


_SPEC_NAMES = tuple(f.name for f in fields(TaskSpec))
_spec_values = operator.attrgetter(*_SPEC_NAMES)
_SPEC_PAYLOAD, _SPEC_BACKOFF, _SPEC_CONCURRENCY, _SPEC_TAGS = (
    _SPEC_NAMES.index(name) for name in ("payload", "backoff", "concurrency", "tags"))


def _stored_spec(spec: TaskSpec, raw: Any) -> TaskSpec:
    """``spec`` holding ``raw``, the stored form of its JSON values."""
    payload, tags, backoff, conditions = raw
    values = list(_spec_values(spec))
    values[_SPEC_PAYLOAD] = payload
    values[_SPEC_TAGS] = tags
    if backoff is not None:
        values[_SPEC_BACKOFF] = Backoff(**backoff)
    if conditions is not None:
        values[_SPEC_CONCURRENCY] = tuple(Condition.parse(c) for c in conditions)
    return _spec_from_values(values)


@contextlib.contextmanager
def _handing_out() -> Iterator[None]:
    """Let an :class:`InvalidTransition` raised inside carry a copy of the stored task."""
    try:
        yield
    except InvalidTransition as exc:
        if exc.task is not None:
            exc.task = _out(exc.task)
        raise


def _stored_progress(raw: Any) -> Progress | None:
    return None if raw is None else Progress.from_json(raw)


def _stored_completion(c: Completion, raw: Any) -> Completion:
    """``c`` with the result, error and progress decoded from ``raw`` (their JSON)."""
    result, error, progress = raw
    t = c.transition
    t = Transition(t.status, run_at=t.run_at, result=result,
                   error=None if error is None else ErrorInfo.from_json(error),
                   reason=t.reason, refund_attempt=t.refund_attempt)
    return Completion(c.task_id, c.token, t, _stored_progress(progress), c.event)


class MemoryStorage(FanoutFeed, Storage):
    """Tasks in a dict. ``MemoryStorage()`` or ``open_storage("memory://")``."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self.instance_id = uuid.uuid4().hex
        self._lock = threading.RLock()
        self._tasks: dict[str, Task] = {}
        self._keyed: dict[str, dict[str, None]] = {}  # unique key -> ids of its tasks
        self._logs: dict[str, list[LogRecord]] = {}
        self._log_seq = 0
        self._change_seq = 0
        self._workers: dict[str, WorkerInfo] = {}
        self._feed = Fanout(self.instance_id)
        self._pending: list[Change] = []
        self._ready_hooks = ReadyHooks()

    async def open(self) -> None:
        return None

    def after_fork(self) -> MemoryStorage:
        """In a forked child: the same object, holding the child's copy of the data
        (from then on apart from the parent's), with a new lock and no streams."""
        self._lock = threading.RLock()
        self._feed = Fanout(self.instance_id)
        return self

    async def close(self) -> None:
        """End open change streams; the data stays, and the object can be used again."""
        self._feed.close()
        self._feed = Fanout(self.instance_id)

    # -- helpers --------------------------------------------------------------

    def _put(self, task: Task, event: str, now: float) -> None:
        """Store a changed task, its JSON values in stored form, and record the change
        (lock held). A task entering a status its scope holds its key in while another
        task holds that key (taken while this one ran) gives the key up."""
        old = self._tasks.get(task.id)
        if (old is not None and _ops.enters_key_scope(old, task)
                and any(o.id != task.id and o.status in o.unique_scope
                        for o in self._with_key(task.unique_key))):
            task = replace(task, unique_key=None)
        if old is not None and old.unique_key != task.unique_key:
            self._unkey(old)
        if task.unique_key is not None:
            self._keyed.setdefault(task.unique_key, {})[task.id] = None
        self._tasks[task.id] = task
        self._change_seq += 1
        self._pending.append(Change(self._change_seq, task.id, task.version, task.status, event,
                                    self.instance_id, now))

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        self._feed.publish(pending)
        if self._ready_hooks and any(is_wakeup(c) for c in pending):
            self._ready_hooks.call()

    def add_ready_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` (on the running event loop) when a task is queued. Two apps
        given this one storage object (a producer beside a worker, in a test) do not
        see each other's changes in their feeds (they share its origin): the worker's
        hook is how the other app's add wakes it (it waited for its ``idle_poll``)."""
        self._ready_hooks.add(hook)

    def remove_ready_hook(self, hook: Callable[[], None]) -> None:
        """Stop calling ``hook`` (see :meth:`add_ready_hook`)."""
        self._ready_hooks.remove(hook)

    def _must(self, task_id: str) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    def _holds(self, lease: Lease) -> Task | None:
        task = self._tasks.get(lease.task_id)
        if task is None or task.status is not Status.RUNNING or task.token != lease.token:
            return None
        return task

    def _with_key(self, key: str | None) -> list[Task]:
        """The tasks with this unique key (lock held)."""
        return [] if key is None else [self._tasks[i] for i in self._keyed.get(key, ())]

    def _unkey(self, task: Task) -> None:
        """Forget that ``task`` has its unique key (lock held)."""
        if task.unique_key is not None:
            ids = self._keyed.get(task.unique_key)
            if ids is not None:
                ids.pop(task.id, None)
                if not ids:
                    del self._keyed[task.unique_key]

    def _live_duplicate(self, spec: TaskSpec) -> Task | None:
        """The task holding ``spec``'s key (see :func:`~conveyor.storage.base.key_holder`)."""
        return key_holder(self._with_key(spec.unique_key), spec.unique_scope)

    # -- tasks ----------------------------------------------------------------

    async def add(self, specs: Sequence[TaskSpec]) -> list[AddResult]:
        now = time.time()
        raw = _stored([[
            s.payload, s.tags or {}, s.backoff.to_json() if s.backoff else None,
            [c.to_json() for c in s.concurrency] if s.concurrency else None,
        ] for s in specs])
        tasks = [_ops.new_task(_stored_spec(spec, r), now)
                 for spec, r in zip(specs, raw, strict=True)]
        out: list[AddResult] = []
        with self._lock:
            ids = [spec.id for spec in specs]
            if len(set(ids)) != len(ids) or any(i in self._tasks for i in ids):
                raise StorageError("could not add tasks: a task with this id already exists")
            for spec, task in zip(specs, tasks, strict=True):
                dup = self._live_duplicate(spec)
                if dup is not None:
                    out.append(AddResult(dup, created=False))
                    continue
                self._put(task, "added", now)
                out.append(AddResult(task, created=True))
        self._flush()
        return [AddResult(_out(r.task), r.created) for r in out]

    async def get(self, task_id: str) -> Task | None:
        with self._lock:
            task = self._tasks.get(task_id)
        return None if task is None else _out(task)

    async def get_many(self, task_ids: Sequence[str]) -> list[Task]:
        with self._lock:
            tasks = [t for i in task_ids if (t := self._tasks.get(i)) is not None]
        return [_out(t) for t in tasks]

    async def key_holders(self, wanted: Sequence[tuple[str, Sequence[Status]]]
                          ) -> list[Task | None]:
        with self._lock:
            found = [key_holder(self._with_key(key), scope) for key, scope in wanted]
        return [None if t is None else _out(t) for t in found]

    async def find(self, query: Query) -> list[Task]:
        with self._lock:
            tasks = list(self._tasks.values())
        return [_out(t) for t in apply_query(query, tasks)]

    async def count(self, where: Filter) -> int:
        with self._lock:
            tasks = list(self._tasks.values())
        return sum(1 for t in tasks if matches(where, t))

    async def stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for t in self._tasks.values():
                per = out.setdefault(t.action, {})
                per[t.status.value] = per.get(t.status.value, 0) + 1
        return out

    async def delete(self, task_ids: Sequence[str]) -> list[str]:
        return self._delete(task_ids, self.instance_id)

    def _delete(self, task_ids: Sequence[str], origin: str | None) -> list[str]:
        """Delete finished tasks; their changes name ``origin`` as the writer."""
        now = time.time()
        deleted: list[str] = []
        with self._lock:
            for task_id in dict.fromkeys(task_ids):
                task = self._tasks.get(task_id)
                if task is None or task.status not in TERMINAL:
                    continue
                del self._tasks[task_id]
                self._unkey(task)
                self._logs.pop(task_id, None)
                self._change_seq += 1
                self._pending.append(Change(self._change_seq, task_id, task.version + 1,
                                            task.status, "deleted", origin, now))
                deleted.append(task_id)
        self._flush()
        return deleted

    # -- running --------------------------------------------------------------

    def _expire_pickups(self, now: float) -> list[str]:
        expired = []
        for task in list(self._tasks.values()):
            if (task.status is Status.QUEUED and task.pickup_deadline is not None
                    and task.pickup_deadline <= now):
                self._put(_ops.pickup_expired(task, now), "expired", now)
                expired.append(task.id)
        return expired

    def _condition_allows(self, task: Task) -> bool:
        for cond in task.concurrency:
            where = parse_filter(cond.query)
            n = sum(1 for t in self._tasks.values()
                    if t.status in cond.scope and t.id != task.id and matches(where, t))
            if n >= cond.limit:
                return False
        return True

    async def claim(self, worker: str, actions: Sequence[str], limit: int, lease: float,
                    limits: ClaimLimits | None = None) -> list[Task]:
        if limit <= 0 or not actions:
            return []
        now = time.time()
        wanted = set(actions)
        per_action = dict(limits.per_action) if limits else {}
        token = new_token()
        claimed: list[Task] = []
        with self._lock:
            self._expire_pickups(now)
            budget: dict[str, int] = {}
            for action, cap in per_action.items():
                running = sum(1 for t in self._tasks.values()
                              if t.action == action and t.status is Status.RUNNING)
                budget[action] = cap - running
            ready = sorted(
                (t for t in self._tasks.values()
                 if t.status is Status.QUEUED and t.action in wanted and t.run_at <= now),
                key=lambda t: (t.priority, t.run_at, t.id),
            )
            for task in ready:
                if len(claimed) >= limit:
                    break
                if task.action in budget and budget[task.action] <= 0:
                    continue
                if task.concurrency:
                    try:
                        allowed = self._condition_allows(task)
                    except QueryError as exc:  # a $regex that ran too long
                        self._put(_ops.condition_failed(task, now, str(exc)), "condition_failed",
                                  now)
                        continue
                    if not allowed:
                        continue
                new = _ops.claimed(task, worker, token, now, lease)
                self._put(new, "started", now)
                claimed.append(new)
                if task.action in budget:
                    budget[task.action] -= 1
        self._flush()
        return [_out(t) for t in claimed]

    async def heartbeat(self, worker: str, leases: Sequence[Lease], lease: float) -> HeartbeatReply:
        now = time.time()
        lost: set[str] = set()
        aborts: dict[str, str] = {}
        with self._lock:
            for item in leases:
                task = self._holds(item)
                if task is None:
                    lost.add(item.task_id)
                    continue
                self._tasks[task.id] = replace(task, lease_until=now + lease)
                if task.abort_requested is not None:
                    aborts[task.id] = task.abort_requested
            info = self._workers.get(worker)
            if info is not None:
                self._workers[worker] = replace(info, last_seen=now,
                                                running=len(leases) - len(lost))
        return HeartbeatReply(frozenset(lost), aborts, known=info is not None)

    async def update_progress(self, updates: Sequence[tuple[Lease, Progress]]) -> list[str]:
        now = time.time()
        refused: list[str] = []
        stored = [_stored_progress(p) for p in _stored([p.to_json() for _, p in updates])]
        with self._lock:
            for (item, _), progress in zip(updates, stored, strict=True):
                task = self._holds(item)
                if task is None:
                    refused.append(item.task_id)
                    continue
                self._put(replace(task, progress=progress, updated_at=now,
                                  version=task.version + 1), "progress", now)
        self._flush()
        return refused

    async def finish(self, worker: str, completions: Sequence[Completion]) -> list[str]:
        now = time.time()
        completions, repeated = _ops.first_per_task(completions)
        refused: list[str] = []
        raw = _stored([[c.transition.result,
                        c.transition.error.to_json() if c.transition.error else None,
                        c.progress.to_json() if c.progress else None] for c in completions])
        stored = [_stored_completion(c, r) for c, r in zip(completions, raw, strict=True)]
        with self._lock:
            for c in stored:
                task = self._holds(Lease(c.task_id, c.token))
                if task is None:
                    refused.append(c.task_id)
                    continue
                new, event = _ops.finished_with_event(task, c, now)
                if event == _ops.RETRY_ABORTED:
                    refused.append(c.task_id)
                self._put(new, event, now)
        self._flush()
        return refused + repeated

    async def release(self, worker: str, leases: Sequence[Lease]) -> list[str]:
        now = time.time()
        done: list[str] = []
        with self._lock:
            for item in leases:
                task = self._holds(item)
                if task is None:
                    continue
                if task.abort_requested is not None:
                    new, event = _ops.rescued(task, now, max_rescues=1 << 30)
                    self._put(new, event, now)
                else:
                    self._put(_ops.released(task, now), "released", now)
                done.append(task.id)
        self._flush()
        return done

    async def recover(self, max_rescues: int) -> RecoverReport:
        now = time.time()
        requeued: list[str] = []
        failed: list[str] = []
        aborted: list[str] = []
        with self._lock:
            expired = self._expire_pickups(now)
            for task in list(self._tasks.values()):
                if (task.status is not Status.RUNNING or task.lease_until is None
                        or task.lease_until >= now):
                    continue
                new, event = _ops.rescued(task, now, max_rescues)
                self._put(new, event, now)
                groups = {"rescued": requeued, "lost": failed, "lost_aborted": aborted}
                groups[event].append(task.id)
        self._flush()
        return RecoverReport(tuple(requeued), tuple(failed), tuple(aborted), tuple(expired))

    async def next_run_at(self, actions: Sequence[str]) -> float | None:
        wanted = set(actions)
        with self._lock:
            times = [t.run_at for t in self._tasks.values()
                     if t.status is Status.QUEUED and t.action in wanted]
        return min(times) if times else None

    # -- control --------------------------------------------------------------

    async def abort(self, task_id: str, reason: str) -> Task:
        now = time.time()
        with self._lock, _handing_out():
            task = self._must(task_id)
            new, event = _ops.abort(task, reason, now)
            if event:
                self._put(new, event, now)
        self._flush()
        return _out(new)

    async def prioritize(self, task_id: str, priority: float) -> Task:
        now = time.time()
        with self._lock, _handing_out():
            new = _ops.prioritized(self._must(task_id), priority, now)
            self._put(new, "prioritized", now)
        self._flush()
        return _out(new)

    async def retry(self, task_id: str, run_at: float | None = None) -> Task:
        now = time.time()
        with self._lock, _handing_out():
            task = self._must(task_id)
            new = _ops.retried(task, now if run_at is None else run_at, now)
            if task.unique_key is not None:
                for other in self._with_key(task.unique_key):
                    if (other.id != task.id
                            and (other.status in task.unique_scope
                                 or other.status in other.unique_scope)
                            and Status.QUEUED in task.unique_scope):
                        raise DuplicateTask(
                            f"task {other.id} already holds unique key {task.unique_key!r}",
                            task)
            self._put(new, "retried", now)
        self._flush()
        return _out(new)

    # -- logs -----------------------------------------------------------------

    async def append_logs(self, logs: Sequence[NewLog]) -> list[int | None]:
        seqs: list[int | None] = []
        now = time.time()
        datas = _stored([log.data for log in logs])
        with self._lock:
            touched: dict[str, Task] = {}
            for log, data in zip(logs, datas, strict=True):
                if log.token is not None:
                    held = self._tasks.get(log.task_id)
                    if (held is None or held.status is not Status.RUNNING
                            or held.token != log.token):
                        seqs.append(None)  # a line of a run fenced out
                        continue
                self._log_seq += 1
                record = LogRecord(log.task_id, self._log_seq, log.ts, log.level, log.message,
                                   data)
                self._logs.setdefault(log.task_id, []).append(record)
                seqs.append(self._log_seq)
                task = self._tasks.get(log.task_id)
                if task is not None:
                    touched[task.id] = task
            for task in touched.values():
                self._change_seq += 1
                self._pending.append(Change(self._change_seq, task.id, task.version, task.status,
                                            "log", self.instance_id, now))
        self._flush()
        return seqs

    async def read_logs(self, task_id: str, after_seq: int = 0,
                        max_level: LogLevel = LogLevel.DEBUG,
                        limit: int | None = None) -> list[LogRecord]:
        with self._lock:
            records = [r for r in self._logs.get(task_id, ())
                       if r.seq > after_seq and r.level >= max_level]
        if limit is not None:
            records = records[:limit]
        return [r if r.data is None
                else LogRecord(r.task_id, r.seq, r.ts, r.level, r.message, _copy(r.data))
                for r in records]

    # -- workers --------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        actions, extra = _stored([list(info.actions), dict(info.info)])
        info = replace(info, actions=tuple(actions), info=extra)
        with self._lock:
            self._workers[info.id] = info

    async def unregister_worker(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)

    async def list_workers(self) -> list[WorkerInfo]:
        with self._lock:
            workers = sorted(self._workers.values(), key=lambda w: w.started_at)
        return [replace(w, info=_copy(w.info)) for w in workers]

    async def forget_workers(self) -> list[str]:
        now = time.time()
        with self._lock:
            dead = [w.id for w in self._workers.values()
                    if w.last_seen < now - max(120.0, 2 * float(w.info.get("lease", 30)))]
            for worker_id in dead:
                del self._workers[worker_id]
        return dead

    # -- feed -----------------------------------------------------------------


    async def prune(self, older_than: float | None, batch: int = 500) -> int:
        if older_than is None:
            return 0
        with self._lock:
            old = [t.id for t in self._tasks.values()
                   if t.status in TERMINAL and t.finished_at is not None
                   and t.finished_at < older_than]
        # no writer named, as on every backend: each process (this one too) announces
        # the deletions from the feed
        return len(self._delete(old, None))
