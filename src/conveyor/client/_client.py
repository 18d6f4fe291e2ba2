"""The WebSocket client of a hub: :class:`HubClient` (async; see ``SyncHubClient``).

::

    from conveyor.client import HubClient

    async with HubClient("http://127.0.0.1:8765", key) as hub:
        task = await hub.add("mail:send", {"to": "ann@example.com"})
        print(await hub.wait(task.id, timeout=60))

        async for change in hub.live({"status": "failed"}):
            print(change.type, change.task_id)

A remote worker uses the handler style of in-process workers::

    from typing import Any

    from conveyor import Context

    hub = HubClient(url, key)

    @hub.handler("mail:send")
    async def send(ctx: Context) -> dict[str, Any]:
        await ctx.progress(1, total=2)
        ctx.log.info("sending to %s", ctx.payload["to"])
        return {"sent": True}

    await hub.work(service="mailer", concurrency=16)   # until hub.stop()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from .. import _forks
from .._aio import on_sigterm, run_in_its_loop
from .._registry import Handler, build_handler, check_decorated, check_handler_options
from .._specs import check_abort_reason, check_task_id
from ..errors import (
    ConfigurationError,
    InvalidTransition,
    QueryError,
    TaskAborted,
    TaskFailed,
    TaskNotFound,
    ValidationError,
    WaitTimeout,
)
from ..model import LogLevel, LogRecord, Progress, Status, Task, seconds
from ..storage._url import hide_password
from ._checks import setting_seconds
from ._errors import HubError
from ._http import task_from_json
from ._link import CLOSED, Link, ws_url
from ._remote import WorkerSession, with_accept
from ._unserved import warn_unserved
from ._wire import item_json, options_json, payload_json

__all__ = ["MISSING", "HubClient", "LiveChange", "LiveQuery", "Update"]

log = logging.getLogger("conveyor.client")

F = TypeVar("F", bound=Callable[..., Any])


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""The default of ``default=`` arguments: no default, raise instead."""


@dataclass(frozen=True, slots=True)
class Update:
    """One message about a followed task: ``watching`` (first, with the task; again
    after a resumed connection, with the task as it is then), ``start``, ``pickup``,
    ``update`` (progress), ``log``, ``emit``, ``queued``, ``abort_requested``,
    ``success``, ``fail``, ``end`` (last). ``data`` is the message as the hub sent
    it."""

    type: str
    task_id: str
    data: Mapping[str, Any]

    @property
    def task(self) -> Task | None:
        """The task carried by this update, if any."""
        raw = self.data.get("task")
        return task_from_json(raw) if isinstance(raw, Mapping) else None

    @property
    def log(self) -> LogRecord | None:
        """The log line carried by this update, if any."""
        raw = self.data.get("log")
        if not isinstance(raw, Mapping):
            return None
        return LogRecord(raw["task_id"], raw["seq"], raw["ts"], LogLevel.parse(raw["level"]),
                         raw["message"], raw.get("data"))

    @property
    def progress(self) -> Progress | None:
        """The progress carried by this update, if any."""
        raw = self.data.get("progress")
        return Progress.from_json(raw) if isinstance(raw, Mapping) else None


@dataclass(frozen=True, slots=True)
class LiveChange:
    """One change of a live query: ``snapshot`` (``tasks``: the whole result in
    ``sort`` order, also after a resubscription), ``added``, ``changed``
    (``task``) or ``removed`` (``task_id``, and ``version``: the task's version
    when it left, None when it was deleted). Tasks are dicts in the wire form
    (only the asked ``fields``)."""

    type: str
    seq: int
    task_id: str | None = None
    task: Mapping[str, Any] | None = None
    tasks: tuple[Mapping[str, Any], ...] = ()
    resync: bool = False
    version: int | None = None


