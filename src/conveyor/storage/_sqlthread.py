"""The threads of a SQLite storage object: one writer, with group commit, and a
pool of readers.

All writes of one storage object run on one thread that owns the writing
connection (:class:`DBThread`); reads run on a few threads of their own, each
with its connection (:class:`ReaderPool`), beside the writes (WAL).
Writes queued at the same time share one transaction: each runs inside its
own SAVEPOINT (so one failing write rolls back only itself), then a single
COMMIT makes them all durable at once: with ``synchronous=FULL`` that is one
fsync for a worker's finished tasks, its next claim and its log lines
together. A caller's future completes only after the commit.

Waiting for the write lock held by another process is done here rather than
by SQLite's busy handler, whose sleeps grow to 100 ms: short sleeps (0.2 ms
doubling to 5 ms) until the busy timeout.

Fork safety: SQLite keeps process-wide state, mutexes and the record of the
file locks its connections hold, which a forked child inherits as it was. A
child forked while a thread was inside SQLite waits forever on a mutex that
thread held; a child that opens a database its parent had open believes it
holds the parent's locks (POSIX locks are not inherited) and may read a WAL
its parent then deletes. So every thread keeps its connection in a
:class:`ConnSlot`, held around its SQLite calls: before a fork, the forking
thread takes every slot (waiting for the calls under way) and closes its
connection, so the child inherits no SQLite state at all; after the fork the
slots are let go, and each thread opens its connection again on its next use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from ..errors import StorageError
from ..query._regex import take_timeout

__all__ = ["LOCK_STALL", "ConnSlot", "DBThread", "ReaderPool", "begin_immediate", "is_busy",
           "retry_busy"]

T = TypeVar("T")

MAX_GROUP = 64


def is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


LOCK_STALL = 1.0
"""Seconds of waiting for the write lock that make a stall (see ``DBThread.stall_ended``)."""


def retry_busy(fn: Callable[[], T], timeout: float) -> T:
    """``fn()``, called again after short sleeps while another connection holds the
    lock it needs, until ``timeout`` seconds have passed (then its error is raised)."""
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.005)


def _reporting_regex_timeouts(fn: Callable[[sqlite3.Connection], T]
                              ) -> Callable[[sqlite3.Connection], T]:
    """``fn`` whose statement failed because a ``$regex`` ran too long raises that
    :class:`QueryError` (SQLite says only that a function raised)."""
    def run(conn: sqlite3.Connection) -> T:
        try:
            return fn(conn)
        except sqlite3.OperationalError as exc:
            if "user-defined function raised exception" in str(exc):
                error = take_timeout()
                if error is not None:
                    raise error from None
            raise
    return run


def begin_immediate(conn: sqlite3.Connection, timeout: float) -> None:
    """BEGIN IMMEDIATE, retrying with short sleeps while another writer holds the lock."""
    try:
        retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"), timeout)
    except sqlite3.OperationalError as exc:
        what = "the database is busy" if is_busy(exc) else "cannot begin a write"
        raise StorageError(f"{what}: {exc}") from None


_slots: weakref.WeakSet[ConnSlot] = weakref.WeakSet()
_slots_lock = threading.Lock()  # held by a fork from before to after: no slot is made meanwhile
_taken: list[ConnSlot] = []


class ConnSlot:
    """One thread's SQLite connection and the lock it holds around its calls into
    SQLite (``with slot:``). A fork closes the connection (see the module's doc):
    ``conn`` is then None, and the thread opens it again on its next use."""

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        with _slots_lock:
            _slots.add(self)

    def __enter__(self) -> ConnSlot:
        self._lock.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._lock.release()

    def close(self) -> None:
        """Close the connection (the caller holds the slot)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


def _before_fork() -> None:
    _slots_lock.acquire()
    for slot in list(_slots):
        slot._lock.acquire()  # the thread's SQLite call under way ends first
        _taken.append(slot)
        slot.close()


def _after_fork() -> None:
    while _taken:
        _taken.pop()._lock.release()
    _slots_lock.release()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork,
                        after_in_child=_after_fork)


def _resolve(future: concurrent.futures.Future[Any], value: Any) -> None:
    """Hand ``value`` back, unless the future is done already: cancelled by a caller
    that stopped waiting (its event loop may even be gone)."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if not future.done():
            future.set_result(value)


def _reject(future: concurrent.futures.Future[Any], exc: BaseException) -> None:
    """Hand ``exc`` back, unless the future is done already (see :func:`_resolve`)."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if not future.done():
            future.set_exception(exc)


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = _reporting_regex_timeouts(fn)
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


