"""The log lines of runs' outcomes and of the sweeper's rescues, the same for a
worker and for a hub's remote runs (docs/guide.md, "Logging")."""

from __future__ import annotations

import logging
import time
from typing import Any

from .model import ErrorInfo, Status, Task, Transition
from .storage import RecoverReport

__all__ = ["log_outcome", "log_recovery", "log_report"]

MAX_TEXT = 500
"""Characters of an error's type and message put in a log line."""

MAX_IDS = 10
"""Task ids named in one line of the sweeper's."""


def log_outcome(log: logging.Logger, task: Task, t: Transition) -> None:
    """One line per stored run of ``task``: failed for good at ERROR, aborted (a
    timeout included) at WARNING, a failed attempt queued again at INFO, the rest
    at DEBUG."""
    if t.status is Status.FAILED:
        log.error("task %s (%s) failed after %d attempt(s): %s", task.id, task.action,
                  task.attempts, _error_text(t.error))
    elif t.status is Status.ABORTED:
        reason = t.reason or "no reason given"
        log.warning("task %s (%s) aborted: %s%s", task.id, task.action, reason,
                    "" if t.error is None or t.error.message == reason
                    else f" ({_error_text(t.error)})")
    elif t.status is Status.QUEUED and t.error is not None:
        if log.isEnabledFor(logging.INFO):
            log.info("task %s (%s) failed attempt %d%s, queued again for %s: %s",
                     task.id, task.action, task.attempts,
                     f" of {task.max_attempts}" if task.max_attempts else "",
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t.run_at or time.time())),
                     _error_text(t.error))
    else:
        log.debug("task %s (%s) %s", task.id, task.action,
                  "queued again" if t.status is Status.QUEUED else t.status.value)


def log_recovery(log: logging.Logger, report: RecoverReport) -> None:
    """What a sweep did: a summary at INFO; tasks it failed for good (their worker
    lost ``max_rescues`` times, or not picked up in time) also at ERROR."""
    if not report.total:
        return
    log.info("sweeper: %d requeued, %d failed (worker lost), %d aborted, "
             "%d pickup timeouts", len(report.requeued), len(report.failed),
             len(report.aborted), len(report.expired))
    if report.failed:
        log.error("sweeper: %d task(s) failed, their worker lost too many times "
                  "(reason worker_lost): %s", len(report.failed), _ids(report.failed))
    if report.expired:
        log.error("sweeper: %d task(s) failed, not picked up in time "
                  "(reason pickup_timeout): %s", len(report.expired), _ids(report.expired))


def log_report(log: logging.Logger, task: Task, report: dict[str, Any]) -> None:
    """One line per outcome a remote service sends its hub (the hub stores it, and
    logs there what became of the task): an error or a run timeout at WARNING, an
    abort or a retry asked for at INFO, the rest at DEBUG."""
    kind = report.get("type")
    if kind == "fail":
        raw = report.get("error") or {}
        error = ErrorInfo(type=str(raw.get("type", "Error")), message=str(raw.get("message", "")))
        if error.type == "Aborted":
            log.info("task %s (%s) aborted: %s", task.id, task.action, error.message)
        else:
            log.warning("task %s (%s) attempt %d failed: %s (sent to the hub, %s)",
                        task.id, task.action, task.attempts, _error_text(error),
                        "which retries it while attempts remain" if report.get("retryable")
                        else "not to be retried")
    elif kind == "retry":
        log.info("task %s (%s) asks to be retried%s", task.id, task.action,
                 "" if report.get("after") is None else f" in {report['after']:g}s")
    elif kind == "drop":
        log.info("task %s (%s) not reported: %s", task.id, task.action, report.get("reason"))
    else:
        log.debug("task %s (%s) %s", task.id, task.action,
                  "rescheduled" if kind == "reschedule" else "succeeded")


def _error_text(error: ErrorInfo | None) -> str:
    text = "no error given" if error is None else f"{error.type}: {error.message}"
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."


def _ids(ids: tuple[str, ...]) -> str:
    shown = ", ".join(ids[:MAX_IDS])
    return shown if len(ids) <= MAX_IDS else f"{shown} and {len(ids) - MAX_IDS} more"
