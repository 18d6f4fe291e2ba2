"""The storage interface every backend implements.

The interface is small and batch-shaped so that a backend can do each call
in one round trip. Every write is atomic. The contract test suite,
:class:`conveyor.testing.StorageContract` (see "Writing a backend" in the
guide), checks that a backend keeps these promises.

Fencing: :meth:`Storage.claim` gives each claimed task a ``token``.
:meth:`Storage.heartbeat`, :meth:`Storage.update_progress`,
:meth:`Storage.finish` and :meth:`Storage.release` only act on a task whose
current token is the one presented, so a worker that lost its lease (and
whose task was claimed again by someone else) cannot overwrite the new run.
"""

from __future__ import annotations

import abc
import fnmatch
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..model import LogLevel, LogRecord, Progress, Status, Task, TaskSpec, Transition
from ..query import Filter, Query

__all__ = [
    "AddResult",
    "Change",
    "ClaimLimits",
    "Completion",
    "HeartbeatReply",
    "Lease",
    "NewLog",
    "RecoverReport",
    "Storage",
    "WorkerInfo",
    "key_holder",
]


@dataclass(frozen=True, slots=True)
class AddResult:
    """One answer of :meth:`Storage.add`: the task, and whether it is new
    (``False`` when a task holding the same unique key in scope was returned)."""

    task: Task
    created: bool


def key_holder(tasks: Iterable[Task], scope: Iterable[Status]) -> Task | None:
    """Which of ``tasks`` (those with one unique key) an add of that key with the
    unique scope ``scope`` returns instead of a new task: the task whose status is in
    its own scope (the key's live holder; at most one), else the newest (by
    ``created_at``, then ``id``) whose status is in ``scope``; None when there is
    none. Every backend returns this one."""
    wanted = set(scope)
    best: Task | None = None
    for task in tasks:
        if task.status in task.unique_scope:
            return task
        if task.status in wanted and (
                best is None or (task.created_at, task.id) > (best.created_at, best.id)):
            best = task
    return best


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's hold on a running task: its id and the claim's token."""

    task_id: str
    token: str


@dataclass(frozen=True, slots=True)
class Completion:
    """The end of one run, decided by the transition policy, for :meth:`Storage.finish`."""

    task_id: str
    token: str
    transition: Transition
    progress: Progress | None = None
    event: str | None = None
    """The change's event name; by default derived from the transition
    (``succeeded``, ``failed``, ``aborted``, ``retrying``, ``rescheduled``)."""


@dataclass(frozen=True, slots=True)
class ClaimLimits:
    """Per-action limits of running tasks across all workers, for :meth:`Storage.claim`."""

    per_action: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """What :meth:`Storage.heartbeat` learnt: leases no longer held (taken
    over, finished elsewhere or rescued) and abort requests for held ones."""

    lost: frozenset[str] = frozenset()
    abort_requested: Mapping[str, str] = field(default_factory=dict)
    known: bool = True
    """False when the worker's record was gone (forgotten as dead): register again."""


@dataclass(frozen=True, slots=True)
class RecoverReport:
    """What :meth:`Storage.recover` did with expired leases and pickup timeouts."""

    requeued: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    aborted: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """How many tasks the recovery changed."""
        return len(self.requeued) + len(self.failed) + len(self.aborted) + len(self.expired)


