"""Pure state changes of a task, shared by the backends.

Each function takes a task and returns the changed copy (with ``version``
bumped and ``event`` named) or raises :class:`InvalidTransition`. The memory
backend applies them directly; the SQL backends use them for the cold
paths (abort, retry, prioritize, rescue) and mirror them in SQL for the hot
ones (claim, finish), which the contract suite checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..errors import InvalidTransition
from ..model import (
    MAX_ERRORS,
    ErrorInfo,
    Status,
    Task,
    TaskSpec,
    Transition,
    _task_from_values,
    _task_replace,
)
from .base import Completion

__all__ = [
    "RETRY_ABORTED",
    "abort",
    "abort_wins",
    "claimed",
    "completion_event",
    "enters_key_scope",
    "finished",
    "finished_overruled",
    "finished_with_event",
    "first_per_task",
    "new_task",
    "pickup_deadline",
    "pickup_expired",
    "prioritized",
    "released",
    "rescued",
    "retried",
]


def _kept(*errors: ErrorInfo) -> tuple[ErrorInfo, ...]:
    """A task's error history with new ones appended: the most recent MAX_ERRORS."""
    return errors[-MAX_ERRORS:]


def pickup_deadline(task: Task | TaskSpec, ready_at: float) -> float | None:
    """When a task that becomes ready at ``ready_at`` fails unless started."""
    return None if task.pickup_timeout is None else ready_at + task.pickup_timeout


def ready_at(run_at: float, now: float) -> float:
    """When a task queued ``now`` to run at ``run_at`` becomes ready: a ``run_at`` in
    the past is not (a task added or queued again with one is ready from now on, and
    its pickup timeout counts from then: it failed at once, without running)."""
    return run_at if run_at > now else now


def new_task(spec: TaskSpec, now: float) -> Task:
    run_at = now if spec.run_at is None else spec.run_at
    deadline = None if spec.pickup_timeout is None else (
        ready_at(run_at, now) + spec.pickup_timeout)
    # in field order, without the dataclass __init__: this runs for every task of a bulk add
    return _task_from_values((
        spec.id, spec.action, spec.payload, Status.QUEUED, spec.priority, run_at,
        now, now, None, None, 0, spec.max_attempts, 0, spec.run_timeout,
        spec.pickup_timeout, deadline, spec.backoff, None, None, None, None, None, None,
        None, (), None, spec.unique_key, spec.unique_scope, spec.concurrency,
        dict(spec.tags) if spec.tags else {}, spec.parent_id, None, 1, None))


def claimed(task: Task, worker: str, token: str, now: float, lease: float) -> Task:
    return replace(task, status=Status.RUNNING, worker=worker, token=token, pickup_deadline=None,
                   lease_until=now + lease, started_at=now, attempts=task.attempts + 1,
                   updated_at=now, version=task.version + 1)


def completion_event(transition: Transition) -> str:
    if transition.status is Status.QUEUED:
        return "rescheduled" if transition.refund_attempt else "retrying"
    return transition.status.value


RETRY_ABORTED = "retry_aborted"
"""The change-feed event of a run that ended in a retry or a reschedule while an
abort was requested: the task ends ``aborted`` instead of being queued again."""


def enters_key_scope(old: Task, new: Task) -> bool:
    """Whether a change takes a keyed task into a status its scope holds the key in from
    one it does not (back to ``queued`` from ``running`` when ``running`` is out of
    scope): another task may have taken the key meanwhile, and then this one gives it
    up (the storages' ``yield_key``)."""
    return (new.unique_key is not None and new.status in new.unique_scope
            and old.status not in old.unique_scope)


def first_per_task(completions: Sequence[Completion]) -> tuple[list[Completion], list[str]]:
    """The completions to apply (the first of each task) and the ids of the repeated
    ones: a run ends once, so a later completion of a task in the same call is not
    stored (as a second call's would be refused by the fencing token)."""
    seen: set[str] = set()
    first: list[Completion] = []
    repeated: list[str] = []
    for c in completions:
        if c.task_id in seen:
            repeated.append(c.task_id)
        else:
            seen.add(c.task_id)
            first.append(c)
    return first, repeated


def abort_wins(task: Task, completion: Completion) -> bool:
    """Whether an abort requested of ``task`` overrides the run's ``completion``:
    it would queue the task again (a retry, a reschedule). An ending (succeeded,
    failed, aborted) is stored as the run decided it."""
    return task.abort_requested is not None and completion.transition.status is Status.QUEUED


def finished_with_event(task: Task, completion: Completion, now: float) -> tuple[Task, str]:
    """The task after a run ended with ``completion``, and the change-feed event.

    A run that would be queued again while an abort is requested ends ``aborted``
    with the abort's reason (event :data:`RETRY_ABORTED`); the run's own error, if
    any, is kept in ``errors`` before the abort's. Otherwise as :func:`finished`."""
    if abort_wins(task, completion):
        run_error = completion.transition.error
        return _aborted(
            task, task.abort_requested or "aborted", now,
            before=(run_error,) if run_error is not None else (), result=None,
            progress=completion.progress if completion.progress is not None
            else task.progress), RETRY_ABORTED
    return (finished(task, completion, now),
            completion.event or completion_event(completion.transition))


def finished_overruled(task: Task, completion: Completion, now: float
                       ) -> tuple[Task, Task, str] | None:
    """For the SQL backends' finish: ``(task, the task ended, event)`` when the
    stored ``task`` is still held by the completion's run and an abort overrules
    its retry (:func:`abort_wins`); None otherwise (the lease was lost)."""
    if task.token != completion.token or not abort_wins(task, completion):
        return None
    return (task, *finished_with_event(task, completion, now))


