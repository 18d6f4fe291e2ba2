"""Task streams: the updates of one task sent to one connection.

Three requests use them: ``publish`` (the updates of the tasks it added),
``watch`` (and the ``/ws/tasks/{id}`` endpoint: the task, its logs from the
beginning, then everything that happens to it until it ends) and ``wait``
(only the final ``result``).

A stream listens to the app's event bus for its task (events of this
process, and of every other process through the storage change feed) and to
the hub's own notes (a remote worker picked the task up; in delivery mode
``all``, the first service returned). It listens *before* it reads the task
and its logs, buffers what arrives meanwhile, and then drops what the read
already covered: status changes by version, log lines by sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TaskNotFound
from ..events import Event
from ..model import LogLevel, LogRecord, Progress, Status, Task
from ._ws_proto import encode

if TYPE_CHECKING:
    from ._ws import Connection, WSState

__all__ = ["Streams", "TaskStream", "WaitSpec"]

log = logging.getLogger("conveyor.hub.ws")
REPLAY_PAGE = 1000
"""Log lines a watch replays per storage read."""

_QUEUED = {"task.retrying": "retrying", "task.rescheduled": "rescheduled",
           "task.released": "released", "task.rescued": "rescued", "task.retried": "retried"}


@dataclass(frozen=True, slots=True)
class WaitSpec:
    """A publisher's or waiter's wish for the final result."""

    timeout: float | None
    has_default: bool
    default: Any


class Streams:
    """Routes the hub's own notes about tasks to the streams that follow them."""

    def __init__(self, state: WSState) -> None:
        self.state = state
        self.by_task: dict[str, list[TaskStream]] = {}

    def add(self, stream: TaskStream) -> None:
        self.by_task.setdefault(stream.task_id, []).append(stream)

    def remove(self, stream: TaskStream) -> None:
        items = self.by_task.get(stream.task_id)
        if items and stream in items:
            items.remove(stream)
            if not items:
                del self.by_task[stream.task_id]

    def note(self, task_id: str, kind: str, data: dict[str, Any]) -> None:
        """Tell the streams of a task something only this hub knows (``pickup``,
        ``success`` of a first return in delivery mode ``all``), after the task's
        events that the bus holds (a new task's, until its add lets them out)."""
        if not self.state.app.bus.defer(task_id, lambda: self._tell(task_id, kind, data)):
            self._tell(task_id, kind, data)

    def _tell(self, task_id: str, kind: str, data: dict[str, Any]) -> None:
        for stream in list(self.by_task.get(task_id, ())):
            stream.on_note(kind, data)


