"""The worker: claims tasks, runs their handlers, writes what happened.

- The claim loop takes as many ready tasks as it has free slots, in one
  claim, and sleeps until the change feed (or a local ``add``) says that a
  task became ready, or until the next delayed task is due.
- Each claimed task runs as its own asyncio task (async handlers) or in a
  thread of the worker's pool (sync handlers).
- Finished runs, logs and progress snapshots are written by one writer in
  batches: while one transaction is in flight the next batch gathers, so
  a busy worker commits many tasks per transaction.
- A keeper thread with its own event loop renews the leases of running
  tasks, so that a handler that blocks the event loop cannot starve it, and
  runs the sweeper that rescues tasks of dead workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from . import _json
from ._aio import LoopEvent, cancelled_here, run_in_its_loop, stop_tasks
from ._batched import BatchedWrites
from ._children import Child, ChildLineTooLong, ChildPool, HandlerUnavailable
from ._logging import log_outcome, log_recovery
from ._policy import decide, with_defaults
from ._recent import RecentIds, abort_asked
from ._specs import _as_stored
from ._threads import DaemonThreadPool
from .context import Context, TaskAbortRequested
from .errors import ValidationError
from .events import Event
from .model import (
    Aborted,
    ErrorInfo,
    LogLevel,
    Outcome,
    Progress,
    Raised,
    Reschedule,
    Retry,
    Returned,
    Status,
    Task,
    TimedOut,
    Transition,
)
from .storage import (
    ClaimLimits,
    Completion,
    HeartbeatReply,
    Lease,
    NewLog,
    Storage,
    WorkerInfo,
    _ops,
)

if TYPE_CHECKING:
    from ._registry import Handler
    from .app import Conveyor
    from .schedule import Schedule

__all__ = ["RUNNING_HERE", "ErrorItem", "ResultItem", "Worker", "idle_wait"]

ALONE_FOR = 10.0
"""Seconds a task rescued from a dead worker runs with nothing else starting beside it
(unless it ends before), and the longest a worker waits for its running tasks to end
before it starts one (see ``Worker._alone_if_rescued``)."""

log = logging.getLogger("conveyor.worker")
_PLAIN = (bool, int)  # results that are always valid JSON
_RETURNED_NONE = Returned(None)  # outcomes are frozen: the common one is shared
_CHILD_TRIES = 3  # children tried for one run when each was gone before it took it
RUNNING_HERE: contextvars.ContextVar[tuple[object, str, str] | None] = contextvars.ContextVar(
    "conveyor_running_here", default=None)
"""(app, task id, action) of the run a handler's code is in (its asyncio task, and the
thread of a sync handler): a ``wait()`` or ``drain()`` there for its own task would
wait for ever (it ends when the handler returns)."""
HELD_FIRST = 0.01  # first wait (s) for due tasks a claim left (a limit or condition
# holds them), doubled at each empty claim up to idle_poll; a change that may free them
# (a task leaving running or queued: a run ended here or elsewhere) wakes it sooner
_FREEING = frozenset(Status) - {Status.RUNNING}


def prune_cadence(retention: float | None) -> tuple[float, float]:
    """``(every, first)`` seconds of the retention pass: every minute, or every
    ``retention`` seconds when that is shorter (at most once a second); the first
    comes 4 s after the start (or sooner), so that it is done within the 5 s the
    docs promise."""
    every = 60.0 if retention is None else min(60.0, max(1.0, retention))
    return every, min(4.0, every)


async def prune_once(storage: Storage, retention: float | None, who: str,
                     logger: logging.Logger = log) -> None:
    """One retention pass: finished tasks older than ``retention`` (none when None)
    and change-feed entries older than the storage keeps them; a failure is logged
    (on ``logger``, the caller's)."""
    try:
        await storage.prune(None if retention is None else time.time() - retention)
    except Exception as exc:
        logger.warning("%s: prune failed: %s", who, exc)


def idle_wait(due: float | None, took: bool, held: float,
              idle_poll: float) -> tuple[float, float]:
    """How long a claimer (a worker, the hub's dispatch) sleeps after a claim that took
    fewer tasks than it asked for, and the held-back wait it keeps: until ``due`` (the
    next task's ``run_at``), at most ``idle_poll``; when tasks are already due and the
    claim took none (``took``), they are held back by a limit or a condition: ``held``
    doubled, from ``HELD_FIRST`` up to ``idle_poll``."""
    now = time.time()
    if due is not None and due <= now and not took:
        held = min(idle_poll, max(HELD_FIRST, held * 2))
        return held, held
    if due is None:
        return idle_poll, 0.0
    return min(idle_poll, max(0.0, due - now) + 0.001), 0.0


class _KeeperCannotConnect(Exception):
    """The lease keeper's own storage did not open (the cause says why)."""


@dataclass(frozen=True, slots=True)
class ResultItem:
    """What a result sink receives: a final result or an intermediate one (``ctx.emit``).

    ``task`` is the task as the run left it: for a final result ``succeeded``, with
    its ``result`` and ``finished_at``; for an intermediate one the running task.
    The worker builds it as it stores the run's end (it is not read back): ``get``
    the task for the stored record, whose ``version`` is higher when the run
    reported progress."""

    task: Task
    value: Any
    final: bool


@dataclass(frozen=True, slots=True)
class ErrorItem:
    """What an error sink receives: the error of one failed attempt.

    ``task`` is the task as the attempt left it: ``queued`` again for its retry,
    ``failed`` or ``aborted`` (with this error last in ``errors``), built by the
    worker as for :class:`ResultItem`."""

    task: Task
    error: ErrorInfo
    final: bool
    """True when the task ended ``failed`` or ``aborted``; False when it will be retried."""


def _unless_aborted(fn: Callable[[Context[Any]], Any], ctx: Context[Any]) -> Any:
    """``fn(ctx)`` in a handler thread, unless an abort came while the run waited
    for the thread: then the handler is not called."""
    if ctx.aborted:
        raise TaskAbortRequested(ctx.abort_reason or "aborted")
    return fn(ctx)


@dataclass(slots=True)
class _Run:
    task: Task
    handler: Handler
    ctx: Context[Any]
    lease: Lease
    claimed: float  # time.monotonic() when the claim was sent
    future: asyncio.Task[None] | None = None
    abort_reason: str | None = None
    abort_event: asyncio.Event | None = None  # sync handlers only
    lost: bool = False
    released: bool = False
    done: bool = False
    started: bool = False  # _execute took its first step
    interrupted: bool = False  # its async handler raised KeyboardInterrupt

    def cancel(self) -> None:
        """Cancel the run's asyncio task once it has started. A task cancelled before
        its first step never runs its coroutine (no ``try`` in it sees the
        cancellation, so no outcome would be recorded and the lease kept renewed):
        before that, the flags set with the cancel (``abort_reason``, ``lost``,
        ``released``) are read by ``_execute`` as it starts."""
        if self.started and self.future is not None:
            self.future.cancel()


class _Writer(BatchedWrites[tuple[Completion, "_Run"]]):
    """Batches the worker's writes: logs, then progress, then finished runs."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker.storage, f"worker {worker.id}")
        self.worker = worker

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="conveyor-writer")

    def finish(self, completion: Completion, run: _Run) -> None:
        self.completions.append((completion, run))
        self.progress.pop(completion.task_id, None)
        self.idle.clear()
        self.work.set()

    def log(self, entry: NewLog) -> None:
        self.logs.append(entry)
        self.idle.clear()
        self.work.set()

    def set_progress(self, lease: Lease, progress: Progress) -> None:
        self.progress[lease.task_id] = (lease, progress)
        self.idle.clear()
        self.work.set()

    async def _loop(self) -> None:
        interval = self.worker.app.progress_interval
        while True:
            due_in: float | None = None
            if self.progress:
                now = time.monotonic()
                due_in = min(max(0.0, self.progress_written.get(k, 0.0) + interval - now)
                             for k in self.progress)
            if not (self.completions or self.logs) and (due_in is None or due_in > 0):
                if self._closing and not self.progress:
                    return
                if not self.progress:
                    self.idle.set()
                self.work.clear()
                try:
                    async with asyncio.timeout(due_in):
                        await self.work.wait()
                except TimeoutError:
                    pass
                continue
            try:
                await self._write_once(interval)
            except Exception:
                log.exception("worker %s could not write to storage; retrying", self.worker.id)
                await asyncio.sleep(0.5)
            if not (self.completions or self.logs or self.progress):
                self.idle.set()

    async def _write_once(self, interval: float) -> None:
        bus = self.worker.app.bus
        completions = await self.take_completions_after_logs(bus, interval)
        if not completions:
            return
        # a run queued again may be claimed (and its task.started emitted) before
        # this run's end is announced: its events wait
        owner = None if bus.idle else bus.hold(c.task_id for c, _ in completions)
        try:
            try:
                try:
                    refused = set(await self.storage.finish(
                        self.worker.id, [c for c, _ in completions]))
                except (TypeError, ValueError, RecursionError):
                    # a value that cannot be stored must not block the others
                    completions = [self._storable(c, run) for c, run in completions]
                    refused = set(await self.storage.finish(
                        self.worker.id, [c for c, _ in completions]))
            except Exception:  # tried again (the storable values, after such a refusal)
                self.completions[:0] = completions
                raise
            aborted = await self.aborted_instead(refused, [c for c, _ in completions])
            for completion, run in completions:
                self.progress_written.pop(completion.task_id, None)
                self.worker._finished(completion, run, completion.task_id in refused,
                                      aborted.get(completion.task_id))
            if owner is not None:
                await bus.announce_finished(
                    [(c, run.task) for c, run in completions if c.task_id not in refused],
                    self.storage.get_many, owner)
            elif bus._signals:
                for c, _ in completions:
                    bus._notify(c.task_id)
        finally:
            if owner is not None:
                bus.release(owner)


    @staticmethod
    def _storable(completion: Completion, run: _Run) -> tuple[Completion, _Run]:
        """The completion, or a failure in its place if its values are not valid JSON."""
        t = completion.transition
        try:
            _json.dumps_checked([t.result, t.error.to_json() if t.error else None,
                                 completion.progress.to_json() if completion.progress else None],
                                "the run's outcome")
            return completion, run
        except ValidationError as exc:
            error = ErrorInfo("ValidationError", str(exc), attempt=run.task.attempts,
                              at=time.time())
            failed = Transition(Status.FAILED, error=error, reason="error")
            return Completion(completion.task_id, completion.token, failed), run


class Worker:
    """Runs the handlers of one :class:`Conveyor` app. Created by ``app.start()``."""

    def __init__(self, app: Conveyor, actions: Iterable[str] | None = None) -> None:
        self.app = app
        self.storage = app.storage
        self.registry = app.registry
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.concurrency = app.concurrency
        self.lease = app.lease
        self.batch_size = app.batch_size
        self.actions = self.registry.actions if actions is None else sorted(actions)
        """The actions it claims: every registered one, or those a drain() started it for."""
        self.limits = ClaimLimits({h.action: h.limit for h in self.registry.handlers()
                                   if h.limit is not None})
        self.running: dict[str, _Run] = {}
        self.unstored = 0
        """Outcomes of ended runs handed to the writer and not yet stored."""
        # a task rescued from a dead worker runs alone (see _alone_if_rescued)
        self._alone: str | None = None
        self._single = False
        self._drain_until = 0.0  # (monotonic) 0: not waiting for running tasks to end
        self._name_clashes: set[str | None] = set()  # schedules told to be named apart
        self.zombies = 0
        self.claimed_total = 0
        self.finished_total = 0
        self._wake = LoopEvent()  # woken by a relay or listener of another loop too
        self._held_wait = 0.0  # the wait for due tasks the last claims left (0: none)
        # aborts the keeper's heartbeat brought, by task id: (the lease's token, reason),
        # read by a run that ends before the loop (blocked by it) takes the hand-over
        self._told_aborts: dict[str, tuple[str, str]] = {}
        self._slot = asyncio.Event()
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self._releasing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._claim_task: asyncio.Task[None] | None = None
        self._schedule_task: asyncio.Task[None] | None = None
        self.scheduled = asyncio.Event()
        """Set once the schedules' next occurrences were added (or tried), at once
        when the app has none: a drain counts what is due after that."""
        self._feed_task: asyncio.Task[None] | None = None
        self._writer = _Writer(self)
        self._pool: DaemonThreadPool | None = None
        self._children: ChildPool | None = None
        self._keeper: threading.Thread | None = None
        self._keeper_stop = threading.Event()
        self._leases_lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self._started_at = time.time()
        self._background: set[asyncio.Task[Any]] = set()
        self._early_aborts = RecentIds()

    # -- life -----------------------------------------------------------------

    @property
    def orphaned(self) -> bool:
        """Whether the event loop it ran in has ended without stopping it (an
        ``asyncio.run()`` that returned with the app open, or a loop that no longer
        runs, seen from another): it runs nothing."""
        loop = self._loop
        if loop is None:
            return False
        if loop.is_closed():
            return True
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        return current is not None and current is not loop and not loop.is_running()

    def abandon(self) -> None:
        """End what an orphaned worker still holds outside its loop: its lease
        keeper, its handler processes (killed) and its handler threads (asked to
        abort, reason ``worker stopping``, then left to end; no new ones: a thread
        handler went on unaware while its task, rescued, ran again elsewhere)."""
        self._stopping = True
        self._keeper_stop.set()
        for run in list(self.running.values()):
            run.ctx._request_abort("worker stopping")
        children = self._children
        if children is not None:
            for child in list(children._all):
                with contextlib.suppress(ProcessLookupError, OSError):
                    os.kill(child.proc.pid, signal.SIGKILL)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        await self.storage.register_worker(self._info())
        self._writer.start()
        self.app._relay_listeners.append(self._on_changes)
        add_hook = getattr(self.storage, "add_ready_hook", None)
        if add_hook is not None:  # PostgreSQL: woken by the NOTIFY itself
            add_hook(self.wake)
        self._claim_task = asyncio.create_task(self._claim_loop(), name="conveyor-claim")
        if self.app.schedules:
            self._schedule_task = asyncio.create_task(self._schedule_loop(),
                                                      name="conveyor-schedules")
        else:
            self.scheduled.set()
        self._keeper = threading.Thread(target=self._keeper_main, name="conveyor-keeper",
                                        daemon=True)
        self._keeper.start()
        self.app.bus.emit(Event("worker.started", data={"worker": self._info().to_json()}))
        log.info("worker %s started: %d action(s), concurrency %d", self.id, len(self.actions),
                 self.concurrency)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (the stop may still be under way)."""
        return self._stopping

    @property
    def stopped(self) -> bool:
        """True once the stop has ended, whatever its outcome."""
        return self._stop_task is not None and self._stop_task.done()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop claiming, let running tasks finish for up to ``timeout`` seconds,
        then hand the rest back to the queue with their attempt refunded.

        The stop runs in a task of its own: a caller cancelled meanwhile does not
        cut it short (a worker stopped halfway kept its handlers, leases and keeper
        thread for good), and every call waits for that one stop to end. Called from
        another event loop (the app closed from a second loop or a second
        SyncConveyor), the stop runs in the worker's own loop, where its tasks
        live, and this call waits for it there (it raised halfway, and the worker's
        runs went on without their leases renewed)."""
        if await run_in_its_loop(self._loop, lambda: self.stop(timeout)):
            return
        if self._stop_task is None:
            self._stopping = True
            self._stop_task = asyncio.create_task(self._stop(timeout),
                                                  name=f"conveyor-stop-{self.id}")
        await asyncio.shield(self._stop_task)

    async def _stop(self, timeout: float | None) -> None:
        try:
            await self._stop_steps(timeout)
        finally:
            # even when the stop itself is cancelled (its loop ending with it): no
            # lease of this worker is renewed from here on
            self._keeper_stop.set()

    async def _stop_steps(self, timeout: float | None) -> None:
        self._wake.set()
        self._slot.set()
        await stop_tasks(self._schedule_task, what=f"worker {self.id}: the scheduler")
        if self._claim_task is not None:
            await asyncio.gather(self._claim_task, return_exceptions=True)
        timeout = self.app.stop_timeout if timeout is None else timeout
        pending = [r.future for r in self.running.values() if r.future is not None]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        leftover = [r for r in self.running.values() if not r.done]
        if leftover:
            self._releasing = True
            for run in leftover:
                run.released = True
                run.ctx._request_abort("worker stopping")
                run.cancel()
            futures = [r.future for r in leftover if r.future is not None]
            if futures:
                await asyncio.wait(futures, timeout=5)
        # the runs' outcomes, logs and progress first (given up after a while when
        # the storage cannot be written), then the hand-back
        await self._writer.close()
        for run in [r for r in leftover if r.interrupted]:
            # a KeyboardInterrupt raised in its handler ended the process's loop: maybe
            # a Ctrl-C, maybe the handler's own code, which would end every restart the
            # same way. As after a crash, its lease is left to expire and the task is
            # rescued, counted against max_rescues, rather than handed back for free
            log.warning("task %s: its handler raised KeyboardInterrupt; not handed back "
                        "(rescued when its lease ends, counted against max_rescues)",
                        run.task.id)
            leftover.remove(run)
            self._forget(run)
        if leftover:
            try:
                released = await self.storage.release(self.id, [r.lease for r in leftover])
                log.info("worker %s handed %d task(s) back to the queue", self.id, len(released))
                await self.app.bus.announce([(task_id, "task.released") for task_id in released],
                                            self.storage.get_many)
            except Exception:
                log.exception("worker %s could not hand tasks back; their leases will expire",
                              self.id)
            for run in leftover:
                self._forget(run)
        self._keeper_stop.set()
        if self._keeper is not None:
            await asyncio.to_thread(self._keeper.join, 10)
        if self._on_changes in self.app._relay_listeners:
            self.app._relay_listeners.remove(self._on_changes)
        self.app._relay_needs_every_change.discard(self)
        remove_hook = getattr(self.storage, "remove_ready_hook", None)
        if remove_hook is not None:
            remove_hook(self.wake)
        try:
            await self.storage.unregister_worker(self.id)
        except Exception:
            log.exception("worker %s could not unregister", self.id)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._children is not None:
            await self._children.close()
        self.app.bus.emit(Event("worker.stopped", data={"worker": self._info().to_json()}))
        log.info("worker %s stopped", self.id)

    def _info(self) -> WorkerInfo:
        now = time.time()
        return WorkerInfo(id=self.id, host=socket.gethostname(), pid=os.getpid(),
                          actions=tuple(self.actions), concurrency=self.concurrency,
                          started_at=self._started_at, last_seen=now, running=len(self.running),
                          info={"lease": self.lease,
                                **({"name": self.app.name} if self.app.name else {})})

    def serve(self, actions: Iterable[str]) -> None:
        """Claim tasks of ``actions`` too (registered actions; from the next claim)."""
        more = set(actions) - set(self.actions)
        if more:
            self.actions = sorted({*self.actions, *more})
            self.wake()

    def wake(self) -> None:
        """Claim now (a task was added in this process)."""
        self._wake.set()

    # -- claiming -------------------------------------------------------------

    def _free(self) -> int:
        # outcomes waiting to be stored beyond one per slot hold claims back: a slow
        # storage is not handed ever more runs whose ends it cannot keep up with
        return (self.concurrency - len(self.running) - self.zombies
                - max(0, self.unstored - self.concurrency))

    async def _claim_loop(self) -> None:
        errors = 0
        while not self._stopping:
            free = self._free()
            if free <= 0 or self._alone is not None:
                self._slot.clear()
                await self._slot.wait()
                continue
            if self._single and self.running and time.monotonic() < self._drain_until:
                self._slot.clear()  # a rescued task waits for the running ones to end
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._drain_until - time.monotonic()):
                        await self._slot.wait()
                continue
            want = 1 if self._single else min(free, self.batch_size)
            self._wake.clear()
            sent = time.monotonic()
            try:
                claimed = await self.storage.claim(self.id, self.actions, want, self.lease,
                                                   self.limits)
                errors = 0
            except Exception as exc:
                errors += 1
                delay = min(5.0, 0.1 * 2 ** min(errors, 6))
                log.warning("worker %s: claim failed (%s); retrying in %.1fs", self.id, exc, delay)
                await asyncio.sleep(delay)
                continue
            tasks = claimed
            if self._single or any(t.rescues for t in claimed):
                tasks = await self._alone_if_rescued(claimed)
            for task in tasks:
                self._launch(task, sent)
            if len(claimed) >= want or self._stopping:
                continue
            if tasks:
                await asyncio.sleep(0)  # let the handlers just launched start first
            await self._idle(took=bool(claimed))

    async def _alone_if_rescued(self, tasks: list[Task]) -> list[Task]:
        """A task rescued from a dead worker (``rescues > 0``) may be what killed it: it
        runs alone, so that a task that kills its worker every time takes no other
        task with it. The others of its claim go back to the queue (``release``: no
        attempt used); with tasks running here, it goes back too until they end (for
        at most ``ALONE_FOR`` seconds); once started, nothing else starts beside it for
        ``ALONE_FOR`` seconds or until it ends. While rescued tasks come, this worker
        claims one task at a time."""
        suspect = next((t for t in tasks if t.rescues), None)
        if suspect is None:
            self._single = False
            self._drain_until = 0.0
            return tasks
        self._single = True
        now = time.monotonic()
        if self.running and not (self._drain_until and now >= self._drain_until):
            keep = None
            if not self._drain_until:
                self._drain_until = now + ALONE_FOR
        else:
            keep = suspect
            self._drain_until = 0.0
        back = [t for t in tasks if t is not keep]
        if back:
            try:
                await self.storage.release(self.id, [Lease(t.id, t.token or "") for t in back])
            except Exception as exc:  # their leases expire and the sweeper requeues them
                log.warning("worker %s: could not hand back %d task(s) claimed beside a "
                            "rescued one (%s)", self.id, len(back), exc)
        if keep is None:
            return []
        self._alone = keep.id
        asyncio.get_running_loop().call_later(ALONE_FOR, self._trusted, keep.id)
        return [keep]

    def _trusted(self, task_id: str) -> None:
        """A rescued task ran ``ALONE_FOR`` seconds without killing its worker: other
        tasks may start beside it."""
        if self._alone == task_id:
            self._alone = None
            self._slot.set()

    async def _idle(self, took: bool) -> None:
        """Sleep after a claim that took fewer tasks than it asked for (``took``: some):
        until the next task is due, something wakes the worker, or ``idle_poll``.
        Tasks already due that a claim taking none left are held back by a ``limit=``
        or a concurrency condition: the worker claims again when a change may have
        freed them (a task leaving ``running``, here or elsewhere), else after a wait
        doubled at each empty claim from 10 ms up to ``idle_poll``, rather than at once
        (a spin of ~1,000 claims a second while a task waited behind a limit)."""
        try:
            due = await self.storage.next_run_at(self.actions)
        except Exception:
            due = None
        timeout, self._held_wait = idle_wait(due, took, self._held_wait, self.app.idle_poll)
        # while tasks are held back, the relay reads every change (a plain worker reads
        # only wake-ups): a run ending elsewhere, or an abort here, may free them
        if self._held_wait:
            self.app._relay_needs_every_change.add(self)
        else:
            self.app._relay_needs_every_change.discard(self)
        if self._wake.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _on_changes(self, changes: Any) -> None:
        for change in changes:
            if ((change.status is Status.QUEUED and change.event != "prioritized")
                    or (self._held_wait and change.status in _FREEING)):
                self._wake.set()
            elif change.event == "abort_requested":
                run = self.running.get(change.task_id)
                if run is None:  # not ours, or our claim of it has not returned yet
                    self._early_aborts.note(change.task_id)
                else:
                    self._look_for_abort(run)

    def _look_for_abort(self, run: _Run) -> None:
        task = asyncio.ensure_future(self._fetch_abort(run))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _fetch_abort(self, run: _Run) -> None:
        reason = await abort_asked(self.storage, run.task.id, run.lease.token)
        if reason is not None:
            self._request_abort(run, reason)

    # -- schedules ------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        """Keep the next occurrence of every schedule queued (deduped across processes).
        An occurrence whose add failed is tried again (about every second) until it
        is added, late if need be, before the schedule moves on; an error of the loop
        itself is logged and the loop goes on (it ended every schedule, unlogged)."""
        schedules = list(self.app.schedules)
        due: list[float] = []
        pending: set[int] = set()
        while not self._stopping:
            try:
                if not due:
                    now = time.time()
                    due = [s.next_after(now) for s in schedules]
                    pending = set(range(len(schedules)))
                for i in sorted(pending):
                    if await self._add_occurrence(schedules[i], due[i]):
                        pending.discard(i)
                self.scheduled.set()
                now = time.time()
                upcoming = [at for i, at in enumerate(due) if i not in pending]
                pause = min(upcoming) - now if upcoming else 1.0
                if pending:
                    pause = min(pause, 1.0)  # retry failed additions soon
                if pause > 0:
                    await asyncio.sleep(pause)
                now = time.time()
                for i, schedule in enumerate(schedules):
                    if due[i] <= now and i not in pending:
                        due[i] = schedule.next_after(max(now, due[i]))
                        pending.add(i)
            except Exception:
                log.exception("schedules: keeping the next occurrences queued failed; "
                              "trying again in 1 s")
                self.scheduled.set()
                due = []
                await asyncio.sleep(1.0)

    async def _add_occurrence(self, schedule: Schedule, at: float) -> bool:
        try:
            task = await self.app.add(schedule.action, schedule.payload, run_at=at,
                                      priority=schedule.priority,
                                      unique_key=schedule.unique_key(at),
                                      unique_scope=list(Status),
                                      tags={"schedule": schedule.name})
        except Exception as exc:
            log.warning("schedule %s: could not add the occurrence at %s: %s", schedule.name,
                        at, exc)
            return False
        if task.action != schedule.action and schedule.name not in self._name_clashes:
            # the key names the schedule, not its action: another app on this database
            # declares a schedule of the same name, and its occurrence took the key
            self._name_clashes.add(schedule.name)
            log.warning("schedule %s: its occurrence at %s is task %s of %r: another "
                        "app's schedule on this database has the same name, and only one "
                        "of the two runs at each time; give them different names",
                        schedule.name, at, task.id, task.action)
        return True

    # -- running --------------------------------------------------------------

    def _launch(self, task: Task, claimed: float) -> None:
        handler = self.registry.get(task.action)
        assert handler is not None and task.token is not None
        lease = Lease(task.id, task.token)
        task = with_defaults(task, max_attempts=handler.max_attempts, backoff=handler.backoff,
                             run_timeout=handler.run_timeout)
        try:
            payload = handler.load_payload(task.payload)
        except Exception as exc:
            payload = exc
        ctx: Context[Any] = Context(task, payload, handler.environment, self)
        run = _Run(task, handler, ctx, lease, claimed)
        self.running[task.id] = run
        if self._early_aborts.take(task.id):  # asked while the claim was returning
            self._look_for_abort(run)
        with self._leases_lock:
            self._leases[task.id] = lease
        self.claimed_total += 1
        self.app.bus.task_event("task.started", task)
        run.future = asyncio.create_task(self._execute(run))

    async def _execute(self, run: _Run) -> None:
        if time.monotonic() - run.claimed > self.lease / 2 and not (run.lost or run.released):
            await self._confirm_claim(run)
        run.started = True
        if run.lost or run.released:  # before the handler was called: nothing ran
            self._forget(run)
            return
        handler, task = run.handler, run.task
        RUNNING_HERE.set((self.app, task.id, task.action))  # this run's own asyncio task
        timeout = task.run_timeout or handler.run_timeout
        outcome: Outcome
        try:
            if run.abort_reason is not None:  # aborted before the handler was called
                raise TaskAbortRequested(run.abort_reason)
            if isinstance(run.ctx.payload, Exception):
                # it never will: the run fails, not retried (as on a remote service)
                unfit = ValidationError(
                    f"payload does not fit the handler's model: {run.ctx.payload}")
                outcome = Raised(ErrorInfo.from_exception(unfit, attempt=task.attempts),
                                 retryable=False)
            elif handler.mode == "process":
                outcome = await self._run_process(run, timeout)
            elif handler.is_async:
                if timeout is None:  # the common case, without a second coroutine
                    outcome = self._async_outcome(run, await handler.fn(run.ctx))
                else:
                    outcome = await self._run_async(run, timeout)
            else:
                outcome = await self._run_thread(run, timeout)
        except asyncio.CancelledError as exc:
            if run.abort_reason is not None and not run.released and not run.lost:
                outcome = Aborted(run.abort_reason)
            elif not (run.released or run.lost or cancelled_here()):
                # raised by the handler itself (a cancelled future it awaited), not a
                # cancellation of this run: an error like any other
                outcome = self._raised(run, exc)
            else:
                self._forget(run)
                if run.released or run.lost:
                    return
                raise
        except TaskAbortRequested as exc:
            outcome = Aborted(run.abort_reason or exc.reason)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) and handler.is_async:
                run.interrupted = True  # not handed back at the stop (see _stop_steps)
                raise  # maybe the user's Ctrl-C, raised in the handler's frame
            # SystemExit and the like too: the handler's error, not the worker's end
            outcome = self._raised(run, exc)
        if run.lost or run.released:
            self._forget(run)
            return
        self._complete(run, outcome)

    def _raised(self, run: _Run, exc: BaseException) -> Raised:
        return Raised(ErrorInfo.from_exception(exc, attempt=run.task.attempts),
                      retryable=run.handler.retries(exc))

    async def _confirm_claim(self, run: _Run) -> None:
        """Ask the storage whether a claim still holds before calling its handler,
        when the run starts long after the claim (the process was frozen, or the event
        loop blocked, past part of the lease): the lease may have expired and the task
        been rescued, run elsewhere or aborted meanwhile, and the keeper's heartbeat
        saying so may still be queued behind this run. Sets ``run.lost`` or the
        abort; the run is not cancelled meanwhile (``started`` is not set yet)."""
        try:
            reply = await self.storage.heartbeat(self.id, [run.lease], self.lease)
        except Exception as exc:  # the keeper's next heartbeat tells
            log.warning("worker %s: could not confirm the claim of task %s (%s)",
                        self.id, run.task.id, exc)
            return
        if run.task.id in reply.lost:
            log.warning("task %s: lease lost before its run started; not running it",
                        run.task.id)
            run.lost = True
        elif run.task.id in reply.abort_requested and run.abort_reason is None:
            run.abort_reason = reply.abort_requested[run.task.id]
            run.ctx._request_abort(run.abort_reason)

    async def _run_async(self, run: _Run, timeout: float) -> Outcome:
        """Run an async handler with a run timeout. When the timeout comes,
        ``ctx.aborted`` is set (reason ``timeout``) before the handler is cancelled,
        so that the handler sees why as it unwinds."""
        current = asyncio.current_task()
        assert current is not None
        task: asyncio.Task[Any] = current
        cancelling = task.cancelling()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            if run.abort_reason is None:
                run.ctx._request_abort("timeout")
            task.cancel()

        loop = asyncio.get_running_loop()
        handle = loop.call_later(timeout, expire)
        deadline = loop.time() + timeout
        try:
            value = await run.handler.fn(run.ctx)
        except (asyncio.CancelledError, TaskAbortRequested):
            handle.cancel()
            # ours alone when no other cancellation (a stop, an abort) came as well
            if not expired or task.uncancel() > cancelling or run.abort_reason is not None:
                raise  # an abort, a stop or a lost lease: _execute decides
            return self._timed_out(run, timeout)
        except BaseException:
            handle.cancel()
            if expired:
                task.uncancel()
            raise
        handle.cancel()
        if expired:
            task.uncancel()  # the handler swallowed the cancellation: it was ours
        # (not expired: the handler blocked the loop past its timeout, whose timer could
        # not fire: it returns late, and the timeout decides all the same)
        if ((expired or loop.time() >= deadline) and run.abort_reason is None
                and self._told_abort(run) is None):
            return self._timed_out(run, timeout)
        return self._async_outcome(run, value)

    def _told_abort(self, run: _Run) -> str | None:
        """An abort of this run the keeper's heartbeat brought and the loop has not
        handed to it yet (a handler blocking the loop: its value must not win)."""
        told = self._told_aborts.get(run.task.id)
        return told[1] if told is not None and told[0] == run.lease.token else None

    def _async_outcome(self, run: _Run, value: Any) -> Outcome:
        reason = run.abort_reason or self._told_abort(run)
        if reason is not None:
            # the handler swallowed the cancellation of an abort, or blocked the loop
            # while the abort came: its value is discarded
            return Aborted(reason)
        return self._returned(run, value)

    def _timed_out(self, run: _Run, timeout: float) -> TimedOut:
        run.ctx._request_abort("timeout")
        return TimedOut(timeout, retryable=run.handler.retries(TimeoutError()))

    async def _run_thread(self, run: _Run, timeout: float | None) -> Outcome:
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = DaemonThreadPool(self.concurrency)
        call = contextvars.copy_context().run
        future = loop.run_in_executor(self._pool, call, _unless_aborted, run.handler.fn, run.ctx)
        run.abort_event = asyncio.Event()
        if run.abort_reason is not None or run.lost:
            run.abort_event.set()
        abort_wait = asyncio.ensure_future(run.abort_event.wait())
        try:
            done, _ = await asyncio.wait({future, abort_wait}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            abort_wait.cancel()
            # nobody takes this run's outcome now (a stop, or its event loop ending
            # without one): the handler is told, else it went on unaware while its
            # task, rescued, ran again elsewhere
            run.ctx._request_abort(run.abort_reason or "worker stopping")
            if run.released and not future.done():
                # a stop (the handler sees ctx.aborted): its grace period to end before
                # its task goes back to the queue, as an async handler gets time to unwind
                await asyncio.wait({future}, timeout=run.handler.abort_grace)
            if future.done():
                self._settle(future)
            else:
                self._watch_zombie(future)
            raise
        abort_wait.cancel()
        if future in done:
            if run.abort_reason is not None:
                self._settle(future)
                return Aborted(run.abort_reason)
            return self._returned(run, future.result())
        # an abort, a timeout, or a stop: ask the handler to end, give it a grace period
        timed_out = run.abort_reason is None
        if timed_out:
            run.ctx._request_abort("timeout")
        done, _ = await asyncio.wait({future}, timeout=run.handler.abort_grace)
        if future in done:
            self._settle(future)
        else:
            self._watch_zombie(future)
        if timed_out:
            return TimedOut(timeout or 0.0, retryable=run.handler.retries(TimeoutError()))
        return Aborted(run.abort_reason or "aborted")

    async def _run_process(self, run: _Run, timeout: float | None) -> Outcome:
        """Run the handler in a child process; kill the child if it ignores an abort.
        A child found gone before it took the run (an idle one that died: its exit not
        seen yet) is replaced: the handler was not called, the run is not its error."""
        if self._children is None:
            self._children = ChildPool(max_idle=self.concurrency, app=self.app)
        for _ in range(_CHILD_TRIES):
            try:
                child = await self._children.acquire(run.handler)
            except HandlerUnavailable as exc:
                return Raised(ErrorInfo(exc.kind, f"the handler's process cannot run it: "
                                        f"{exc.message}", attempt=run.task.attempts),
                              retryable=False)
            outcome = await self._run_in_child(run, timeout, child)
            if outcome is not None:
                return outcome
            log.warning("task %s: its handler's process was gone before it took the run; "
                        "starting another", run.task.id)
        return Raised(ErrorInfo("ChildProcessError", f"the handler's process died before "
                                f"the run started, {_CHILD_TRIES} times in a row",
                                attempt=run.task.attempts), retryable=True)

    async def _run_in_child(self, run: _Run, timeout: float | None,
                            child: Child) -> Outcome | None:
        """One try of :meth:`_run_process`; None when the child was gone before it
        took the run."""
        assert self._children is not None
        loop = asyncio.get_running_loop()
        run.abort_event = asyncio.Event()
        if run.abort_reason is not None:
            run.abort_event.set()
        abort_wait = asyncio.ensure_future(run.abort_event.wait())
        receive: asyncio.Future[dict[str, Any] | None] | None = None
        deadline = None if timeout is None else loop.time() + timeout
        asked_at: float | None = None  # when the child was asked to stop
        timed_out = False
        keep = True
        started = False  # the child took the run (it says so before calling the handler)
        try:
            # "run" names this run (its lease token): an abort for it names it too
            run_key = run.task.token or run.task.id
            try:
                child.runs += 1
                await child.send({"task": run.task.to_json(), "run": run_key,
                                  "max_payload": self.app.max_payload})
            except (BrokenPipeError, ConnectionResetError):
                keep = False
                return None
            while True:
                if receive is None:
                    receive = asyncio.ensure_future(child.receive())
                waiting: set[asyncio.Future[Any]] = {receive}
                if asked_at is None:
                    waiting.add(abort_wait)
                    limit = None if deadline is None else max(0.0, deadline - loop.time())
                else:
                    limit = max(0.0, asked_at + run.handler.abort_grace - loop.time())
                done, _ = await asyncio.wait(waiting, timeout=limit,
                                             return_when=asyncio.FIRST_COMPLETED)
                if receive in done:
                    try:
                        message, receive = receive.result(), None
                    except ChildLineTooLong as exc:  # its channel is out of step: not kept
                        keep = False
                        return Raised(ErrorInfo("ValueError", str(exc),
                                                attempt=run.task.attempts), retryable=False)
                    if message is None:  # the child died
                        keep = False
                        if asked_at is not None:
                            break
                        if not started:
                            return None
                        return Raised(ErrorInfo("ChildProcessError",
                                                "the handler's process died",
                                                attempt=run.task.attempts), retryable=True)
                    if "started" in message:
                        started = True
                        continue
                    outcome = self._child_message(run, message)
                    if outcome is None:
                        continue
                    if asked_at is not None:
                        break  # an abort or timeout was asked for: that decides
                    return outcome
                if asked_at is None:
                    reason = run.abort_reason
                    if reason is None:  # the run timeout
                        timed_out = True
                        reason = "timeout"
                        run.ctx._request_abort(reason)
                    asked_at = loop.time()
                    await child.send({"abort": reason, "run": run_key})
                    continue
                keep = False  # the grace period is over: stop it hard
                break
        except asyncio.CancelledError:
            keep = False
            raise
        finally:
            abort_wait.cancel()
            if receive is not None:
                receive.cancel()
            max_runs = run.handler.max_runs
            if keep and (max_runs is None or child.runs < max_runs):
                await self._children.release(child)
            else:
                await self._children.discard(child)
        if timed_out:
            return TimedOut(timeout or 0.0, retryable=run.handler.retries(TimeoutError()))
        return Aborted(run.abort_reason or "aborted")

    def _child_message(self, run: _Run, message: dict[str, Any]) -> Outcome | None:
        """Handle one message from a handler process; an outcome ends the run."""
        task_id = run.task.id
        if "progress" in message:
            self._progress(task_id, Progress.from_json(message["progress"]))
        elif "log" in message:
            entry = message["log"]
            self._writer.log(NewLog(task_id, LogLevel(entry["level"]), entry["message"],
                                    time.time(), entry.get("data"), run.lease.token))
        elif "emit" in message:
            try:  # the child checked it, and its handler got the error; this is a guard
                self.emit(task_id, message["emit"])
            except ValidationError as exc:
                log.warning("task %s: %s; not emitted", task_id, exc)
        elif "result" in message:
            return self._returned(run, message["result"])
        elif "retry" in message:
            return Retry(**message["retry"])
        elif "reschedule" in message:
            return self._returned(run, Reschedule(**message["reschedule"]))
        elif "aborted" in message:
            return Aborted(run.abort_reason or str(message["aborted"]))
        elif "error" in message:
            err = message["error"]
            return Raised(ErrorInfo.bounded(err["type"], err["message"], err.get("traceback"),
                                            attempt=run.task.attempts, at=time.time()),
                          retryable=bool(err.get("retryable", True)))
        return None

    @staticmethod
    def _settle(future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # mark any exception as retrieved

    def _watch_zombie(self, future: asyncio.Future[Any]) -> None:
        """A handler thread that ignored its abort: its slot stays taken until it returns."""
        self.zombies += 1

        def gone(f: asyncio.Future[Any]) -> None:
            self.zombies -= 1
            self._settle(f)
            self._slot.set()
            self._wake.set()

        future.add_done_callback(gone)

    def _returned(self, run: _Run, value: Any) -> Outcome:
        if value is None and run.handler.result_model is None:
            return _RETURNED_NONE
        if type(value) in _PLAIN and run.handler.result_model is None:
            return Returned(value)
        if isinstance(value, Retry):
            return value
        try:
            if isinstance(value, Reschedule):  # the result kept on the queued task
                result = self._stored(value.result, "Reschedule(result=...)")
                return value if result is value.result else Reschedule(value.after, result)
            return Returned(self._stored(run.handler.dump_result(value), "result"))
        except Exception as exc:
            return Raised(ErrorInfo.from_exception(exc, attempt=run.task.attempts),
                          retryable=False)

    def _stored(self, value: Any, what: str) -> Any:
        """``value`` in its JSON form, as stored; JSON within ``max_payload`` or a
        ValidationError naming ``what``."""
        return _as_stored(value, _json.dumps_checked(value, what, limit=self.app.max_payload))

    def _complete(self, run: _Run, outcome: Outcome) -> None:
        transition = decide(run.handler.policy or self.app.policy, run.task, outcome,
                            self.app.max_payload)
        progress = None
        pending = self._writer.progress.get(run.task.id)
        if pending is not None:
            progress = pending[1]
        run.done = True
        self._writer.finish(Completion(run.task.id, run.lease.token, transition, progress), run)
        self.unstored += 1
        self._forget(run, outcome_pending=True)

    def _forget(self, run: _Run, outcome_pending: bool = False) -> None:
        """The run no longer takes a slot. Its lease is kept in the heartbeats while
        its outcome waits to be stored (``outcome_pending``; :meth:`_finished` lets it
        go): a slow storage must not let it expire and the task run again."""
        if self.running.get(run.task.id) is run:
            del self.running[run.task.id]
            if self._alone == run.task.id:
                self._alone = None
            if not outcome_pending:
                with self._leases_lock:
                    self._leases.pop(run.task.id, None)
            self._slot.set()

    def _finished(self, completion: Completion, run: _Run, refused: bool,
                  aborted: Task | None = None) -> None:
        """Called by the writer once a completion is stored (or refused; ``aborted``:
        refused because an abort requested meanwhile ended the task instead, as
        read)."""
        self.unstored -= 1
        with self._leases_lock:
            held = self._leases.get(completion.task_id)
            if held is not None and held.token == completion.token:
                del self._leases[completion.task_id]  # not a later claim of the task
        self._slot.set()
        if self._held_wait:  # its end may free a task held back by a limit or condition
            self._wake.set()
        if aborted is not None:
            log.info("task %s: aborted as its run ended; not queued again",
                     completion.task_id)
            # the attempt's own error if it failed, else the abort's: final either way
            error = completion.transition.error or aborted.error
            if error is not None and self.app.error_sinks:
                self.app._push_sinks(self.app.error_sinks, ErrorItem(aborted, error, True))
            return
        if refused:
            log.warning("task %s: lease lost, the result of this run was discarded",
                        completion.task_id)
            return
        self.finished_total += 1
        log_outcome(log, run.task, completion.transition)
        if completion.transition.status is Status.QUEUED:
            # queued again (a retry, a reschedule): claim at once or sleep until it is
            # due, whatever the change feed says (nothing may be listening to it)
            self._wake.set()
        app = self.app
        if not (app.result_sinks or app.error_sinks):
            return
        t = completion.transition
        # the task as this run left it (built here, not read back: see ResultItem)
        task = _ops.finished(run.task, completion, time.time())
        if t.status is Status.SUCCEEDED and app.result_sinks:
            app._push_sinks(app.result_sinks, ResultItem(task, t.result, True))
        if t.error is not None and app.error_sinks:
            app._push_sinks(app.error_sinks,
                            ErrorItem(task, t.error, t.status is not Status.QUEUED))

    def _request_abort(self, run: _Run, reason: str) -> None:
        if run.abort_reason is not None or run.done:
            return
        run.abort_reason = reason
        run.ctx._request_abort(reason)
        if run.abort_event is not None:
            run.abort_event.set()
        if run.handler.is_async and run.handler.mode != "process":
            run.cancel()

    def abort_local(self, task_id: str, reason: str) -> bool:
        """Deliver an abort to a task this worker runs (no storage round trip)."""
        run = self.running.get(task_id)
        if run is None:  # not ours, or our claim of it has not returned yet
            self._early_aborts.note(task_id)
            return False
        self._request_abort(run, reason)
        return True

    # -- RunChannel (called by contexts, maybe from handler threads) ----------

    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(fn, *args)

    def progress(self, task_id: str, progress: Progress) -> None:
        self._in_loop(self._progress, task_id, progress)

    def _progress(self, task_id: str, progress: Progress) -> None:
        run = self.running.get(task_id)
        if run is None or run.done:
            return
        self._writer.set_progress(run.lease, progress)
        bus = self.app.bus
        if bus.wants("task.progress", task_id):
            bus.emit(Event("task.progress", task_id, run.task, {"progress": progress}))

    def log(self, task_id: str, level: LogLevel, message: str,
            data: dict[str, Any] | None) -> None:
        try:
            if data is not None:
                _json.dumps_checked(data, "log data")
        except ValidationError as exc:
            data = {"unserialisable": str(exc)}
        self._in_loop(self._log, NewLog(task_id, level, message, time.time(), data))

    def _log(self, entry: NewLog) -> None:
        run = self.running.get(entry.task_id)
        if run is None:  # its run has ended here or lost its claim: late lines are dropped
            return
        self._writer.log(replace(entry, token=run.lease.token))

    def emit(self, task_id: str, value: Any) -> None:
        _json.dumps_checked(value, "emitted result", limit=self.app.max_payload)
        self._in_loop(self._emit, task_id, value)

    def _emit(self, task_id: str, value: Any) -> None:
        run = self.running.get(task_id)
        task = run.task if run else None
        if self.app.bus.wants("task.result", task_id):
            self.app.bus.emit(Event("task.result", task_id, task, {"value": value}))
        if task is not None and self.app.result_sinks:
            self.app._push_sinks(self.app.result_sinks, ResultItem(task, value, False))

    # -- the keeper thread ----------------------------------------------------

    def _keeper_main(self) -> None:
        # the keeper outlives its errors: a worker without it kept claiming and
        # running tasks whose leases nobody renewed (then run again elsewhere)
        # (one that cannot connect, a database at its connection limit when the worker
        # started, tries again at least once per heartbeat interval)
        delay = 0.1
        while not self._keeper_stop.is_set():
            try:
                asyncio.run(self._keep())
                return
            except _KeeperCannotConnect as exc:
                log.warning("worker %s: the lease keeper cannot connect (%s); trying again "
                            "in %.1fs", self.id, exc.__cause__, delay)
            except Exception:
                log.exception("worker %s: lease keeper failed; starting it again in %.1fs",
                              self.id, delay)
            self._keeper_stop.wait(delay)
            delay = min(2 * delay, max(0.05, self.lease / 3))

    async def _keep(self) -> None:
        storage = self.storage.fork()
        own = storage is not self.storage
        beat = max(0.05, self.lease / 3)
        if own:
            try:
                await storage.open()
            except Exception as exc:
                raise _KeeperCannotConnect from exc
        sweep = self.app.sweep_interval
        next_beat = time.monotonic() + beat
        next_sweep = time.monotonic()
        retention = self.app.retention
        prune_every, first_prune = prune_cadence(retention)
        next_prune = time.monotonic() + first_prune
        try:
            while not self._keeper_stop.is_set():
                if self._loop is not None and self._loop.is_closed():
                    # its loop ended with the worker running (an asyncio.run() that
                    # returned without a close): the runs ended with it; their leases
                    # are left to expire, and the tasks to be rescued
                    log.warning("worker %s: its event loop ended before the worker "
                                "stopped; its leases are no longer renewed", self.id)
                    return
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + beat
                    with self._leases_lock:
                        leases = list(self._leases.values())
                    try:
                        reply = await storage.heartbeat(self.id, leases, self.lease)
                        if self._loop is not None and (reply.lost or reply.abort_requested):
                            sent = {lease.task_id: lease.token for lease in leases}
                            for task_id, reason in reply.abort_requested.items():
                                if task_id in sent:
                                    self._told_aborts[task_id] = (sent[task_id], reason)
                            self._loop.call_soon_threadsafe(self._on_heartbeat, reply, sent)
                        if not reply.known:  # forgotten while paused: say we are alive
                            await storage.register_worker(self._info())
                    except Exception as exc:
                        log.warning("worker %s: heartbeat failed: %s", self.id, exc)
                if now >= next_sweep:
                    next_sweep = now + sweep
                    try:
                        await storage.forget_workers()
                        report = await storage.recover(self.app.max_rescues)
                        log_recovery(log, report)
                        if report.requeued and self._loop is not None:
                            self._loop.call_soon_threadsafe(self._wake.set)
                    except Exception as exc:
                        log.warning("worker %s: sweep failed: %s", self.id, exc)
                if now >= next_prune:
                    next_prune = now + prune_every
                    await prune_once(storage, retention, f"worker {self.id}")
                wait = max(0.0, min(next_beat, next_sweep, next_prune) - time.monotonic())
                await asyncio.to_thread(self._keeper_stop.wait, wait)
        finally:
            if own:
                await storage.close()

    def _on_heartbeat(self, reply: HeartbeatReply, sent: dict[str, str]) -> None:
        """``sent``: the token of each lease the heartbeat named. A lease reported lost
        is that claim's (an ended run's, kept until its outcome was stored, may be
        reported lost after a new claim of the task: that run goes on)."""
        for task_id in reply.lost:
            run = self.running.get(task_id)
            if run is not None and not run.done and run.lease.token == sent.get(task_id):
                if not run.lost:  # said once: a sync handler's thread runs on, and its
                    # lease is reported lost at each beat (an async one is cancelled
                    # again at each: a handler may swallow one cancellation)
                    log.warning("task %s: lease lost; stopping this run", task_id)
                run.lost = True
                run.ctx._request_abort("lease lost")
                if run.abort_event is not None:
                    run.abort_event.set()
                if run.handler.is_async:
                    run.cancel()
        for task_id, reason in reply.abort_requested.items():
            self._told_aborts.pop(task_id, None)
            run = self.running.get(task_id)
            if run is not None:
                self._request_abort(run, reason)