def _aborted(task: Task, reason: str, now: float, before: tuple[ErrorInfo, ...] = (),
             **more: Any) -> Task:
    """``task`` ended ``aborted`` with ``reason`` (an ``Aborted`` error after the
    ``before`` ones in its history), its lease and abort request cleared."""
    error = ErrorInfo("Aborted", reason, attempt=task.attempts, at=now)
    return replace(task, status=Status.ABORTED, reason=reason, error=error,
                   errors=_kept(*task.errors, *before, error), finished_at=now,
                   pickup_deadline=None, worker=None, token=None, lease_until=None,
                   abort_requested=None, updated_at=now, version=task.version + 1, **more)


def finished(task: Task, completion: Completion, now: float) -> Task:
    """The task after a run ended with ``completion`` as the run decided it (see
    :func:`finished_with_event` for an abort requested meanwhile).

    The SQL backends' ``finish`` queries mirror this."""
    t = completion.transition
    queued = t.status is Status.QUEUED
    run_at = t.run_at if (queued and t.run_at is not None) else task.run_at
    return _task_replace(
        task,
        status=t.status,
        run_at=run_at,
        pickup_deadline=pickup_deadline(task, ready_at(run_at, now)) if queued else None,
        result=t.result,
        error=t.error,
        errors=_kept(*task.errors, t.error) if t.error is not None else task.errors,
        reason=t.reason,
        finished_at=None if queued else now,
        attempts=task.attempts - (1 if t.refund_attempt else 0),
        worker=None, token=None, lease_until=None, abort_requested=None,
        progress=completion.progress if completion.progress is not None else task.progress,
        updated_at=now,
        version=task.version + 1,
    )


def abort(task: Task, reason: str, now: float) -> tuple[Task, str]:
    """An abort of a queued task (now ``aborted``) or a running one (flagged)."""
    if task.status is Status.QUEUED:
        return _aborted(task, reason, now), "aborted"
    if task.status is Status.RUNNING:
        if task.abort_requested is not None:
            return task, ""
        return replace(task, abort_requested=reason, updated_at=now,
                       version=task.version + 1), "abort_requested"
    raise InvalidTransition(
        f"task {task.id} is already {task.status.value}: nothing to abort", task)


def prioritized(task: Task, priority: float, now: float) -> Task:
    if task.status is not Status.QUEUED:
        raise InvalidTransition(
            f"task {task.id} is {task.status.value}: only queued tasks can be re-prioritised", task)
    return replace(task, priority=priority, updated_at=now, version=task.version + 1)


def retried(task: Task, run_at: float, now: float) -> Task:
    if task.status not in (Status.FAILED, Status.ABORTED):
        raise InvalidTransition(
            f"task {task.id} is {task.status.value}: only failed or aborted tasks can be retried",
            task)
    return replace(task, status=Status.QUEUED, run_at=run_at,
                   pickup_deadline=pickup_deadline(task, ready_at(run_at, now)), finished_at=None,
                   reason=None, rescues=0,  # the new run has max_rescues of its own
                   error=None, result=None, abort_requested=None, worker=None, token=None,
                   lease_until=None, updated_at=now, version=task.version + 1)


def released(task: Task, now: float) -> Task:
    return replace(task, status=Status.QUEUED, attempts=max(0, task.attempts - 1),
                   pickup_deadline=pickup_deadline(task, now), worker=None,
                   token=None, lease_until=None, updated_at=now, version=task.version + 1)


def rescued(task: Task, now: float, max_rescues: int) -> tuple[Task, str]:
    """A running task whose lease expired: back to the queue (event ``rescued``),
    failed with reason ``worker_lost`` (event ``lost``), or aborted if an abort
    was requested (event ``lost_aborted``)."""
    if task.abort_requested is not None:
        return _aborted(task, task.abort_requested, now), "lost_aborted"
    lost = ErrorInfo("WorkerLost", f"lease of worker {task.worker} expired",
                     attempt=task.attempts, at=now)
    if task.rescues >= max_rescues:
        return replace(task, status=Status.FAILED, reason="worker_lost", error=lost,
                       errors=_kept(*task.errors, lost), finished_at=now, worker=None, token=None,
                       lease_until=None, updated_at=now, version=task.version + 1), "lost"
    return replace(task, status=Status.QUEUED, rescues=task.rescues + 1,
                   attempts=max(0, task.attempts - 1), errors=_kept(*task.errors, lost),
                   worker=None, token=None, lease_until=None,
                   pickup_deadline=pickup_deadline(task, now), updated_at=now,
                   version=task.version + 1), "rescued"


def condition_failed(task: Task, now: float, message: str) -> Task:
    """A queued task whose concurrency condition could not be evaluated (a ``$regex``
    that ran too long on another task's value): it fails rather than hold up every
    claim."""
    error = ErrorInfo("QueryError", f"its concurrency condition could not be evaluated: "
                      f"{message}", attempt=task.attempts, at=now)
    return replace(task, status=Status.FAILED, reason="condition_error", error=error,
                   errors=_kept(*task.errors, error), finished_at=now, pickup_deadline=None,
                   updated_at=now, version=task.version + 1)


def pickup_expired(task: Task, now: float) -> Task:
    error = ErrorInfo("PickupTimeout",
                      f"not started within its pickup timeout of {task.pickup_timeout or 0:g}s",
                      attempt=task.attempts, at=now)
    return replace(task, status=Status.FAILED, reason="pickup_timeout", error=error,
                   errors=_kept(*task.errors, error), finished_at=now, pickup_deadline=None,
                   updated_at=now, version=task.version + 1)