class DBThread:
    """A thread that owns a connection and runs writes on it in order, those queued
    together in one transaction."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], busy_timeout: float,
                 after_commit: Callable[[], None], name: str = "conveyor-sqlite") -> None:
        self._connect = connect
        self._busy_timeout = busy_timeout
        self._after_commit = after_commit
        self._jobs: deque[_Job | None] = deque()
        self._ready = threading.Condition()
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._closed = False
        self._slot = ConnSlot()
        self.stall_ended: float | None = None
        """When (``time.monotonic()``) a write last got the write lock after waiting
        for it more than ``LOCK_STALL`` seconds, or gave up waiting (see
        ``SQLiteStorage.recover``)."""
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    async def wait_started(self) -> None:
        """Wait until the connection is open (or raise why it did not open).

        A caller that is cancelled leaves the opening alone (awaiting the thread's
        future wrapped would cancel it): others may wait for the same opening."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if waiter.done():  # cancelled: the caller is gone
                return
            exc = self._started.exception()  # never cancelled: no caller holds it
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

        def done(_: concurrent.futures.Future[None]) -> None:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(settle)

        self._started.add_done_callback(done)
        await waiter

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn(connection)`` as a write (inside a transaction, committed before its
        future completes)."""
        job = _Job(fn)
        with self._ready:
            if self._closed:
                raise StorageError("storage is closed")
            self._jobs.append(job)
            self._ready.notify()
        return job.future

    def close(self, timeout: float = 10.0) -> None:
        """Finish queued jobs, close the connection, end the thread."""
        with self._ready:
            if not self._closed:
                self._closed = True
                self._jobs.append(None)
                self._ready.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the thread ---------------------------------------------------------------

    def _main(self) -> None:
        slot = self._slot
        try:
            with slot:
                slot.conn = self._connect()
        except BaseException as exc:
            _reject(self._started, exc)
            self._fail_all(StorageError("storage did not open"))
            return
        _resolve(self._started, None)
        try:
            while True:
                with self._ready:
                    while not self._jobs:
                        self._ready.wait()
                    if self._jobs[0] is None:
                        break
                    jobs: list[_Job] = []
                    while self._jobs and len(jobs) < MAX_GROUP:
                        job = self._jobs[0]
                        if job is None:
                            break
                        jobs.append(job)
                        self._jobs.popleft()
                with slot:
                    conn = slot.conn
                    if conn is None:  # closed for a fork: open it again
                        try:
                            conn = slot.conn = self._connect()
                        except BaseException as exc:
                            for job in jobs:
                                if job.future.set_running_or_notify_cancel():
                                    _reject(job.future, exc)
                            continue
                    self._run_writes(conn, jobs)
        finally:
            with slot:
                slot.close()
            self._fail_all(StorageError("storage is closed"))

    def _fail_all(self, exc: BaseException) -> None:
        with self._ready:
            jobs, self._jobs = list(self._jobs), deque()
        for job in jobs:
            if job is not None:
                _reject(job.future, exc)

    def _run_writes(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        asked = time.monotonic()
        try:
            begin_immediate(conn, self._busy_timeout)
        except BaseException as exc:
            self.stall_ended = time.monotonic()
            for job in jobs:
                _reject(job.future, exc)
            return
        if time.monotonic() - asked > LOCK_STALL:
            self.stall_ended = time.monotonic()
        outcomes: list[tuple[bool, Any]] = []
        if len(jobs) == 1:  # alone in its transaction: no savepoint needed
            job = jobs[0]
            try:
                value = job.fn(conn)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                _reject(job.future, exc)
                return
            self._after_commit()
            _resolve(job.future, value)
            return
        try:
            for job in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(conn)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((True, value))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in jobs:
                _reject(job.future, exc)
            return
        self._after_commit()
        for job, (ok, value) in zip(jobs, outcomes, strict=True):
            if ok:
                _resolve(job.future, value)
            else:
                _reject(job.future, value)


def _run_read(conn: sqlite3.Connection, job: _Job, busy_timeout: float) -> None:
    if not job.future.set_running_or_notify_cancel():
        return
    try:
        result = retry_busy(lambda: job.fn(conn), busy_timeout)
    except BaseException as exc:
        _reject(job.future, exc)
    else:
        _resolve(job.future, result)


class ReaderPool:
    """Threads that run reads, each on a connection of its own, taking them from one
    queue: in WAL mode reads run beside the writer's transactions and beside each
    other, so a long read holds up one thread, and the next read goes to another.
    Threads are started as reads find none idle, up to ``size``; each opens its
    connection on its first read (and again after a fork)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], busy_timeout: float,
                 size: int, name: str = "conveyor-sqlite-read") -> None:
        self._connect = connect
        self._busy_timeout = busy_timeout
        self._size = size
        self._name = name
        self._jobs: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._waiting = 0  # threads waiting for a job
        self._closed = False

    @property
    def threads(self) -> int:
        """Reader threads started so far."""
        return len(self._threads)

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> concurrent.futures.Future[Any]:
        job = _Job(fn)
        with self._ready:
            if self._closed:
                raise StorageError("storage is closed")
            self._jobs.append(job)
            if len(self._jobs) > self._waiting and len(self._threads) < self._size:
                thread = threading.Thread(target=self._main, name=self._name, daemon=True)
                try:
                    thread.start()
                except RuntimeError as exc:  # the process's thread limit
                    if not self._threads:  # no reader to take it later
                        self._jobs.remove(job)
                        raise StorageError(f"cannot start a reader thread: {exc}") from None
                else:
                    self._threads.append(thread)
            self._ready.notify()
        return job.future

    def close(self, timeout: float = 10.0) -> None:
        """Take no more reads; finish those under way and those queued, as the writer
        does its queued writes; end the threads. Reads still queued after ``timeout``
        seconds fail."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._ready:
            jobs, self._jobs = list(self._jobs), deque()
        for job in jobs:
            _reject(job.future, StorageError("storage is closed"))

    def _main(self) -> None:
        slot = ConnSlot()
        try:
            while True:
                with self._ready:
                    while not self._jobs and not self._closed:
                        self._waiting += 1
                        try:
                            self._ready.wait()
                        finally:
                            self._waiting -= 1
                    if not self._jobs:  # closed, and nothing left to read
                        return
                    job = self._jobs.popleft()
                with slot:
                    if slot.conn is None:  # its first read, or closed for a fork
                        try:
                            slot.conn = self._connect()
                        except BaseException as exc:
                            if job.future.set_running_or_notify_cancel():
                                _reject(job.future, exc)
                            continue
                    _run_read(slot.conn, job, self._busy_timeout)
        finally:
            with slot:
                slot.close()
