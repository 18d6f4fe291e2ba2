"""The application object: :class:`Conveyor`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import reprlib
import time
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import replace
from datetime import timedelta
from typing import Any, Protocol, TypeVar, cast, overload

from . import _forks
from ._aio import LoopEvent, green_threads, on_sigterm
from ._registry import (
    Handler,
    Registry,
    build_handler,
    check_decorated,
    check_handler_options,
    check_policy,
)
from ._specs import (
    build_spec,
    check_abort_reason,
    check_priority,
    check_task_id,
    check_unicode,
    in_batch,
    task_ids,
    unpack_item,
)
from ._worker import RUNNING_HERE, ErrorItem, ResultItem, Worker
from .errors import (
    ConfigurationError,
    ConveyorError,
    DrainTimeout,
    SchemaError,
    StorageError,
    TaskAborted,
    TaskFailed,
    TaskNotFound,
    ValidationError,
    WaitTimeout,
)
from .events import ChangeRelay, Event, EventBus, Subscription
from .model import LogLevel, LogRecord, Policy, Status, Task, TaskSpec, seconds
from .query import Filter, all_of, parse_filter, parse_query
from .schedule import Schedule
from .storage import AddResult, Change, Storage, WorkerInfo, open_storage

__all__ = ["DB_ENV", "DEFAULT_URL", "MAX_CONCURRENCY", "Conveyor"]

log = logging.getLogger("conveyor")
_READ_RETRIES = 8  # consecutive storage errors a wait or a log stream rides out
_ABORTS_TOLD = 10_000  # running tasks whose abort request this app remembers announcing

MAX_CONCURRENCY = 100_000
"""The most tasks one worker may run at once (``concurrency``)."""

_DRAIN_TALLY = ("succeeded", "failed", "aborted", "retrying", "rescheduled")
"""The keys of what :meth:`Conveyor.drain` returns: the event types it counts."""

_RUN_ENDS = frozenset({"task.succeeded", "task.failed", "task.aborted", "task.retrying",
                       "task.rescheduled", "task.released", "task.rescued"})
"""Events that end a run :meth:`Conveyor.drain` saw start."""

_DELETE_BATCH = 1000  # tasks a delete by filter reads and deletes per transaction
_ENDED = parse_filter({"status": {"$in": ["succeeded", "failed", "aborted"]}})
"""What ``delete`` by filter adds to the caller's filter: tasks that have ended."""

DEFAULT_URL = "sqlite:///conveyor.db"
"""Where ``Conveyor()`` keeps its tasks when given no URL and ``$CONVEYOR_DB`` is not
set: a SQLite file in the current directory."""
DB_ENV = "CONVEYOR_DB"
"""The environment variable ``Conveyor()`` (no URL) and the command line read the
storage URL from."""
F = TypeVar("F", bound=Callable[..., Any])
_T = TypeVar("_T")
_C = TypeVar("_C", bound=Callable[[Event], Any])
_I = TypeVar("_I")
_I_contra = TypeVar("_I_contra", contravariant=True)


class SupportsPut(Protocol[_I_contra]):
    """A sink that is an object with ``put(item)``: a :class:`queue.Queue`, an
    :class:`asyncio.Queue` (its ``put`` is awaited in the background), ..."""

    def put(self, item: _I_contra, /) -> object: ...


ResultSink = Callable[[ResultItem], object] | SupportsPut[ResultItem]
"""What :meth:`Conveyor.add_result_sink` takes: a callable taking a :class:`ResultItem`
(a coroutine function too), or an object with ``put(item)``."""
ErrorSink = Callable[[ErrorItem], object] | SupportsPut[ErrorItem]
"""What :meth:`Conveyor.add_error_sink` takes: a callable taking an :class:`ErrorItem`,
or an object with ``put(item)``."""


