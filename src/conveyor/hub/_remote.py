"""Remote workers: services that work on actions over the WebSocket.

A ``subscribe`` names a service, its actions and the connection's capacity.
Each service (a name, under one credential, on this hub) is one worker in
storage: it is registered there (``app.workers()`` lists it), its claims
carry its worker id, and the hub heartbeats its leases.

Claim, then offer
    The hub claims ready tasks *for* a service (``Storage.claim``: atomic and
    fenced by a token, as for any worker), as many as its connections have
    free capacity, and offers each to one connection (round-robin over the
    connections of the service that subscribe to the same actions). The
    connection answers ``pickup`` (its run timeout starts then) or
    ``refuse``; an offer not picked up within ``offer_timeout`` is withdrawn.
    A withdrawn or refused offer is released (back to ``queued``, attempt
    refunded) with the token, unless the task's pickup deadline has passed:
    then it fails with reason ``pickup_timeout``. A task is only ever
    offered to one connection at a time, and every later write about it is
    fenced by the claim's token, so in delivery mode ``one`` no task runs in
    two services.

Delivery mode ``all``
    A task whose tag ``delivery`` (or the hub's ``delivery`` setting for its
    action) says ``all`` is claimed once, then offered to one connection of
    *every* service subscribed to its action on this hub (see
    :class:`Fanout`). The first ``return`` gives the task its result (the
    publisher is told at once) and the other services get ``completed``;
    the task ends (its status is stored) when every service returned,
    dropped, failed or timed out.

Leases
    Services send something (at least a ``heartbeat``) every third of
    ``service_lease``; one silent for a whole lease is disconnected (4002).
    The hub renews the storage leases of the tasks its services hold. When a
    connection goes away its tasks are released at once and offered again;
    when the hub dies, their leases expire and any worker's sweeper (the
    hub runs one) queues them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import reprlib
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .. import _json
from .._aio import stop_tasks
from .._batched import BatchedWrites
from .._logging import log_outcome, log_recovery
from .._policy import decide, with_defaults
from .._recent import RecentIds, abort_asked
from .._registry import check_action
from .._specs import check_backoff, check_max_attempts
from .._worker import idle_wait, prune_cadence, prune_once
from ..errors import ValidationError
from ..events import Event
from ..model import (
    MAX_ERROR_MESSAGE,
    MAX_SECONDS,
    Aborted,
    Backoff,
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
    cut_text,
)
from ..storage import Change, ClaimLimits, Completion, Lease, NewLog, WorkerInfo
from ..storage._ops import ready_at
from ._credentials import matches_pattern
from ._ws_proto import (
    CLOSE_HEARTBEAT,
    ProtocolError,
    opt_bool,
    opt_number,
    opt_str,
    req_str,
)

if TYPE_CHECKING:
    from ._ws import Connection, WSState

__all__ = ["Fanout", "Remote", "Service", "Sub"]

log = logging.getLogger("conveyor.hub.remote")

CLAIM_BATCH = 100
"""Most tasks claimed for one group of connections at once."""
OFFER_TICK = 0.05
"""Seconds between looks at the offers waiting for a pickup."""
SWEEP_INTERVAL = 1.0
"""Seconds between the hub's sweeps (expired leases, pickup timeouts)."""
FORGET_INTERVAL = 30.0
MAX_CAPACITY = 10_000
MAX_ACTIONS = 1000
MAX_TEXT = MAX_ERROR_MESSAGE
"""Characters of a service's log line or error message kept (a traceback: twice
as many); the rest is cut, with a note of how many characters went."""
RELEASE_WAIT = 3.0
"""Seconds an ``unsubscribe`` waits for its hand-backs to be stored before it answers
(less than the 5 s ``HubClient`` waits for the answer)."""
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_.:@/\-]{1,100}$")
_OPEN = frozenset({"pending", "offered", "running"})


def _as_given(msg: dict[str, Any], name: str, checked: float | None) -> float | None:
    """A number checked by ``opt_number``, kept an int when it was sent as one (as
    ``ctx.progress(1, total=2)`` keeps it in-process)."""
    value = msg.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else checked


_Defaults = tuple[int | None, Backoff | None, bool]
"""A subscription's handler settings for an action: ``max_attempts``, ``backoff``, and
whether the handler's ``retry_on`` covers ``TimeoutError`` (a run timeout the hub
enforces is retried only then, as in-process)."""
_NO_DEFAULTS: _Defaults = (None, None, True)


def _handler_defaults(raw: Any, actions: list[str]) -> dict[str, _Defaults]:
    """``subscribe``'s ``defaults``: ``{action: {"max_attempts", "backoff",
    "retry_timeouts"}}`` for actions of the subscription, applied to its tasks that
    were added without them."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > len(actions):
        raise ProtocolError("bad_message", "'defaults' must be an object of the subscribed "
                                           "actions to {max_attempts, backoff, retry_timeouts}")
    out: dict[str, _Defaults] = {}
    for action, given in raw.items():
        if action not in actions:
            raise ProtocolError("bad_message", f"'defaults' names {reprlib.repr(action)}, "
                                               "which is not among the subscribed actions")
        if not isinstance(given, dict) or not set(given) <= {"max_attempts", "backoff",
                                                             "retry_timeouts"}:
            raise ProtocolError("bad_message", f"defaults of {action!r} must be an object with "
                                               "max_attempts, backoff and/or retry_timeouts")
        retry_timeouts = given.get("retry_timeouts", True)
        if not isinstance(retry_timeouts, bool):
            raise ProtocolError("invalid", f"defaults of {action!r}: retry_timeouts must be "
                                           "true or false")
        try:
            out[action] = (check_max_attempts(given.get("max_attempts")),
                           check_backoff(given.get("backoff")), retry_timeouts)
        except ValidationError as exc:
            raise ProtocolError("invalid", f"defaults of {action!r}: {exc}") from None
    return out


# -- state ---------------------------------------------------------------------------


class Service:
    """A service on this hub: one name under one credential, one worker in storage."""

    def __init__(self, name: str, cred_key: str, cred_name: str, worker_id: str) -> None:
        self.name = name
        self.cred_key = cred_key
        self.cred_name = cred_name
        self.worker_id = worker_id
        self.subs: list[Sub] = []
        self.rr = 0
        self.pending: deque[Part] = deque()
        self.registered = False
        self.info_dirty = False
        self.started_at = time.time()
        self.fans = 0

    def groups(self) -> dict[frozenset[str], list[Sub]]:
        out: dict[frozenset[str], list[Sub]] = {}
        for sub in self.subs:
            if sub.ready and not sub.closed:
                out.setdefault(sub.actions, []).append(sub)
        return out

    def info(self, hub_id: str, lease: float) -> WorkerInfo:
        subs = [s for s in self.subs if not s.closed]
        actions = sorted({a for s in subs for a in s.actions})
        peers = sorted({s.conn.peer for s in subs})
        return WorkerInfo(
            id=self.worker_id, host=peers[0] if len(peers) == 1 else ",".join(peers) or "-",
            pid=0, actions=tuple(actions), concurrency=sum(s.capacity for s in subs),
            started_at=self.started_at, last_seen=time.time(),
            running=sum(len(s.held) for s in subs),
            info={"remote": True, "service": self.name, "credential": self.cred_name,
                  "hub": hub_id, "connections": len(subs), "lease": lease})


class Sub:
    """One ``subscribe`` of one connection."""

    def __init__(self, conn: Connection, msg_id: Any, key: str, service: Service,
                 actions: frozenset[str], capacity: int,
                 defaults: dict[str, _Defaults] | None = None) -> None:
        self.conn = conn
        self.msg_id = msg_id
        self.key = key
        self.service = service
        self.actions = actions
        self.capacity = capacity
        # the handlers' max_attempts and backoff by action, for tasks that have none
        self.defaults = defaults or {}
        self.held: dict[str, Held] = {}
        self.closed = False
        self.ready = False  # offers only after the ``subscribed`` reply
        self.prefix = '{"id":' + key + ","

    @property
    def free(self) -> int:
        return self.capacity - len(self.held)

    def send(self, body: str) -> None:
        """Send ``{"id": <subscription id>, <body>``; ``body`` ends with ``}``."""
        self.conn.send(self.prefix + body)


@dataclass(eq=False)
class Held:
    """A task offered to, or run by, one subscription."""

    task: Task
    sub: Sub
    lease: Lease
    fan: Fanout | None = None
    part: Part | None = None
    state: str = "offered"             # offered | running
    expires: float = 0.0               # an offer's end (loop time)
    timer: asyncio.TimerHandle | None = None
    abort_reason: str | None = None
    timed_out: bool = False
    picked_at: float | None = None


@dataclass(eq=False)
class Part:
    """One service's share of a delivery-``all`` task."""

    fan: Fanout
    service: Service
    state: str = "pending"    # pending offered running | returned dropped failed
    #                           timed_out expired refused lost aborted skipped
    held: Held | None = None
    expires: float = 0.0
    tried: set[Sub] = field(default_factory=set)
    error: ErrorInfo | None = None
    retryable: bool = True
    lost_running: bool = False  # its service went away while running it


