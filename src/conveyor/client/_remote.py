"""A remote worker: the handlers of a :class:`HubClient` working on offers from the hub.

Handlers are the in-process kind (:func:`conveyor._registry.build_handler`):
``async def h(ctx: Context) -> value`` or a plain function, receiving a
:class:`conveyor.Context` whose ``progress``, ``log`` and ``emit`` send
messages to the hub, and returning a value, :class:`~conveyor.Retry` or
:class:`~conveyor.Reschedule`, or raising.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from .. import _json
from .._aio import cancelled_here
from .._logging import log_report
from .._policy import with_defaults
from .._registry import Handler
from .._threads import DaemonThreadPool
from ..context import Context, TaskAbortRequested
from ..errors import ValidationError
from ..model import LogLevel, Progress, Reschedule, Retry, Status, Task, storable_text
from ._errors import HubError
from ._http import task_from_json
from ._link import CLOSED, Link, Unsendable

if TYPE_CHECKING:
    from ._client import HubClient

__all__ = ["WorkerSession"]

log = logging.getLogger("conveyor.client.worker")

REFUSAL_PAUSE = 0.1
"""Seconds an offer of a task ``accept`` refused a moment ago waits before ``accept``
is asked again; doubled at each refusal in a row, up to :data:`MAX_REFUSAL_PAUSE`."""
MAX_REFUSAL_PAUSE = 2.0
REFUSAL_MEMORY = 60.0
"""Seconds a refusal is remembered (a task offered again later is asked about anew)."""
STALL_CHECK = 0.2
"""Seconds between two looks whether the event loop stood still."""
STALL = 0.5
"""A look this many seconds late means the loop stood still (the process was frozen, or
a handler blocked the loop): for a while, runs ask the hub before they start."""


@dataclass(eq=False)
class _Run:
    task_id: str
    handler: Handler
    offer: dict[str, Any]
    task: Task
    ctx: Context[Any] | None = None
    future: asyncio.Future[Any] | None = None
    abort_reason: str | None = None
    cancelled: bool = False           # the hub took it back: report nothing
    completed_by: str | None = None   # delivery all: another service returned first
    aborting: asyncio.Event | None = None  # thread handlers: set by an abort
    received: float = 0.0             # when the offer came (monotonic)
    started: float = 0.0              # when _start started it
    confirm: bool = False             # ask the hub whether it is still ours before running


class _RunTimedOut(Exception):
    """The handler's own run timeout (the ``timeout`` handler option) passed."""


class _Channel:
    """The context's channel: progress, log lines and emitted values become messages."""

    def __init__(self, session: WorkerSession) -> None:
        self.session = session
        self.loop = session.loop

    def _call(self, message: dict[str, Any]) -> None:
        session = self.session
        if session.loop_thread_is_current():
            session.send(message)
        else:
            self.loop.call_soon_threadsafe(session.send, message)

    def progress(self, task_id: str, progress: Progress) -> None:
        self._call({"type": "update", "task_id": task_id, "current": progress.current,
                    "total": progress.total, "message": progress.message,
                    **({"data": progress.data} if progress.data else {})})

    def log(self, task_id: str, level: LogLevel, message: str,
            data: dict[str, Any] | None) -> None:
        try:
            if data is not None:
                _json.dumps_checked(data, "log data")
        except ValidationError as exc:
            data = {"unserialisable": str(exc)}
        self._call({"type": "log", "task_id": task_id, "level": level.name.lower(),
                    "message": message, **({"data": data} if data is not None else {})})

    def emit(self, task_id: str, value: Any) -> None:
        _json.dumps_checked(value, "emitted result")
        self._call({"type": "emit", "task_id": task_id, "value": value})