class LiveQuery:
    """An async iterator of :class:`LiveChange`; ``tasks`` is the current result,
    a dict by task id: which tasks, not their order (the snapshot comes in
    ``sort`` order, later ones are added at the end; sort its values yourself).

    It checks the hub's sequence numbers: after a gap, or when the connection
    came back, it subscribes again and yields a fresh ``snapshot``
    (``resync=True``)."""

    def __init__(self, client: HubClient, filter: Mapping[str, Any] | None, sort: Any,
                 limit: int | None, fields: Sequence[str] | None) -> None:
        self.client = client
        self.request: dict[str, Any] = {"type": "live", "filter": filter}
        if sort is not None:
            self.request["sort"] = sort
        if limit is not None:
            self.request["limit"] = limit
        if fields is not None:
            self.request["fields"] = list(fields)
        self.tasks: dict[str, Mapping[str, Any]] = {}
        self.resyncs = 0
        self._link: Link | None = None
        self._id: Any = None
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._expected = 1
        self._chunks: list[Mapping[str, Any]] = []
        self._started = False
        self._closed = False

    def __aiter__(self) -> LiveQuery:
        return self

    async def __aenter__(self) -> LiveQuery:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _subscribe(self) -> None:
        delay = 0.1
        while True:
            try:
                link = await self.client._connect()
                queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
                message = dict(self.request)
                message["id"] = link.new_id()
                reply = await link.request(message, route=queue.put_nowait)
            except HubError as exc:
                if self._closed:  # closed meanwhile: the iteration ends
                    raise StopAsyncIteration from None
                if exc.code in ("disconnected", "unreachable", "closed"):
                    delay = await _backoff(delay)
                    continue
                raise _mapped(exc) from None
            self._link, self._id, self._queue = link, message["id"], queue
            if self._closed:  # closed while it subscribed: unsubscribe, and end
                await self._drop()
                raise StopAsyncIteration
            self._expected = 1
            self._chunks = []
            queue.put_nowait(reply)
            # the reply came first: move it before anything routed meanwhile
            items = [queue.get_nowait() for _ in range(queue.qsize())]
            items.insert(0, items.pop())
            for item in items:
                queue.put_nowait(item)
            return

    async def __anext__(self) -> LiveChange:
        if self._closed:
            raise StopAsyncIteration
        resync = self._started
        while True:
            if self._queue is None:
                await self._subscribe()
                resync = resync or self._started
                self._started = True
            assert self._queue is not None
            msg = await self._queue.get()
            if self._closed:  # closed by another task while this one waited
                raise StopAsyncIteration
            if msg is CLOSED:
                self._queue = None
                self.resyncs += 1
                continue
            kind = msg.get("type")
            if kind == "error":
                self._queue = None
                self._started = False
                raise _mapped(_error_of(msg))
            seq = msg.get("seq")
            if seq != self._expected:
                log.warning("live query: expected message %s, got %s: subscribing again",
                            self._expected, seq)
                await self._drop()
                self.resyncs += 1
                continue
            self._expected += 1
            if kind == "snapshot":
                self._chunks.extend(msg.get("tasks") or ())
                if msg.get("more"):
                    continue
                tasks = tuple(self._chunks)
                self._chunks = []
                self.tasks = {t["id"]: t for t in tasks}
                return LiveChange("snapshot", seq, tasks=tasks, resync=resync)
            if kind in ("added", "changed"):
                task = msg.get("task") or {}
                self.tasks[task["id"]] = task
                return LiveChange(kind, seq, task["id"], task)
            if kind == "removed":
                task_id = str(msg.get("task_id"))
                self.tasks.pop(task_id, None)
                version = msg.get("version")
                return LiveChange("removed", seq, task_id,
                                  version=version if isinstance(version, int) else None)

    async def _drop(self) -> None:
        link, msg_id = self._link, self._id
        self._queue = None
        if link is not None and msg_id is not None and not link.closed.is_set():
            link.routes.pop(msg_id, None)
            with contextlib.suppress(Exception):
                await link.request({"type": "unlive", "live": msg_id}, timeout=5.0)

    async def aclose(self) -> None:
        """Unsubscribe from the live query (``close`` is the same). A reader waiting
        for the next change in another task (or, through the sync face, another
        thread) stops iterating."""
        if not self._closed:
            self._closed = True
            if self._queue is not None:
                self._queue.put_nowait(CLOSED)  # wakes a reader waiting for a change
            await self._drop()

    close = aclose


