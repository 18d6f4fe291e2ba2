"""The one place a run's outcome becomes a transition: the worker's and the hub's."""

from __future__ import annotations

import logging

from . import _json
from .model import ErrorInfo, Outcome, Policy, Status, Task, Transition, default_policy

__all__ = ["decide"]

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