@dataclass(eq=False)
class Fanout:
    """A delivery-``all`` task: claimed once (by ``service``), run by every service.

    Bookkeeping: one :class:`Part` per service subscribed to the action when
    the task was claimed. A part is *open* while pending (waiting for a free
    connection of its service), offered or running, and *settled* once its
    service returned, dropped, failed, refused, timed out (run timeout, or
    no pickup in ``offer_timeout``), was aborted or lost its connections.
    The first ``return`` decides the result. When every part is settled the
    task ends: ``succeeded`` with the first result if any service returned,
    else ``succeeded`` without a result (reason ``dropped``) if one dropped,
    else what the transition policy makes of the first failure or of the
    run timeout; if no service ever ran it the task is released (queued
    again), or fails with ``pickup_timeout`` past its pickup deadline.
    """

    task: Task
    lease: Lease
    service: Service
    parts: dict[Service, Part] = field(default_factory=dict)
    first: tuple[str, Any] | None = None
    aborted: str | None = None
    done: bool = False


# -- the batched writer --------------------------------------------------------------


class _Writer(BatchedWrites[tuple[str, Completion, "Task | None"]]):
    """Writes what services report in batches: logs, progress, completions, releases.
    A completion is (worker, completion, the claimed task, or None when not announced)."""

    def __init__(self, remote: Remote) -> None:
        super().__init__(remote.app.storage, "hub")
        self.remote = remote
        self.releases: list[tuple[str, Lease]] = []
        self.unstored: dict[str, dict[str, Lease]] = {}
        """The leases of ended runs whose outcomes wait to be stored, by worker id: the
        heartbeats keep extending them meanwhile (a slow storage must not let them
        expire and the tasks run again)."""
        self.releases_asked = 0
        """Releases asked so far: :meth:`release` returns the count as the ticket that
        :meth:`released` waits for."""
        self._releases_written = 0
        self._release_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.lost: list[tuple[str, Lease]] = []
        self.jobs: list[Callable[[], Awaitable[Any]]] = []
        self.announced = asyncio.Event()
        """Set while every stored completion and release has been announced: while tasks
        are followed, claims wait for it, so that a task's ``retrying`` is told before
        its next ``started``."""
        self.announced.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="conveyor-hub-writer")

    def _poke(self) -> None:
        self.idle.clear()
        self.work.set()

    def finish(self, worker: str, completion: Completion, task: Task | None) -> None:
        """Store ``completion``; ``task`` (the claimed task) announces it, None does not."""
        self.completions.append((worker, completion, task))
        self.unstored.setdefault(worker, {})[completion.task_id] = Lease(completion.task_id,
                                                                         completion.token)
        self.progress.pop(completion.task_id, None)
        self.announced.clear()
        self._poke()

    def _stored(self, worker: str, completions: Sequence[Completion]) -> None:
        held = self.unstored.get(worker)
        if held is None:
            return
        for c in completions:
            lease = held.get(c.task_id)
            if lease is not None and lease.token == c.token:
                del held[c.task_id]
        if not held:
            del self.unstored[worker]
        if worker in self.remote.held_back:
            self.remote.wake()  # it may claim again

    def release(self, worker: str, lease: Lease) -> int:
        """Hand the task back to the queue (attempt refunded); the ticket for
        :meth:`released`."""
        self.releases.append((worker, lease))
        self.progress.pop(lease.task_id, None)
        self.announced.clear()
        self._poke()
        self.releases_asked += 1
        return self.releases_asked

    async def released(self, ticket: int) -> None:
        """Until the releases asked up to ``ticket`` were written (or failed: their
        leases then expire)."""
        if self._releases_written >= ticket:
            return
        future = asyncio.get_running_loop().create_future()
        self._release_waiters.append((ticket, future))
        await future

    def _releases_done(self, upto: int) -> None:
        self._releases_written = upto
        waiting, self._release_waiters = self._release_waiters, []
        for ticket, future in waiting:
            if ticket > upto:
                self._release_waiters.append((ticket, future))
            elif not future.done():
                future.set_result(None)

    def lose(self, worker: str, lease: Lease) -> None:
        """A service that had picked the task up went away: the run is lost, as if
        its worker died (``rescues + 1``; past ``max_rescues`` it fails with
        reason ``worker_lost``), so a task that kills its service cannot loop."""
        self.lost.append((worker, lease))
        self.progress.pop(lease.task_id, None)
        self.announced.clear()
        self._poke()

    def log(self, entry: NewLog) -> None:
        self.logs.append(entry)
        self._poke()

    def set_progress(self, lease: Lease, progress: Progress) -> None:
        self.progress[lease.task_id] = (lease, progress)
        self._poke()

    def pending_progress(self, task_id: str) -> Progress | None:
        item = self.progress.pop(task_id, None)
        return None if item is None else item[1]

    def job(self, fn: Callable[[], Awaitable[Any]]) -> None:
        self.jobs.append(fn)
        self._poke()

    def _busy(self) -> bool:
        return bool(self.completions or self.logs or self.releases or self.lost or self.jobs)

    async def _loop(self) -> None:
        interval = self.remote.app.progress_interval
        while True:
            due_in: float | None = None
            if self.progress:
                now = time.monotonic()
                due_in = min(max(0.0, self.progress_written.get(k, 0.0) + interval - now)
                             for k in self.progress)
            if not self._busy() and (due_in is None or due_in > 0):
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
                log.exception("hub: could not write what services reported; retrying")
                await asyncio.sleep(0.5)
            if not (self._busy() or self.progress):
                self.idle.set()

    async def _write_once(self, interval: float) -> None:
        remote = self.remote
        bus = remote.app.bus
        completions = await self.take_completions_after_logs(bus, interval)
        if completions:
            # the next run's events (a retry offered and taken at once) wait for this end
            owner = None if bus.idle else bus.hold(c.task_id for _, c, _ in completions)
            by_worker: dict[str, list[tuple[Completion, Task | None]]] = {}
            for worker, completion, task in completions:
                by_worker.setdefault(worker, []).append((completion, task))
            announced: list[tuple[Completion, Task]] = []
            done = 0
            try:
                for worker, items in by_worker.items():
                    refused = set(await self.storage.finish(worker, [c for c, _ in items]))
                    done += 1
                    self._stored(worker, [c for c, _ in items])
                    aborted = await self.aborted_instead(refused, [c for c, _ in items])
                    for completion, task in items:
                        self.progress_written.pop(completion.task_id, None)
                        if completion.task_id in aborted:
                            log.info("task %s: aborted as the service's run ended; not "
                                     "queued again", completion.task_id)
                        elif completion.task_id in refused:
                            log.warning("task %s: lease lost; the service's outcome was "
                                        "discarded", completion.task_id)
                        elif task is not None:
                            log_outcome(log, task, completion.transition)
                            announced.append((completion, task))
            except (TypeError, ValueError):
                # a value that cannot be stored: fail those tasks instead of blocking the rest
                rest = [(w, c, a) for w, items in list(by_worker.items())[done:] for c, a in items]
                self.completions[:0] = [(w, _storable(c), a) for w, c, a in rest]
                raise
            except Exception:
                rest = [(w, c, a) for w, items in list(by_worker.items())[done:] for c, a in items]
                self.completions[:0] = rest
                raise
            finally:
                try:
                    if announced:
                        await bus.announce_finished(announced, self.storage.get_many, owner)
                finally:
                    if owner is not None:
                        bus.release(owner)
        releases, self.releases = self.releases, []
        releases_upto = self.releases_asked
        if releases:
            by_worker_r: dict[str, list[Lease]] = {}
            for worker, lease in releases:
                by_worker_r.setdefault(worker, []).append(lease)
            released: list[str] = []
            for worker, leases in by_worker_r.items():
                try:
                    released.extend(await self.storage.release(worker, leases))
                except Exception:
                    log.exception("hub: could not release tasks; their leases will expire")
            if released:
                remote.wake()
                await remote.app.bus.announce(
                    [(task_id, "task.released") for task_id in released],
                    self.storage.get_many)
            self._releases_done(releases_upto)
        lost, self.lost = self.lost, []
        if lost:
            by_worker_l: dict[str, list[Lease]] = {}
            for worker, lease in lost:
                by_worker_l.setdefault(worker, []).append(lease)
            try:
                for worker, leases in by_worker_l.items():
                    await self.storage.heartbeat(worker, leases, -1.0)  # expire them now
                report = await self.storage.recover(remote.app.max_rescues)
                log_recovery(log, report)
                if report.requeued:
                    remote.wake()
            except Exception:
                log.exception("hub: could not hand lost tasks to the sweeper; their leases "
                              "will expire")
        if not (self.completions or self.releases or self.lost):
            self.announced.set()
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            try:
                await job()
            except Exception:
                log.exception("hub: a storage job failed")


