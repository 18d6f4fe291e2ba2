"""Live queries: a snapshot of the tasks matching a filter, then every change to it.

Subscriptions with the same filter, sort, limit, fields and readable actions
share one :class:`_Group`: the group keeps the current result (each task with
its encoded JSON) and works out, once per change, whether a task was
``added``, ``changed`` or ``removed``; each subscription only numbers and
queues the message. A new subscription of a group already in sync takes its
snapshot from the group's memory, atomically with respect to the event
stream, so it neither misses nor repeats a change.

The changes come from the app's event bus (fed by this process and, through
the storage change feed, by every other process sharing the database). Each
event carries the task as read at or after the change; a group applies a
task only if its ``version`` is newer than the one it has, so states never
go backwards. The first subscription of a group reads the snapshot while
already listening: tasks touched meanwhile are read again before the group
is declared in sync.

A group with a ``limit`` is a window over a sorted result: a change that may
move its boundary marks it dirty, and it is read again (at most every
``REFRESH_DELAY`` seconds) and diffed against what its subscribers have.

A group whose client filter holds a ``$regex`` matches tasks off the event loop,
on the manager's own threads (a pattern may take up to its 1 s limit on one
value: on the loop, that held every client of the hub). Its changes go through
an inbox, in order, each step waiting for the verdicts it needs and then taken
on the loop as any group takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .. import _json
from ..errors import QueryError
from ..events import Event
from ..model import Progress, Status, Task
from ..query import Filter, Query, matches, parse_filter, parse_query, sort_tasks
from ..query._tree import has_regex, scoped
from ._credentials import read_scope
from ._ws_proto import ProtocolError, encode

if TYPE_CHECKING:
    from ._ws import Connection, WSState

__all__ = ["MAX_LIVE_RESULT", "LiveManager", "LiveSub"]

log = logging.getLogger("conveyor.hub.live")

MAX_LIVE_RESULT = 100_000
"""Most tasks an unlimited live query may hold (ask for a ``limit`` beyond that)."""
SNAPSHOT_CHUNK = 1000
"""Tasks per ``snapshot`` message."""
REFRESH_DELAY = 0.02
"""Seconds a dirty limited query waits (gathering changes) before it is read again."""
SYNC_ROUNDS = 5
_SEEN_CAP = 500_000
_TASK_FIELDS = frozenset(Task("x", "x", None, Status.QUEUED).to_json())
_IGNORED = frozenset({"task.log", "task.result", "task.ended", "task.expired"})
MATCH_THREADS = 2
"""Threads of a hub on which live queries with a ``$regex`` match tasks."""
MATCH_CPU = 0.1
"""CPU seconds a live query with a ``$regex`` may take to match one task (measured on
its match thread, so a loaded machine does not count; twice, so that a garbage
collection the match set off does not count either): past it, the live query ends
(``bad_filter``), so that a slow pattern holds a match thread once, not on every change."""
MAX_BEHIND = 100_000
"""Changes a live query with a ``$regex`` may have waiting for its matches (every change
of the hub comes to it, a large add at once): past them it ends (``bad_filter``)."""

_Verdict = bool | QueryError
_VerdictKey = tuple[str, int, str | None]


def _verdict_key(task: Task) -> _VerdictKey:
    """What a verdict is about: a task at a version, with the progress it is given."""
    progress = task.progress
    return (task.id, task.version,
            None if progress is None else _json.dumps(progress.to_json()))


def _judge(where: Filter, tasks: Sequence[Task]) -> dict[_VerdictKey, _Verdict]:
    """Whether each of ``tasks`` matches ``where`` (run on a match thread); the first
    error (a match past :data:`MATCH_CPU`, or the ``$regex`` time limit) ends the list
    (it ends the live query)."""
    verdicts: dict[_VerdictKey, _Verdict] = {}
    for task in tasks:
        key = _verdict_key(task)
        try:
            verdicts[key], spent = _timed_match(where, task)
            if spent > MATCH_CPU:  # again: a garbage collection may have run meanwhile
                spent = _timed_match(where, task)[1]
        except QueryError as exc:
            verdicts[key] = exc
            break
        if spent > MATCH_CPU:
            verdicts[key] = QueryError(
                f"the live query's $regex took {spent * 1000:.0f} ms of CPU on one task (a "
                f"live query may take {MATCH_CPU * 1000:g} ms): simplify the pattern", "filter")
            break
    return verdicts


def _timed_match(where: Filter, task: Task) -> tuple[bool, float]:
    """Whether ``task`` matches, and the CPU seconds this thread took to tell."""
    started = time.thread_time()
    return matches(where, task), time.thread_time() - started


class LiveSub:
    """One ``live`` request of one connection."""

    __slots__ = ("_sending", "closed", "conn", "group", "held", "held_chars", "key",
                 "msg_id", "prefix", "seq")

    def __init__(self, conn: Connection, msg_id: Any, key: str, group: _Group) -> None:
        self.conn = conn
        self.msg_id = msg_id
        self.key = key
        self.group = group
        self.seq = 0
        self.closed = False
        self.prefix = '{"id":' + key + ',"seq":'
        # while a large snapshot goes out at the reader's pace: the changes that come
        # meanwhile, sent after it (and their characters)
        self.held: deque[str] | None = None
        self.held_chars = 0
        self._sending: asyncio.Task[None] | None = None

    def push(self, body: str) -> None:
        if self.held is not None:
            self.held.append(body)
            self.held_chars += len(body)
            config = self.conn.config
            if (len(self.held) > config.max_pending
                    or self.held_chars > config.max_pending_bytes):
                self.conn.cut_off("live query changes piled up behind its snapshot")
            return
        self._send(body)

    def stop(self) -> None:
        """The subscription ended: nothing more is sent (a paced snapshot stops)."""
        self.closed = True
        if self._sending is not None and not self._sending.done():
            self._sending.cancel()

    def _send(self, body: str) -> None:
        self.seq += 1
        self.conn.send(self.prefix + str(self.seq) + body)

    def snapshot(self, encoded: Sequence[str]) -> None:
        """Send the snapshot in parts of :data:`SNAPSHOT_CHUNK` tasks: at once when it is
        small, else at the reader's pace (all at once, a snapshot larger than half the
        connection's send queue would cut its reader off, 4008, however fast it reads),
        the changes that come meanwhile following it."""
        config = self.conn.config
        chunks = deque(_chunks(encoded, SNAPSHOT_CHUNK, config.max_pending_bytes // 8))
        head = ',"type":"snapshot","count":' + str(len(encoded)) + ',"more":'
        if (len(chunks) < config.max_pending // 4 and not self.conn.crowded
                and sum(map(len, encoded)) < config.max_pending_bytes // 4):
            while chunks:
                self._send_part(head, chunks)
            return
        self.held = deque()
        self._sending = asyncio.ensure_future(self._paced(head, chunks))

    def _send_part(self, head: str, chunks: deque[Sequence[str]]) -> None:
        chunk = chunks.popleft()
        self._send(head + ("true" if chunks else "false") + ',"tasks":[' + ",".join(chunk)
                   + "]}")

    async def _paced(self, head: str, chunks: deque[Sequence[str]]) -> None:
        conn = self.conn
        while chunks or self.held:
            if conn.crowded:
                await conn.room()
            if self.closed or conn.closed:
                return
            if chunks:
                self._send_part(head, chunks)
            elif self.held:
                body = self.held.popleft()
                self.held_chars -= len(body)
                self._send(body)
        self.held = None


def _chunks(encoded: Sequence[str], most: int, chars: int) -> list[Sequence[str]]:
    """``encoded`` in parts of at most ``most`` tasks and about ``chars`` characters
    (a part holds one task at least); one empty part when there are none."""
    chunks: list[Sequence[str]] = []
    start, size = 0, 0
    for i, enc in enumerate(encoded):
        if i > start and (i - start >= most or size + len(enc) > chars):
            chunks.append(encoded[start:i])
            start, size = i, 0
        size += len(enc) + 1
    chunks.append(encoded[start:])
    return chunks


class _Group:
    """The shared state of identical live queries."""

    def __init__(self, manager: LiveManager, key: tuple[Any, ...], where: Filter, query: Query,
                 fields: tuple[str, ...] | None, offloaded: bool = False) -> None:
        self.manager = manager
        self.key = key
        self.where = where
        self.query = query
        self.fields = fields
        self.limited = query.limit is not None
        self.members: dict[str, tuple[Task, str]] = {}
        self.seen: dict[str, int] = {}
        self.subs: list[LiveSub] = []
        self.waiting: list[LiveSub] = []
        self.ready = False
        self.failed: str | None = None
        self.buffer: dict[str, Task | None] | None = {}
        # limited windows: the latest full-rate progress of running tasks (with their
        # attempt), which the storage may not hold yet; a read of the window shows it
        self.progressed: dict[str, tuple[int, Progress]] = {}
        # limited windows: how members may have left since the last read, so that
        # `removed` says what it says without a limit (the version it left at; null
        # when deleted)
        self.left_at: dict[str, int] = {}
        self.gone: set[str] = set()
        self.dirty = False
        self._task: asyncio.Task[None] | None = None
        # a client's $regex: tasks are matched on the manager's threads, the changes
        # taken in order from the inbox once the verdicts they need are in
        self.offloaded = offloaded
        self._inbox: deque[tuple[str, Task | str, Any]] = deque()
        self._pump: asyncio.Task[None] | None = None
        self._verdicts: dict[_VerdictKey, _Verdict] = {}

    # -- encoding ---------------------------------------------------------------

    def encode(self, task: Task) -> str:
        data = self.manager.state.task_json(task)
        if self.fields is not None:
            data = {k: data[k] for k in self.fields if k in data}
        return _json.dumps_stored(data)

    def ordered(self) -> list[str]:
        if self.query.sort:
            return [self.members[t.id][1]
                    for t in sort_tasks([m[0] for m in self.members.values()], self.query.sort)]
        return [enc for _, enc in self.members.values()]

    # -- fan-out ----------------------------------------------------------------

    def _fan(self, body: str) -> None:
        for sub in self.subs:
            sub.push(body)

    def _added(self, enc: str) -> None:
        self._fan(',"type":"added","task":' + enc + "}")

    def _changed(self, enc: str) -> None:
        self._fan(',"type":"changed","task":' + enc + "}")

    def _removed(self, task_id: str, version: int | None) -> None:
        self._fan(',"type":"removed","task_id":' + _json.dumps(task_id) + ',"version":'
                  + ("null" if version is None else str(version)) + "}")

    # -- sync -------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._sync())

    async def _sync(self) -> None:
        storage = self.manager.state.app.storage
        try:
            if self.limited:
                tasks = await storage.find(self.query)
                touched, self.buffer = self.buffer or {}, None
                self.members = {t.id: (t, self.encode(t)) for t in tasks}
                # changed while the window was read: read it again, noting how a member
                # may have left (as apply and deleted do)
                for task_id, change in touched.items():
                    self.dirty = True
                    if task_id in self.members and change is None:
                        self.gone.add(task_id)
                    elif task_id in self.members and change is not None:
                        self.left_at[task_id] = max(change.version,
                                                    self.left_at.get(task_id, 0))
            else:
                query = replace(self.query, limit=MAX_LIVE_RESULT + 1)
                tasks = await storage.find(query)
                if len(tasks) > MAX_LIVE_RESULT:
                    raise ProtocolError(
                        "too_many", f"the live query matches more than {MAX_LIVE_RESULT} tasks: "
                                    "narrow the filter or give a limit")
                self.members = {t.id: (t, self.encode(t)) for t in tasks}
                self.seen = {t.id: t.version for t in tasks}
                for round_ in range(SYNC_ROUNDS):
                    touched, self.buffer = self.buffer or {}, {}
                    if not touched:
                        break
                    if round_ == SYNC_ROUNDS - 1:
                        fresh: list[Task] = [t for t in touched.values() if t is not None]
                    else:
                        fresh = await storage.get_many(list(touched))
                    verdicts = await self._judged(fresh)
                    found = {t.id for t in fresh}
                    for task_id in touched:
                        if task_id not in found and task_id in self.members:
                            del self.members[task_id]
                    with self._given(verdicts):
                        for task in fresh:
                            self._apply(task, fan=False)
                            if self.failed is not None:  # grew past the cap meanwhile
                                return
                # what came while the last round's verdicts were worked out: after the
                # snapshot, through the inbox, in order with the changes that follow
                left, self.buffer = self.buffer or {}, None
                for task_id, change in left.items():
                    if change is None:
                        self.offer("task.deleted", task_id)
                    else:
                        self.offer("task.changed", change)
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:
            self._fail(exc.code, exc.message)
            return
        except QueryError as exc:  # what the backend cannot run (PostgreSQL's regexes)
            self._fail("bad_filter", str(exc), exc.path)
            return
        except Exception as exc:
            log.exception("live query failed to read its snapshot")
            self._fail("internal", f"could not read the live query's snapshot: {exc}")
            return
        self.ready = True
        waiting, self.waiting = self.waiting, []
        encoded = self.ordered()
        for sub in waiting:
            if not sub.closed:
                self.subs.append(sub)
                sub.snapshot(encoded)
        if self.dirty:  # (this task ends here: the refresh is one of its own)
            self._task = asyncio.ensure_future(self._refresh())
        if not self.subs:
            self.manager._drop(self)

    def _overflowed(self) -> bool:
        """Whether an unlimited query has grown past :data:`MAX_LIVE_RESULT` tasks (it
        then ends with ``too_many``, as it would have been refused with them at first)."""
        if self.limited or len(self.members) <= MAX_LIVE_RESULT or self.failed is not None:
            return False
        self._fail("too_many", f"the live query now matches more than {MAX_LIVE_RESULT} "
                               "tasks: narrow the filter or give a limit")
        return True

    def _fail(self, code: str, message: str, path: str | None = None) -> None:
        self.failed = message
        waiting, self.waiting = self.waiting, []
        waiting += self.subs  # ready ones too: a filter that fails on a change
        self.subs = []
        error: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if path is not None:
            error["path"] = path
        for sub in waiting:
            if not sub.closed:
                sub.stop()
                sub.conn.send(encode({**error, "id": sub.msg_id}))
                sub.conn.lives.pop(sub.key, None)
        self.manager._drop(self)

    def join(self, sub: LiveSub) -> None:
        if self.ready:
            self.subs.append(sub)
            sub.snapshot(self.ordered())
        else:
            self.waiting.append(sub)

    def leave(self, sub: LiveSub) -> None:
        sub.stop()
        if sub in self.subs:
            self.subs.remove(sub)
        if sub in self.waiting:
            self.waiting.remove(sub)

    @property
    def empty(self) -> bool:
        return not self.subs and not self.waiting

    def close(self) -> None:
        for job in (self._task, self._pump):
            if job is not None and not job.done():
                job.cancel()
        self._inbox.clear()

    def _matches(self, task: Task) -> bool:
        """Whether ``task`` is in the result; a filter that fails on it (a ``$regex``
        running too long) ends the live query with ``bad_filter``. An offloaded group
        takes the verdict worked out on a match thread."""
        if self.failed is not None:
            return False
        try:
            verdict = self._verdicts.get(_verdict_key(task)) if self.offloaded else None
            if verdict is None:
                return matches(self.where, task)
            if isinstance(verdict, QueryError):
                raise verdict
            return verdict
        except QueryError as exc:
            self._fail("bad_filter", str(exc), exc.path or None)
            return False

    async def _judged(self, tasks: Sequence[Task]) -> dict[_VerdictKey, _Verdict]:
        """The verdicts on ``tasks`` from a match thread (none needed when the group is
        not offloaded: it matches on the loop)."""
        if not self.offloaded or not tasks:
            return {}
        return await self.manager.judge(self.where, tasks)

    async def _kept(self, tasks: list[Task]) -> list[Task]:
        """Those of ``tasks`` that match (an offloaded group's verdicts from a match
        thread)."""
        with self._given(await self._judged(tasks)):
            return [t for t in tasks if self._matches(t)]

    @contextlib.contextmanager
    def _given(self, verdicts: dict[_VerdictKey, _Verdict]) -> Iterator[None]:
        """The verdicts :meth:`_matches` takes meanwhile (a synchronous step: no other
        step of the group runs before they are taken back)."""
        self._verdicts = verdicts
        try:
            yield
        finally:
            self._verdicts = {}

    # -- the inbox of an offloaded group ------------------------------------------

    def offer(self, kind: str, subject: Task | str, data: Any = None) -> None:
        """Take an event's change (``task.deleted``: its id; ``task.progress``: its
        progress in ``data``): at once, or after the changes before it when offloaded."""
        if not self.offloaded or (self.buffer is not None and not self._inbox):
            # (while the snapshot is read a change is only kept, with no verdict)
            self._take(kind, subject, data)
            return
        if self.failed is not None:
            return
        self._inbox.append((kind, subject, data))
        if len(self._inbox) > MAX_BEHIND:
            self._fail("bad_filter", f"the live query's $regex matches too slowly to keep up "
                                     f"with the changes (more than {MAX_BEHIND} waiting): "
                                     "simplify the pattern")
            self._inbox.clear()
            return
        if self._pump is None or self._pump.done():
            self._pump = asyncio.ensure_future(self._drain())

    def _take(self, kind: str, subject: Task | str, data: Any) -> None:
        if isinstance(subject, str):
            self.deleted(subject)
        elif kind == "task.progress":
            self.progress(subject, data)
        else:
            self.apply(subject)

    def _wanted(self, kind: str, subject: Task | str, data: Any) -> list[Task]:
        """The tasks whose verdicts a change needs, as the group stands."""
        if isinstance(subject, str) or (self.limited and subject.id in self.members):
            return []  # a deletion, or a change of a window's member: no match needed
        if kind != "task.progress":
            return [subject]
        if not isinstance(data, Progress):
            return []
        wanted = [replace(subject, progress=data)]
        member = self.members.get(subject.id)
        if member is not None:
            wanted.append(replace(member[0], progress=data))
        return wanted

    async def _drain(self) -> None:
        """Take the waiting changes in order: the verdicts of all of them from one trip
        to a match thread, then each change (another trip first when the group changed
        meanwhile so that it needs one more: a verdict depends only on the task)."""
        while self._inbox and self.failed is None:
            batch = list(self._inbox)
            self._inbox.clear()
            verdicts = await self._judged([t for change in batch for t in self._wanted(*change)])
            for change in batch:
                while self.failed is None:
                    wanted = [t for t in self._wanted(*change) if _verdict_key(t) not in verdicts]
                    if not wanted:
                        break
                    verdicts.update(await self._judged(wanted))
                if self.failed is not None:
                    return
                with self._given(verdicts):
                    try:
                        self._take(*change)
                    except Exception:
                        log.exception("live query failed on an event")

    # -- changes ----------------------------------------------------------------

    def apply(self, task: Task) -> None:
        if self.buffer is not None:
            old = self.buffer.get(task.id)
            if old is None or old.version < task.version:
                self.buffer[task.id] = task
            return
        if self.limited:
            if task.id in self.members:
                self.left_at[task.id] = max(task.version, self.left_at.get(task.id, 0))
                self._mark_dirty()
            elif self._matches(task):
                self._mark_dirty()
            return
        self._apply(task, fan=True)

    def _apply(self, task: Task, fan: bool) -> None:
        task_id = task.id
        seen = self.seen.get(task_id)
        if seen is not None and task.version <= seen:
            return
        self.seen[task_id] = task.version
        if len(self.seen) > _SEEN_CAP:
            for key in list(self.seen)[:_SEEN_CAP // 4]:
                if key not in self.members:
                    del self.seen[key]
        member = self.members.get(task_id)
        if self._matches(task):
            enc = self.encode(task)
            self.members[task_id] = (task, enc)
            if member is None and self._overflowed():
                return
            if fan:
                if member is None:
                    self._added(enc)
                else:
                    self._changed(enc)
        elif member is not None:
            del self.members[task_id]
            if fan:
                self._removed(task_id, task.version)

    def progress(self, task: Task, progress: Any) -> None:
        """Full-rate progress of a running task (the event's task is the snapshot its
        run started with: the stored version moves on with every progress it stores,
        so the run is recognised by its attempt)."""
        if self.buffer is not None or not isinstance(progress, Progress):
            return
        member = self.members.get(task.id)
        if self.limited:
            # the window is read again from the storage, which may not hold this
            # progress yet: the read shows it instead (see _progressed)
            if member is not None:
                self._progressed_at(task, progress)
                if member[0].progress != progress:
                    self._mark_dirty()
            elif self._enters(task, progress) is not None:  # a read is due
                self._progressed_at(task, progress)
                self._mark_dirty()
            return
        if member is None:
            entering = self._enters(task, progress)
            if entering is not None:
                enc = self.encode(entering)
                self.members[task.id] = (entering, enc)
                if not self._overflowed():
                    self._added(enc)
            return
        current = member[0]
        if (current.status is not Status.RUNNING or current.attempts != task.attempts
                or current.progress == progress):
            return
        # a progress stored by another process's worker comes with the version it
        # made and its time (the event's task); full-rate progress of this hub's runs
        # keeps them
        newer = task.version > current.version
        patched = replace(current, progress=progress,
                          version=task.version if newer else current.version,
                          updated_at=task.updated_at if newer else current.updated_at)
        if self._matches(patched):
            enc = self.encode(patched)
            self.members[task.id] = (patched, enc)
            self._changed(enc)
        else:
            del self.members[task.id]
            self._removed(task.id, patched.version)  # that of the change taking it out

    def _enters(self, task: Task, progress: Progress) -> Task | None:
        """The running task, with this progress, when the progress makes it match (a
        task the query takes by its progress); None when it does not, or when a later
        version of the task (its end) was seen already."""
        if task.status is not Status.RUNNING:
            return None
        seen = self.seen.get(task.id)
        if seen is not None and seen > task.version:
            return None
        patched = replace(task, progress=progress)
        return patched if self._matches(patched) else None

    def deleted(self, task_id: str) -> None:
        if self.buffer is not None:
            self.buffer[task_id] = None
            return
        if task_id in self.members:
            if self.limited:
                self.gone.add(task_id)
                self._mark_dirty()
                return
            del self.members[task_id]
            self._removed(task_id, None)

    # -- limited windows ----------------------------------------------------------

    def _mark_dirty(self) -> None:
        self.dirty = True
        if self.ready:
            self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._refresh())

    async def _refresh(self) -> None:
        storage = self.manager.state.app.storage
        while self.dirty and self.subs:
            await asyncio.sleep(REFRESH_DELAY)
            self.dirty = False
            try:
                tasks = await storage.find(self.query)
            except QueryError as exc:  # a $regex that ran too long on a new value
                self._fail("bad_filter", str(exc), exc.path or None)
                return
            except Exception:
                log.exception("live query could not refresh its window")
                self.dirty = True
                await asyncio.sleep(1.0)
                continue
            # a newer progress may take a task out of the window as well as into it
            progressed = [self._progressed(t) for t in tasks]
            kept = {id(p) for p in await self._kept(
                [p for p, t in zip(progressed, tasks, strict=True) if p is not t])}
            if self.failed is not None:
                return
            tasks = [p for p, t in zip(progressed, tasks, strict=True) if p is t or id(p) in kept]
            tasks = await self._with_entrants(tasks)
            fresh = {t.id: t for t in tasks}
            for task_id in [k for k in self.progressed if k not in fresh]:
                del self.progressed[task_id]
            for task_id in [k for k in self.members if k not in fresh]:
                old = self.members.pop(task_id)[0]
                self._removed(task_id, None if task_id in self.gone
                              else max(old.version, self.left_at.get(task_id, 0)))
            for task in tasks:
                member = self.members.get(task.id)
                if member is None:
                    enc = self.encode(task)
                    self.members[task.id] = (task, enc)
                    self._added(enc)
                elif member[0].version < task.version or (
                        member[0].version == task.version and member[0].progress != task.progress):
                    enc = self.encode(task)
                    self.members[task.id] = (task, enc)
                    self._changed(enc)
            # keep the window's order in memory
            self.members = {t.id: self.members[t.id] for t in tasks}
            # a member read before its change or deletion leaves at a later read
            self.left_at = {k: v for k, v in self.left_at.items() if k in self.members}
            self.gone &= self.members.keys()

    async def _with_entrants(self, tasks: list[Task]) -> list[Task]:
        """The window read from the storage, with the running tasks that a full-rate
        progress (newer than what the storage holds) makes match: they are read,
        given that progress, and sorted into the window when they belong there."""
        found = {t.id for t in tasks}
        outside = [k for k in self.progressed if k not in found]
        if not outside:
            return tasks
        read = await self.manager.state.app.storage.get_many(outside)
        entrants = await self._kept([t for t in map(self._progressed, read)
                                     if t.status is Status.RUNNING])
        for task_id in set(outside) - {t.id for t in read}:  # deleted meanwhile
            self.progressed.pop(task_id, None)
        if not entrants:
            return tasks
        merged = sort_tasks([*tasks, *entrants], self.query.sort)
        return merged if self.query.limit is None else merged[:self.query.limit]

    def _progressed_at(self, task: Task, progress: Progress) -> None:
        self.progressed[task.id] = (task.attempts, progress)
        if len(self.progressed) > _SEEN_CAP:
            for key in list(self.progressed)[:_SEEN_CAP // 4]:
                del self.progressed[key]

    def _progressed(self, task: Task) -> Task:
        """``task`` as read from the storage, with the newer full-rate progress of its
        run when one came as an event (the storage holds it a little later)."""
        seen = self.progressed.get(task.id)
        if seen is None:
            return task
        if task.status is not Status.RUNNING or task.attempts != seen[0]:
            del self.progressed[task.id]
            return task
        return task if task.progress == seen[1] else replace(task, progress=seen[1])


class LiveManager:
    """Every live query of one hub, fed by one listener on the app's event bus."""

    def __init__(self, state: WSState) -> None:
        self.state = state
        self.groups: dict[tuple[Any, ...], _Group] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._threads: ThreadPoolExecutor | None = None

    async def judge(self, where: Filter, tasks: Sequence[Task]) -> dict[_VerdictKey, _Verdict]:
        """Whether ``where`` matches each of ``tasks``, worked out on a match thread (a
        ``$regex`` may take up to its limit on one value; the loop goes on meanwhile)."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(MATCH_THREADS,
                                               thread_name_prefix="conveyor-live-match")
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, _judge, where, list(tasks))

    async def subscribe(self, conn: Connection, msg_id: Any, key: str, raw_filter: Any,
                        raw_sort: Any, raw_limit: Any, raw_fields: Any) -> LiveSub | None:
        cred = conn.credential
        if raw_filter is not None and not isinstance(raw_filter, dict):
            raise QueryError("a filter is an object of field: condition entries", "filter")
        parse_filter(raw_filter, bounded=True)  # errors name the client's filter
        query = parse_query(raw_filter, raw_sort, raw_limit, 0)
        if query.limit is not None and query.limit > MAX_LIVE_RESULT:
            # the window is held in the hub, and read again whole on changes at its edge
            raise QueryError(f"a live query's limit is at most {MAX_LIVE_RESULT:,} (the "
                             f"bound of one without a limit), not {query.limit}", "limit")
        query_filter = query.filter
        fields = _fields(raw_fields)
        readable = cred.readable
        if not readable:
            raise ProtocolError("forbidden", f"credential {cred.name!r} may not read any action")
        if "*" in readable:
            where = query.filter
        else:
            where = scoped(read_scope(readable), query.filter)
            query = replace(query, filter=where)
        # the parsed sort, not the raw one: the order of a sort object's keys is its
        # precedence (only a filter's keys may be put in canonical order)
        group_key = (_json.dumps(_canonical(raw_filter)), query.sort, query.limit, fields,
                     readable)
        group = self.groups.get(group_key)
        sub = LiveSub(conn, msg_id, key, group) if group is not None else None
        if group is None:
            group = _Group(self, group_key, where, query, fields,
                           offloaded=has_regex(query_filter.root))
            self.groups[group_key] = group
            self._listen()
            sub = LiveSub(conn, msg_id, key, group)
            group.join(sub)
            group.start()
        else:
            assert sub is not None
            group.join(sub)
        return sub

    def unsubscribe(self, sub: LiveSub) -> None:
        group = sub.group
        group.leave(sub)
        if group.empty and group.ready:
            self._drop(group)

    def _drop(self, group: _Group) -> None:
        if self.groups.get(group.key) is group and group.empty:
            del self.groups[group.key]
            group.close()
        if not self.groups and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _listen(self) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = self.state.app.bus.on("task.*", self._on_event)
            self.state.app._ensure_relay()

    def close(self) -> None:
        for group in list(self.groups.values()):
            group.close()
        self.groups.clear()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None

    def _on_event(self, event: Event) -> None:
        kind = event.type
        if kind in _IGNORED:
            return
        groups = list(self.groups.values())
        if kind == "task.deleted":
            if event.task_id is not None:
                for group in groups:
                    group.offer(kind, event.task_id)
            return
        task = event.task
        if task is None:
            return
        if kind == "task.progress":
            progress = event.data.get("progress")
            for group in groups:
                group.offer(kind, task, progress)
            return
        for group in groups:
            try:
                group.offer(kind, task)
            except Exception:
                log.exception("live query failed on an event")


def _fields(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(f, str) for f in raw):
        raise ProtocolError("bad_message", "'fields' must be a list of task field names")
    unknown = [f for f in raw if f not in _TASK_FIELDS]
    if unknown:
        raise ProtocolError("bad_message", f"unknown task field(s) in 'fields': "
                                           f"{', '.join(repr(f[:50]) for f in unknown[:5])}")
    return tuple(dict.fromkeys(["id", "version", *raw]))


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value

