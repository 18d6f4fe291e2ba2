"""What the two batched writers (a worker's and the hub's) share: pending task logs,
throttled progress snapshots and finished runs; the logs are written first in each batch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Generic, TypeVar

from . import _json
from .events import Event
from .model import LogRecord, Progress, Status, Task
from .storage import Completion, Lease, NewLog, Storage

if TYPE_CHECKING:
    from .events import EventBus

__all__ = ["BatchedWrites"]

log = logging.getLogger("conveyor")

CLOSE_TIMEOUT = 15.0
"""Seconds a stopping worker or hub keeps trying to store what its runs reported."""

FINISH_BATCH = 1000
"""Most outcomes stored in one write; the rest wait for the next, which follows at once."""

C = TypeVar("C")


class BatchedWrites(Generic[C]):
    """Pending logs and progress of held tasks, the finished runs (``C``: what each
    writer keeps of one), and the write of logs and progress."""

    def __init__(self, storage: Storage, owner: str) -> None:
        self.storage = storage
        self.owner = owner
        """Who writes (``worker ID``, ``hub``), for the log."""
        self.completions: list[C] = []
        self.logs: list[NewLog] = []
        self.progress: dict[str, tuple[Lease, Progress]] = {}
        self.progress_written: dict[str, float] = {}
        self.work = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def drain(self) -> None:
        """Wait until everything queued so far is written."""
        while not self.idle.is_set():
            await self.idle.wait()

    async def close(self, timeout: float | None = None) -> None:
        """Write what is pending (progress at once), then stop. A write that keeps
        failing (the database gone, its disk full) is given up after ``timeout``
        seconds (``CLOSE_TIMEOUT``), so that a stop ends: the tasks whose outcome
        was not stored are rescued when their leases end."""
        if timeout is None:
            timeout = CLOSE_TIMEOUT
        self.progress_written.clear()
        for lease, _ in list(self.progress.values()):
            self.progress_written[lease.task_id] = 0.0
        try:
            await asyncio.wait_for(self.drain(), timeout)
        except TimeoutError:
            log.error("%s: gave up storing what its runs reported within %g s of stopping "
                      "(the write under way, and %d more outcome(s) and %d log line(s) "
                      "queued behind it); their tasks will be rescued when their leases end",
                      self.owner, timeout, len(self.completions), len(self.logs))
            if self._task is not None:
                self._task.cancel()
        self._closing = True
        self.work.set()
        if self._task is not None:
            await asyncio.wait({self._task})  # ended, or cancelled above
            if not self._task.cancelled() and self._task.exception() is not None:
                raise self._task.exception()  # type: ignore[misc]

    async def write_logs_and_progress(self, bus: EventBus, interval: float) -> None:
        """Store the pending logs (emitting ``task.log`` to listeners) and the
        progress snapshots not written in the last ``interval`` seconds. Logs that
        could not be stored are kept for the next batch."""
        logs, self.logs = self.logs, []
        if logs:
            try:
                try:
                    seqs = await self.storage.append_logs(logs)
                except (TypeError, ValueError, RecursionError):
                    # data that cannot be stored (the senders check it; this is the
                    # last guard) must not block every later line: kept as a note
                    logs = [_storable(entry) for entry in logs]
                    seqs = await self.storage.append_logs(logs)
            except Exception:
                self.logs[:0] = logs
                raise
            if not bus.idle:
                stored = [(e, seq) for e, seq in zip(logs, seqs, strict=True) if seq is not None]
                for entry, seq in stored:
                    if bus.wants("task.log", entry.task_id):
                        record = LogRecord(entry.task_id, seq, entry.ts, entry.level,
                                           entry.message, entry.data)
                        bus.emit(Event("task.log", entry.task_id, None, {"log": record},
                                       entry.ts))
                for task_id in {entry.task_id for entry, _ in stored}:
                    bus._notify(task_id)
        if self.progress:
            now = time.monotonic()
            due = [k for k in self.progress if self.progress_written.get(k, 0.0) + interval <= now]
            if due:
                batch = [self.progress.pop(k) for k in due]
                for k in due:
                    self.progress_written[k] = now
                try:
                    await self.storage.update_progress(batch)
                except (TypeError, ValueError, RecursionError):  # as for logs: skip those
                    await self.storage.update_progress([b for b in batch if _encodes(b[1])])

    async def aborted_instead(self, refused: set[str],
                              completions: Sequence[Completion]) -> dict[str, Task]:
        """Of the completions ``finish`` refused, those that would have queued their
        task again and found an abort requested: the task ended ``aborted`` instead
        (the others lost their lease), as read. Read only when a retry was refused."""
        again = [c.task_id for c in completions
                 if c.task_id in refused and c.transition.status is Status.QUEUED]
        if not again:
            return {}
        try:
            tasks = await self.storage.get_many(again)
        except Exception:
            return {}  # told apart for the log and the error sinks only
        return {t.id: t for t in tasks if t.status is Status.ABORTED}

    async def take_completions_after_logs(self, bus: EventBus, interval: float) -> list[C]:
        """The finished runs to store now, taken before the logs and progress are
        written: a run's log lines are queued before its completion, so they are all
        stored first; lines queued during the write (a sync handler's last ones, say)
        wait with their run's completion for the next batch. Taken after, a completion
        could be stored, and its ``task.ended`` emitted, before its last lines. When the
        write fails the runs are put back. At most ``FINISH_BATCH`` are taken (outcomes
        piled up behind a slow storage made one finish of 22,200 rows); the others stay
        queued, and the writer's loop takes them next."""
        completions = self.completions[:FINISH_BATCH]
        del self.completions[:FINISH_BATCH]
        try:
            await self.write_logs_and_progress(bus, interval)
        except BaseException:
            self.completions[:0] = completions
            raise
        return completions


def _encodes(progress: Progress) -> bool:
    try:
        _json.dumps_checked(progress.to_json(), "progress")
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _storable(entry: NewLog) -> NewLog:
    """The log line, with data that is not valid JSON replaced by a note saying why."""
    if entry.data is None:
        return entry
    try:
        _json.dumps_checked(entry.data, "log data")
    except (TypeError, ValueError, RecursionError) as exc:
        return replace(entry, data={"unstorable": str(exc)[:200]})
    return entry