@dataclass(frozen=True, slots=True)
class NewLog:
    """A log line to append to a task's log."""

    task_id: str
    level: LogLevel
    message: str
    ts: float
    data: dict[str, Any] | None = None
    token: str | None = None
    """The fencing token of the run that wrote the line: it is stored only while the
    task is ``running`` under that claim. None (a note by a worker or the hub, not
    by a run): stored whatever the task's state."""


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change feed: task ``task_id`` reached ``version`` with
    ``status`` because of ``event`` (``added``, ``started``, ``progress``,
    ``log``, ``succeeded``, ``failed``, ``aborted``, ``retrying``,
    ``rescheduled``, ``prioritized``, ``abort_requested``, ``released``,
    ``retried``, ``deleted``; and from the sweeper, the claim and a finish: ``rescued``
    (lease expired, queued again), ``lost`` (failed: worker lost),
    ``lost_aborted`` (aborted: its worker died after an abort request),
    ``retry_aborted`` (aborted: its run ended in a retry or a reschedule while an
    abort was requested),
    ``expired`` (failed: pickup timeout)). ``origin`` is the
    :attr:`Storage.instance_id` of the writer, when known (PostgreSQL's
    ``add_in`` writes it followed by ``-tx``: such tasks are announced when the
    caller's transaction commits, through the feed, also in the adding
    process). The ``deleted`` changes of :meth:`Storage.prune` have no origin
    (None): every process, the pruning one too, announces them from the feed;
    those of :meth:`Storage.delete` name their writer, which announces them
    itself. ``seq`` orders the feed; the changes one statement made to
    several tasks may share it."""

    seq: int
    task_id: str
    version: int
    status: Status
    event: str
    origin: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker process as registered in storage, with its last heartbeat."""

    id: str
    host: str
    pid: int
    actions: tuple[str, ...]
    concurrency: int
    started_at: float
    last_seen: float
    running: int = 0
    info: Mapping[str, Any] = field(default_factory=dict)

    def runs(self, action: str) -> bool:
        """Whether this worker runs ``action``: one of its :attr:`actions` is that
        name or an ``fnmatch`` pattern that matches it (``"mail:*"``)."""
        return any(a == action or fnmatch.fnmatchcase(action, a) for a in self.actions)

    def to_json(self) -> dict[str, Any]:
        """The worker as JSON."""
        return {"id": self.id, "host": self.host, "pid": self.pid, "actions": list(self.actions),
                "concurrency": self.concurrency, "started_at": self.started_at,
                "last_seen": self.last_seen, "running": self.running, "info": dict(self.info)}