class TaskStream:
    """The messages about one task for one connection, under one request id."""

    def __init__(self, state: WSState, conn: Connection, msg_id: Any, key: str, task_id: str, *,
                 replay: bool, updates: bool, wait: WaitSpec | None,
                 max_level: LogLevel = LogLevel.DEBUG, logs: bool = True,
                 initial: Task | None = None, with_task: bool = False,
                 endpoint: bool = False, recheck: bool = False) -> None:
        self.state = state
        self.conn = conn
        self.msg_id = msg_id
        self.key = key
        self.task_id = task_id
        self.replay = replay
        self.updates = updates
        self.wait = wait
        self.max_level = max_level
        self.logs = logs
        self.initial = initial
        # read the task again at the start (an existing task a publish's unique_key
        # matched: it may have changed since the add read it, before the stream listened)
        self.recheck = recheck
        self.with_task = with_task
        self.endpoint = endpoint
        self.version = 0
        self.last_seq = 0
        self.primed = False
        self.closed = False
        self.first_return_sent = False  # delivery all: the early, non-final success
        self.success_sent = False  # the final one
        self.ended = False
        # the status a task.ended came with when the task could not be read (deleted
        # right after it ended, before this hub read it): told with the deletion
        self._ended_unread: str | None = None
        # the version of the task in the watching message, when it had an abort request
        self._abort_told_at: int | None = None
        self.waited = False
        self.read = False  # the task was read (its wait can time out only then)
        self._timed_out = False  # the wait's timeout passed before that
        # what came while the stream was primed (its replay sent): [kind, a, b] entries,
        # kind "event", "note" or "skip" (a progress a later one replaced)
        self._buffer: deque[list[Any]] = deque()
        self._buffered_progress: list[Any] | None = None
        self._kept = 0  # entries of _buffer not skipped
        # a replaying stream reads its log lines from storage: of the lines that come
        # as events meanwhile it keeps only the highest seq it must read up to
        self._live_seq = 0
        self._unsubscribe: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._prime_task: asyncio.Task[None] | None = None

    # -- life -------------------------------------------------------------------

    def listen(self) -> None:
        """Take the task's events (and the hub's notes) from now on, kept until
        :meth:`start`: a publish's streams listen before the add lets the new tasks'
        events out, since a task that a service runs at once may end before the
        add returns (its end was missed, and a ``run`` waited for ever)."""
        if self._unsubscribe is None and not self.closed:
            self._unsubscribe = self.state.app.bus.on("*", self._on_event, task_id=self.task_id)
            self.state.streams.add(self)

    def start(self) -> None:
        self.listen()
        if self.wait is not None and self.wait.timeout is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.wait.timeout, self._wait_timed_out)
        if self.initial is not None and not self.recheck:
            self.version = self.initial.version
            self.read = True
            if self.initial.terminal:
                self.primed = True
                self._end(self.initial)
            elif self._buffer or self._live_seq > self.last_seq:
                # what came since listen(), in order, then live
                self._prime_task = asyncio.ensure_future(self._catch_up())
            else:
                self.primed = True
            return
        self._prime_task = asyncio.ensure_future(self._prime())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.state.streams.remove(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._prime_task is not None and not self._prime_task.done():
            self._prime_task.cancel()
        items = self.conn.streams.get(self.key)
        if items is not None and self in items:
            items.remove(self)
            if not items:
                del self.conn.streams[self.key]

    def _send(self, message: dict[str, Any]) -> None:
        if not self.closed:
            message["id"] = self.msg_id
            self.conn.send(encode(message))

    async def _prime(self) -> None:
        storage = self.state.app.storage
        try:
            task = await storage.get(self.task_id)
            if task is None:
                self._send({"type": "error", "code": "not_found", "task_id": self.task_id,
                            "message": str(TaskNotFound(self.task_id))})
                self._finish(missing=True)
                return
            if not self.conn.credential.can_read(task.action):
                self._send({"type": "error", "code": "forbidden", "task_id": self.task_id,
                            "message": f"credential {self.conn.credential.name!r} may not read "
                                       f"task {self.task_id}"})
                self._finish(forbidden=True)
                return
            # a recheck goes on from the task the add found: the changes held since
            # (its start, its end) are told, the read's end only if none ended it
            self.version = task.version if self.initial is None else self.initial.version
            self.read = True
            if self._timed_out and not task.terminal:
                self._wait_timed_out()
            if self.updates and self.initial is None:
                self._send({"type": "watching", "task_id": self.task_id,
                            "task": self.state.task_json(task)})
                if task.abort_requested is not None:
                    self._abort_told_at = task.version  # told in the task: not again
            if self.replay and self.logs:
                await self._replay_logs()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed("could not read the task", exc)
            return
        await self._catch_up()
        if not self.closed and task.terminal and not self.ended:
            self._end(task)

    async def _catch_up(self) -> None:
        """Send what came while the stream was not live (its replay, or a burst of log
        lines more than the reader took at once), at the reader's pace too, more
        coming meanwhile; before each message the log lines stored until then. Then
        the stream is live again."""
        try:
            while self._buffer or self._live_seq > self.last_seq:
                if self._live_seq > self.last_seq:
                    before = self.last_seq
                    await self._replay_logs()
                    if self.last_seq == before:  # gone from storage (the task deleted)
                        self._live_seq = self.last_seq
                if self.conn.crowded:
                    await self.conn.room()
                if self.closed:
                    return
                if not self._buffer:
                    continue
                entry = self._buffer.popleft()
                if entry is self._buffered_progress:
                    self._buffered_progress = None
                kind, a, b = entry
                if kind != "skip":
                    self._kept -= 1
                if kind == "event":
                    self._handle(a)
                elif kind == "note":
                    self._noted(a, b)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed("could not read the task's log", exc)
            return
        self.primed = True
        self._buffered_progress = None

    def _failed(self, what: str, exc: Exception) -> None:
        """End the stream on a storage error, telling the reader (``internal``)."""
        log.exception("task stream of %s failed", self.task_id)
        self._send({"type": "error", "code": "internal", "task_id": self.task_id,
                    "message": f"{what}: {exc}"})
        self._finish()

    async def _replay_logs(self) -> None:
        """The log lines after those sent, read from storage by pages and sent as
        fast as the reader takes them (a log longer than the connection's send queue,
        ``max_pending``, sent all at once would cut the reader off), to the end."""
        while True:
            records = await self.state.app.storage.read_logs(
                self.task_id, self.last_seq, self.max_level, limit=REPLAY_PAGE)
            for record in records:
                if self.conn.crowded:
                    await self.conn.room()
                if self.closed:
                    return
                self._log(record)
            if len(records) < REPLAY_PAGE:
                return

    @property
    def _reads_log(self) -> bool:
        """Whether this stream sends the log from storage (a replay, and bursts): a
        watch that replays, or the stream of a task its publish added (all its lines
        are the stream's; a publish that found an existing task follows it live)."""
        fresh = self.initial is not None and not self.recheck
        return (self.replay or fresh) and self.logs and self.updates

    def _behind(self, event: Event) -> bool:
        """A live stream whose reader has half its queue waiting: ``event`` and what
        follows are kept back and sent at the reader's pace (:meth:`_catch_up`), as
        during the replay, instead of filling the queue (a burst of thousands of
        progress updates or log lines in one turn of the loop cut off a reader that
        kept reading). Whether it was kept back."""
        if not (self.primed and self.conn.crowded):
            return False
        self.primed = False
        self._buffered("event", event, None)
        self._prime_task = asyncio.ensure_future(self._catch_up())
        return True

    def _buffered(self, kind: str, a: Any, b: Any) -> None:
        """Keep what came before the stream was primed; only the latest progress (as a
        reader that is behind would see). More than ``max_pending`` kept: the reader
        is too slow, as when that much waits in its send queue."""
        entry = [kind, a, b]
        if kind == "event":
            if a.type == "task.log" and self._reads_log:
                # stored before it came: the replay reads it (the relay may send a
                # task's whole log again at once: it is not kept)
                record = a.data.get("log")
                if isinstance(record, LogRecord) and record.level >= self.max_level:
                    self._live_seq = max(self._live_seq, record.seq)
                return
            if a.type == "task.progress":
                last = self._buffered_progress
                if last is not None and self._buffer and self._buffer[-1] is last:
                    last[1] = a  # nothing since: the latest takes its place
                    return
                if last is not None:
                    last[0] = "skip"  # others since: kept in order, this one left out
                    last[1] = None
                    self._kept -= 1
                self._buffered_progress = entry
        self._buffer.append(entry)
        self._kept += 1
        if self._kept > self.conn.config.max_pending:
            self.conn.cut_off(f"{self._kept} messages of task {self.task_id} came while "
                              "its log was replayed")

    # -- input ------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if self.closed:
            return
        if not self.primed:
            self._buffered("event", event, None)
            return
        self._handle(event)

    def on_note(self, kind: str, data: dict[str, Any]) -> None:
        if self.closed:
            return
        if not self.primed:
            self._buffered("note", kind, data)
            return
        self._noted(kind, data)

    def _noted(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "pickup":
            if self.updates:
                self._send({"type": "pickup", "task_id": self.task_id, **data})
        elif kind == "success":
            if self.updates and not self.first_return_sent and not self.success_sent:
                self.first_return_sent = True
                self._send({"type": "success", "task_id": self.task_id, **data})
            # delivery ``all``: the first service's result answers a wait at once, but a
            # wait for the ended task (``"task": true``) is answered when it has ended
            if self.wait is not None and not self.waited and not self.with_task:
                self._answer_wait(Status.SUCCEEDED, data.get("result"), None)

    def _newer(self, event: Event) -> bool:
        version = event.data.get("version") if event.data else None
        if not isinstance(version, int):
            version = event.task.version if event.task is not None else None
        if version is None:
            return True
        if version <= self.version:
            return False
        self.version = version
        return True

    def _handle(self, event: Event) -> None:
        kind = event.type
        task = event.task
        if kind == "task.log":
            record = event.data.get("log")
            if not isinstance(record, LogRecord):
                return
            if self._reads_log and record.seq > self.last_seq and self._behind(event):
                return  # a burst of lines: read from storage at the reader's pace
            self._log(record)
            return
        if kind == "task.progress":
            if self.updates and self._behind(event):
                return  # a burst of progress (an async handler's loop): its latest kept
            progress = event.data.get("progress")
            if self.updates and isinstance(progress, Progress):
                self._send({"type": "update", "task_id": self.task_id,
                            "progress": progress.to_json()})
            return
        if kind == "task.result":
            if self.updates:
                self._send({"type": "emit", "task_id": self.task_id,
                            "value": event.data.get("value")})
            return
        if kind == "task.deleted":
            error: dict[str, Any] = {"type": "error", "code": "deleted", "task_id": self.task_id,
                                     "message": "the task was deleted"}
            if self._ended_unread is not None and not self.ended:
                error["status"] = self._ended_unread
                error["message"] = (f"the task ended {self._ended_unread} and was deleted "
                                    "before this hub could read its outcome")
            self._send(error)
            self._finish()
            return
        if kind == "task.ended":
            if task is not None and not self.ended:
                self._end(task)
            elif task is None and isinstance(event.data.get("status"), str):
                self._ended_unread = event.data["status"]
            return
        if kind == "task.expired":
            # a pickup timeout: the task.failed of the same version follows (and sends
            # the fail); taking this version here would drop it as stale
            return
        if kind == "task.abort_requested":
            version = event.data.get("version")
            if (self._abort_told_at is not None and isinstance(version, int)
                    and version <= self._abort_told_at):
                return  # the watching message's task had it already
            if self.updates and task is not None:
                self._send({"type": "abort_requested", "task_id": self.task_id,
                            "reason": task.abort_requested})
            return
        if not self._newer(event) or task is None or not self.updates:
            return
        if kind == "task.started":
            self._send({"type": "start", "task_id": self.task_id, "attempt": task.attempts,
                        "worker": task.worker, "task": self.state.task_json(task)})
        elif kind in _QUEUED:
            self._send({"type": "queued", "task_id": self.task_id, "event": _QUEUED[kind],
                        "task": self.state.task_json(task)})
        elif kind == "task.succeeded":
            if not self.success_sent:
                self.success_sent = True
                self._send({"type": "success", "task_id": self.task_id, "result": task.result,
                            "task": self.state.task_json(task)})
        elif kind in ("task.failed", "task.aborted"):
            self._send({"type": "fail", "task_id": self.task_id, "status": task.status.value,
                        "reason": task.reason,
                        "error": task.error.to_json() if task.error else None,
                        "task": self.state.task_json(task)})

    def _log(self, record: LogRecord) -> None:
        if record.seq <= self.last_seq or not self.logs or not self.updates:
            return
        self.last_seq = record.seq
        if record.level < self.max_level:
            return
        self._send({"type": "log", "task_id": self.task_id, "log": record.to_json()})

    # -- the end ----------------------------------------------------------------

    def _end(self, task: Task) -> None:
        self.ended = True
        if self.updates:
            self._send({"type": "end", "task_id": self.task_id, "status": task.status.value,
                        "task": self.state.task_json(task)})
        if self.wait is not None and not self.waited:
            self._answer_wait(task.status, task.result, task)
        self._finish()

    def _answer_wait(self, status: Status, value: Any, task: Task | None) -> None:
        self.waited = True
        wait = self.wait
        assert wait is not None
        extra: dict[str, Any] = {}
        if self.with_task and task is not None:
            extra["task"] = self.state.task_json(task)
        if status is Status.SUCCEEDED:
            self._send({"type": "result", "task_id": self.task_id, "status": status.value,
                        "value": value, "default": False, **extra})
        elif wait.has_default:
            self._send({"type": "result", "task_id": self.task_id, "status": status.value,
                        "value": wait.default, "default": True, **extra})
        else:
            detail = ""
            if task is not None and task.error is not None:
                detail = f": {task.error.type}: {task.error.message}"
            code = "task_aborted" if status is Status.ABORTED else "task_failed"
            self._send({"type": "error", "code": code, "task_id": self.task_id,
                        "status": status.value,
                        "message": f"task {self.task_id} {status.value}{detail}",
                        "task": self.state.task_json(task) if task is not None else None})
        if not self.updates:
            self._finish()

    def _wait_timed_out(self) -> None:
        self._timer = None
        if self.closed or self.waited or self.wait is None:
            return
        if not self.read:  # a timeout of 0: the task may have ended already (or be
            self._timed_out = True  # unknown, or unreadable): _prime decides
            return
        self.waited = True
        if self.wait.has_default:
            self._send({"type": "result", "task_id": self.task_id, "status": None,
                        "value": self.wait.default, "default": True, "timed_out": True})
        else:
            self._send({"type": "error", "code": "wait_timeout", "task_id": self.task_id,
                        "message": f"task {self.task_id} did not end within "
                                   f"{self.wait.timeout:g} s"})
        if not self.updates:  # a publish's updates go on until the task ends
            self._finish()

    def _finish(self, *, forbidden: bool = False, missing: bool = False) -> None:
        self.close()
        if self.endpoint:
            with contextlib.suppress(Exception):
                self.conn.endpoint_done(forbidden=forbidden, missing=missing)
