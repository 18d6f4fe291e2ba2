"""Events: typed notifications of what happens to tasks and workers.

Event types: ``task.added``, ``task.started``, ``task.progress``,
``task.log``, ``task.result`` (an intermediate result from
``ctx.emit``), ``task.succeeded``, ``task.failed``, ``task.aborted``,
``task.retrying`` (queued again after an error), ``task.rescheduled``
(queued again by ``Reschedule``), ``task.prioritized``,
``task.abort_requested``, ``task.released`` (handed back by a stopping
worker), ``task.rescued`` (lease expired, queued again), ``task.retried``
(queued again by :meth:`Conveyor.retry`), ``task.expired`` (pickup
timeout), ``task.deleted``, ``task.ended`` (after any of succeeded, failed,
aborted), ``worker.started``, ``worker.stopped``.

Subscribe by pattern (``fnmatch`` style: ``"task.*"``, ``"*"``) and
optionally by task id, with a callback (:meth:`EventBus.on`) or as an async
iterator (:meth:`EventBus.subscribe`).

A process announces the changes it makes itself, in the order it makes
them (progress, logs and intermediate results at full rate). Changes made
by other processes, and by this process's sweeper, are rebuilt from the
storage change feed by :class:`ChangeRelay`, in commit order.
``event.task`` is the task as read when the event was emitted (for feed
events, possibly already a later version).
"""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import logging
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, NoReturn

from ._aio import LoopEvent, handed_to, run_in_its_loop, stop_tasks
from .errors import ConveyorError, ValidationError
from .model import LogLevel, LogRecord, Progress, Status, Task, seconds
from .storage import Change, Completion, Storage, _ops

__all__ = [
    "EVENT_TYPES",
    "ChangeRelay",
    "Event",
    "EventBus",
    "EventOverflow",
    "Subscription",
    "Tally",
]

log = logging.getLogger("conveyor.events")

EVENT_TYPES: tuple[str, ...] = (
    "task.added", "task.started", "task.progress", "task.log", "task.result",
    "task.succeeded", "task.failed", "task.aborted", "task.retrying", "task.rescheduled",
    "task.prioritized", "task.abort_requested", "task.released", "task.rescued",
    "task.retried", "task.expired", "task.deleted", "task.ended",
    "worker.started", "worker.stopped",
)
"""Every event type :meth:`Conveyor.events` and :meth:`Conveyor.on` can deliver."""

# change-feed event name -> event type
_FROM_CHANGE = {
    "added": "task.added", "started": "task.started", "progress": "task.progress",
    "log": "task.log", "succeeded": "task.succeeded", "failed": "task.failed",
    "aborted": "task.aborted", "retrying": "task.retrying", "rescheduled": "task.rescheduled",
    "prioritized": "task.prioritized", "abort_requested": "task.abort_requested",
    "released": "task.released", "rescued": "task.rescued", "retried": "task.retried",
    "deleted": "task.deleted", "lost": "task.failed", "lost_aborted": "task.aborted",
    "retry_aborted": "task.aborted", "expired": "task.failed",
    "condition_failed": "task.failed",
}
# Changes that end a task: each is followed by task.ended.
_ENDING = frozenset({"succeeded", "failed", "aborted", "lost", "lost_aborted", "retry_aborted",
                     "expired", "condition_failed"})
# Changes a process announces itself when it makes them (the relay skips its own).
DIRECT = frozenset({
    "added", "started", "progress", "log", "succeeded", "failed", "aborted", "retrying",
    "rescheduled", "prioritized", "abort_requested", "released", "retried", "deleted",
})
_ENDING_TYPES = frozenset({"task.succeeded", "task.failed", "task.aborted"})
# Events that are not status changes: kept whatever version they carry.
_UNORDERED = frozenset({"task.progress", "task.log", "task.result"})
# Changes of a finished run: progress not yet stored when the handler returned is
# stored with them, so the relay reports it (as task.progress) before them.
_FINISHING = frozenset({"succeeded", "failed", "aborted", "retrying", "rescheduled",
                        "retry_aborted"})
_TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.ABORTED})
_VERSIONS_KEPT = 10_000
_GONE = 1 << 62  # the version a deleted task's events are older than (see EventBus.deleted)
_TALLIED = frozenset({"added", "started"}) | _ENDING
"""Changes the tallies count (see :meth:`EventBus.add_tally`)."""