class HubClient:
    """A client of a hub over its WebSocket protocol (``docs/protocol.md``).

    ``url`` is the hub's base URL (``http://host:port`` or ``ws://host:port``);
    ``key`` its credential's key (sent in the handshake's ``Authorization``
    header, or in a ``hello`` message with ``hello=True``). One client holds
    one connection, opened on first use and opened again when it was lost.
    ``open_timeout`` is the seconds opening it may take. A URL of another scheme,
    or an ``open_timeout`` that is not a finite number > 0, is a
    :class:`~conveyor.errors.ConfigurationError` (a ``ValueError``) at once.
    """

    def __init__(self, url: str, key: str | None = None, *, open_timeout: float = 10.0,
                 hello: bool = False) -> None:
        self.url: str = ws_url(url)
        self.key: str | None = key
        self.open_timeout: float = setting_seconds(open_timeout, "open_timeout")
        self.hello: bool = hello
        self._link: Link | None = None
        self._lock: asyncio.Lock | None = None
        self._handlers: dict[str, Handler] = {}
        self._stops: set[asyncio.Event] = set()
        self._ends: set[asyncio.Future[None]] = set()  # done when its work() has returned
        self._closing: set[asyncio.Future[None]] = set()  # close() from a handler, under way
        # close() from another loop than work()'s: told when work() has disconnected
        self._closed_waiters: list[concurrent.futures.Future[None]] = []
        self._sessions: set[WorkerSession] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self.connects: int = 0

    def __repr__(self) -> str:
        return f"HubClient({hide_password(self.url)!r})"

    # -- connection ---------------------------------------------------------------

    async def _connect(self) -> Link:
        link = self._link
        if link is not None and not link.closed.is_set():
            return link
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            link = self._link
            if link is not None and not link.closed.is_set():
                return link
            self._loop = asyncio.get_running_loop()
            self._link = await Link.open(self.url, self.key, timeout=self.open_timeout,
                                         hello=self.hello)
            self.connects += 1
            _forks.track(self)
            return self._link

    def _after_fork(self) -> None:
        """In a forked child: the parent's connection and loop are left alone; the
        next call connects anew. Registered handlers stay."""
        _forks.keep(self._link, self._stops, self._ends, self._sessions)
        self._link = None
        self._lock = None
        self._stops = set()
        self._ends = set()
        self._closing = set()
        self._closed_waiters = []
        self._sessions = set()
        self._loop = None
        self._stop_requested = False

    async def connect(self) -> HubClient:
        """Connect now (done on first use anyway); returns the client."""
        await self._connect()
        return self

    @property
    def welcome(self) -> Mapping[str, Any]:
        """The hub's ``welcome`` (credential, rights, limits) of the current connection."""
        return self._link.welcome if self._link is not None else {}

    async def close(self) -> None:
        """Stop working (if :meth:`work` runs, as :meth:`stop` does: running tasks
        get its ``stop_timeout`` to finish, then go back to the queue, their attempt
        refunded), wait for it to return (those tasks are queued again by then),
        and disconnect. Called from another event loop than :meth:`work`'s, the
        close runs in that loop, where the work lives, and this call waits for it
        (from here the handlers were cancelled at once and their tasks counted as
        lost runs)."""
        loop = self._loop
        if loop is not None and loop.is_running() and not _on_loop(loop):
            if self._stops:
                # work() disconnects as it returns (its asyncio.run() may end the loop
                # right after, with anything else that ran there)
                closed: concurrent.futures.Future[None] = concurrent.futures.Future()
                self._closed_waiters.append(closed)
                self.stop()
                await asyncio.wrap_future(closed)
                return
            await run_in_its_loop(loop, self._disconnect)
            return
        if self._stops:
            ends = list(self._ends)
            self.stop()
            if ends and self._loop is not None and _on_loop(self._loop):
                current = asyncio.current_task()
                if any(run.future is current for session in self._sessions
                       for run in session.runs.values()):
                    # from a handler, which work() waits for: disconnect once it is done
                    later = asyncio.ensure_future(self._close_after(ends))
                    self._closing.add(later)
                    later.add_done_callback(self._closing.discard)
                    return
                await asyncio.wait(ends)
        await self._disconnect()

    async def _close_after(self, ends: list[asyncio.Future[None]]) -> None:
        await asyncio.wait(ends)
        await self._disconnect()

    async def _disconnect(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    async def __aenter__(self) -> HubClient:
        await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(self, message: dict[str, Any], timeout: float | None = None) -> dict[
            str, Any]:
        link = await self._connect()
        try:
            return await link.request(message, timeout=timeout)
        except HubError as exc:
            raise _mapped(exc) from None

    # -- publishing ------------------------------------------------------------------

    async def add(self, action: str, payload: Any = None, *, delivery: str | None = None,
                  **options: Any) -> Task:
        """Add a task (the options of :meth:`conveyor.Conveyor.add`, and ``delivery``:
        ``"one"`` or ``"all"``) and return it."""
        return (await self.add_checked(action, payload, delivery=delivery, **options))[0]

    async def add_checked(self, action: str, payload: Any = None, *,
                          delivery: str | None = None, **options: Any) -> tuple[Task, bool]:
        """:meth:`add`, and whether the task is new (False: a task in scope held its
        ``unique_key``, and that task is returned)."""
        item = _publish_item(action, payload, options, delivery)
        reply = await self._request({"type": "publish", **item, "updates": False})
        warn_unserved(reply.get("unserved", ()))
        return task_from_json(reply["task"]), bool(reply["created"])

    async def add_many(self, items: Iterable[Any]) -> list[Task]:
        """Add several tasks in one transaction (items as for ``Conveyor.add_many``)."""
        return [task for task, _ in await self.add_many_checked(items)]

    async def add_many_checked(self, items: Iterable[Any]) -> list[tuple[Task, bool]]:
        """:meth:`add_many`, and for each task whether it is new, in the order given."""
        tasks = [_item(item, i) for i, item in enumerate(items)]
        if not tasks:
            return []
        reply = await self._request({"type": "publish", "tasks": tasks, "updates": False})
        warn_unserved(reply.get("unserved", ()))
        return [(task_from_json(t), bool(c)) for t, c in zip(reply["tasks"], reply["created"],
                                                             strict=True)]

    async def run(self, action: str, payload: Any = None, *,
                  timeout: float | timedelta | None = None,
                  default: Any = MISSING, delivery: str | None = None,
                  **options: Any) -> Any:
        """Add a task and wait for its result (see :meth:`wait`)."""
        timeout = seconds(timeout, "timeout")
        item = _publish_item(action, payload, options, delivery)
        link = await self._connect()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        message: dict[str, Any] = {"type": "publish", **item, "updates": False, "wait": True}
        if timeout is not None:
            message["timeout"] = timeout
        try:
            reply = await link.request(message, route=queue.put_nowait)
        except HubError as exc:
            raise _mapped(exc) from None
        warn_unserved(reply.get("unserved", ()))
        task_id = reply["task"]["id"]
        started = time.monotonic()
        guard = None if timeout is None else timeout + 10.0
        try:
            async with asyncio.timeout(guard):
                msg = await queue.get()
        except TimeoutError:
            msg = {"type": "error", "code": "wait_timeout", "message": "no answer"}
        finally:
            link.routes.pop(message["id"], None)
        if msg is CLOSED:  # the connection went away: ask again on a new one
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            msg = await self._wait_message(task_id, left, lost=True)
        return self._answer(task_id, msg, timeout, default)

    async def wait(self, task_id: str, timeout: float | timedelta | None = None, *,
                   default: Any = MISSING) -> Any:
        """The task's result once it ended. Raises :class:`~conveyor.errors.TaskFailed`,
        :class:`~conveyor.errors.TaskAborted` or :class:`~conveyor.errors.WaitTimeout` —
        or returns ``default`` instead when one is given."""
        limit = seconds(timeout, "timeout")
        msg = await self._wait_message(task_id, limit)
        return self._answer(task_id, msg, limit, default)

    async def wait_task(self, task_id: str, timeout: float | timedelta | None = None) -> Task:
        """The task once it ended, whatever its status (raises WaitTimeout)."""
        timeout = seconds(timeout, "timeout")
        msg = await self._wait_message(task_id, timeout)
        raw = msg.get("task")
        if isinstance(raw, Mapping):
            return task_from_json(raw)
        if msg.get("type") == "error" and msg.get("code") == "wait_timeout":
            raise WaitTimeout(task_id, timeout or 0.0)
        if msg.get("type") == "error":
            raise _mapped(_error_of(msg))
        return await self.get(task_id)

    async def _wait_message(self, task_id: str, timeout: float | None,
                            lost: bool = False) -> dict[str, Any]:
        """The hub's answer to a ``wait``. Once the connection was lost (``lost``:
        before this call), the hub is waited for as ``follow()`` waits (a restart):
        reconnects 0.1 s apart, doubling up to 5 s, until the timeout."""
        check_task_id(task_id)
        timeout = seconds(timeout, "timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.1
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            message: dict[str, Any] = {"type": "wait", "task_id": task_id, "task": True}
            if left is not None:
                message["timeout"] = left
            try:
                link = await self._connect()
                return await link.request(message, None if left is None else left + 10.0)
            except HubError as exc:
                if exc.code == "disconnected" or (lost and exc.code == "unreachable"):
                    if exc.code == "unreachable":  # down: try again later
                        if left is not None and left <= 0:
                            return {"type": "error", "code": "wait_timeout",
                                    "message": "the hub did not come back in time"}
                        delay = await _backoff(delay, left)
                    lost = True
                    continue
                data = getattr(exc, "data", None)
                if isinstance(data, dict):
                    return data
                raise _mapped(exc) from None
            except TimeoutError:
                return {"type": "error", "code": "wait_timeout", "message": "no answer"}

    def _answer(self, task_id: str, msg: Mapping[str, Any], timeout: float | None,
                default: Any) -> Any:
        if msg.get("type") == "result":
            if msg.get("status") == Status.SUCCEEDED.value and not msg.get("default"):
                return msg.get("value")
            if default is not MISSING:
                return default
        code = msg.get("code")
        raw = msg.get("task")
        if code in ("task_failed", "task_aborted", "wait_timeout") and default is not MISSING:
            return default
        if code == "wait_timeout":
            raise WaitTimeout(task_id, timeout or 0.0)
        if isinstance(raw, Mapping):
            task = task_from_json(raw)
            if task.status is Status.ABORTED:
                raise TaskAborted(task)
            raise TaskFailed(task)
        raise _mapped(_error_of(dict(msg)))

    async def get(self, task_id: str, *, logs: bool = False,
                  max_level: LogLevel | str = LogLevel.DEBUG) -> Task:
        """The task (with its logs if asked)."""
        message: dict[str, Any] = {"type": "get", "task_id": task_id, "logs": logs}
        if logs:
            message["max_level"] = LogLevel.parse(max_level).name.lower()
        reply = await self._request(message)
        return task_from_json(reply["task"])

    async def abort(self, task_id: str, reason: str = "aborted") -> Task:
        """Abort a task (needs the admin right, as every control action)."""
        check_task_id(task_id)
        check_abort_reason(reason)
        reply = await self._request({"type": "abort", "task_id": task_id, "reason": reason})
        return task_from_json(reply["task"])

    # -- following -------------------------------------------------------------------

    async def follow(self, task_id: str, *, max_level: LogLevel | str = LogLevel.DEBUG,
                     logs: bool = True) -> AsyncIterator[Update]:
        """The task's messages: ``watching`` (the task), its logs from the start, then
        progress, logs and status changes, ending with ``end``. A lost connection is
        resumed, also across a restart of the hub: another ``watching`` then gives
        the task as it is, and log lines already seen are skipped."""
        level = LogLevel.parse(max_level).name.lower()
        last_seq = 0
        delay = 0.1
        followed = False
        while True:
            try:
                link = await self._connect()
            except HubError as exc:
                # the first connection must work; a resumed one waits for the hub
                # (restarting, say) as work() does
                if not followed or exc.status in (401, 403):
                    raise
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            message = {"type": "watch", "id": link.new_id(), "task_id": task_id,
                       "max_level": level, "logs": logs}
            try:
                reply = await link.request(message, route=queue.put_nowait)
            except HubError as exc:
                if exc.code == "disconnected":
                    await asyncio.sleep(delay)
                    delay = min(5.0, delay * 2)
                    continue
                raise _mapped(exc) from None
            ended = False
            followed = True
            delay = 0.1
            try:
                yield Update("watching", task_id, reply)
                while True:
                    msg = await queue.get()
                    if msg is CLOSED:
                        break
                    kind = str(msg.get("type"))
                    if kind == "error":
                        ended = True
                        raise _mapped(_error_of(msg))
                    if kind == "log":
                        seq = (msg.get("log") or {}).get("seq", 0)
                        if seq <= last_seq:
                            continue
                        last_seq = seq
                    # the stream is over at its end, also for a caller that stops
                    # iterating there (an unwatch then got a not_found warning)
                    ended = kind == "end"
                    yield Update(kind, task_id, msg)
                    if ended:
                        return
            finally:
                link.routes.pop(message["id"], None)
                if not ended and not link.closed.is_set():
                    with contextlib.suppress(Exception):
                        link.send({"type": "unwatch", "id": link.new_id(),
                                   "stream": message["id"]})

    def live(self, filter: Mapping[str, Any] | None = None, *, sort: Any = None,
             limit: int | None = None, fields: Sequence[str] | None = None) -> LiveQuery:
        """A live query: ``async for change in client.live({"status": "running"})``."""
        return LiveQuery(self, filter, sort, limit, fields)

    # -- working ---------------------------------------------------------------------

    def handler(self, action: str, **options: Any) -> Callable[[F], F]:
        """Register the decorated function as this client's handler of ``action``:
        the in-process handler style (``ctx.payload``, ``ctx.progress()``, ``ctx.log``,
        ``ctx.emit()``, ``ctx.aborted``; return a value, Retry or Reschedule).

        Options: ``environment``, ``timeout`` (enforced here, besides the task's
        own run timeout enforced by the hub), ``max_attempts`` (or ``retries``) and
        ``backoff`` (sent to the hub, which applies them to the tasks of this action
        that were added without them, as an in-process worker does), ``retry_on``,
        ``payload_model``,
        ``result_model``, ``mode`` (``"async"``, ``"thread"`` or ``"auto"``),
        ``abort_grace``, and ``accept`` (a function of the offered
        :class:`~conveyor.Task` returning whether to run it, called before the
        payload is downloaded: ``task.payload`` is None when it is too large to
        travel inline). A refused task goes back to the hub, which offers it to
        another connection first; offered here again, it waits a moment
        (doubling at each refusal in a row, up to 2 s) before ``accept`` is
        asked again, so that a refusal does not turn into a busy loop.

        As with :meth:`Conveyor.handler`, the action's name and the options' names
        are checked here (a bare ``@client.handler`` raises
        :class:`ConfigurationError`), and the function when it is registered."""
        check_decorated(action, options, also=frozenset({"accept", "schedule"}), owner="client")

        def register(fn: F) -> F:
            self.register(action, fn, **options)
            return fn

        return register

    def register(self, action: str, fn: Callable[..., Any], **options: Any) -> Handler:
        """The non-decorator form of :meth:`handler`."""
        accept = options.pop("accept", None)
        if options.get("mode") == "process":
            raise ConfigurationError("remote workers run handlers on their loop or in threads; "
                                     "mode='process' is not supported here")
        for name in ("pickup_timeout", "priority"):
            if name in options:
                raise ConfigurationError(
                    f"handler option {name!r} applies before any worker has the task: give "
                    f"it to the tasks (add(..., {name}=...)) instead")
        for name in ("schedule", "limit", "policy"):
            if name in options:
                raise ConfigurationError(
                    f"handler option {name!r} is not supported for a remote handler: it "
                    "belongs to an in-process app (conveyor serve --app MODULE:APP)")
        if action in self._handlers:
            raise ConfigurationError(f"a handler for {action!r} is already registered")
        check_handler_options(action, options)
        handler = build_handler(action, fn, **options)
        handler = with_accept(handler, accept)
        self._handlers[action] = handler
        return handler

    @property
    def actions(self) -> list[str]:
        """The actions this client has handlers for, sorted."""
        return sorted(self._handlers)

    async def work(self, service: str, *, concurrency: int = 8, prefetch: int | None = None,
                   stop_timeout: float = 10.0, max_backoff: float = 5.0) -> None:
        """Work on the registered actions as service ``service`` until :meth:`stop`
        (or cancellation). A lost connection is opened again with backoff; the
        hub offers the tasks this worker held to others meanwhile.

        ``concurrency`` handlers run at once; ``prefetch`` more offers (default:
        as many as ``concurrency``, at most 100) wait here for a free slot, so that
        the next tasks are at hand when one ends. The subscription's capacity is
        their sum. A prefetched offer is picked up (and its run timeout starts)
        only when it starts; it is given back when the worker stops. An offer held
        more than half its ``expires_in``, or started soon after this worker's event
        loop stood still (a frozen process, a blocking handler), runs only once the
        hub confirms it is still this worker's (it may have been run elsewhere).

        SIGTERM (what systemd, Docker and Kubernetes send) is a :meth:`stop`, when
        this loop runs in the main thread and SIGTERM has its default handling there
        (a handler of your own is left alone); ``work()`` then returns.

        ``max_backoff`` (the longest pause between attempts to reconnect) must be a
        finite number of seconds > 0, ``stop_timeout`` one >= 0: else
        :class:`~conveyor.errors.ConfigurationError`, before connecting."""
        if not self._handlers:
            raise ConfigurationError("no handlers are registered: nothing to work on")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError("concurrency must be an integer >= 1")
        if prefetch is None:
            prefetch = min(concurrency, 100)
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ConfigurationError("prefetch must be an integer >= 0")
        # max_backoff=0 (or < 0) reconnected to a hub that was down in a tight loop
        stop_timeout = setting_seconds(stop_timeout, "stop_timeout", allow_zero=True)
        max_backoff = setting_seconds(max_backoff, "max_backoff")
        self._loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        if self._stop_requested:
            stop.set()
        self._stops.add(stop)
        ended: asyncio.Future[None] = self._loop.create_future()
        self._ends.add(ended)
        session = WorkerSession(self, service, dict(self._handlers), concurrency, prefetch)
        self._sessions.add(session)
        undo_sigterm = on_sigterm(self.stop)  # as a graceful stop (see above)
        delay = 0.1
        try:
            while not stop.is_set():
                try:
                    link = await self._connect()
                except HubError as exc:
                    if exc.status in (401, 403):
                        raise
                    log.warning("service %s: %s; retrying in %.1f s", service, exc, delay)
                    await _sleep_or(stop, delay * (0.5 + random.random()))
                    delay = min(max_backoff, delay * 2)
                    continue
                connected = time.monotonic()
                runner = asyncio.ensure_future(session.run_on(link))
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    # work() itself cancelled: the connection's worker ends with it
                    session.leave()
                    runner.cancel()
                    with contextlib.suppress(BaseException):
                        await runner
                    raise
                finally:
                    stopper.cancel()
                if stop.is_set():
                    await session.unsubscribe(stop_timeout)
                    runner.cancel()
                    with contextlib.suppress(BaseException):
                        await runner
                    break
                failure = runner.exception() if runner.done() and not runner.cancelled() \
                    else None
                if isinstance(failure, HubError) and failure.code in (
                        "forbidden", "invalid", "bad_message"):
                    # the hub refused the subscription itself: trying again cannot help
                    raise _mapped(failure)
                if failure is not None and not isinstance(failure, HubError):
                    raise failure
                if time.monotonic() - connected > 5.0:
                    delay = 0.1
                log.warning("service %s: connection to the hub lost (%s); reconnecting",
                            service, link.close_code)
                await _sleep_or(stop, delay * (0.5 + random.random()))
                delay = min(max_backoff, delay * 2)
        finally:
            undo_sigterm()
            self._stops.discard(stop)
            self._sessions.discard(session)
            session.abandon("worker stopped")
            session.close()
            self._stop_requested = False
            self._ends.discard(ended)
            if not ended.done():
                ended.set_result(None)
            if self._closed_waiters and not self._stops:  # a close() from another loop
                waiters, self._closed_waiters = self._closed_waiters, []
                try:
                    await self._disconnect()
                finally:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)

    async def wait_working(self, timeout: float | None = None) -> None:
        """Wait until :meth:`work` has subscribed (for tests and orchestration)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for session in self._sessions:
                if session.subscribed.is_set():
                    return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the worker did not subscribe in time")
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        """Ask :meth:`work` to stop (thread-safe): it stops taking offers, lets
        running tasks finish for ``stop_timeout`` seconds, hands those still running
        back to the queue (their attempt refunded), and returns once the hub has
        them queued again. A stop asked
        while no :meth:`work` runs (one about to start, in another thread) applies
        to the next :meth:`work`, which then returns at once."""
        loop = self._loop
        if loop is None or loop.is_closed():  # none ran yet, or its loop has ended
            self._stop_requested = True
            return
        if _on_loop(loop):
            self._stop_now()
        else:
            try:
                loop.call_soon_threadsafe(self._stop_now)
            except RuntimeError:  # the loop closed meanwhile: for the next work()
                self._stop_requested = True

    def _stop_now(self) -> None:
        if not self._stops:
            self._stop_requested = True
        for event in list(self._stops):
            event.set()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def _sleep_or(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def _error_of(msg: dict[str, Any]) -> HubError:
    from ._link import hub_error

    return hub_error(msg)


async def _backoff(delay: float, limit: float | None = None) -> float:
    """Sleep ``delay`` seconds with jitter (x0.5-1.5; at most ``limit``) before a
    reconnect; the next delay: doubled, up to 5 s."""
    pause = delay * (0.5 + random.random())
    await asyncio.sleep(pause if limit is None else min(pause, limit))
    return min(5.0, delay * 2)


def _mapped(exc: HubError) -> Exception:
    """The library's own exception for a hub error code, where there is one."""
    data = getattr(exc, "data", None) or {}
    code = exc.code
    if code == "not_found":
        task_id = data.get("task_id")
        if isinstance(task_id, str):
            return TaskNotFound(task_id)
        return ValidationError(exc.message) if "task" not in exc.message else exc
    if code == "bad_filter":
        error = QueryError(exc.message)
        error.path = str(data.get("path") or "")
        return error
    if code in ("invalid", "bad_message"):
        return ValidationError(exc.message)
    if code == "invalid_transition":
        return InvalidTransition(exc.message)
    return exc


def _publish_item(action: str, payload: Any, options: Mapping[str, Any],
                  delivery: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"action": action, "payload": payload_json(payload),
                            "options": options_json(options)}
    if delivery is not None:
        item["delivery"] = delivery
    return item


def _item(item: Any, index: int) -> dict[str, Any]:
    action, payload, options = item_json(item, index)
    delivery = options.pop("delivery", None)
    return _publish_item(action, payload, options, delivery)