class Storage(abc.ABC):
    """Where tasks live. All methods are coroutines unless noted, and may be
    called from any event loop thread once :meth:`open` returned."""

    #: The URL the backend was opened with (without a password).
    url: str
    #: A unique id of this storage object, recorded as ``origin`` of its writes.
    instance_id: str

    # -- life -------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema where the backend does so itself."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads. Idempotent."""

    def fork(self) -> Storage:
        """A storage object for another thread's event loop, on the same data.

        Backends whose methods are safe to call from any loop return ``self``.
        """
        return self

    def after_fork(self) -> Storage:
        """In the child of ``os.fork()``: a storage object for the child, on the
        same data, that opens its own connections and threads. It must not use,
        close or finalize the parent's (the caller keeps this object referenced).

        The default returns ``self``, for backends that hold neither.
        """
        return self

    # -- tasks --------------------------------------------------------------

    @abc.abstractmethod
    async def add(self, specs: Sequence[TaskSpec]) -> list[AddResult]:
        """Insert tasks atomically (all or none). A spec whose ``unique_key``
        matches a task whose status is in that task's own ``unique_scope`` (the
        holder of the key) or in the spec's ``unique_scope`` gets that task back
        (``created=False``) instead of a new one, also against tasks added
        concurrently by other processes."""

    @abc.abstractmethod
    async def get(self, task_id: str) -> Task | None:
        """The task, or None."""

    @abc.abstractmethod
    async def get_many(self, task_ids: Sequence[str]) -> list[Task]:
        """The tasks that exist among ``task_ids``, in no particular order."""

    async def key_holders(self, wanted: Sequence[tuple[str, Sequence[Status]]]
                          ) -> list[Task | None]:
        """For each ``(unique_key, unique_scope)``: the task an add of that key with
        that scope would return now instead of a new one (:func:`key_holder`), or
        None. This default reads every task with the key; the backends read a few
        rows per key, however many ended tasks once held it."""
        from ..query import parse_query

        out: list[Task | None] = []
        for key, scope in wanted:
            tasks = await self.find(parse_query({"unique_key": key}))
            out.append(key_holder(tasks, scope))
        return out

    @abc.abstractmethod
    async def find(self, query: Query) -> list[Task]:
        """Tasks matching the query, sorted (ties by id), skipped and limited."""

    @abc.abstractmethod
    async def count(self, where: Filter) -> int:
        """How many tasks match."""

    @abc.abstractmethod
    async def stats(self) -> dict[str, dict[str, int]]:
        """Counts per action and status: ``{action: {status: n}}`` (only non-zero)."""

    @abc.abstractmethod
    async def delete(self, task_ids: Sequence[str]) -> list[str]:
        """Delete finished tasks and their logs. Returns the ids deleted;
        ids of tasks that are not finished (or do not exist) are left alone.
        Each task deleted gets a ``deleted`` change whose origin is this storage
        object (the caller announces ``task.deleted`` itself)."""

    # -- running ------------------------------------------------------------

    @abc.abstractmethod
    async def claim(self, worker: str, actions: Sequence[str], limit: int, lease: float,
                    limits: ClaimLimits | None = None) -> list[Task]:
        """Take up to ``limit`` ready tasks (``queued`` and ``run_at <= now``) of
        ``actions``, lowest priority first, then oldest ``run_at``, then id.

        Claimed tasks become ``running`` with ``worker``, a fresh ``token``,
        ``lease_until = now + lease``, ``started_at = now`` and one more
        attempt. Concurrency conditions of each task and per-action limits
        are honoured atomically across all workers. Queued tasks past their
        pickup deadline are failed (reason ``pickup_timeout``) first.
        """

    @abc.abstractmethod
    async def heartbeat(self, worker: str, leases: Sequence[Lease], lease: float) -> HeartbeatReply:
        """Extend the leases still held to ``now + lease`` and record that the
        worker is alive."""

    @abc.abstractmethod
    async def update_progress(self, updates: Sequence[tuple[Lease, Progress]]) -> list[str]:
        """Store progress snapshots of held tasks. Returns ids not updated (lease lost)."""

    @abc.abstractmethod
    async def finish(self, worker: str, completions: Sequence[Completion]) -> list[str]:
        """Apply the transitions of finished runs. Returns the ids whose
        transition was not stored: those whose lease was lost (fencing), left
        untouched, and those a retry or a reschedule would queue again while an
        abort is requested, which end ``aborted`` instead (the abort's reason;
        the run's error kept in ``errors``; change-feed event ``retry_aborted``).
        A task listed more than once: its first completion is applied, the later
        ones are not (a run ends once) and their ids are returned."""

    @abc.abstractmethod
    async def release(self, worker: str, leases: Sequence[Lease]) -> list[str]:
        """Hand running tasks back to the queue at once, refunding the attempt
        (graceful stop). Returns the ids released."""

    @abc.abstractmethod
    async def recover(self, max_rescues: int) -> RecoverReport:
        """Deal with tasks whose lease expired and queued tasks past their pickup deadline.

        An expired task with an abort request becomes ``aborted``; one already
        rescued ``max_rescues`` times becomes ``failed`` with reason
        ``worker_lost``; any other goes back to ``queued`` with ``rescues + 1``
        and its attempt refunded. Safe to call from many processes at once.
        """

    @abc.abstractmethod
    async def next_run_at(self, actions: Sequence[str]) -> float | None:
        """The earliest ``run_at`` among queued tasks of ``actions`` (None if none)."""

    # -- control ------------------------------------------------------------

    @abc.abstractmethod
    async def abort(self, task_id: str, reason: str) -> Task:
        """Abort a task: a queued one becomes ``aborted`` at once; a running one
        gets ``abort_requested`` set for its worker to act on.

        Raises :class:`TaskNotFound`, or :class:`InvalidTransition` for a
        finished task.
        """

    @abc.abstractmethod
    async def prioritize(self, task_id: str, priority: float) -> Task:
        """Change the priority of a queued task (else :class:`InvalidTransition`)."""

    @abc.abstractmethod
    async def retry(self, task_id: str, run_at: float | None = None) -> Task:
        """Queue a failed or aborted task again (same id, history kept)."""

    # -- logs ---------------------------------------------------------------

    @abc.abstractmethod
    async def append_logs(self, logs: Sequence[NewLog]) -> list[int | None]:
        """Append log lines; returns their sequence numbers (increasing), in the
        order of ``logs``, with None for a line not stored: one with a ``token``
        whose run no longer holds its task (fencing: taken over, rescued, ended)."""

    @abc.abstractmethod
    async def read_logs(self, task_id: str, after_seq: int = 0,
                        max_level: LogLevel = LogLevel.DEBUG,
                        limit: int | None = None) -> list[LogRecord]:
        """Log lines of a task with ``seq > after_seq`` and a level at least as
        severe as ``max_level``, oldest first."""

    # -- workers ------------------------------------------------------------

    @abc.abstractmethod
    async def register_worker(self, info: WorkerInfo) -> None:
        """Record a worker (or refresh its record)."""

    @abc.abstractmethod
    async def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped."""

    @abc.abstractmethod
    async def list_workers(self) -> list[WorkerInfo]:
        """Known workers with their last heartbeat."""

    @abc.abstractmethod
    async def forget_workers(self) -> list[str]:
        """Remove the records of workers that stopped sending heartbeats: not seen
        for twice their lease (``info["lease"]``, default 30 s), and at least 120 s
        (so that a dead worker is listed with ``alive`` false, after 90 s, before it
        goes). Returns the ids removed."""

    # -- feed ---------------------------------------------------------------

    @abc.abstractmethod
    def changes(self, include_own: Callable[[], bool] | bool = True,
                wakeups_only: Callable[[], bool] | bool = False,
                wanted: Callable[[], bool] | bool = True) -> AsyncIterator[Change]:
        """An endless stream of changes from every process using this storage,
        starting from now, in commit order. Not a coroutine: call it and
        iterate with ``async for``.

        While ``include_own`` is (or returns) false, changes written through
        this storage object are left out, and a backend may skip reading
        them at all: a worker only needs to hear about other processes.
        While ``wakeups_only`` is true, a backend may also leave out every
        change but those that make a task ready (status ``queued``) or ask
        for an abort. While ``wanted`` is false, the stream needs nothing at
        all (an app that only adds tasks), and a backend may stop listening
        for changes until it is true again. All three are hints: consumers must
        tolerate extra changes. When they start wanting more, every change
        committed after that is delivered (a backend that filters a read must
        read again, wider, if they changed while it ran)."""

    async def change_batches(self, include_own: Callable[[], bool] | bool = True,
                             wakeups_only: Callable[[], bool] | bool = False,
                             wanted: Callable[[], bool] | bool = True
                             ) -> AsyncIterator[Sequence[Change]]:
        """The same stream as :meth:`changes`, in the batches the backend reads
        them in (so a consumer can handle many at once). The default wraps
        each change in a batch of one."""
        async for change in self.changes(include_own, wakeups_only, wanted):
            yield [change]

    @abc.abstractmethod
    async def prune(self, older_than: float | None, batch: int = 500) -> int:
        """Delete finished tasks with ``finished_at < older_than`` and their logs,
        in transactions of at most ``batch`` tasks; also drop change-feed entries
        older than the backend's feed retention. ``older_than=None`` only trims
        the feed. Returns the number of tasks deleted. Each task deleted gets a
        ``deleted`` change with no origin (None), so that every process, the
        pruning one included, announces ``task.deleted`` from the feed."""