class EventOverflow(ConveyorError):
    """A subscription fell too far behind and lost events; it is closed."""


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened. ``data`` depends on the type: ``progress`` for
    ``task.progress``, ``log`` (a LogRecord) for ``task.log``, ``value`` for
    ``task.result``, ``worker`` for worker events. ``task`` is the task as read
    after the change; for the end of a run, as that run left it, even when the
    task moved on before it was read (a retried task claimed again)."""

    type: str
    task_id: str | None = None
    task: Task | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


Callback = Callable[[Event], Any]
Tally = Callable[[str, str, "str | None", "float | None"], None]
"""``tally(kind, action, status, run_seconds)``: see :meth:`EventBus.add_tally`."""


def _matcher(patterns: str | Sequence[str]) -> Callable[[str], bool]:
    if not isinstance(patterns, str | Iterable):
        raise ValidationError("an event pattern is a string (\"task.*\") or a list of them, "
                              f"not {type(patterns).__name__}")
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    if not items:
        raise ValidationError("at least one event pattern is needed")
    for p in items:
        if not isinstance(p, str) or not p:
            raise ValidationError(f"event patterns are non-empty strings, not {p!r}")
    if "*" in items:
        return lambda _type: True
    exact = {p for p in items if not any(c in p for c in "*?[")}
    wild = [p for p in items if p not in exact]
    if not wild:
        return exact.__contains__
    return lambda t: t in exact or any(fnmatch.fnmatchcase(t, p) for p in wild)


class _Listener:
    __slots__ = ("callback", "matches", "subscription", "task_id")

    def __init__(self, matches: Callable[[str], bool], task_id: str | None,
                 callback: Callable[[Event], None], subscription: bool = False) -> None:
        self.matches = matches
        self.task_id = task_id
        self.callback = callback
        self.subscription = subscription


def _ignore(event: Event) -> None:
    pass


def _abandoned(bus: EventBus, listener: _Listener) -> None:
    """A :class:`Subscription` was garbage-collected without being closed (a ``break``
    out of its ``async for``, its consumer cancelled): it receives nothing more, and
    the bus drops it at its next registration or emit (not here: this may run in any
    thread, in the middle of the bus's own work)."""
    listener.callback = _ignore
    bus._dead.append(listener)


class Subscription:
    """An async iterator of events; close it (or leave its ``async with``) when done.
    One left behind unclosed (a ``break`` out of its ``async for``, its consumer task
    cancelled) stops receiving once nothing refers to it any more."""

    def __init__(self, bus: EventBus, matches: Callable[[str], bool], task_id: str | None,
                 maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        # the loop that reads it: events told from another loop's thread (a change
        # relay that runs in a SyncConveyor's loop) are handed over to it (a queue put
        # there woke nobody: the consumer waited until something else woke its loop)
        self._home = asyncio._get_running_loop()
        self._maxsize = maxsize
        self._overflowed = False
        self._app_closed = False
        self._closed = False
        # the bus holds the listener, which refers to this subscription weakly: one that
        # its user dropped is collected, queue and all, and the finalizer retires it
        put = weakref.WeakMethod(self._put)

        def deliver(event: Event) -> None:
            method = put()
            if method is not None:
                method(event)

        self._listener = _Listener(matches, task_id, deliver, subscription=True)
        bus._add(self._listener)
        bus._subscriptions.add(self)
        self._finalizer = weakref.finalize(self, _abandoned, bus, self._listener)

    def _put(self, event: Event) -> None:
        if handed_to(self._home, self._put, event):
            return
        if self._closed:
            return
        if self._queue.qsize() >= self._maxsize:
            self._overflowed = True
            self.close()
            return
        self._queue.put_nowait(event)

    def close(self) -> None:
        """Stop receiving events; iteration ends."""
        if not self._closed:
            self._closed = True
            self._finalizer.detach()
            self._bus._remove(self._listener)
            if not handed_to(self._home, self._queue.put_nowait, None):
                self._queue.put_nowait(None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._closed and self._queue.empty():
            self._ended()
        event = await self._queue.get()
        if event is None:
            self._ended()
        return event

    def _ended(self) -> NoReturn:
        if self._overflowed:
            raise EventOverflow("event subscription fell behind and was closed")
        if self._app_closed:
            raise ConveyorError("the app was closed while this call waited")
        raise StopAsyncIteration

    async def get(self, timeout: float | timedelta | None = None) -> Event | None:
        """The next event, or None after ``timeout`` seconds (or when closed)."""
        limit = seconds(timeout, "timeout")
        try:
            async with asyncio.timeout(limit):
                return await self.__anext__()
        except (TimeoutError, StopAsyncIteration):
            return None

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def _count(tally: Tally, kind: str, action: str, status: str | None,
           seconds: float | None) -> None:
    """One call of a tally; its error is logged (it failed an add after the write, and
    kept a run's end from being announced)."""
    try:
        tally(kind, action, status, seconds)
    except Exception:
        log.exception("tally %r failed on %s of %s", tally, kind, action)


class EventBus:
    """In-process fan-out of events to callbacks and subscriptions.

    Emit from the event loop's thread. Callbacks run in emit order; an async
    callback is scheduled as a task; a callback that raises is logged and
    does not stop others.
    """

    def __init__(self) -> None:
        self._global: list[_Listener] = []
        self._by_task: dict[str, list[_Listener]] = {}
        self._dead: list[_Listener] = []  # of subscriptions dropped unclosed
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._signals: dict[str, set[asyncio.Event]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._tallies: list[Tally] = []
        # events of tasks whose earlier change is being read back by announce():
        # task id -> (the announce holding it, the events that came meanwhile, and the
        # calls deferred after them)
        self._held: dict[str, tuple[object, list[Event | Callable[[], None]]]] = {}
        # tasks whose changes from the feed the change relay is reading for events
        self._relaying: set[str] = set()
        # the tasks each hold() asked for (until its release), and how many holds
        # ask for each task
        self._asked: dict[object, list[str]] = {}
        self._pending: dict[str, int] = {}
        # held tasks whose events are made even with nobody listening yet (new tasks
        # until their add lets them out: a listener may come before that)
        self._eager: set[str] = set()
        # per task (the most recent _VERSIONS_KEPT): [the version of the last event
        # delivered, that of its last task.ended] (see emit and is_stale)
        self._versions: OrderedDict[str, list[int]] = OrderedDict()

    def _after_fork(self) -> None:
        """In a forked child: forget the waiters, subscriptions and background tasks
        of the parent's event loop; callbacks registered with :meth:`on` stay."""
        def kept(listeners: list[_Listener]) -> list[_Listener]:
            return [x for x in listeners if not x.subscription]

        self._global = kept(self._global)
        self._by_task = {k: v for k, v in ((k, kept(v)) for k, v in self._by_task.items()) if v}
        self._signals = {}
        self._background = set()
        self._dead = []
        self._subscriptions = weakref.WeakSet()
        self._held = {}
        self._relaying = set()
        self._asked = {}
        self._pending = {}
        self._eager = set()
        self._versions = OrderedDict()

    # -- registration ---------------------------------------------------------

    def _add(self, listener: _Listener) -> None:
        if self._dead:
            self._drop_dead()
        if listener.task_id is None:
            self._global.append(listener)
        else:
            self._by_task.setdefault(listener.task_id, []).append(listener)

    def _remove(self, listener: _Listener) -> None:
        if listener.task_id is None:
            if listener in self._global:
                self._global.remove(listener)
            return
        items = self._by_task.get(listener.task_id)
        if items and listener in items:
            items.remove(listener)
            if not items:
                del self._by_task[listener.task_id]

    def _end_waits(self) -> None:
        """The app is closing: wake every waiter (they see it and end) and end every
        subscription's iteration."""
        for signals in list(self._signals.values()):
            for ev in signals:
                ev.set()
        for subscription in list(self._subscriptions):
            subscription._app_closed = True
            subscription.close()

    def _drop_dead(self) -> None:
        while self._dead:
            self._remove(self._dead.pop())

    def on(self, pattern: str | Sequence[str], callback: Callback, *,
           task_id: str | None = None) -> Callable[[], None]:
        """Call ``callback(event)`` for each matching event. Returns a function
        that unsubscribes."""
        if not callable(callback):
            raise TypeError("callback must be callable")

        def deliver(event: Event) -> None:
            try:
                result = callback(event)
                if result is not None and inspect.isawaitable(result):
                    task = asyncio.ensure_future(_guard(result))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
            except Exception:
                log.exception("event callback %r failed on %s", callback, event.type)

        listener = _Listener(_matcher(pattern), task_id, deliver)
        self._add(listener)
        return lambda: self._remove(listener)

    def add_tally(self, tally: Tally) -> Callable[[], None]:
        """Call ``tally(kind, action, status, run_seconds)`` for every task added
        (``"added"``), run started (``"started"``) and task ended (``"ended"``, with
        its final status and, when it ran, its run time), by this process or (through
        the change feed) by others; a change of another process whose task was
        deleted before this process read it is not counted (the feed does not say
        its action). Cheaper than an event listener: for runs this
        process ends, no :class:`Event` is built and the task is not read back.
        Returns a function that removes it. A tally that raises is logged and does
        not stop the others, nor the change it counts (or its events)."""
        if not callable(tally):
            raise ValidationError(f"a tally must be callable, not {tally!r}")
        self._tallies.append(tally)

        def remove() -> None:
            if tally in self._tallies:
                self._tallies.remove(tally)

        return remove

    def subscribe(self, pattern: str | Sequence[str] = "*", *, task_id: str | None = None,
                  maxsize: int = 10_000) -> Subscription:
        """An async iterator of matching events, starting now. ``maxsize``: how many
        undelivered events it holds (an int >= 1) before it overflows."""
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValidationError(f"maxsize must be an integer >= 1, not {maxsize!r}")
        return Subscription(self, _matcher(pattern), task_id, maxsize)

    # -- delivery -------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """True when nobody listens (emitters may skip building events)."""
        return not self._global and not self._by_task and not self._tallies

    def wants(self, type: str, task_id: str | None) -> bool:
        """Whether an event of ``type`` (for ``task_id``) would reach some subscriber
        (or may: a task held with ``eager``)."""
        if self._eager and task_id in self._eager:
            return True
        for listener in self._global:
            if listener.matches(type):
                return True
        if task_id is not None:
            for listener in self._by_task.get(task_id, ()):
                if listener.matches(type):
                    return True
        return False

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to every matching subscription and callback (after the
        task's earlier change when :meth:`announce` is still reading that one, or
        while :meth:`hold` holds the task). An event of a version older than the
        task's ``task.ended`` delivered already is stale and dropped: a change that
        another process's event overtook (a run ending in a retry that an abort
        from this process ended at once) is not shown after the end."""
        task_id = event.task_id
        if task_id is not None:
            if self._held:
                held = self._held.get(task_id)
                if held is not None:
                    held[1].append(event)
                    return
            version = event.data.get("version")
            if isinstance(version, int):
                seen = self._versions.get(task_id)
                if seen is None:
                    seen = self._versions[task_id] = [version, 0]
                    if len(self._versions) > _VERSIONS_KEPT:
                        self._versions.popitem(last=False)
                elif version < seen[1]:
                    return
                else:
                    seen[0] = max(seen[0], version)
                    self._versions.move_to_end(task_id)
                if event.type == "task.ended":
                    seen[1] = version
        if self._dead:
            self._drop_dead()
        listeners = [lst for lst in self._global if lst.matches(event.type)]
        if event.task_id is not None:
            listeners.extend(lst for lst in self._by_task.get(event.task_id, ())
                             if lst.matches(event.type))
        for listener in listeners:
            listener.callback(event)

    # -- raw change signals ---------------------------------------------------

    def signal(self, task_id: str) -> asyncio.Event:
        """An asyncio.Event set on every change of the task (any process).

        Clear it before re-reading; release it with :meth:`unsignal`."""
        ev = LoopEvent()  # set by a relay of another loop too
        self._signals.setdefault(task_id, set()).add(ev)
        return ev

    def unsignal(self, task_id: str, ev: asyncio.Event) -> None:
        """Stop setting ``ev`` when ``task_id`` changes (see ``signal``)."""
        items = self._signals.get(task_id)
        if items is not None:
            items.discard(ev)
            if not items:
                del self._signals[task_id]

    def _notify(self, task_id: str) -> None:
        for ev in self._signals.get(task_id, ()):
            ev.set()

    def task_event(self, type: str, task: Task, data: Mapping[str, Any] | None = None, *,
                   tally: bool = True) -> None:
        """Announce a change this process made to ``task`` (now in its new state):
        wake the task's signals, emit ``type`` and, for an ending, ``task.ended``."""
        self._notify(task.id)
        if self.idle:
            return
        if tally and self._tallies:
            self._tally(type[5:], task, task.status)
        payload = data or {"version": task.version, "status": task.status.value}
        if self.wants(type, task.id):
            self.emit(Event(type, task.id, task, payload))
        if type in _ENDING_TYPES and task.terminal and self.wants("task.ended", task.id):
            self.emit(Event("task.ended", task.id, task, payload))

    def deleted(self, task_id: str) -> None:
        """Announce that this process deleted the task: wake its signals, emit
        ``task.deleted``, and deliver no event of the task after it (changes of the
        task still on their way through the change feed, or read by :meth:`announce`
        before the deletion, are older: they would bring the deleted task back)."""
        self._notify(task_id)
        self._versions[task_id] = [_GONE, _GONE]
        self._versions.move_to_end(task_id)
        if len(self._versions) > _VERSIONS_KEPT:
            self._versions.popitem(last=False)
        if self.wants("task.deleted", task_id):
            self.emit(Event("task.deleted", task_id))

    def wants_task_event(self, type: str, task_id: str) -> bool:
        """Whether :meth:`task_event` for this type and task would reach a listener."""
        return self.wants(type, task_id) or (type in _ENDING_TYPES
                                             and self.wants("task.ended", task_id))

    def _tally(self, event: str, task: Task, status: Status) -> None:
        """Feed the tallies one change (``event`` as in the change feed)."""
        if event == "added" or event == "started":
            for tally in self._tallies:
                _count(tally, event, task.action, None, None)
        elif event in _ENDING and status in _TERMINAL:
            self._tally_ended(task.action, status, None if task.started_at is None
                              or task.finished_at is None
                              else task.finished_at - task.started_at)

    def _tally_ended(self, action: str, status: Status, seconds: float | None) -> None:
        for tally in self._tallies:
            _count(tally, "ended", action, status.value, seconds)

    def is_deleted(self, task_id: str) -> bool:
        """Whether this process announced the task's deletion (see :meth:`deleted`)."""
        seen = self._versions.get(task_id)
        return seen is not None and seen[0] >= _GONE

    def is_stale(self, task_id: str, version: int) -> bool:
        """Whether a change of this version is older than an event of the task
        delivered already (the change feed's events are exact, so one that another
        event overtook, such as this process's own abort, is not shown after it)."""
        seen = self._versions.get(task_id)
        return seen is not None and version < seen[0]

    def hold(self, task_ids: Iterable[str], owner: object | None = None, *,
             eager: bool = False) -> object:
        """Hold the events of these tasks (a writer storing their runs' ends, or an add:
        the next run's ``task.started`` must not come first) until :meth:`announce`
        with the returned owner emits their change, or :meth:`release`. Pass
        ``owner`` to hold more tasks for the same owner. ``eager``: make their events
        even while nobody listens, for the listeners that come before the release (an
        add's new tasks: a hub's wait starts listening then)."""
        owner = object() if owner is None else owner
        asked = self._asked.setdefault(owner, [])
        for task_id in task_ids:
            if self._held.setdefault(task_id, (owner, []))[0] is owner and eager:
                self._eager.add(task_id)
            # held by another owner (an add not returned yet): this one's change is
            # still on its way when that one lets the task go (see is_held)
            asked.append(task_id)
            self._pending[task_id] = self._pending.get(task_id, 0) + 1
        return owner

    def is_held(self, task_id: str) -> bool:
        """Whether events of the task are on their way: held (see :meth:`hold`),
        or a change of it being read back by :meth:`announce` or by the change
        relay. Its signals are set again when they are out."""
        return task_id in self._held or task_id in self._relaying or task_id in self._pending

    def release(self, owner: object,
                first: Iterable[tuple[str, Task]] = ()) -> None:
        """Announce ``first`` (``(type, task)`` pairs, as :meth:`task_event`), then
        emit, in order, the events held for ``owner`` (see :meth:`hold`)."""
        mine = [(task_id, held[1]) for task_id, held in self._held.items()
                if held[0] is owner]
        for task_id, _ in mine:
            del self._held[task_id]
            self._eager.discard(task_id)
        asked = self._asked.pop(owner, ())
        for task_id in asked:
            left = self._pending[task_id] - 1
            if left:
                self._pending[task_id] = left
            else:
                del self._pending[task_id]
        held = dict(mine)
        for task_id, changes in _by_task(first).items():
            self._let_out_with(held.pop(task_id, []), changes)
        for events in held.values():
            self._let_out(_in_version_order(events))
        for task_id in {*asked, *(task_id for task_id, _ in mine)}:
            self._notify(task_id)  # a wait that saw the task held (is_held)

    def defer(self, task_id: str, call: Callable[[], None]) -> bool:
        """Run ``call`` once the events held for this task (see :meth:`hold`) are out,
        in their order (a hub's own notes on a task); False, and nothing kept, when
        they are not held."""
        held = self._held.get(task_id)
        if held is None:
            return False
        held[1].append(call)
        return True

    def _let_out(self, held: list[Event | Callable[[], None]]) -> None:
        for item in held:
            if isinstance(item, Event):
                self.emit(item)
            else:
                item()

    def _let_out_with(self, held: list[Event | Callable[[], None]],
                      changes: Sequence[tuple[str, Task]], *, tally: bool = True) -> None:
        """Announce ``changes`` of a task (as :meth:`task_event`) and let out the
        events held for it, all in version order: a held event older than an
        announced change (the worker's task.started held behind an abort() of
        the task it had just claimed, or a run's end held behind the start of its
        retry) comes before it, as it happened."""
        pending = _in_version_order(held)
        for type, task in changes:
            early = 0
            while early < len(pending) and _held_version(pending[early]) < task.version:
                early += 1
            self._let_out(pending[:early])
            pending = pending[early:]
            self.task_event(type, task, tally=tally)
        self._let_out(pending)

    async def announce(self, changes: Sequence[tuple[str, str]],
                       read: Callable[[list[str]], Awaitable[Sequence[Task]]],
                       owner: object | None = None) -> None:
        """Emit the events of changes this process made, ``(task_id, type)`` pairs,
        reading the tasks (``read(ids)``) only if a listener wants them. Not tallied.
        ``owner``: what :meth:`hold` returned for these tasks, if it held them."""
        for task_id, _ in changes:
            self._notify(task_id)
        if not (self._global or self._by_task):
            return
        wanted = [(task_id, type) for task_id, type in changes
                  if self.wants_task_event(type, task_id)]
        if not wanted:
            return
        # While the tasks are read, later events of the same tasks (a retried task
        # claimed again, its progress) wait, so that each task's events keep its order.
        owner = object() if owner is None else owner
        for task_id, _ in wanted:
            self._held.setdefault(task_id, (owner, []))
        tasks: dict[str, Task] = {}
        try:
            tasks = {t.id: t for t in await read([task_id for task_id, _ in wanted])}
        except Exception:
            log.exception("could not read tasks for events")
        finally:
            for task_id, type in wanted:
                held = self._held.get(task_id)
                mine = held is not None and held[0] is owner
                if mine:
                    del self._held[task_id]
                task = tasks.get(task_id)
                if not mine:
                    if task is not None:
                        self.task_event(type, task, tally=False)
                    continue
                assert held is not None
                if task is not None:
                    self._let_out_with(held[1], [(type, task)], tally=False)
                else:
                    self._let_out(_in_version_order(held[1]))
                self._notify(task_id)  # a wait that saw the task held (is_held)

    async def announce_finished(self, items: Sequence[tuple[Completion, Task]],
                                read: Callable[[list[str]], Awaitable[Sequence[Task]]],
                                owner: object | None = None) -> None:
        """Emit the events of runs this process ended and stored: ``(completion, the
        task as claimed)`` pairs. Tallies get the outcome without a read. ``owner``:
        what :meth:`hold` returned for these tasks, if it held them."""
        if self._tallies:
            now = time.time()
            for completion, task in items:
                status = completion.transition.status
                if status in _TERMINAL:
                    self._tally_ended(task.action, status, None if task.started_at is None
                                      else now - task.started_at)
        ended = {c.task_id: (c, task) for c, task in items}

        async def read_as_ended(task_ids: list[str]) -> list[Task]:
            # a task read back after it moved on (a retried task claimed again, as
            # soon as its backoff allowed) is shown as this run's end left it; so is
            # one deleted meanwhile (another process's cleanup of ended tasks)
            now = time.time()
            stored = {t.id: t for t in await read(task_ids)}
            shown = []
            for task_id in task_ids:
                completion, claimed = ended[task_id]
                t = completion.transition
                attempts = claimed.attempts - (1 if t.refund_attempt else 0)
                task = stored.get(task_id)
                if task is None or task.status is not t.status or task.attempts != attempts:
                    task = _ops.finished(claimed, completion, now)
                shown.append(task)
            return shown

        await self.announce(
            [(c.task_id, "task." + (c.event or _ops.completion_event(c.transition)))
             for c, _ in items], read_as_ended, owner)


def _held_version(item: Event | Callable[[], None]) -> float:
    """The version of a held status event; others (log lines, progress, results,
    calls) keep their place after the event before them (see _in_version_order)."""
    if isinstance(item, Event) and item.type not in _UNORDERED:
        version = item.data.get("version")
        if isinstance(version, int):
            return version
    return -math.inf


def _in_version_order(held: list[Event | Callable[[], None]]
                      ) -> list[Event | Callable[[], None]]:
    """Held items with their status events in version order (a held list can get
    this process's own events out of order: a run's end read back after its
    retry's start), each other item staying after the status event before it."""
    groups: list[tuple[float, int, list[Event | Callable[[], None]]]] = []
    for item in held:
        version = _held_version(item)
        if version == -math.inf and groups:
            groups[-1][2].append(item)
        else:
            groups.append((version, len(groups), [item]))
    groups.sort(key=lambda g: (g[0], g[1]))
    return [item for _, _, items in groups for item in items]


def _by_task(changes: Iterable[tuple[str, Task]]) -> dict[str, list[tuple[str, Task]]]:
    out: dict[str, list[tuple[str, Task]]] = {}
    for type, task in changes:
        out.setdefault(task.id, []).append((type, task))
    return out


async def _guard(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("async event callback failed")


class ChangeRelay:
    """Turns the storage change feed into events on a bus.

    Progress and log changes written by this process's own storage object
    are not re-emitted (the runner emitted them at full rate already).
    """

    def __init__(self, storage: Storage, bus: EventBus) -> None:
        self.storage = storage
        self.bus = bus
        self._task: asyncio.Task[None] | None = None
        self._log_seen: dict[str, int] = {}
        self._progress_seen: dict[str, Progress] = {}
        self._attempts_seen: dict[str, tuple[int, int]] = {}  # (version, attempts)
        self.listeners: list[Callable[[Sequence[Change]], None]] = []
        self.needs_every_change: set[object] = set()
        """Listeners that want every change for now, their own process's included (a
        worker whose due tasks a limit or a condition holds back: any task leaving
        ``running`` may free them), not only wake-ups."""
        self._ready = asyncio.Event()

    def start(self) -> None:
        """Start relaying the storage's change feed to the bus (on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="conveyor-change-relay")

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the relay runs in (None before :meth:`start`)."""
        return None if self._task is None else self._task.get_loop()

    @property
    def orphaned(self) -> bool:
        """Whether the relay's loop has ended (``asyncio.run`` returned): it relays
        nothing any more."""
        task = self._task
        return task is not None and task.get_loop().is_closed()

    async def wait_ready(self) -> None:
        """Wait until the relay reads the feed (changes from then on are delivered)."""
        await self._ready.wait()

    async def stop(self) -> None:
        """Stop relaying (:func:`~conveyor._aio.stop_tasks`: a cancellation lost in a
        library is asked again; after 10 s the task is left behind with an error in
        the log rather than hang the app's ``close()``). A relay running in another
        thread's loop (a SyncConveyor's, when the app is closed from a loop of the
        program's own) is stopped there: awaited from here, its task hung the close
        10 s."""
        try:
            async with asyncio.timeout(15):
                if await run_in_its_loop(self.loop, self.stop):
                    return
        except Exception:  # its own loop did not stop it within 15 s
            log.exception("could not stop the change relay in its own loop")
            return
        task, self._task = self._task, None
        await stop_tasks(task, what="the change relay")

    def _wants_own(self) -> bool:
        """Own changes matter only to event listeners and task signals in this process
        (and to a worker holding tasks back)."""
        return not self.bus.idle or bool(self.bus._signals) or bool(self.needs_every_change)

    def _wakeups_only(self) -> bool:
        """With no listener and no signal, only wake-ups (for the worker) matter."""
        return self.bus.idle and not self.bus._signals and not self.needs_every_change

    def _wanted(self) -> bool:
        """Changes matter only to event listeners, tallies, task signals and change
        listeners (a worker); an app that only adds tasks needs none."""
        return not self.bus.idle or bool(self.bus._signals) or bool(self.listeners)

    async def _run(self) -> None:
        stream = self.storage.change_batches(self._wants_own, self._wakeups_only, self._wanted)
        iterator = stream.__aiter__()
        self._ready.set()
        try:
            while True:
                try:
                    batch = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                try:
                    await self._handle(batch)
                except Exception:
                    log.exception("could not turn changes into events")
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _handle(self, changes: Sequence[Change]) -> None:
        for listener in self.listeners:
            try:
                listener(changes)
            except Exception:
                log.exception("change listener failed")
        own = self.storage.instance_id
        tally = bool(self.bus._tallies)
        wanted: list[tuple[Change, str]] = []
        for change in changes:
            if change.origin == own and change.event in DIRECT:
                continue  # announced by this process when it made the change
            type = _FROM_CHANGE.get(change.event)
            if type is None:
                continue
            if ((tally and change.event in _TALLIED)
                    or self.bus.wants(type, change.task_id)
                    or (change.event in _ENDING and self.bus.wants("task.ended", change.task_id))
                    or (change.event == "expired" and self.bus.wants("task.expired",
                                                                     change.task_id))
                    or (change.event in _FINISHING
                        and self.bus.wants("task.progress", change.task_id))):
                wanted.append((change, type))
        # the signals of tasks with events to relay are set once those are out (a
        # wait() they wake returns after a callback given to on() has seen the end);
        # the others' at once
        relayed = {c.task_id for c, _ in wanted}
        for task_id in {c.task_id for c in changes} - relayed:
            self.bus._notify(task_id)
        if not wanted:
            return
        self.bus._relaying.update(relayed)
        try:
            await self._deliver(changes, wanted)
        finally:
            self.bus._relaying.difference_update(relayed)
            for task_id in relayed:
                self.bus._notify(task_id)

    async def _deliver(self, changes: Sequence[Change],
                       wanted: list[tuple[Change, str]]) -> None:
        tally = bool(self.bus._tallies)
        ids = list(dict.fromkeys(c.task_id for c, _ in wanted if c.event != "deleted"))
        try:
            tasks = {t.id: t for t in await self.storage.get_many(ids)} if ids else {}
        except Exception:
            log.exception("could not read tasks for events")
            tasks = {}
        attempts = self._attempts_of(changes, tasks)
        logs = await self._read_logs([c.task_id for c, _ in wanted if c.event == "log"])
        for change, type in wanted:
            task = tasks.get(change.task_id)
            if task is not None and task.version != change.version and change.event != "log":
                # read after the task moved on: shown as this change left it
                task = replace(task, status=change.status, version=change.version,
                               attempts=attempts.get((change.task_id, change.version),
                                                     task.attempts))
            if change.event == "log":
                self._emit_logs(change.task_id, task, logs.pop(change.task_id, None))
                continue
            if tally and task is not None and change.event in _TALLIED:
                self.bus._tally(change.event, task, change.status)
            if self.bus.is_stale(change.task_id, change.version):
                continue  # overtaken by an event delivered already (this process's own)
            data: dict[str, Any] = {"version": change.version, "status": change.status.value}
            if change.event == "progress" and task is not None and task.progress is not None:
                data["progress"] = task.progress
                self._saw_progress(change.task_id, task.progress)
            elif (change.event in _FINISHING and task is not None and task.progress is not None
                    and self._progress_seen.get(change.task_id) != task.progress):
                self._saw_progress(change.task_id, task.progress)
                if self.bus.wants("task.progress", change.task_id):
                    self.bus.emit(Event("task.progress", change.task_id, task,
                                        {**data, "progress": task.progress}, change.ts))
            if change.event == "expired":
                self.bus.emit(Event("task.expired", change.task_id, task, data, change.ts))
            self.bus.emit(Event(type, change.task_id, task, data, change.ts))
            if change.event in _ENDING:
                self.bus.emit(Event("task.ended", change.task_id, task, data, change.ts))

    def _attempts_of(self, changes: Sequence[Change], tasks: Mapping[str, Task]
                     ) -> dict[tuple[str, int], int]:
        """A task's attempts after each change of this batch, where the feed tells
        them: counted from the last change seen of the task (or its addition) along
        versions without a gap, else back from the task as read when that read is
        the batch's last change of it."""
        out: dict[tuple[str, int], int] = {}
        by_task: dict[str, list[Change]] = {}
        for change in changes:
            by_task.setdefault(change.task_id, []).append(change)
        for task_id, items in by_task.items():
            items.sort(key=lambda c: c.version)
            prev = self._attempts_seen.get(task_id)
            for change in items:
                delta = _ATTEMPT_DELTA.get(change.event, 0)
                if change.event == "added":
                    prev = (change.version, 0)
                elif prev is not None and change.version == prev[0] + 1:
                    prev = (change.version, max(0, prev[1] + delta))
                elif prev is None and change.version == 2 and change.event != "log":
                    # the first change after the add (version 1, no attempt): the add
                    # itself is not relayed to the process that made it
                    prev = (2, max(0, delta))
                elif prev is None or change.version != prev[0]:
                    prev = None
                if prev is not None:
                    out[(task_id, change.version)] = prev[1]
            task = tasks.get(task_id)
            if task is not None and task.version == items[-1].version:
                last = (task.version, task.attempts)
                count = task.attempts
                # log lines keep the version: the changes that made one, counted back
                bumps = [c for c in items if c.event != "log"]
                for newer, change in zip(reversed(bumps), reversed(bumps[:-1]), strict=False):
                    if newer.version != change.version + 1:
                        break
                    count -= _ATTEMPT_DELTA.get(newer.event, 0)
                    out.setdefault((task_id, change.version), max(0, count))
                out[(task_id, task.version)] = task.attempts
                prev = last
            if prev is not None:
                _remember(self._attempts_seen, task_id, prev)
            else:
                self._attempts_seen.pop(task_id, None)
        return out

    def _saw_progress(self, task_id: str, progress: Progress) -> None:
        _remember(self._progress_seen, task_id, progress)

    async def _read_logs(self, task_ids: Sequence[str]) -> dict[str, Sequence[LogRecord]]:
        """The new lines of each task (once per task, however many of its log changes
        the batch holds), read at the same time: one slow read no longer holds up
        the others (they were read one after another)."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return {}
        at_once = asyncio.Semaphore(_LOG_READS_AT_ONCE)

        async def read(task_id: str) -> Sequence[LogRecord]:
            async with at_once:
                return await self.storage.read_logs(task_id, self._log_seen.get(task_id, 0),
                                                    LogLevel.DEBUG)

        reads = await asyncio.gather(*(read(i) for i in ids), return_exceptions=True)
        out: dict[str, Sequence[LogRecord]] = {}
        for task_id, records in zip(ids, reads, strict=True):
            if isinstance(records, BaseException):
                if not isinstance(records, Exception):
                    raise records
                log.error("could not read logs for events", exc_info=records)
            else:
                out[task_id] = records
        return out

    def _emit_logs(self, task_id: str, task: Task | None,
                   records: Sequence[LogRecord] | None) -> None:
        """Emit the lines read of a task (None: read already for an earlier change of
        the batch, or the read failed)."""
        if records is None:
            return
        if self.bus.is_deleted(task_id):  # deleted here while its lines were read
            return
        for record in records:
            self.bus.emit(Event("task.log", task_id, task, {"log": record}, record.ts))
        _remember(self._log_seen, task_id,
                  records[-1].seq if records else self._log_seen.get(task_id, 0))


def event_types_matching(pattern: str | Sequence[str]) -> Iterable[str]:
    """The known event types a pattern matches (for validation and docs)."""
    match = _matcher(pattern)
    return [t for t in EVENT_TYPES if match(t)]


_SEEN_CAP = 10_000
_LOG_READS_AT_ONCE = 8
"""Log reads the change relay runs at the same time (a batch's tasks' new lines): a
pool's connections are shared with everything else the process does."""


def _remember(seen: dict[str, Any], task_id: str, value: Any) -> None:
    """Note what was last seen of a task, the most recently noted last: past
    :data:`_SEEN_CAP` tasks the least recently active quarter is forgotten (tasks that
    ended long ago), not those still logging (forgotten, their lines came again)."""
    seen.pop(task_id, None)
    seen[task_id] = value
    if len(seen) > _SEEN_CAP:
        for key in list(seen)[:_SEEN_CAP // 4]:
            del seen[key]


# How a change moves a task's attempts: a claim counts one, a reschedule, a release
# or a rescue gives it back.
_ATTEMPT_DELTA = {"started": 1, "rescheduled": -1, "released": -1, "rescued": -1}