class Conveyor:
    """A conveyor application: a storage, handlers, and (once started) a worker.

    ``Conveyor("sqlite:///tasks.db")``, ``Conveyor("memory://")`` for tests,
    ``Conveyor("postgresql://...")`` for many machines, or
    ``Conveyor(storage_object)``. Without a URL (``Conveyor()``) the storage is
    ``$CONVEYOR_DB``, as for the command line, else :data:`DEFAULT_URL`.

    Options:

    - ``concurrency``: tasks run at once by this process's worker (default 32);
    - ``lease``: seconds a claim lasts without a heartbeat (default 30; the
      worker renews it every ``lease / 3``); a dead worker's tasks come back
      after at most ``lease + sweep_interval``;
    - ``batch_size``: most tasks taken in one claim (default ``concurrency``,
      at most 100);
    - ``max_payload``: largest payload or result in bytes of JSON (default 1 MiB);
    - ``policy``: the default transition policy (see :mod:`conveyor.model`);
    - ``max_rescues``: expired leases a task survives before it fails with
      reason ``worker_lost`` (default 3);
    - ``sweep_interval``: seconds between sweeps for expired leases (default
      ``lease / 3``);
    - ``idle_poll``: longest sleep of an idle worker between claims when no
      change wakes it (default 1 s; the change feed normally wakes it at once);
    - ``progress_interval``: how often progress snapshots are stored (default
      0.05 s, so that other processes see progress within 100 ms; events in
      this process carry every update);
    - ``stop_timeout``: how long ``stop()`` lets running tasks finish (default 10 s);
    - ``retention``: seconds finished tasks are kept (default None: forever);
      workers delete older ones every minute, or every ``retention`` seconds
      when that is shorter (at most once a second).
    """

    def __init__(self, url: str | Storage | None = None, *, name: str | None = None,
                 concurrency: int = 32, lease: float | timedelta = 30.0,
                 batch_size: int | None = None, max_payload: int = 1 << 20,
                 policy: Policy | None = None, max_rescues: int = 3,
                 sweep_interval: float | timedelta | None = None,
                 idle_poll: float | timedelta = 1.0,
                 progress_interval: float | timedelta = 0.05,
                 stop_timeout: float | timedelta = 10.0,
                 retention: float | timedelta | None = None) -> None:
        if (isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
                or concurrency > MAX_CONCURRENCY):
            raise ConfigurationError(f"concurrency must be an integer from 1 to "
                                     f"{MAX_CONCURRENCY}, not {concurrency!r}")
        if batch_size is not None and (isinstance(batch_size, bool)
                                       or not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigurationError(f"batch_size must be an integer >= 1, not {batch_size!r}")
        if isinstance(max_payload, bool) or not isinstance(max_payload, int) or max_payload < 1:
            raise ConfigurationError("max_payload must be a positive number of bytes")
        if isinstance(max_rescues, bool) or not isinstance(max_rescues, int) or max_rescues < 0:
            raise ConfigurationError("max_rescues must be an integer >= 0")
        check_policy(policy)
        try:
            self.lease: float = seconds(lease, "lease", allow_none=False, allow_zero=False) or 30.0
            self.idle_poll: float = seconds(idle_poll, "idle_poll", allow_none=False,
                                            allow_zero=False) or 1.0
            self.progress_interval: float = seconds(progress_interval, "progress_interval",
                                                    allow_none=False) or 0.0
            self.stop_timeout: float = seconds(stop_timeout, "stop_timeout",
                                               allow_none=False) or 0.0
            sweep = seconds(sweep_interval, "sweep_interval", allow_zero=False)
            self.retention: float | None = seconds(retention, "retention")
        except ValidationError as exc:
            raise ConfigurationError(str(exc)) from None
        if url is None:
            url = os.environ.get(DB_ENV, "").strip() or DEFAULT_URL
        if not isinstance(url, str | Storage):
            raise ConfigurationError("url must be a storage URL (str) or a Storage, not "
                                     f"{type(url).__name__}")
        if name is not None and (not isinstance(name, str) or not name
                                 or len(name) > 200 or not name.isprintable()):
            raise ConfigurationError("name must be None or printable text of 1-200 "
                                     f"characters, not {name!r}")
        self.storage: Storage = open_storage(url) if isinstance(url, str) else url
        self.name: str | None = name
        self.concurrency: int = concurrency
        self.batch_size: int = min(batch_size or concurrency, concurrency, 1000)
        if batch_size is None:
            self.batch_size = min(self.batch_size, 100)
        self.max_payload: int = max_payload
        self.policy: Policy | None = policy
        self.max_rescues: int = max_rescues
        self.sweep_interval: float = sweep or max(0.05, self.lease / 3)
        self.registry: Registry = Registry()
        self.bus: EventBus = EventBus()
        self.schedules: list[Schedule] = []
        self.result_sinks: list[ResultSink] = []
        self.error_sinks: list[ErrorSink] = []
        self._relay: ChangeRelay | None = None
        self._relay_listeners: list[Callable[[Sequence[Change]], None]] = []
        self._relay_needs_every_change: set[object] = set()  # see ChangeRelay
        self._worker: Worker | None = None
        self._drain_worker: Worker | None = None  # started by drain() for its actions
        self._drains = 0  # drain() calls under way
        self._closing: asyncio.Task[None] | None = None
        self._opened = False
        self._closes = 0  # how many times close() ended waits (see _read)
        self._runs: set[LoopEvent] = set()  # what ends each run() under way
        # the version each running task had when this app announced its abort request:
        # a second abort() changes nothing stored, and is not announced again
        self._abort_told: OrderedDict[str, int] = OrderedDict()
        self._open_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"Conveyor({self.storage.url!r}, handlers={self.registry.actions})"

    # -- registration -----------------------------------------------------------

    def handler(self, action: str, **options: Any) -> Callable[[F], F]:
        """Register the decorated function as the handler of ``action``.

        Options: ``environment`` (anything; the handler reads it as
        ``ctx.env``), ``timeout`` (run timeout, seconds), ``pickup_timeout``,
        ``max_attempts`` (or ``retries`` = max_attempts - 1), ``backoff``
        (seconds, a dict or :class:`Backoff`), ``retry_on`` (exception
        classes that retry; default all), ``limit`` (most tasks of this
        action running at once across all workers), ``policy`` (transition
        policy), ``priority`` (default priority of new tasks),
        ``payload_model`` / ``result_model`` (pydantic models; also read from
        ``ctx: Context[Model]`` and the return annotation, ``-> Done`` or
        ``-> Done | Retry``), ``mode``
        (``"auto"``, ``"async"``, ``"thread"`` or ``"process"``), ``abort_grace``
        (seconds a sync or process handler gets to honour an abort, default 5),
        ``max_runs`` (``mode="process"`` only: runs per child process, which is
        then ended and a fresh one started; default None, no bound: Celery's
        ``max_tasks_per_child``), ``schedule`` (a cron string or an interval: see
        :meth:`schedule`).

        The action's name and the options' names are checked here, before the
        function (a bare ``@app.handler`` raises :class:`ConfigurationError`); the
        function, when it is registered: it must take the context as its one
        argument, and not be a generator.
        """
        check_decorated(action, options, also=frozenset({"schedule"}))

        def register(fn: F) -> F:
            self.register(action, fn, **options)
            return fn

        return register

    def register(self, action: str, fn: Callable[..., Any], **options: Any) -> Handler:
        """Register ``fn`` for ``action`` (the non-decorator form of :meth:`handler`).

        All or nothing: the options, the ``schedule`` option and the schedules
        already declared for ``action`` (their payloads against the handler's
        payload model) are checked first; if any is refused, a
        :class:`ConfigurationError` says which, and nothing is registered.
        Register before the app's worker starts (``start()``, ``run()``, ``async
        with app``): afterwards it is a :class:`ConfigurationError` too."""
        if self._worker is not None:
            raise ConfigurationError("register handlers before the worker starts")
        schedule = options.pop("schedule", None)
        if isinstance(action, str) and action in self.registry:
            raise ConfigurationError(f"a handler for {action!r} is already registered")
        check_handler_options(action, options)
        handler = build_handler(action, fn, **options)
        parsed = None if schedule is None else Schedule.parse(action, schedule)
        if parsed is not None and parsed.action != action:
            raise ConfigurationError(
                f"handler for {action!r}: its schedule is for {parsed.action!r}")
        for declared in self.schedules:  # declared before the handler: check them now
            if declared.action == action:
                try:
                    self._check_schedule(declared, handler)
                except ConfigurationError as exc:
                    raise ConfigurationError(f"handler for {action!r}: {exc}") from None
        if parsed is not None:
            if any(s.name == parsed.name for s in self.schedules):
                raise ConfigurationError(f"a schedule named {parsed.name!r} exists already "
                                         "(give this one another name=)")
            self._check_schedule(parsed, handler)
        self.registry.add(handler)
        if parsed is not None:
            self.schedules.append(parsed)
        return handler

    def schedule(self, action: str, when: str | float | timedelta | Schedule, *,
                 payload: Any = None, name: str | None = None, tz: str = "UTC",
                 priority: float | None = None) -> Schedule:
        """Add a task of ``action`` on a schedule: ``when`` is a cron expression
        (``"*/5 * * * *"``), a number of seconds or a timedelta (an interval).
        See :mod:`conveyor.schedule`. Workers of this app keep the schedule. Add
        schedules before the app's worker starts (afterwards: :class:`ConfigurationError`)."""
        if isinstance(when, Schedule):
            if action != when.action:
                raise ConfigurationError(f"the schedule given is of {when.action!r}, "
                                         f"not {action!r}")
            if payload is not None or name is not None or tz != "UTC" or priority is not None:
                raise ConfigurationError("a Schedule object has its own payload, name, tz and "
                                         "priority: give them to it, not beside it")
            schedule = when
        else:
            schedule = Schedule.parse(action, when, payload=payload, name=name, tz=tz,
                                      priority=priority)
        self._add_schedule(schedule)
        return schedule

    def _add_schedule(self, schedule: Schedule) -> None:
        if self._worker is not None:
            raise ConfigurationError("add schedules before the worker starts")
        if any(s.name == schedule.name for s in self.schedules):
            raise ConfigurationError(f"a schedule named {schedule.name!r} exists already "
                                     "(give this one another name=)")
        self._check_schedule(schedule, self.registry.get(schedule.action))
        self.schedules.append(schedule)

    def _check_schedule(self, schedule: Schedule, handler: Handler | None) -> None:
        """Refuse a schedule whose tasks ``handler`` (None: no handler here yet)
        would refuse: now rather than at every occurrence."""
        try:
            build_spec(schedule.action, schedule.payload, handler=handler,
                       max_payload=self.max_payload, priority=schedule.priority)
        except ValidationError as exc:
            raise ConfigurationError(f"schedule {schedule.name!r}: {exc}") from None

    def add_result_sink(self, sink: ResultSink) -> None:
        """Push every result (final, and intermediate from ``ctx.emit``) to ``sink``:
        a callable taking a :class:`ResultItem`, or an object with ``put(item)``
        (a :class:`queue.Queue` or :class:`asyncio.Queue` works)."""
        self._check_sink(sink)
        self.result_sinks.append(sink)

    def add_error_sink(self, sink: ErrorSink) -> None:
        """Push the error of every failed attempt to ``sink`` as an :class:`ErrorItem`
        (a callable taking it, or an object with ``put(item)``)."""
        self._check_sink(sink)
        self.error_sinks.append(sink)

    @staticmethod
    def _check_sink(sink: object) -> None:
        if not (callable(getattr(sink, "put", None)) or callable(sink)):
            raise ConfigurationError(
                f"a sink is a callable taking the item, or an object with put(item); "
                f"not {reprlib.repr(sink)}")

    def _push_sinks(self, sinks: Sequence[Callable[[_I], object] | SupportsPut[_I]],
                    item: _I) -> None:
        for sink in sinks:
            try:
                put = getattr(sink, "put", None)
                result = put(item) if callable(put) else cast("Callable[[_I], object]", sink)(item)
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    task = asyncio.ensure_future(result)
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
            except Exception:
                log.exception("sink %r failed", sink)

    # -- life ---------------------------------------------------------------------

    def _new_relay(self) -> ChangeRelay:
        relay = ChangeRelay(self.storage, self.bus)
        relay.listeners = self._relay_listeners
        relay.needs_every_change = self._relay_needs_every_change
        relay.start()
        return relay

    async def open(self) -> None:
        """Connect to storage (done on first use; call it to fail early)."""
        if self._open_and_relaying():
            return
        loop = asyncio.get_running_loop()
        if self._open_lock is None or self._open_lock[0] is not loop:
            # one per loop: a SyncConveyor closed and used again runs a new loop
            self._open_lock = (loop, asyncio.Lock())
        async with self._open_lock[1]:
            if self._opened:
                if self._relay is not None and self._relay.orphaned:
                    # opened under an asyncio.run() that has returned: the relay ended
                    # with its loop (other processes' changes would come by polling)
                    self._relay = self._new_relay()
                    await self._relay.wait_ready()
                return
            await self.storage.open()
            self._relay = self._new_relay()
            await self._relay.wait_ready()
            self._opened = True
            _forks.track(self)

    def _after_fork(self) -> None:
        """In a forked child (see ``_forks``): a new storage object on the same data,
        no relay, worker or waiters of the parent; opens again on next use.
        Handlers, schedules, sinks and ``on()`` callbacks stay."""
        _forks.keep(self.storage, self._relay, self._worker, self._background)
        self.storage = self.storage.after_fork()
        self.bus._after_fork()
        self._relay = None
        self._worker = None
        self._drain_worker = None
        self._drains = 0
        self._opened = False
        self._open_lock = None
        self._background = set()
        self._closing = None
        self._runs = set()

    async def close(self) -> None:
        """Stop the worker if running, and disconnect. Waits, log streams and event
        subscriptions still open here end: ``wait()``, ``wait_task()``, ``logs()``
        and ``events()`` iterators raise :class:`ConveyorError` (the app may be
        opened again, by the next call).

        A caller cancelled meanwhile does not cut the close short: it goes on in
        the background, and the next ``close()`` waits for it."""
        loop = asyncio.get_running_loop()
        task = self._closing
        if task is None or task.done() or task.get_loop() is not loop:
            task = self._closing = loop.create_task(self._close(), name="conveyor-close")
            task.add_done_callback(self._closed)
        await asyncio.shield(task)

    def _closed(self, task: asyncio.Task[None]) -> None:
        if self._closing is task:
            self._closing = None
        if not task.cancelled():
            task.exception()  # retrieved: a caller cancelled meanwhile never sees it

    async def _close(self) -> None:
        await self.stop()  # first: handlers may be waiting for other tasks
        self._closes += 1
        self.bus._end_waits()
        if self._relay is not None:
            await self._relay.stop()
            self._relay = None
        if self._opened:
            await self.storage.close()
            self._opened = False
        # last: a run() in another thread's loop ends with it, and that loop may end
        # right after (its asyncio.run() returning), with what still ran there
        for run in list(self._runs):
            run.set()

    async def start(self) -> None:
        """Start a worker for the registered handlers in this process."""
        await self._start_worker(None)

    async def _start_worker(self, actions: frozenset[str] | None) -> Worker:
        """The running worker, started if none runs: for ``actions`` only (a drain's,
        stopped when the last drain ends), or for every action (``start()``'s). A
        drain's worker that ``start()`` finds takes every action and is left running."""
        await self.open()
        self._drop_orphan()
        if self._worker is not None and self._worker.stopping:
            await self.stop()  # a stop under way (its caller cancelled) ends first
        worker = self._worker
        if worker is not None:
            if worker is self._drain_worker:
                worker.serve(self.registry.actions if actions is None else actions)
                if actions is None:
                    self._drain_worker = None
            return worker
        if not len(self.registry) and not self.schedules:
            raise ConfigurationError("no handlers are registered: nothing to work on")
        green = green_threads()
        if green is not None:
            # its lease keeper would be a greenlet of the loop's own thread, which
            # cannot run an event loop: leases never renewed, long tasks run twice
            raise ConfigurationError(
                f"a worker cannot run in a process that {green} has monkey-patched (its "
                "lease keeper needs a thread of its own): run workers in their own "
                "processes (`conveyor worker`); adding and reading tasks works here")
        worker = self._worker = Worker(self, actions)
        if actions is not None:
            self._drain_worker = worker
        await worker.start()
        return worker

    async def stop(self, timeout: float | timedelta | None = None) -> None:
        """Stop the worker: no more claims; running tasks get ``timeout`` seconds
        (default ``stop_timeout``) to finish, then go back to the queue."""
        wait = seconds(timeout, "stop timeout")
        self._drop_orphan()
        worker = self._worker
        if worker is not None:
            # kept until its stop has ended (however it ended): a caller cancelled
            # meanwhile leaves it stopping, and the next stop() or close() waits for it
            try:
                await worker.stop(wait)
            finally:
                if worker.stopped and self._worker is worker:
                    self._worker = None

    def _drop_orphan(self) -> None:
        """Forget a worker whose event loop ended without a stop (an earlier
        ``asyncio.run()`` left the app open): it runs nothing, its runs are rescued
        when their leases end; its handler processes and threads are ended here."""
        worker = self._worker
        if worker is not None and worker.orphaned:
            if self._drain_worker is worker:
                self._drain_worker = None
            self._worker = None
            worker.abandon()

    async def run(self) -> None:
        """Start the worker and run until cancelled; then stop gracefully (running
        tasks get ``stop_timeout``, then go back to the queue). SIGTERM (what systemd,
        Docker and Kubernetes send) stops it the same way, and ``run()`` then returns,
        when its loop runs in the main thread and SIGTERM has its default handling
        there (a handler of your own is left alone); a second SIGTERM during the stop
        is ignored. ``close()`` (from here or another loop) ends it too: ``run()``
        returns once the close has stopped the worker."""
        await self.start()
        ended = LoopEvent()  # set by SIGTERM, or by a close from any loop
        closes = self._closes
        undo = on_sigterm(ended.set)
        self._runs.add(ended)
        try:
            try:
                await ended.wait()
            finally:
                self._runs.discard(ended)
                if self._closes == closes:  # not ended by a close: SIGTERM, cancelled
                    if ended.is_set():
                        log.info("SIGTERM: stopping the worker")
                    await self.close()
        finally:
            undo()

    @property
    def worker(self) -> Worker | None:
        """The running worker, if any."""
        return self._worker

    async def __aenter__(self) -> Conveyor:
        await self.open()
        if len(self.registry):
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- adding ---------------------------------------------------------------------

    async def add(self, action: str, payload: Any = None, **options: Any) -> Task:
        """Add a task and return it.

        Options: ``priority`` (float, lower runs first, default 0), ``delay``
        (seconds or timedelta, at most 100 years) or ``run_at`` (datetime or
        epoch seconds, in the years 1 to 9999 UTC),
        ``tags`` (dict), ``max_attempts``, ``timeout`` (run timeout),
        ``pickup_timeout``, ``backoff``, ``unique_key`` or ``unique_fields``
        (payload fields to build the key from) with ``unique_scope``
        (statuses, default queued and running), ``concurrency`` (conditions),
        ``parent_id``.

        With a ``unique_key`` that a task holds in scope (see the guide's dedupe: the
        key's holder, or a task in the new one's scope), that task is returned
        instead of a new one. A payload is checked against the handler's
        payload model when the handler is registered in this process. The
        returned task holds the payload as stored, in its JSON form (tuples
        become lists, dict keys text: ``{1: "a"}`` becomes ``{"1": "a"}``,
        enums their values): it equals what :meth:`get` reads back.
        """
        return (await self._add_items([(action, payload, options)]))[0].task

    async def add_checked(self, action: str, payload: Any = None,
                          **options: Any) -> tuple[Task, bool]:
        """:meth:`add`, and whether the task is new: ``(task, False)`` when a
        task in scope held its ``unique_key`` and that task is returned. The flag
        comes from the insert itself, so of two racing adds of one key exactly
        one is told ``True``."""
        result = (await self._add_items([(action, payload, options)]))[0]
        return result.task, result.created

    async def add_many(self, items: Iterable[Any]) -> list[Task]:
        """Add many tasks in one transaction: all or none.

        Each item is ``(action, payload)``, ``(action, payload, options)`` or a
        dict with ``action``, ``payload`` and any option of :meth:`add`. When
        there are several, a bad item's error starts with its index
        (``task 0: ...``).
        """
        return [r.task for r in await self._add_items(_item_list(items))]

    async def add_many_checked(self, items: Iterable[Any]) -> list[tuple[Task, bool]]:
        """:meth:`add_many`, and for each task whether it is new (see
        :meth:`add_checked`), in the order given."""
        return [(r.task, r.created) for r in await self._add_items(_item_list(items))]

    async def _add_items(self, items: list[Any],
                         before_events: Callable[[list[AddResult]], None] | None = None
                         ) -> list[AddResult]:
        """Add ``items``. ``before_events(results)`` runs once they are stored, before
        the bus lets their events out (``task.added``, and those of a run that a
        worker started, or even ended, before the add returned here)."""
        if not items:
            return []
        bus = self.bus
        # the new tasks' other events (a worker of this process may start one before
        # the add returns here) wait for their task.added
        owner = None if bus.idle else bus.hold(())
        build = self._spec_builder(items, owner)
        results: list[AddResult] = []
        try:
            streamed = getattr(self.storage, "add_streamed", None)
            if streamed is not None and all(type(it) is tuple and len(it) == 2
                                            for it in items):
                # plain (action, payload) items, so no unique keys: the storage
                # validates each part of the batch while it sends the previous one
                await self.open()
                results = await streamed(build, len(items))
            else:
                specs = build(0, len(items))
                await self.open()
                results = await self.storage.add(specs)
            if before_events is not None:
                before_events(results)
            if self._worker is not None and any(r.created for r in results):
                self._worker.wake()
        finally:
            added = [("task.added", r.task) for r in results if r.created]
            if owner is not None:
                bus.release(owner, added)
            elif not bus.idle:
                for type_, task in added:
                    bus.task_event(type_, task)
        return results

    def _spec_builder(self, items: list[Any], owner: object | None = None
                      ) -> Callable[[int, int], list[TaskSpec]]:
        """``build(start, stop)``: the validated specs of ``items[start:stop]`` (all made
        at one time); when there are several items, a bad one's error names its index.
        With an ``owner``, the bus holds the new tasks' events for it."""
        now = time.time()
        several = len(items) > 1

        def build(start: int, stop: int) -> list[TaskSpec]:
            specs = []
            for i in range(start, stop):
                try:
                    action, payload, options = unpack_item(items[i])
                    specs.append(build_spec(action, payload, handler=self.registry.get(action),
                                            max_payload=self.max_payload, now=now, **options))
                except ValidationError as exc:
                    if several:
                        raise in_batch(exc, i) from None
                    raise
            if owner is not None:
                self.bus.hold([spec.id for spec in specs], owner, eager=True)
            return specs

        return build

    async def add_in(self, conn: Any, action: str, payload: Any = None, **options: Any) -> Task:
        """Add a task inside your own database transaction on ``conn`` (PostgreSQL:
        a psycopg ``AsyncConnection`` or ``Connection`` in a transaction): the task
        exists if and only if your transaction commits; workers see it at the
        commit. Options and validation are those of :meth:`add`."""
        return (await self.add_many_in(conn, [(action, payload, options)]))[0]

    async def add_many_in(self, conn: Any, items: Iterable[Any]) -> list[Task]:
        """:meth:`add_many` inside your own transaction on ``conn`` (see :meth:`add_in`)."""
        items = _item_list(items)
        specs = self._spec_builder(items)(0, len(items))
        await self.open()
        add_in = getattr(self.storage, "add_in", None)
        if add_in is None:
            raise ConfigurationError(
                f"{type(self.storage).__name__} cannot add tasks inside your own transaction "
                "(PostgreSQL can)")
        results = await add_in(conn, specs)
        return [r.task for r in results]

    # -- reading --------------------------------------------------------------------

    async def get(self, task_id: str, *, logs: bool = False,
                  max_level: LogLevel | str = LogLevel.DEBUG) -> Task:
        """The task (raises :class:`TaskNotFound`). With ``logs=True``, its logs
        up to ``max_level`` of detail are in ``task.logs``."""
        check_task_id(task_id)
        await self.open()
        task = await self.storage.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        if logs:
            records = await self.storage.read_logs(task_id, 0, LogLevel.parse(max_level))
            task = replace(task, logs=tuple(records))
        return task

    async def find(self, filter: Mapping[str, Any] | Filter | None = None, *, sort: Any = None,
                   limit: int | None = None, skip: int = 0) -> list[Task]:
        """Tasks matching a filter (see the query language: a dict, or a
        :class:`~conveyor.query.Filter` parsed already), sorted, paged:
        ``limit`` is None (no limit) or an int >= 0, ``skip`` an int >= 0."""
        query = parse_query(filter, sort, limit, skip)
        await self.open()
        return await self.storage.find(query)

    async def find_one(self, filter: Mapping[str, Any] | Filter | None = None, *,
                       sort: Any = None) -> Task | None:
        """The first task matching, or None."""
        found = await self.find(filter, sort=sort, limit=1)
        return found[0] if found else None

    async def count(self, filter: Mapping[str, Any] | Filter | None = None) -> int:
        """How many tasks match (a filter as for :meth:`find`)."""
        where = parse_filter(filter)
        await self.open()
        return await self.storage.count(where)

    async def exists(self, filter_or_id: Mapping[str, Any] | Filter | str) -> bool:
        """Whether a task with this id, or one matching this filter, exists."""
        if isinstance(filter_or_id, str):
            check_unicode(filter_or_id, "a task id")
            await self.open()
            return await self.storage.get(filter_or_id) is not None
        return await self.find_one(filter_or_id) is not None

    async def stats(self) -> dict[str, dict[str, int]]:
        """Task counts per action and status: ``{action: {status: n}}``."""
        await self.open()
        return await self.storage.stats()

    async def workers(self) -> list[WorkerInfo]:
        """Workers registered in storage, with their last heartbeat."""
        await self.open()
        return await self.storage.list_workers()

    # -- waiting and following ----------------------------------------------------

    async def wait(self, task_id: str, timeout: float | timedelta | None = None) -> Any:
        """Wait until the task ends and return its result.

        Raises :class:`TaskFailed` or :class:`TaskAborted` if it did not
        succeed, :class:`WaitTimeout` after ``timeout`` seconds,
        :class:`TaskNotFound` when there is no such task (or no longer: deleted,
        by retention too, before its end was seen).
        """
        task = await self.wait_task(task_id, timeout)
        if task.status is Status.SUCCEEDED:
            return task.result
        if task.status is Status.ABORTED:
            raise TaskAborted(task)
        raise TaskFailed(task)

    async def wait_task(self, task_id: str,
                        timeout: float | timedelta | None = None) -> Task:
        """Wait until the task ends and return it, whatever its final status."""
        check_task_id(task_id)
        limit = seconds(timeout, "timeout")
        here = RUNNING_HERE.get()
        if here is not None and here[0] is self and here[1] == task_id:
            raise ConveyorError(
                f"wait() for task {task_id} inside its own handler: it ends when the "
                "handler returns, so the wait would never end")
        await self.open()
        closes = self._closes
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        signal = self.bus.signal(task_id)
        try:
            while True:
                signal.clear()
                task = await self._read(closes, self.storage.get, task_id, deadline=deadline)
                if task is None:
                    raise TaskNotFound(task_id)
                # an end this process stored returns once its events are out (a
                # callback given to on() has seen it), as the task.ended they make
                # wakes the wait again
                if task.terminal and not self.bus.is_held(task_id):
                    return task
                pause = 1.0
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        if task.terminal:
                            return task
                        raise WaitTimeout(task_id, limit or 0.0)
                    pause = min(pause, remaining)
                try:
                    async with asyncio.timeout(pause):
                        await signal.wait()
                except TimeoutError:
                    pass
        finally:
            self.bus.unsignal(task_id, signal)

    async def drain(self, actions: str | Sequence[str] | None = None, *,
                    timeout: float | timedelta | None = None) -> dict[str, int]:
        """Run tasks until none is due or running, and say how they ended: for tests
        (as Oban's ``drain_queue``, or Celery's eager mode).

        Starts a worker for ``actions`` (an action or a list; default: every action
        with a handler here) if this app's worker is not running, and stops it again
        when the last drain under way returns; a worker already running (``start()``)
        is used and left running. Then waits until no task of ``actions`` is queued
        with its ``run_at`` come, or running. Tasks the handlers add meanwhile are
        run too; tasks due later (a ``delay``, a retry's backoff) stay queued, and so
        do other actions' tasks (a worker it started claims ``actions`` only).
        Returns how many tasks of those actions, from the call on, ``"succeeded"``,
        ``"failed"``, ``"aborted"``, went back to the queue for a retry
        (``"retrying"``) or by ``Reschedule`` (``"rescheduled"``): every key, zeros
        included.

        Raises :class:`ValidationError` for an action that has no handler here
        (nothing is run) and :class:`DrainTimeout` when tasks are still due or
        running after ``timeout`` seconds. A worker it started is stopped at once
        when it ends that way (or is cancelled): running tasks go back to the queue
        without waiting ``stop_timeout``.
        """
        wanted = self._drain_actions(actions)
        limit = seconds(timeout, "timeout")
        here = RUNNING_HERE.get()
        if here is not None and here[0] is self and here[2] in wanted:
            raise ConveyorError(
                f"drain() of {here[2]!r} inside the handler of task {here[1]}: it would wait "
                "for this task, which ends when the handler returns (drain other actions, "
                "or add the tasks and return)")
        await self.open()
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        tally = dict.fromkeys(_DRAIN_TALLY, 0)
        changed = asyncio.Event()
        # runs seen starting whose end is not announced yet: a worker stores an outcome
        # before it announces it, and drain() ends once it has counted it
        going: set[str] = set()

        def seen(event: Event) -> None:
            if event.task is None or event.task.action not in wanted:
                return
            changed.set()
            if event.type == "task.started":
                going.add(event.task.id)
            elif event.type in _RUN_ENDS:
                going.discard(event.task.id)
            counted = event.type.removeprefix("task.")
            if counted in tally:
                tally[counted] += 1

        unsubscribe = self.bus.on("task.*", seen)
        self._drains += 1
        try:
            worker = await self._start_worker(wanted)
            going.update(task_id for task_id, run in worker.running.items()
                         if run.task.action in wanted)  # a worker started earlier
            # the schedules' next occurrences are queued first (what is due of them
            # runs; they stay queued for later), as in any worker's start
            with contextlib.suppress(TimeoutError):  # past the deadline: the loop says so
                async with asyncio.timeout_at(deadline):
                    await worker.scheduled.wait()
            closes = self._closes
            quiet = False
            while True:
                changed.clear()
                busy = parse_filter({"action": {"$in": sorted(wanted)}, "$or": [
                    {"status": "running"}, {"status": "queued", "run_at": {"$lte": time.time()}}]})
                left = await self._read(closes, self.storage.count, busy, deadline=deadline)
                if not left and going and quiet:
                    # a second without news: a run whose end no event told (its lease lost,
                    # the task deleted) is let go once storage has it ended
                    read = await self._read(closes, self.storage.get_many, sorted(going),
                                            deadline=deadline)
                    going.intersection_update(t.id for t in read if t.status is Status.RUNNING)
                if not left and not going and not changed.is_set():
                    # (news during the read: a run that went back to the queue then
                    # has a run_at later than the count's "now": read again)
                    return tally
                pause = 1.0  # a change made by another process may come late
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise DrainTimeout(max(left, len(going)), limit or 0.0)
                    pause = min(pause, remaining)
                quiet = False
                try:
                    async with asyncio.timeout(pause):
                        await changed.wait()
                except TimeoutError:
                    quiet = True
        finally:
            unsubscribe()
            self._drains -= 1
            owned = self._drain_worker
            if not self._drains and owned is not None:
                self._drain_worker = None
                if self._worker is owned:
                    # at once: a run still going (a timeout, a cancelled drain) is handed
                    # back without waiting stop_timeout
                    await self.stop(0)

    def _drain_actions(self, actions: str | Sequence[str] | None) -> frozenset[str]:
        if actions is None:
            if not len(self.registry):
                raise ConfigurationError("no handlers are registered: nothing to drain")
            return frozenset(self.registry.actions)
        names = [actions] if isinstance(actions, str) else actions
        if not isinstance(names, Sequence) or not names:
            raise ValidationError("actions must be an action name or a non-empty list of them")
        for name in names:
            if not isinstance(name, str):
                raise ValidationError(f"actions are action names (strings), not {name!r}")
            if name not in self.registry:
                raise ValidationError(f"no handler for action {name!r} is registered here: "
                                      "drain() runs this process's handlers")
        return frozenset(names)

    async def _read(self, closes: int, read: Callable[..., Awaitable[_T]], *args: Any,
                    deadline: float | None = None) -> _T:
        """``await read(*args)`` for a wait or a log stream, which ride out a
        storage error for a moment as workers do: a pooled connection that the
        server closed fails once (a restarted server: each idle one once). Tried
        again after 0.05 s, doubling up to 1 s, at most 8 times in a row and not
        past ``deadline`` (loop time); then the error is raised. A
        :class:`SchemaError` is raised at once. :class:`ConveyorError` when the app
        was closed since the wait began (``closes``: ``_closes`` then), rather than
        open the storage again behind the caller who closed it."""
        loop = asyncio.get_running_loop()
        pause = 0.05
        for again in range(_READ_RETRIES + 1):
            if self._closes != closes:
                raise ConveyorError("the app was closed while this call waited")
            try:
                return await read(*args)
            except SchemaError:
                raise
            except StorageError as exc:
                left = None if deadline is None else deadline - loop.time()
                if again == _READ_RETRIES or (left is not None and left <= pause):
                    raise
                log.info("%s; reading again in %gs", exc, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def logs(self, task_id: str, *, follow: bool = True,
                   max_level: LogLevel | str = LogLevel.DEBUG) -> AsyncIterator[LogRecord]:
        """A task's logs from the beginning; with ``follow`` (the default), then
        new ones as they are written, until the task ends or you stop iterating.
        :class:`TaskNotFound` when there is no such task, and when it is deleted
        (pruned) before its end was read (the lines since the last read went with
        it)."""
        check_task_id(task_id)
        level = LogLevel.parse(max_level)
        await self.open()
        closes = self._closes
        signal = self.bus.signal(task_id)
        last = 0
        try:
            while True:
                signal.clear()
                task = await self._read(closes, self.storage.get, task_id)
                if task is None:
                    # deleted (pruned) while it was followed: the lines written since
                    # the last read are gone with it, and the reader must know
                    raise TaskNotFound(task_id, "deleted while its log was read, by "
                                                "retention or a delete: its last lines "
                                                "went with it")
                for record in await self._read(closes, self.storage.read_logs, task_id, last,
                                               level):
                    last = record.seq
                    yield record
                if not follow or task.terminal:
                    return
                try:
                    async with asyncio.timeout(1.0):
                        await signal.wait()
                except TimeoutError:
                    pass
        finally:
            self.bus.unsignal(task_id, signal)

    def events(self, pattern: str | Sequence[str] = "*", *, task_id: str | None = None,
               maxsize: int = 10_000) -> Subscription:
        """An async iterator of events matching ``pattern`` (and ``task_id``)::

            async for event in app.events("task.progress", task_id=task.id):
                ...
        """
        self._ensure_relay()
        return self.bus.subscribe(pattern, task_id=task_id, maxsize=maxsize)

    @overload
    def on(self, pattern: str | Sequence[str], callback: Callable[[Event], Any], *,
           task_id: str | None = None) -> Callable[[], None]: ...

    @overload
    def on(self, pattern: str | Sequence[str], callback: None = None, *,
           task_id: str | None = None) -> Callable[[_C], _C]: ...

    def on(self, pattern: str | Sequence[str], callback: Callable[[Event], Any] | None = None,
           *, task_id: str | None = None) -> Any:
        """Call ``callback(event)`` on matching events. Returns an unsubscribe
        function; without ``callback``, works as a decorator."""
        if callback is None:
            def decorate(fn: Callable[[Event], Any]) -> Callable[[Event], Any]:
                self.bus.on(pattern, fn, task_id=task_id)
                self._ensure_relay()
                return fn

            return decorate
        unsubscribe = self.bus.on(pattern, callback, task_id=task_id)
        self._ensure_relay()
        return unsubscribe

    def _home_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop this app is open in, while that loop runs (for ``SyncConveyor``)."""
        if not self._opened or self._open_lock is None:
            return None
        loop = self._open_lock[0]
        return loop if loop.is_running() and not loop.is_closed() else None

    def _open_and_relaying(self) -> bool:
        """Open, with a change relay whose loop has not ended (``asyncio.run``
        returned since the app was opened: the relay ended with it)."""
        return self._opened and (self._relay is None or not self._relay.orphaned)

    def _ensure_relay(self) -> None:
        if self._open_and_relaying():
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # opened with the first awaited call
        task = asyncio.ensure_future(self.open())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_opened_in_background)

    # -- control --------------------------------------------------------------------

    async def abort(self, task_id: str, reason: str = "aborted") -> Task:
        """Abort a task. A queued one ends ``aborted`` at once. A running one is
        asked to stop; the request reaches its worker at once in this process,
        through the change feed from another (normally within milliseconds),
        at the latest with the worker's next heartbeat (``lease / 3``). Then an
        async handler is cancelled, and the task ends ``aborted`` when the
        handler returns (one that catches the cancellation and goes on is not
        abandoned: the task ends when it returns, its value discarded); a sync
        handler sees ``ctx.aborted``, and one still running ``abort_grace``
        seconds later (default 5) is abandoned and the task ends ``aborted``;
        a process handler is told in its process (cancelled if async,
        ``ctx.aborted`` if sync) and killed if still running after
        ``abort_grace``. Raises
        :class:`InvalidTransition` for a task that already ended."""
        check_task_id(task_id)
        check_abort_reason(reason)
        await self.open()
        with self._announcing(task_id) as changed:
            task = await self.storage.abort(task_id, reason)
            if task.status is Status.RUNNING:
                if self._worker is not None:
                    self._worker.abort_local(task_id, reason)
                if self._abort_told.get(task_id) != task.version:
                    self._abort_told[task_id] = task.version
                    self._abort_told.move_to_end(task_id)
                    if len(self._abort_told) > _ABORTS_TOLD:
                        self._abort_told.popitem(last=False)
                    changed.append(("task.abort_requested", task))
            else:
                changed.append(("task.aborted", task))
        return task

    @contextlib.contextmanager
    def _announcing(self, task_id: str) -> Iterator[list[tuple[str, Task]]]:
        """Hold the task's events while this process changes it, then announce the
        ``(type, task)`` changes put in the list, before those held meanwhile: the
        ``task.started`` of a retried task that a worker claimed at once (here, or
        through the change feed) comes after its ``task.retried``."""
        bus = self.bus
        owner = None if bus.idle else bus.hold((task_id,))
        changed: list[tuple[str, Task]] = []
        try:
            yield changed
        finally:
            if owner is not None:
                bus.release(owner, changed)
            else:
                for type_, task in changed:
                    bus.task_event(type_, task)

    async def retry(self, task_id: str, *, delay: float | timedelta | None = None) -> Task:
        """Queue a failed or aborted task again: same id, history kept, one more attempt."""
        check_task_id(task_id)
        wait = seconds(delay, "delay") or 0.0
        await self.open()
        with self._announcing(task_id) as changed:
            task = await self.storage.retry(task_id, time.time() + wait)
            if self._worker is not None:
                self._worker.wake()
            changed.append(("task.retried", task))
        return task

    async def prioritize(self, task_id: str, priority: float) -> Task:
        """Change the priority of a queued task."""
        check_task_id(task_id)
        value = check_priority(priority)
        await self.open()
        with self._announcing(task_id) as changed:
            task = await self.storage.prioritize(task_id, value)
            changed.append(("task.prioritized", task))
        return task

    async def delete(self, target: str | Sequence[str] | Mapping[str, Any] | Filter
                     ) -> list[str]:
        """Delete finished tasks (and their logs): by id, ids, or a filter.
        Tasks that have not ended are left alone. Returns the ids deleted. A filter's
        tasks are deleted in batches of 1,000, each in a transaction of its own (other
        writers wait for one batch at most, not for the whole deletion)."""
        if isinstance(target, Mapping | Filter):
            # its errors name the paths of the filter as given, also those a backend
            # finds (all_of keeps them)
            query = parse_query(all_of(parse_filter(target), _ENDED), limit=_DELETE_BATCH)
            await self.open()
            deleted: list[str] = []
            while True:
                found = [t.id for t in await self.storage.find(query)]
                done = await self._delete_ids(found) if found else []
                deleted += done
                if len(found) < _DELETE_BATCH or not done:
                    return deleted
        ids = task_ids(target)
        await self.open()
        return await self._delete_ids(ids)

    async def _delete_ids(self, ids: list[str]) -> list[str]:
        deleted = await self.storage.delete(ids)
        for task_id in deleted:
            self.bus.deleted(task_id)
        return deleted

    async def prune(self, older_than: float | timedelta) -> int:
        """Delete tasks that finished more than ``older_than`` seconds ago."""
        age = seconds(older_than, "older_than", allow_none=False) or 0.0
        await self.open()
        return await self.storage.prune(time.time() - age)


def _opened_in_background(task: asyncio.Future[None]) -> None:
    """A failed background open is not an error of its own: the next awaited call
    opens again and raises it to its caller."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("opening the storage for event listeners failed: %s", task.exception())


def _item_list(items: Any) -> list[Any]:
    """The items of ``add_many``: a list, or any other iterable of items (not a
    single item, a string or a mapping)."""
    if isinstance(items, list):
        return items
    if isinstance(items, str | bytes | bytearray | Mapping) or not isinstance(items, Iterable):
        raise ValidationError(
            "add_many takes a list of tasks, each (action, payload), (action, payload, "
            f"options) or a dict with 'action'; not {type(items).__name__} "
            f"{reprlib.repr(items)}")
    return list(items)