class WorkerSession:
    """One ``work()`` call: subscribes on each (re)connection and runs what is offered."""

    def __init__(self, client: HubClient, service: str, handlers: dict[str, Handler],
                 concurrency: int, prefetch: int = 0) -> None:
        self.client = client
        self.service = service
        self.handlers = handlers
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.waiting: deque[_Run] = deque()   # offers accepted, waiting for a free slot
        self.active = 0
        self.loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self.runs: dict[str, _Run] = {}
        # tasks ``accept`` refused: id -> (refusals in a row, when the last one was)
        self.refusals: dict[str, tuple[int, float]] = {}
        # offers of such tasks, answered after a pause (see _offer)
        self.paused: dict[str, asyncio.TimerHandle] = {}
        self.link: Link | None = None
        self.sub_id: Any = None
        self.channel = _Channel(self)
        self.pool: DaemonThreadPool | None = None
        self.subscribed = asyncio.Event()
        self.completed = 0
        self.stopping = False
        # until then, runs ask the hub before starting (the loop stood still before)
        self.stalled_until = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._look_due = float("inf")

    def loop_thread_is_current(self) -> bool:
        return threading.get_ident() == self._thread_id

    def send(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Send ``message``, or the smaller report that stands for it; return what
        went (None: nothing did)."""
        link = self.link
        if link is None or link.closed.is_set():
            return None
        message.setdefault("id", link.new_id())
        try:
            link.send(message)
            return message
        except Unsendable as exc:
            # over the hub's frame limit (which would close the connection and lose
            # every run on it) or not valid Unicode: a report of the same thing that
            # can be sent, as in-process
            other = _sendable(message, str(exc), link.max_frame)
            try:
                if other is None:
                    raise exc
                link.send(other)
                return other
            except Unsendable as again:
                log.warning("task %s: %s: not sent", message.get("task_id"), again)
                return None

    # -- one connection -----------------------------------------------------------

    async def run_on(self, link: Link) -> None:
        """Subscribe on ``link`` and work until it closes."""
        self.link = link
        sub_id = link.new_id()
        self.sub_id = sub_id
        msg = {"type": "subscribe", "id": sub_id, "service": self.service,
               "actions": sorted(self.handlers), "capacity": self.concurrency + self.prefetch}
        # retry_timeouts: a run timeout the hub enforces (the task's own) is retried only
        # when the handler's retry_on covers TimeoutError, as in-process
        defaults = {action: {name: value for name, value in (
            ("max_attempts", h.max_attempts),
            ("backoff", None if h.backoff is None else asdict(h.backoff)),
            ("retry_timeouts", None if h.retries(TimeoutError()) else False))
            if value is not None}
            for action, h in self.handlers.items()
            if h.max_attempts is not None or h.backoff is not None
            or not h.retries(TimeoutError())}
        if defaults:
            msg["defaults"] = defaults
        reply = await link.request(msg, route=self._on_message)
        self.subscribed.set()
        beat = max(0.05, float(reply.get("heartbeat") or link.service_lease / 3))
        self._look(link, time.monotonic())
        try:
            while not link.closed.is_set():
                try:
                    async with asyncio.timeout(beat):
                        await link.closed.wait()
                except TimeoutError:
                    self.send({"type": "heartbeat"})
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self.subscribed.clear()
            self.abandon("connection lost")

    def _look(self, link: Link, due: float) -> None:
        """Notice the loop standing still. This runs in the first turn of the loop after
        it (with the reading of what the socket got meanwhile, before any of it is
        handled): offers that waited unread may have been taken back by the hub since
        (a service silent for its lease is dropped, an offer expires), so until every
        frame that waited is surely handled, runs ask the hub first."""
        now = time.monotonic()
        if now - due > STALL:
            self.stalled_until = now + max(1.0, link.service_lease)
        self._look_due = now + STALL_CHECK
        self._watchdog = self.loop.call_later(STALL_CHECK, self._look, link, self._look_due)

    def _stalled(self, now: float) -> bool:
        """The loop stood still lately, or stands still now (the look is overdue: a
        callback that runs before it in the first turn after a freeze sees this)."""
        return now < self.stalled_until or now - self._look_due > STALL

    def abandon(self, reason: str) -> None:
        """The connection is gone: the hub gives these tasks to others; stop them here."""
        for run in list(self.runs.values()):
            run.cancelled = True
            self._stop_run(run, reason)
        self.runs.clear()
        self.waiting.clear()
        for timer in self.paused.values():
            timer.cancel()
        self.paused.clear()

    def _give_back(self) -> None:
        """Take no more offers; give back at once those not started."""
        self.stopping = True
        while self.waiting:
            run = self.waiting.popleft()
            self.runs.pop(run.task_id, None)
            self.send({"type": "refuse", "task_id": run.task_id})
        for task_id, timer in list(self.paused.items()):
            timer.cancel()
            self.send({"type": "refuse", "task_id": task_id})
        self.paused.clear()

    def leave(self) -> None:
        """``work()`` was cancelled: no more offers, those not started given back, and
        the subscription ended without waiting (the connection is shared)."""
        self._give_back()
        if self.sub_id is not None:
            self.send({"type": "unsubscribe", "subscription": self.sub_id})

    async def unsubscribe(self, timeout: float) -> None:
        """A graceful stop: take no more offers (those that come are refused), let
        running tasks finish and report for up to ``timeout`` seconds, then end the
        subscription: the hub hands the runs still going back to the queue, their
        attempt refunded (as a stopping worker process does)."""
        self._give_back()
        futures = [r.future for r in self.runs.values() if r.future is not None]
        if futures:
            await asyncio.wait(futures, timeout=timeout)
        # the runs still going are handed back below: their handlers are asked to end
        # with the reason an in-process worker's stop gives (not "connection lost")
        self.abandon("worker stopping")
        link = self.link
        if link is not None and not link.closed.is_set() and self.sub_id is not None:
            try:  # after the reports of the runs that ended (one connection, in order)
                await link.request({"type": "unsubscribe", "subscription": self.sub_id},
                                   timeout=5.0)
            except Exception:
                pass
        if link is not None:
            await link.flush(2.0)

    # -- messages from the hub ---------------------------------------------------------

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if msg is CLOSED:
            return
        task_id = msg.get("task_id")
        if kind == "offer":
            self._offer(msg)
            return
        run = self.runs.get(task_id) if isinstance(task_id, str) else None
        if kind == "abort":
            if run is not None:
                self._stop_run(run, str(msg.get("reason") or "aborted"))
        elif kind == "cancel":
            timer = self.paused.pop(task_id, None) if isinstance(task_id, str) else None
            if timer is not None:
                timer.cancel()
            if run is not None:
                run.cancelled = True
                self.runs.pop(run.task_id, None)
                if run.future is None:
                    self.waiting.remove(run)
                self._stop_run(run, str(msg.get("reason") or "cancelled"))
        elif kind == "completed":
            if run is not None:
                run.completed_by = str(msg.get("by") or "another service")
                self._stop_run(run, f"completed by {run.completed_by}")
        elif kind == "error":
            log.warning("hub refused a message of service %s: %s (%s)", self.service,
                        msg.get("message"), msg.get("code"))

    def _offer(self, msg: dict[str, Any]) -> None:
        received = time.monotonic()
        task_id = msg.get("task_id")
        raw = msg.get("task")
        if not isinstance(task_id, str) or not isinstance(raw, dict):
            return
        action = raw.get("action")
        handler = self.handlers.get(action) if isinstance(action, str) else None
        if (handler is None or self.stopping or task_id in self.runs
                or task_id in self.paused
                or len(self.runs) >= self.concurrency + self.prefetch):
            self.send({"type": "refuse", "task_id": task_id})
            return
        try:
            task = _task(raw)
        except Exception:
            log.exception("offer of task %s cannot be read", task_id)
            self.send({"type": "refuse", "task_id": task_id})
            return
        if handler.options.get("accept") is not None:
            refused = self.refusals.get(task_id)
            now = time.monotonic()
            if refused is not None and now - refused[1] < REFUSAL_MEMORY:
                # refused here a moment ago, and offered again (no other connection of
                # the service had room): hold the offer for a while before asking again,
                # rather than refusing it as fast as the hub offers it
                pause = min(MAX_REFUSAL_PAUSE, REFUSAL_PAUSE * 2 ** (refused[0] - 1),
                            0.5 * _number(msg.get("expires_in"), MAX_REFUSAL_PAUSE))
                self.paused[task_id] = self.loop.call_later(
                    pause, self._reconsider, task_id, handler, msg, task, received)
                return
            if not self._accepts(handler, task):
                return
        self._take(task_id, handler, msg, task, received)

    def _accepts(self, handler: Handler, task: Task) -> bool:
        """Ask the handler's ``accept``; a refusal is sent and remembered."""
        try:
            ok = bool(handler.options["accept"](task))
        except Exception:
            log.exception("accept hook of %s failed", task.action)
            ok = False
        if ok:
            self.refusals.pop(task.id, None)
            return True
        refused = self.refusals.pop(task.id, None)
        now = time.monotonic()
        if len(self.refusals) >= 10_000:
            self.refusals = {k: v for k, v in self.refusals.items()
                             if now - v[1] < REFUSAL_MEMORY}
        self.refusals[task.id] = (1 if refused is None else refused[0] + 1, now)
        self.send({"type": "refuse", "task_id": task.id})
        return False

    def _reconsider(self, task_id: str, handler: Handler, msg: dict[str, Any],
                    task: Task, received: float) -> None:
        """The pause of an offer of a task refused before is over: ask ``accept`` again."""
        if self.paused.pop(task_id, None) is None:
            return
        if self.stopping or len(self.runs) >= self.concurrency + self.prefetch:
            self.send({"type": "refuse", "task_id": task_id})
        elif self._accepts(handler, task):
            self._take(task_id, handler, msg, task, received)

    def _take(self, task_id: str, handler: Handler, msg: dict[str, Any], task: Task,
              received: float) -> None:
        run = _Run(task_id, handler, msg, task, received=received)
        self.runs[task_id] = run
        if self.active < self.concurrency:
            self._start(run)
        else:  # prefetched: picked up (its run timeout starts) when a slot frees
            self.waiting.append(run)

    def _start(self, run: _Run) -> None:
        self.active += 1
        now = run.started = time.monotonic()
        if (self._stalled(now)
                or now - run.received > _number(run.offer.get("expires_in"), 30.0) / 2):
            # the offer may have been taken back meanwhile: _run asks first (as an
            # in-process run that starts long after its claim asks the storage)
            run.confirm = True
        else:
            self.send({"type": "pickup", "task_id": run.task_id})
        run.future = asyncio.ensure_future(self._execute(run))

    def _slot_freed(self) -> None:
        self.active -= 1
        while self.waiting and self.active < self.concurrency and not self.stopping:
            run = self.waiting.popleft()
            if not run.cancelled:
                self._start(run)

    def _stop_run(self, run: _Run, reason: str) -> None:
        if run.abort_reason is None:
            run.abort_reason = reason
        if run.ctx is not None:
            run.ctx._request_abort(reason)
        if run.handler.is_async and run.future is not None and not run.future.done():
            run.future.cancel()
        if run.aborting is not None:
            run.aborting.set()

    # -- running --------------------------------------------------------------------

    async def _execute(self, run: _Run) -> None:
        try:
            report = await self._run(run)
        except asyncio.CancelledError:
            report = self._aborted_report(run)
        except Exception as exc:  # pragma: no cover - _run catches handler errors
            log.exception("running task %s failed", run.task_id)
            report = {"type": "fail", "error": _error_json(exc), "retryable": True}
        finally:
            if self.runs.get(run.task_id) is run:
                del self.runs[run.task_id]
            self._slot_freed()
        if run.cancelled or report is None:
            return
        report["task_id"] = run.task_id
        sent = self.send(report)
        if sent is not None:  # what the hub gets: an oversized result is a failure
            log_report(log, run.task, sent)
        elif self.link is None or self.link.closed.is_set():
            log.warning("task %s (%s): its outcome was not sent, the connection to the "
                        "hub had closed (the hub gives its tasks back at once)", run.task.id,
                        run.task.action)
        self.completed += 1

    def _aborted_report(self, run: _Run) -> dict[str, Any] | None:
        if run.cancelled:
            return None
        if run.completed_by is not None:
            return {"type": "drop", "reason": f"completed by {run.completed_by}"}
        return {"type": "fail", "error": {"type": "Aborted",
                                          "message": run.abort_reason or "aborted"},
                "retryable": False}

    async def _run(self, run: _Run) -> dict[str, Any] | None:
        handler = run.handler
        task = run.task
        if self._stalled(time.monotonic()) or time.monotonic() - run.started > STALL:
            run.confirm = True  # the loop stood still since _start
        if run.confirm:
            link = self.link
            if link is None:
                return None
            try:
                await link.request({"type": "pickup", "task_id": run.task_id, "ack": True})
            except HubError as exc:  # withdrawn (not_held) or the connection is gone
                log.info("task %s not run: the hub took the offer back before it "
                         "started (%s)", run.task_id, exc)
                run.cancelled = True
                return None
        if run.offer.get("payload_inline") is False:
            link = self.link
            if link is None:
                return None
            reply = await link.request({"type": "fetch", "task_id": run.task_id})
            task = replace(task, payload=reply.get("payload"))
        try:
            payload = handler.load_payload(task.payload)
        except Exception as exc:
            return {"type": "fail", "retryable": False, "error": {
                "type": "ValidationError",
                "message": f"payload does not fit the handler's model: {exc}"}}
        if (task.tags or {}).get("delivery") != "all":
            # what the hub applies (subscribe's defaults), seen by the handler as well
            task = with_defaults(task, max_attempts=handler.max_attempts,
                                 backoff=handler.backoff)
        ctx: Context[Any] = Context(task, payload, handler.environment, self.channel)
        run.ctx = ctx
        if run.abort_reason is not None:
            ctx._request_abort(run.abort_reason)
            return self._aborted_report(run)
        timeout = handler.run_timeout
        try:
            if handler.is_async:
                if timeout is None:
                    value = await handler.fn(ctx)
                else:
                    value = await self._run_async(run, ctx, timeout)
            else:
                value = await self._run_thread(run, ctx, timeout)
        except asyncio.CancelledError as exc:
            if run.abort_reason is None and not run.cancelled:
                if not cancelled_here():  # raised by the handler: an error like any other
                    return _failed(handler, exc)
                raise
            return self._aborted_report(run)
        except TaskAbortRequested:
            return self._aborted_report(run)
        except _RunTimedOut:
            if run.abort_reason is not None:
                return self._aborted_report(run)
            assert timeout is not None
            return self._timed_out_report(handler, timeout)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) and handler.is_async:
                raise  # maybe the user's Ctrl-C, raised in the handler's frame
            if run.abort_reason is not None:
                return self._aborted_report(run)
            # SystemExit and the like too: the handler's error, not the service's end
            return _failed(handler, exc)
        if run.abort_reason is not None:
            return self._aborted_report(run)
        return self._report(handler, task, value)

    async def _run_async(self, run: _Run, ctx: Context[Any], timeout: float) -> Any:
        try:
            async with asyncio.timeout(timeout) as scope:
                value = await run.handler.fn(ctx)
        except TimeoutError:
            if scope.expired():
                ctx._request_abort("timeout")
                raise _RunTimedOut from None
            raise  # the handler's own TimeoutError: an error like any other
        if scope.expired():  # the handler swallowed the cancellation: the timeout decides
            ctx._request_abort("timeout")
            raise _RunTimedOut
        return value

    async def _run_thread(self, run: _Run, ctx: Context[Any], timeout: float | None) -> Any:
        if self.pool is None:
            self.pool = DaemonThreadPool(self.concurrency, name="conveyor-remote-handler")
        call = contextvars.copy_context().run
        future = self.loop.run_in_executor(self.pool, call, run.handler.fn, ctx)
        run.aborting = asyncio.Event()
        if run.abort_reason is not None:
            run.aborting.set()
        aborting = asyncio.ensure_future(run.aborting.wait())
        try:
            async with asyncio.timeout(timeout) as scope:
                await asyncio.wait({future, aborting}, return_when=asyncio.FIRST_COMPLETED)
                if not future.done():
                    # an abort: the handler sees ctx.aborted; one that ignores it for
                    # its abort_grace is abandoned (its thread ends when it returns)
                    await asyncio.wait({future}, timeout=run.handler.abort_grace)
                    if not future.done():
                        future.add_done_callback(_retrieve)
                        raise TaskAbortRequested(run.abort_reason or "aborted")
                return future.result()
        except TimeoutError:
            if not scope.expired():  # the handler's own TimeoutError
                raise
            ctx._request_abort("timeout")
            await asyncio.wait({future}, timeout=run.handler.abort_grace)
            raise _RunTimedOut from None
        except asyncio.CancelledError:
            await asyncio.wait({future}, timeout=run.handler.abort_grace)
            raise
        finally:
            aborting.cancel()

    @staticmethod
    def _timed_out_report(handler: Handler, timeout: float) -> dict[str, Any]:
        """The handler's run timeout passed: a ``fail`` that says so with ``timeout``,
        so that the hub's policy sees a run timeout (retried while attempts remain and
        ``retry_on`` covers TimeoutError, else ``aborted`` with reason ``timeout``), as
        for an in-process handler or the task's own run timeout."""
        return {"type": "fail", "retryable": handler.retries(TimeoutError()),
                "timeout": timeout,
                "error": {"type": "TimeoutError",
                          "message": f"run timeout of {timeout:g}s exceeded"}}

    def _report(self, handler: Handler, task: Task, value: Any) -> dict[str, Any]:
        if isinstance(value, Retry):
            return {"type": "retry", "after": value.after, "reason": value.reason}
        try:
            if isinstance(value, Reschedule):  # its result is kept: JSON, as in-process
                if not (value.result is None or type(value.result) in (bool, int, str)):
                    _json.dumps_checked(value.result, "Reschedule(result=...)")
                return {"type": "reschedule", "after": value.after, "result": value.result}
            result = handler.dump_result(value)
            if not (result is None or type(result) in (bool, int, str)):
                _json.dumps_checked(result, "result")
        except Exception as exc:
            return {"type": "fail", "error": _error_json(exc), "retryable": False}
        return {"type": "return", "result": result}

    def close(self) -> None:
        for timer in self.paused.values():
            timer.cancel()
        self.paused.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


