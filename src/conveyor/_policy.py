"""The one place a run's outcome becomes a transition: the worker's and the hub's."""

from __future__ import annotations

import logging
from dataclasses import replace

from . import _json
from .model import (
    Backoff,
    ErrorInfo,
    Outcome,
    Policy,
    Status,
    Task,
    Transition,
    default_policy,
)

__all__ = ["decide", "with_defaults"]

log = logging.getLogger("conveyor.worker")


def decide(policy: Policy | None, task: Task, outcome: Outcome, max_payload: int) -> Transition:
    """The policy's transition for ``outcome`` (the default policy when None). A policy
    that raises, returns something else than a :class:`Transition` or a result that is
    not JSON within ``max_payload`` bytes ends the task ``failed`` with reason
    ``policy_error`` and the error it made."""
    try:
        if policy is None:
            return default_policy(task, outcome)
        transition = policy(task, outcome)
        if not isinstance(transition, Transition):
            raise TypeError(f"the transition policy returned {transition!r}")
        _json.dumps_checked(transition.result, "the transition's result", limit=max_payload)
    except Exception as exc:
        log.exception("transition policy failed for task %s", task.id)
        error = ErrorInfo.from_exception(exc, attempt=task.attempts)
        return Transition(Status.FAILED, error=error, reason="policy_error")
    return transition


def with_defaults(task: Task, *, max_attempts: int | None = None,
                  backoff: Backoff | None = None, run_timeout: float | None = None) -> Task:
    """``task`` with a handler's ``max_attempts``, ``backoff`` and run timeout where it
    has none of its own (a task added where the handler was not registered: the CLI,
    a hub): what the worker, the hub and a remote handler all apply."""
    if ((task.max_attempts is None and max_attempts is not None)
            or (task.backoff is None and backoff is not None)
            or (task.run_timeout is None and run_timeout is not None)):
        return replace(task, max_attempts=task.max_attempts or max_attempts,
                       backoff=task.backoff or backoff,
                       run_timeout=task.run_timeout or run_timeout)
    return task