def _storable(completion: Completion) -> Completion:
    t = completion.transition
    try:
        _json.dumps_checked([t.result, t.error.to_json() if t.error else None], "the outcome")
        return completion
    except ValidationError as exc:
        error = ErrorInfo("ValidationError", str(exc), at=time.time())
        return replace(completion, transition=Transition(Status.FAILED, error=error,
                                                         reason="error"), event=None)


# -- the manager ---------------------------------------------------------------------


class Remote:
    """Every remote worker of one hub: subscriptions, claims, offers, runs, leases."""

    def __init__(self, state: WSState) -> None:
        self.state = state
        self.app = state.app
        self.config = state.config
        self.lease = float(self.config.service_lease)
        self.hub_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.services: dict[tuple[str, str], Service] = {}
        self.index: dict[str, Held] = {}            # delivery one: task id -> its holder
        self.fans: dict[str, Fanout] = {}           # delivery all: task id -> fan-out
        self.deadlines: dict[str, float] = {}       # pickup deadlines of claimed tasks
        self.refused: dict[str, tuple[Sub, float]] = {}
        self.offered: dict[Held, None] = {}         # offers waiting for a pickup
        self.early_aborts = RecentIds()             # asked of tasks not (yet) held here
        self._offer_clock: asyncio.Task[None] | None = None
        self._worker_ids: set[str] = set()
        # worker records being removed (by the writer): set when that is done
        self._unregistering: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._room = False  # the last dispatch found a free slot to claim for
        self._took = False  # ... and claimed something
        self._held_wait = 0.0  # the wait for due tasks the last claims left (0: none)
        # when each service (by worker id) last got tasks: the one that got them
        # least recently is offered first, so services of an action take turns
        self._took_at: dict[str, int] = {}
        self._tick = 0
        self.held_back: set[str] = set()
        """Services (worker ids) not claimed for while their outcomes wait to be stored."""
        self._stopping = False
        self._leaving = False  # the hub closes its connections: runs are handed back
        self._writer: _Writer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unlisten: list[Callable[[], None]] = []
        self._answers: set[asyncio.Future[None]] = set()  # unsubscribes being answered
        self._loop: asyncio.AbstractEventLoop | None = None
        self.claimed_total = 0
        self.finished_total = 0

    @property
    def writer(self) -> _Writer:
        assert self._writer is not None, "the hub is not started"
        return self._writer

    # -- life -------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = self._leaving = False
        self._writer = _Writer(self)
        self._writer.start()
        bus = self.app.bus
        self._unlisten = [bus.on("task.abort_requested", self._on_abort_event),
                          bus.on(["task.added", "task.retried"], self._on_ready_event)]
        self.app._relay_listeners.append(self._on_changes)
        self.app._ensure_relay()
        self._tasks = [asyncio.create_task(self._dispatch_loop(), name="conveyor-hub-claims"),
                       asyncio.create_task(self._keep(), name="conveyor-hub-keeper")]

    def leaving(self) -> None:
        """The hub is about to close its connections (a shutdown): the runs they hold
        are handed back, attempt refunded, as a stopping worker hands its runs back,
        not counted as lost runs (which a task's ``max_rescues`` limits)."""
        self._leaving = True

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for answer in list(self._answers):
            answer.cancel()
        if self._offer_clock is not None:
            self._tasks.append(self._offer_clock)
        await stop_tasks(*self._tasks, what="the hub's remote-worker tasks")
        self._tasks = []
        for service in list(self.services.values()):
            for sub in list(service.subs):
                self.unsubscribe(sub, "hub shutting down")
        for fan in list(self.fans.values()):
            self._drop_fan(fan, release=True)
        for unlisten in self._unlisten:
            unlisten()
        self._unlisten = []
        if self._on_changes in self.app._relay_listeners:
            self.app._relay_listeners.remove(self._on_changes)
        if self._writer is not None:
            beating = asyncio.ensure_future(self._beat_while_closing())
            try:
                await self._writer.close()
            finally:
                await stop_tasks(beating, what="the hub's closing heartbeat")

    def wake(self) -> None:
        self._wake.set()

    def _on_ready_event(self, event: Event) -> None:
        self._wake.set()

    def _on_changes(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if ((change.status is Status.QUEUED and change.event != "prioritized")
                    or (self._held_wait and change.status is not Status.RUNNING)):
                self._wake.set()
                return

    # -- message entry point ----------------------------------------------------

    def handle(self, conn: Connection, name: str, msg: dict[str, Any]) -> Awaitable[None] | None:
        if name == "subscribe":
            return self._subscribe(conn, msg)
        if name == "unsubscribe":
            target = msg.get("subscription")
            sub = conn.subs.get(_json.dumps(target))
            if sub is None:
                if target is None and "live" in msg:
                    raise ProtocolError("not_found", "no subscription with id None: "
                                                     "a live query ends with 'unlive'")
                raise ProtocolError("not_found", f"no subscription with id {target!r}")
            ticket = self.unsubscribe(sub, "unsubscribed")
            if not ticket:
                conn.send_msg({"type": "ok", "id": msg["id"]})
                return None
            # answered beside the connection's other messages, which go on meanwhile
            answer = asyncio.ensure_future(self._answer_unsubscribe(conn, msg["id"], ticket))
            self._answers.add(answer)
            answer.add_done_callback(self._answers.discard)
            return None
        if name == "heartbeat":
            if msg.get("ack") is True:
                conn.send_msg({"type": "ok", "id": msg["id"]})
            return None
        task_id = req_str(msg, "task_id", limit=100)
        held = None
        for sub in conn.subs.values():
            held = sub.held.get(task_id)
            if held is not None:
                break
        if held is None:
            raise ProtocolError("not_held", f"task {task_id} is not offered to or held by this "
                                            "connection (withdrawn, finished or never offered)")
        if name == "fetch":
            conn.send_msg({"type": "payload", "id": msg["id"], "task_id": task_id,
                           "payload": held.task.payload})
            return None
        if name == "pickup":
            self._pickup(held)
        elif name == "refuse":
            if held.state != "offered":
                raise ProtocolError("not_offered", "only an offer can be refused; this task "
                                                   "is running here: fail or drop it")
            self._withdraw(held, "refused")
        else:
            if held.state != "running":  # a report about an offer picks it up first
                self._pickup(held)
            if name == "update":
                self._update(held, msg)
            elif name == "log":
                self._log(held, msg)
            elif name == "emit":
                self._emit(held, msg)
            else:
                self._outcome(held, name, msg)
        if msg.get("ack") is True:
            conn.send_msg({"type": "ok", "id": msg["id"]})
        return None

    # -- subscriptions ----------------------------------------------------------

    async def _subscribe(self, conn: Connection, msg: dict[str, Any]) -> None:
        if "service" not in msg and "filter" in msg:
            raise ProtocolError("bad_message", "'subscribe' makes a remote worker (service, "
                                               "actions); a live query of a filter is 'live'")
        name = req_str(msg, "service", limit=100)
        if not _SERVICE_NAME.fullmatch(name):
            raise ProtocolError("bad_message", "a service name is 1-100 letters, digits and "
                                               "_ . : @ / -")
        raw = msg.get("actions")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_ACTIONS:
            raise ProtocolError("bad_message", f"'actions' must be a list of 1 to {MAX_ACTIONS} "
                                               "action names")
        for action in raw:
            try:
                check_action(action)
            except ValidationError as exc:  # as in publish: before the rights
                raise ProtocolError("invalid", str(exc)) from None
        cred = conn.credential
        forbidden = [a for a in raw if not cred.can_subscribe(a)]
        if forbidden:
            raise ProtocolError("forbidden", f"credential {cred.name!r} may not subscribe to "
                                             f"{', '.join(repr(a) for a in forbidden[:5])}")
        capacity = msg.get("capacity", 1)
        if isinstance(capacity, bool) or not isinstance(capacity, int) or not (
                1 <= capacity <= MAX_CAPACITY):
            raise ProtocolError("bad_message", f"'capacity' must be an integer from 1 to "
                                               f"{MAX_CAPACITY}")
        defaults = _handler_defaults(msg.get("defaults"), raw)
        key = _json.dumps(msg["id"])
        if key in conn.subs or key in conn.streams or key in conn.lives:
            raise ProtocolError("duplicate_id", "a subscription with this id is open already")
        service = self._service(cred.key_id, cred.name, name)
        sub = Sub(conn, msg["id"], key, service, frozenset(raw), capacity, defaults)
        conn.subs[key] = sub
        service.subs.append(sub)
        if not service.registered:
            service.registered = True
            removing = self._unregistering.get(service.worker_id)
            if removing is not None:  # the record of the last connection, by the writer:
                # removed first, or it would remove this one's (a reconnect at once)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RELEASE_WAIT):
                        await removing.wait()
            try:
                await self.app.storage.register_worker(service.info(self.hub_id, self.lease))
            except Exception:
                log.exception("could not register service %s", service.worker_id)
                service.info_dirty = True
        else:
            self._refresh_info(service)
        self.state.hub.workers_changed()
        if sub.closed:  # the connection went away meanwhile
            return
        conn.send_msg({"type": "subscribed", "id": msg["id"], "service": name,
                       "worker": service.worker_id, "actions": sorted(sub.actions),
                       "capacity": capacity, "lease": self.lease,
                       "heartbeat": self.lease / 3, "offer_timeout": self.config.offer_timeout,
                       "inline_payload": self.config.inline_payload})
        sub.ready = True
        self._drain_pending(service)
        self._wake.set()

    def _service(self, cred_key: str, cred_name: str, name: str) -> Service:
        key = (cred_key, name)
        service = self.services.get(key)
        if service is None:
            base = f"{name}@{self.hub_id}"
            worker_id = base
            n = 1
            while worker_id in self._worker_ids:
                n += 1
                worker_id = f"{base}~{n}"
            self._worker_ids.add(worker_id)
            service = Service(name, cred_key, cred_name, worker_id)
            self.services[key] = service
        return service

    async def _answer_unsubscribe(self, conn: Connection, msg_id: Any, ticket: int) -> None:
        """``ok`` once the runs the subscription handed back are queued again (so that
        a service's stop returns with its tasks back), or after ``RELEASE_WAIT``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.writer.released(ticket), RELEASE_WAIT)
        if not conn.closed:
            conn.send_msg({"type": "ok", "id": msg_id})

    def unsubscribe(self, sub: Sub, why: str) -> int:
        """End a subscription: its offers and runs go back to the queue (or to
        another connection of the service, for delivery ``all``). Returns the
        writer's ticket of the last release asked (0: none)."""
        ticket = 0
        if sub.closed:
            return ticket
        sub.closed = True
        sub.conn.subs.pop(sub.key, None)
        service = sub.service
        if sub in service.subs:
            service.subs.remove(sub)
        for held in list(sub.held.values()):
            # a connection that went away lost its runs (rescues + 1); one that said
            # `unsubscribe` (a service stopping) or that the hub closes as it shuts down
            # hands them back, as a stopping worker process does (attempt refunded)
            lost_run = (held.state == "running" and not (self._stopping or self._leaving)
                        and why != "unsubscribed")
            if held.fan is not None and held.part is not None:
                part = held.part
                part.lost_running |= lost_run  # a lost run, unless another connection ends it
                self._forget(held)
                part.held = None
                part.tried.add(sub)
                if held.fan.first is not None or held.fan.aborted is not None:
                    self._settle(part, "lost")
                else:
                    self._place_part(part)
            else:
                self._forget(held)
                if lost_run:
                    self.writer.log(NewLog(held.task.id, LogLevel.WARNING,
                                           f"service {service.name} ({why}) let go of this task "
                                           "while running it", time.time(),
                                           {"service": service.name, "worker": service.worker_id}))
                    self.writer.lose(service.worker_id, held.lease)
                else:
                    ticket = self.writer.release(service.worker_id, held.lease)
        if not service.subs:
            while service.pending:
                part = service.pending.popleft()
                if part.state == "pending":
                    self._settle(part, "lost")
            self._retire(service)
        else:
            self._refresh_info(service)
            self._drain_pending(service)
        self._wake.set()
        return ticket

    def _refresh_info(self, service: Service) -> None:
        """Write the service's worker record again soon (its connections changed)."""
        if service.info_dirty or not service.registered:
            return
        service.info_dirty = True
        storage = self.app.storage

        async def register() -> None:
            if service.info_dirty and service.registered and service.subs:
                service.info_dirty = False
                await storage.register_worker(service.info(self.hub_id, self.lease))
                self.state.hub.workers_changed()

        self.writer.job(register)

    def _retire(self, service: Service) -> None:
        """Forget a service with no subscription left (unregister its worker)."""
        if service.subs:
            return
        self.held_back.discard(service.worker_id)
        if service.registered:
            service.registered = False
            worker_id = service.worker_id
            storage = self.app.storage
            done = self._unregistering[worker_id] = asyncio.Event()

            async def unregister() -> None:
                try:
                    await storage.unregister_worker(worker_id)
                finally:
                    done.set()
                    if self._unregistering.get(worker_id) is done:
                        del self._unregistering[worker_id]

            self.writer.job(unregister)
        if service.fans == 0:
            self.services.pop((service.cred_key, service.name), None)
            self._worker_ids.discard(service.worker_id)
            self._took_at.pop(service.worker_id, None)

    # -- claiming ---------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        errors = 0
        while not self._stopping:
            self._wake.clear()
            try:
                more = await self._dispatch_once()
                errors = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                errors += 1
                delay = min(5.0, 0.1 * 2 ** min(errors, 6))
                log.warning("hub: claim failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            if more:
                await asyncio.sleep(0)
                continue
            await self._idle()

    async def _dispatch_once(self) -> bool:
        services = [s for s in self.services.values() if s.subs]
        self._room = self._took = False
        if not services:
            return False
        # the services of an action take turns (the first one subscribed got every
        # task of a trickle while it had room)
        took_at = self._took_at
        services.sort(key=lambda s: took_at.get(s.worker_id, 0))
        more = False
        storage = self.app.storage
        writer = self.writer
        for service in services:
            # as a worker does: no claim while more of the service's outcomes wait to
            # be stored than it has slots (a slow storage); _stored wakes this loop
            slots = sum(s.capacity for s in service.subs if not s.closed)
            if len(writer.unstored.get(service.worker_id, ())) > slots:
                self.held_back.add(service.worker_id)
                continue
            self.held_back.discard(service.worker_id)
            for actions, subs in service.groups().items():
                free = sum(s.free for s in subs if not s.closed)
                if free <= 0:
                    continue
                limit = min(free, CLAIM_BATCH)
                self._room = True
                if not writer.announced.is_set() and self.state.streams.by_task:
                    # someone follows tasks: tell a finished run before its next start
                    await writer.announced.wait()
                tasks = await storage.claim(service.worker_id, sorted(actions), limit, self.lease,
                                            self._limits())
                if len(tasks) >= limit:
                    more = True
                if tasks:
                    self._took = True
                    self._tick += 1
                    took_at[service.worker_id] = self._tick
                for task in tasks:
                    self._place(service, subs, task)
        return more

    def _limits(self) -> ClaimLimits | None:
        """The ``limit=`` of the hub app's own handlers (``serve --app``): a cap of an
        action's running tasks across all workers, remote services included."""
        caps = {h.action: h.limit for h in self.app.registry.handlers() if h.limit is not None}
        return ClaimLimits(caps) if caps else None

    async def _idle(self) -> None:
        timeout = self.app.idle_poll
        actions = sorted({a for s in self.services.values() for sub in s.subs
                          for a in sub.actions})
        # with no free slot, a task due now cannot be claimed: a slot freed wakes the
        # loop (_forget); reading the next due time then spun (1 ms waits, ~600 reads/s)
        if actions and self._room:
            try:
                due = await self.app.storage.next_run_at(actions)
            except Exception:
                due = None
            # due tasks the claims left are held back by a limit or a condition (as a
            # worker's: see Worker._idle); a task leaving running wakes it sooner
            timeout, self._held_wait = idle_wait(due, self._took, self._held_wait, timeout)
        else:
            self._held_wait = 0.0
        if self._wake.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _mode(self, task: Task) -> str:
        tags = task.tags
        mode = tags.get("delivery") if isinstance(tags, dict) else None
        if mode in ("one", "all"):
            return str(mode)
        for pattern, value in self.config.delivery.items():
            if matches_pattern(task.action, [pattern]):
                return value
        return "one"

    def _place(self, service: Service, subs: list[Sub], task: Task) -> None:
        assert task.token is not None
        lease = Lease(task.id, task.token)
        self.claimed_total += 1
        if task.pickup_timeout is not None and task.id not in self.deadlines:
            now = time.time()
            # ready at its run_at, or when added if that was past (as the storage's
            # pickup_deadline, which the claim cleared)
            deadline = ready_at(task.run_at, task.created_at) + task.pickup_timeout
            if deadline < now:  # released or rescued since: its clock restarted
                deadline = now + task.pickup_timeout
            self.deadlines[task.id] = deadline
            if len(self.deadlines) > 100_000:
                for key in list(self.deadlines)[:10_000]:
                    del self.deadlines[key]
        self.app.bus.task_event("task.started", task)
        if self.early_aborts.take(task.id):  # asked while the claim was returning
            self.writer.job(lambda: self._check_abort(task.id, lease.token))
        if self._mode(task) == "all":
            self._start_fan(service, subs, task, lease)
            return
        sub = self._pick(service, subs, task)
        if sub is None:
            self.writer.release(service.worker_id, lease)
            return
        self._offer(sub, task, lease, None, None)

    async def _check_abort(self, task_id: str, token: str) -> None:
        """Abort the run of a claimed task whose abort was asked before the claim
        returned here (the event found nothing to stop), if it was asked of this run."""
        reason = await abort_asked(self.app.storage, task_id, token)
        if reason is not None:
            self.abort_local(task_id, reason)

    def _pick(self, service: Service, subs: list[Sub], task: Task) -> Sub | None:
        n = len(subs)
        if not n:
            return None
        refused = self.refused.get(task.id)
        avoid = refused[0] if refused is not None and refused[1] > time.monotonic() else None
        for attempt in (0, 1):
            for i in range(n):
                sub = subs[(service.rr + i) % n]
                if sub.closed or not sub.ready or sub.free <= 0 or task.action not in sub.actions:
                    continue
                if attempt == 0 and sub is avoid:
                    continue
                service.rr = (service.rr + i + 1) % n
                return sub
            if avoid is None:
                break
        return None

    def _offer(self, sub: Sub, task: Task, lease: Lease, fan: Fanout | None,
               part: Part | None) -> Held:
        assert self._loop is not None
        held = Held(task, sub, lease, fan, part)
        sub.held[task.id] = held
        if fan is None:
            self.index[task.id] = held
        window = float(self.config.offer_timeout)
        deadline = self.deadlines.get(task.id)
        if deadline is not None:
            window = max(0.0, min(window, deadline - time.time()))
        held.expires = self._loop.time() + window
        self.offered[held] = None
        if self._offer_clock is None or self._offer_clock.done():
            self._offer_clock = asyncio.create_task(self._watch_offers())
        data = self.state.task_json(task)
        extra = ""
        text = _json.dumps_stored(data)
        inline = self.config.inline_payload
        if len(text) * 4 > inline:  # the payload may be too big to travel inline
            payload_text = _json.dumps_stored(task.payload)
            size = len(payload_text)
            if size * 4 > inline:
                size = len(payload_text.encode("utf-8"))
            if size > inline:
                data["payload"] = None
                text = _json.dumps_stored(data)
                extra = ',"payload_inline":false,"payload_size":' + str(size)
        sub.send('"type":"offer","task_id":"' + task.id + '","delivery":'
                 + ('"all"' if fan is not None else '"one"') + ',"expires_in":'
                 + repr(round(window, 3)) + extra + ',"task":' + text + "}")
        return held

    async def _watch_offers(self) -> None:
        """Withdraw offers not picked up in time (one clock for all of them)."""
        assert self._loop is not None
        while self.offered:
            now = self._loop.time()
            soonest = now + OFFER_TICK
            for held in list(self.offered):
                if held.expires <= now:
                    self.offered.pop(held, None)
                    self._offer_expired(held)
                else:
                    soonest = min(soonest, held.expires)
            await asyncio.sleep(max(0.005, min(OFFER_TICK, soonest - now)))

    def _forget(self, held: Held) -> None:
        """Take a held task off its subscription (its slot is free again)."""
        self.offered.pop(held, None)
        if held.timer is not None:
            held.timer.cancel()
            held.timer = None
        sub = held.sub
        if sub.held.get(held.task.id) is held:
            del sub.held[held.task.id]
            if sub.service.pending:
                self._drain_pending(sub.service)
            self._wake.set()
        if self.index.get(held.task.id) is held:
            del self.index[held.task.id]

    # -- offers -----------------------------------------------------------------

    def _pickup(self, held: Held) -> None:
        if held.state == "running":
            return
        assert self._loop is not None
        self.offered.pop(held, None)
        held.state = "running"
        held.picked_at = time.time()
        self.deadlines.pop(held.task.id, None)
        if held.part is not None:
            held.part.state = "running"
        timeout = held.task.run_timeout
        if timeout is not None:
            held.timer = self._loop.call_later(timeout, self._run_timed_out, held)
        service = held.sub.service
        self.state.streams.note(held.task.id, "pickup", {"service": service.name,
                                                         "worker": service.worker_id})

    def _offer_expired(self, held: Held) -> None:
        if held.state != "offered" or held.sub.held.get(held.task.id) is not held:
            return
        held.sub.send('"type":"cancel","task_id":' + _json.dumps(held.task.id)
                      + ',"reason":"offer expired"}')
        self._withdraw(held, "expired")

    def _withdraw(self, held: Held, why: str) -> None:
        """An offer that was refused or not picked up in time."""
        task = held.task
        self._forget(held)
        if held.part is not None:
            part = held.part
            part.held = None
            part.tried.add(held.sub)
            self._settle(part, "refused" if why == "refused" else "expired")
            return
        if why == "refused":
            self.refused[task.id] = (held.sub, time.monotonic() + 5.0)
            if len(self.refused) > 10_000:
                now = time.monotonic()
                self.refused = {k: v for k, v in self.refused.items() if v[1] > now}
        self._give_back(held.sub.service.worker_id, task, held.lease)

    def _give_back(self, worker_id: str, task: Task, lease: Lease) -> None:
        """Release a claimed task nobody ran, or fail it past its pickup deadline."""
        deadline = self.deadlines.get(task.id)
        if deadline is not None and time.time() >= deadline:
            self.deadlines.pop(task.id, None)
            now = time.time()
            error = ErrorInfo("PickupTimeout", "not picked up within its pickup timeout of "
                              f"{task.pickup_timeout or 0:g}s", attempt=task.attempts, at=now)
            transition = Transition(Status.FAILED, error=error, reason="pickup_timeout",
                                    refund_attempt=True)
            # the change feed announces "expired" (it is not one of the events a process
            # announces itself)
            self.writer.finish(worker_id, Completion(task.id, lease.token, transition,
                                                     event="expired"), None)
            return
        self.writer.release(worker_id, lease)

    # -- runs -------------------------------------------------------------------

    def _update(self, held: Held, msg: dict[str, Any]) -> None:
        nested = msg.get("progress")
        if nested is not None:  # the shape publishers receive: {"progress": {...}}
            if not isinstance(nested, dict):
                raise ProtocolError("bad_message", "'progress' must be an object")
            if any(k in msg for k in ("current", "total", "message", "data")):
                raise ProtocolError("bad_message", "give the progress fields at the top "
                                                   "level or inside 'progress', not both")
            msg = nested
        current = _as_given(msg, "current", opt_number(msg, "current", minimum=None))
        total = _as_given(msg, "total", opt_number(msg, "total", minimum=None))
        message = opt_str(msg, "message", limit=10_000)
        data = msg.get("data")
        if data is not None and not isinstance(data, dict):
            raise ProtocolError("bad_message", "'data' must be an object")
        progress = Progress(current, total, message, data or None)
        lease = held.fan.lease if held.fan is not None else held.lease
        self.writer.set_progress(lease, progress)
        bus = self.app.bus
        task_id = held.task.id
        if bus.wants("task.progress", task_id):
            bus.emit(Event("task.progress", task_id, held.task, {"progress": progress}))

    def _log(self, held: Held, msg: dict[str, Any]) -> None:
        try:
            level = LogLevel.parse(msg.get("level", "info"))
        except ValidationError as exc:
            raise ProtocolError("bad_message", str(exc)) from None
        message = msg.get("message")
        if not isinstance(message, str):
            raise ProtocolError("bad_message", "'message' must be a string")
        data = msg.get("data")
        if data is not None and not isinstance(data, dict):
            raise ProtocolError("bad_message", "'data' must be an object")
        if held.fan is not None:
            data = {**(data or {}), "service": held.sub.service.name}
        self.writer.log(NewLog(held.task.id, level, cut_text(message, MAX_TEXT), time.time(),
                               data, held.lease.token))

    def _emit(self, held: Held, msg: dict[str, Any]) -> None:
        value = msg.get("value")
        try:
            _json.dumps_checked(value, "emitted value", limit=self.app.max_payload)
        except ValidationError as exc:
            raise ProtocolError("invalid", str(exc)) from None
        bus = self.app.bus
        task_id = held.task.id
        if bus.wants("task.result", task_id):
            bus.emit(Event("task.result", task_id, held.task, {"value": value}))

    def _outcome(self, held: Held, name: str, msg: dict[str, Any]) -> None:
        task = held.task
        outcome: Outcome
        if name == "return":
            value = msg.get("result")
            try:
                if not _plain(value, self.app.max_payload):
                    _json.dumps_checked(value, "result", limit=self.app.max_payload)
                outcome = Returned(value)
            except ValidationError as exc:
                outcome = Raised(ErrorInfo("ValidationError", str(exc), attempt=task.attempts,
                                           at=time.time()), retryable=False)
        elif name == "drop":
            opt_str(msg, "reason", limit=500)  # checked like every field (not stored)
            outcome = Returned(None)
        elif name == "fail":
            retryable = opt_bool(msg, "retryable", True)
            timeout = opt_number(msg, "timeout", None, maximum=MAX_SECONDS)
            if timeout is not None:
                outcome = TimedOut(timeout, retryable=retryable)
            else:
                outcome = Raised(_error_from(msg.get("error"), task.attempts),
                                 retryable=retryable)
        elif name == "retry":
            after = opt_number(msg, "after", None, maximum=MAX_SECONDS)
            outcome = Retry(after, opt_str(msg, "reason", limit=1000))
        elif name == "reschedule":
            after = opt_number(msg, "after", 0.0, maximum=MAX_SECONDS) or 0.0
            value = msg.get("result")
            try:
                _json.dumps_checked(value, "result", limit=self.app.max_payload)
                outcome = Reschedule(after, value)
            except ValidationError as exc:  # the run fails, as in-process (it stayed
                # running for good when the message was refused and nothing ended it)
                outcome = Raised(ErrorInfo("ValidationError", str(exc), attempt=task.attempts,
                                           at=time.time()), retryable=False)
        else:  # pragma: no cover - the handler table only routes the names above
            raise ProtocolError("unknown_type", name)
        if held.fan is not None:
            self._part_outcome(held, name, outcome)
            return
        if held.abort_reason is not None:
            outcome = self._aborted_outcome(held)
        self._complete(held, outcome, dropped=name == "drop")

    def _aborted_outcome(self, held: Held) -> Outcome:
        if held.timed_out:
            retryable = held.sub.defaults.get(held.task.action, _NO_DEFAULTS)[2]
            return TimedOut(held.task.run_timeout or 0.0, retryable=retryable)
        return Aborted(held.abort_reason or "aborted")

    def _complete(self, held: Held, outcome: Outcome, dropped: bool = False) -> None:
        """The end of a delivery-``one`` run: the policy decides, the writer stores."""
        self._forget(held)
        self.finished_total += 1
        task = held.task
        max_attempts, backoff, _ = held.sub.defaults.get(task.action, _NO_DEFAULTS)
        task = with_defaults(task, max_attempts=max_attempts, backoff=backoff)
        transition = self._transition(task, outcome)
        if dropped and transition.status is Status.SUCCEEDED:
            transition = replace(transition, reason="dropped")
        progress = self.writer.pending_progress(task.id)
        self.writer.finish(held.sub.service.worker_id,
                           Completion(task.id, held.lease.token, transition, progress), task)

    def _transition(self, task: Task, outcome: Outcome) -> Transition:
        handler = self.app.registry.get(task.action)
        policy = (handler.policy if handler is not None else None) or self.app.policy
        return decide(policy, task, outcome, self.app.max_payload)

    def _run_timed_out(self, held: Held) -> None:
        held.timer = None
        if held.sub.held.get(held.task.id) is not held or held.abort_reason is not None:
            return
        held.timed_out = True
        self._ask_abort(held, "timeout")

    def _ask_abort(self, held: Held, reason: str) -> None:
        assert self._loop is not None
        held.abort_reason = reason
        if held.timer is not None:
            held.timer.cancel()
        held.sub.send('"type":"abort","task_id":' + _json.dumps(held.task.id) + ',"reason":'
                      + _json.dumps(reason) + "}")
        held.timer = self._loop.call_later(self.config.abort_grace, self._grace_over, held)

    def _grace_over(self, held: Held) -> None:
        held.timer = None
        if held.sub.held.get(held.task.id) is not held:
            return
        held.sub.send('"type":"cancel","task_id":' + _json.dumps(held.task.id)
                      + ',"reason":"abort grace period over"}')
        if held.part is not None:
            self._settle(held.part, "timed_out" if held.timed_out else "aborted")
            return
        self._complete(held, self._aborted_outcome(held))

    # -- aborts -----------------------------------------------------------------

    def _on_abort_event(self, event: Event) -> None:
        task_id = event.task_id
        if task_id is None:
            return
        task = event.task
        reason = (task.abort_requested if task is not None else None) or "aborted"
        self.abort_local(task_id, reason)

    def abort_local(self, task_id: str, reason: str) -> None:
        held = self.index.get(task_id)
        if held is not None:
            if held.state == "offered":
                held.abort_reason = reason
                held.sub.send('"type":"cancel","task_id":' + _json.dumps(task_id)
                              + ',"reason":' + _json.dumps(reason) + "}")
                self._complete(held, Aborted(reason))
            elif held.abort_reason is None:
                self._ask_abort(held, reason)
            return
        fan = self.fans.get(task_id)
        if fan is not None and fan.aborted is None and not fan.done:
            fan.aborted = reason
            for part in list(fan.parts.values()):
                if part.state == "running" and part.held is not None:
                    if part.held.abort_reason is None:
                        self._ask_abort(part.held, reason)
                elif part.state in ("pending", "offered"):
                    if part.held is not None:
                        part.held.sub.send('"type":"cancel","task_id":' + _json.dumps(task_id)
                                           + ',"reason":' + _json.dumps(reason) + "}")
                    self._settle(part, "aborted")
            self._maybe_end_fan(fan)
        elif fan is None:
            self.early_aborts.note(task_id)

    # -- delivery all -------------------------------------------------------------

    def _start_fan(self, service: Service, subs: list[Sub], task: Task, lease: Lease) -> None:
        fan = Fanout(task, lease, service)
        service.fans += 1
        self.fans[task.id] = fan
        for other in list(self.services.values()):
            if any(not s.closed and task.action in s.actions for s in other.subs):
                fan.parts[other] = Part(fan, other)
        for part in list(fan.parts.values()):
            if part.state == "pending":
                self._place_part(part, preferred=subs if part.service is service else None)
        self._maybe_end_fan(fan)

    def _place_part(self, part: Part, preferred: list[Sub] | None = None) -> None:
        fan = part.fan
        service = part.service
        candidates = [s for s in (preferred or service.subs)
                      if s not in part.tried and not s.closed]
        sub = self._pick(service, candidates, fan.task) if candidates else None
        if sub is None:
            if not any(not s.closed and fan.task.action in s.actions and s not in part.tried
                       for s in service.subs):
                self._settle(part, "lost")
                return
            part.state = "pending"
            part.expires = time.monotonic() + float(self.config.offer_timeout)
            service.pending.append(part)
            return
        part.state = "offered"
        part.held = self._offer(sub, fan.task, fan.lease, fan, part)

    def _drain_pending(self, service: Service) -> None:
        pending = service.pending
        for _ in range(len(pending)):
            # (placing a share can settle a fan-out, which can come back here)
            if not pending or not any(s.free > 0 for s in service.subs if not s.closed):
                return
            part = pending.popleft()
            if part.state != "pending" or part.fan.done:
                continue
            self._place_part(part)
            if part.state == "pending" and part in pending:
                # still no room: keep its place at the front
                pending.remove(part)
                pending.appendleft(part)
                return

    def _part_outcome(self, held: Held, name: str, outcome: Outcome) -> None:
        part = held.part
        assert part is not None
        if held.abort_reason is not None:
            self._settle(part, "timed_out" if held.timed_out else "aborted")
            return
        if isinstance(outcome, Returned) and name == "return":
            self._settle(part, "returned", value=outcome.value)
        elif isinstance(outcome, Returned):
            self._settle(part, "dropped")
        elif isinstance(outcome, TimedOut):
            self._settle(part, "timed_out")
        elif isinstance(outcome, Raised):
            part.error = outcome.error
            part.retryable = outcome.retryable
            self._settle(part, "failed")
        else:  # Retry / Reschedule: a service cannot reschedule a broadcast for everyone
            part.error = ErrorInfo("Retry", "retry requested", attempt=held.task.attempts,
                                   at=time.time())
            self._settle(part, "failed")

    def _settle(self, part: Part, state: str, value: Any = None) -> None:
        if part.state not in _OPEN:
            return
        fan = part.fan
        part.state = state
        if part.held is not None:
            held, part.held = part.held, None
            self._forget(held)
        if state == "returned" and fan.first is None and fan.aborted is None:
            fan.first = (part.service.name, value)
            task_id = fan.task.id
            self.state.streams.note(task_id, "success", {"result": value,
                                                         "service": part.service.name,
                                                         "final": False})
            for other in list(fan.parts.values()):
                if other is part:
                    continue
                if other.state == "running" and other.held is not None:
                    other.held.sub.send('"type":"completed","task_id":' + _json.dumps(task_id)
                                        + ',"by":' + _json.dumps(part.service.name) + "}")
                elif other.state in ("pending", "offered"):
                    if other.held is not None:
                        other.held.sub.send('"type":"cancel","task_id":' + _json.dumps(task_id)
                                            + ',"reason":"completed"}')
                    self._settle(other, "skipped")
        self._maybe_end_fan(fan)

    def _maybe_end_fan(self, fan: Fanout) -> None:
        if fan.done or any(p.state in _OPEN for p in fan.parts.values()):
            return
        fan.done = True
        self._drop_fan(fan, release=False)
        states = [p.state for p in fan.parts.values()]
        task = fan.task
        worker = fan.service.worker_id
        progress = self.writer.pending_progress(task.id)
        outcome: Outcome | None
        dropped = False
        if fan.first is not None:  # what publishers and waits were told (the first
            # return completes the task): an abort after it stops the other shares only
            outcome = Returned(fan.first[1])
        elif fan.aborted is not None:
            outcome = Aborted(fan.aborted)
        elif "dropped" in states or "skipped" in states:
            outcome, dropped = Returned(None), True
        elif "failed" in states:
            part = next(p for p in fan.parts.values() if p.state == "failed")
            assert part.error is not None
            outcome = Raised(part.error, retryable=part.retryable)
        elif "timed_out" in states:
            outcome = TimedOut(task.run_timeout or 0.0, retryable=True)
        else:
            outcome = None  # nobody ran it to an end
        if outcome is None:
            lost = [p for p in fan.parts.values() if p.lost_running]
            if lost:
                # a service went away while running it: a lost run, as in delivery
                # `one` (rescues + 1; past max_rescues it fails `worker_lost`), so a
                # task that kills its services cannot loop
                names = ", ".join(p.service.name for p in lost)
                self.writer.log(NewLog(task.id, LogLevel.WARNING,
                                       f"service {names} let go of this task while running it",
                                       time.time(), {"services": [p.service.name for p in lost]}))
                self.writer.lose(worker, fan.lease)
                return
            self._give_back(worker, task, fan.lease)
            return
        self.finished_total += 1
        transition = self._transition(task, outcome)
        if dropped and transition.status is Status.SUCCEEDED:
            transition = replace(transition, reason="dropped")
        self.writer.finish(worker, Completion(task.id, fan.lease.token, transition, progress),
                           task)

    def _drop_fan(self, fan: Fanout, release: bool) -> None:
        if self.fans.get(fan.task.id) is fan:
            del self.fans[fan.task.id]
            fan.service.fans -= 1
            if not fan.service.subs and fan.service.fans == 0:
                self._retire(fan.service)
        self.deadlines.pop(fan.task.id, None)
        if release:
            fan.done = True
            for part in fan.parts.values():
                if part.held is not None:
                    held, part.held = part.held, None
                    self._forget(held)
                part.state = "lost"
            self.writer.release(fan.service.worker_id, fan.lease)

    # -- the keeper: heartbeats, sweeps, silent services ---------------------------

    async def _keep(self) -> None:
        beat = max(0.05, self.lease / 3)
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + beat
        next_sweep = loop.time()
        next_forget = loop.time() + 5.0
        # retention, as a worker's keeper does: a hub serving remote services alone
        # has no worker, and the change feed (and the app's finished tasks, with a
        # ``retention``) grew for ever
        prune_every, first_prune = prune_cadence(self.app.retention)
        next_prune = loop.time() + first_prune
        while not self._stopping:
            now = loop.time()
            if now >= next_beat:
                next_beat = now + beat
                await self._heartbeat()
            if now >= next_sweep:
                next_sweep = now + min(SWEEP_INTERVAL, beat)
                await self._sweep()
            if now >= next_forget:
                next_forget = now + FORGET_INTERVAL
                try:
                    await self.app.storage.forget_workers()
                except Exception as exc:
                    log.warning("hub: could not forget dead workers: %s", exc)
            if now >= next_prune:
                next_prune = now + prune_every
                await prune_once(self.app.storage, self.app.retention, "hub", log)
            await asyncio.sleep(max(0.0, min(next_beat, next_sweep, next_prune) - loop.time()))

    async def _beat_unstored(self, covered: set[str]) -> None:
        """Renew the leases of outcomes waiting to be stored whose service the
        heartbeat does not cover (``covered``: the worker ids it does): a service that
        reported its runs and went away, or all of them while the hub stops."""
        for worker_id, held in list(self.writer.unstored.items()):
            if worker_id in covered or not held:
                continue
            try:
                await self.app.storage.heartbeat(worker_id, list(held.values()), self.lease)
            except Exception as exc:
                log.warning("hub: could not renew the leases of outcomes waiting to be "
                            "stored: %s", exc)

    async def _beat_while_closing(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            await self._beat_unstored(set())

    async def _heartbeat(self) -> None:
        storage = self.app.storage
        silent_after = time.monotonic() - self.lease
        for service in list(self.services.values()):
            for sub in list(service.subs):
                if sub.conn.last_seen < silent_after and not sub.conn.closed:
                    log.warning("service %s: connection %r silent for %.0f s: closing",
                                service.name, sub.conn, self.lease)
                    sub.conn.closed = True
                    sub.conn._schedule_close(CLOSE_HEARTBEAT, "no heartbeat within the lease")
                    self.unsubscribe(sub, "no heartbeat")
        for service in list(self.services.values()):
            leases = [h.lease for s in service.subs for h in s.held.values() if h.fan is None]
            leases.extend(f.lease for f in self.fans.values() if f.service is service)
            live = {lease.task_id for lease in leases}  # a later claim supersedes an ended run
            ended = self.writer.unstored.get(service.worker_id, {})
            leases.extend(lease for lease in ended.values() if lease.task_id not in live)
            if not service.subs and not leases:
                continue
            try:
                if service.info_dirty and service.subs:
                    service.info_dirty = False
                    await storage.register_worker(service.info(self.hub_id, self.lease))
                reply = await storage.heartbeat(service.worker_id, leases, self.lease)
                if not reply.known and service.subs:
                    await storage.register_worker(service.info(self.hub_id, self.lease))
            except Exception as exc:
                log.warning("service %s: heartbeat failed: %s", service.name, exc)
                continue
            sent = {lease.task_id: lease.token for lease in leases}
            for task_id in reply.lost:
                self._lost(task_id, sent[task_id])
            for task_id, reason in reply.abort_requested.items():
                self.abort_local(task_id, reason)
        await self._beat_unstored({service.worker_id for service in self.services.values()})

    def _lost(self, task_id: str, token: str) -> None:
        """Storage says the lease ``token`` is gone (rescued or taken over): stop the
        run here, if it is that claim's (an ended run's lease, kept until its outcome
        was stored, may be reported lost after a new claim of the task)."""
        held = self.index.get(task_id)
        if held is not None and held.lease.token == token:
            log.warning("task %s: lease lost; withdrawing it from service %s", task_id,
                        held.sub.service.name)
            held.sub.send('"type":"cancel","task_id":' + _json.dumps(task_id)
                          + ',"reason":"lease lost"}')
            self._forget(held)
            return
        fan = self.fans.get(task_id)
        if fan is not None and fan.lease.token == token:
            for part in fan.parts.values():
                if part.held is not None:
                    part.held.sub.send('"type":"cancel","task_id":' + _json.dumps(task_id)
                                       + ',"reason":"lease lost"}')
            fan.done = True
            for part in fan.parts.values():
                if part.held is not None:
                    held_part, part.held = part.held, None
                    self._forget(held_part)
                part.state = "lost"
            if self.fans.get(task_id) is fan:
                del self.fans[task_id]
                fan.service.fans -= 1
                if not fan.service.subs and fan.service.fans == 0:
                    self._retire(fan.service)

    async def _sweep(self) -> None:
        now = time.monotonic()
        for service in list(self.services.values()):
            if service.pending:
                for part in list(service.pending):
                    if part.state == "pending" and part.expires <= now:
                        service.pending.remove(part)
                        self._settle(part, "expired")
        if self.refused:
            self.refused = {k: v for k, v in self.refused.items() if v[1] > now}
        try:
            report = await self.app.storage.recover(self.app.max_rescues)
        except Exception as exc:
            log.warning("hub: sweep failed: %s", exc)
            return
        log_recovery(log, report)
        if report.requeued:
            self._wake.set()


def _plain(value: Any, limit: int) -> bool:
    """A value that is valid JSON within ``limit`` bytes without encoding it."""
    kind = type(value)
    if value is None or kind is bool or kind is int:
        return True
    if kind is float:
        return bool(value == value and value not in (float("inf"), float("-inf")))
    return kind is str and len(value) * 4 <= limit


def _error_from(raw: Any, attempt: int) -> ErrorInfo:
    now = time.time()
    if isinstance(raw, str):
        return ErrorInfo.bounded("Error", raw, attempt=attempt, at=now)
    if isinstance(raw, dict):
        kind = raw.get("type")
        message = raw.get("message")
        trace = raw.get("traceback")
        return ErrorInfo.bounded(kind[:200] if isinstance(kind, str) and kind else "Error",
                                 message if isinstance(message, str) else "",
                                 trace if isinstance(trace, str) else None,
                                 attempt=attempt, at=now)
    if raw is None:
        return ErrorInfo("Error", "the service reported a failure", attempt=attempt, at=now)
    raise ProtocolError("bad_message", "'error' must be an object with type and message, "
                                       "or a string")