def _sendable(message: dict[str, Any], why: str, max_frame: int) -> dict[str, Any] | None:
    """A report the hub would refuse (over its frame limit, or text that is not valid
    Unicode), made sendable: an outcome carrying a result becomes a failure that says
    why (as a result over ``max_payload`` does in-process), a log line or a failure
    is cut and its text made valid (lone surrogates escaped as ``\\udXXX``, as
    in-process logs store them), a progress update loses its text and data; an
    emitted value is not sent (None)."""
    kind = message.get("type")
    keep: dict[str, Any] = {k: message[k] for k in ("id", "task_id") if k in message}
    cut = max(100, max_frame // 8)  # characters: at most 4 bytes each, with room to spare
    if kind in ("return", "reschedule"):
        return {**keep, "type": "fail", "retryable": False,
                "error": {"type": "ValidationError", "message": f"result: {why}"}}
    if kind == "fail":
        error = message.get("error")
        text = error.get("message") if isinstance(error, dict) else error
        name = error.get("type") if isinstance(error, dict) else "Error"
        return {**keep, "type": "fail", "retryable": message.get("retryable", True),
                "error": {"type": storable_text(str(name)[:200]),
                          "message": storable_text(str(text)[:cut])}}
    if kind == "log":
        text = storable_text(str(message.get("message", "")))
        return {**keep, "type": "log", "level": message.get("level", "info"),
                "message": f"{text[:cut]} [cut: {why}]"}
    if kind == "retry":
        reason = message.get("reason")
        return {**keep, "type": "retry", "after": message.get("after"),
                "reason": None if reason is None else storable_text(str(reason))[:cut]}
    if kind == "update":
        return {**keep, "type": "update", "current": message.get("current"),
                "total": message.get("total")}
    return None


_STATUS = {s.value: s for s in Status}
_DEFAULT_SCOPE = ("queued", "running")


def _task(raw: dict[str, Any]) -> Task:
    """A :class:`Task` from an offer: the common case without the general decoder's work."""
    if (raw.get("errors") or raw.get("error") or raw.get("progress") or raw.get("backoff")
            or raw.get("concurrency") or raw.get("logs") is not None
            or tuple(raw.get("unique_scope") or _DEFAULT_SCOPE) != _DEFAULT_SCOPE):
        return task_from_json(raw)
    return Task(
        id=raw["id"], action=raw["action"], payload=raw.get("payload"),
        status=_STATUS[raw["status"]], priority=raw.get("priority", 0.0),
        run_at=raw.get("run_at", 0.0), created_at=raw.get("created_at", 0.0),
        updated_at=raw.get("updated_at", 0.0), started_at=raw.get("started_at"),
        finished_at=raw.get("finished_at"), attempts=raw.get("attempts", 0),
        max_attempts=raw.get("max_attempts"), rescues=raw.get("rescues", 0),
        run_timeout=raw.get("run_timeout"), pickup_timeout=raw.get("pickup_timeout"),
        pickup_deadline=raw.get("pickup_deadline"), worker=raw.get("worker"),
        lease_until=raw.get("lease_until"), abort_requested=raw.get("abort_requested"),
        result=raw.get("result"), reason=raw.get("reason"), unique_key=raw.get("unique_key"),
        tags=dict(raw.get("tags") or {}), parent_id=raw.get("parent_id"),
        public_url=raw.get("public_url"), version=raw.get("version", 1))


def _number(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return default


def _failed(handler: Handler, exc: BaseException) -> dict[str, Any]:
    """The ``fail`` report of a run whose handler raised ``exc``."""
    return {"type": "fail", "error": _error_json(exc), "retryable": handler.retries(exc)}


def _error_json(exc: BaseException) -> dict[str, Any]:
    from ..model import ErrorInfo

    info = ErrorInfo.from_exception(exc)
    return {"type": info.type, "message": info.message, "traceback": info.traceback}


def with_accept(handler: Handler, accept: Callable[[Task], bool] | None) -> Handler:
    if accept is None:
        return handler
    return replace(handler, options={**handler.options, "accept": accept})


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Read the outcome of an abandoned handler thread when it ends (its value is
    discarded; an exception is not left unretrieved)."""
    if not future.cancelled():
        future.exception()
