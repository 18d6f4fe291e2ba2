"""The SQLite backend (``sqlite:///path/to/file.db``): the embedded default.

- WAL journal; ``synchronous=FULL`` by default (every commit is on disk when
  ``add`` returns), ``synchronous=NORMAL`` on request (faster; a power loss
  may lose the last commits, a process crash loses nothing).
- One writer at a time: every write is one ``BEGIN IMMEDIATE`` transaction,
  and waiting for the lock is bounded by a busy timeout.
- Database work runs on threads of the storage object's own, so the event
  loop never blocks on the disk, and methods may be awaited from any event
  loop: writes on one writer thread (with group commit), reads on up to
  :data:`READERS` reader threads, each with its own connection, so that a long
  read holds up neither the writes nor the other reads.
- The change feed is a table filled by triggers. A watcher thread notices
  commits from other processes by polling ``PRAGMA data_version`` every
  ``poll_interval`` seconds (2 ms by default, a few microseconds each), and
  commits of this process at once.
- The schema is created and migrated on open from the versioned ``.sql``
  files in ``storage/sql/sqlite/migrations``; a database of a newer schema
  version is refused.

URL options: ``sqlite:///tasks.db?synchronous=normal&busy_timeout=30&poll_interval=0.002``,
and ``mode=ro`` (read-only: to inspect a backup or a file one may not write,
with ``conveyor ls``/``show``; nothing is written, the schema not even migrated,
and every write is a :class:`StorageError`). Three slashes then a relative path,
four for an absolute one. ``busy_timeout`` and ``poll_interval`` are seconds,
more than 0 and at most :data:`MAX_OPTION_SECONDS` (an hour); an option is
given once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import pathlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from .. import _json
from ..errors import (
    ConfigurationError,
    DuplicateTask,
    SchemaError,
    StorageError,
    TaskNotFound,
)
from ..model import (
    LogLevel,
    LogRecord,
    Progress,
    Status,
    Task,
    TaskSpec,
    new_token,
)
from ..query import Filter, Query, compile_sort_sqlite, compile_sqlite, parse_filter
from ..query import register_sqlite_functions as _register_functions
from ..query._regex import take_timeout
from . import _ops
from ._codec import claimed_to_task, encode_scope, row_to_task, task_to_row
from ._feed import Fanout, FanoutFeed, opened_start
from ._sqlfile import load_migrations, load_queries
from ._sqlthread import ConnSlot, DBThread, ReaderPool, begin_immediate, is_busy, retry_busy
from ._url import MAX_OPTION_SECONDS, given_twice
from .base import (
    AddResult,
    Change,
    ClaimLimits,
    Completion,
    HeartbeatReply,
    Lease,
    NewLog,
    RecoverReport,
    Storage,
    WorkerInfo,
)

__all__ = ["FEED_RETENTION", "MAX_OPTION_SECONDS", "WAL_SIZE_LIMIT", "SQLiteStorage",
           "parse_sqlite_url"]

T = TypeVar("T")
log = logging.getLogger("conveyor.storage.sqlite")
Q = load_queries("sqlite")
_CHANGE_QUERIES = (Q["foreign_wakeups_after"], Q["foreign_changes_after"], Q["changes_after"])
MIGRATIONS = load_migrations("sqlite")
SCHEMA_VERSION = MIGRATIONS[-1].version
MIN_SQLITE = (3, 38, 0)
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_STATUS = {s.value: s for s in Status}
WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes the ``-wal`` file is cut back to once checkpoints catch up (``journal_size_limit``)."""
_UNREAD_CHECK = 1.0  # seconds between the watcher's looks for streams nobody reads
_SWEEP_GRACE = 2.0  # seconds after a stall on the write lock during which sweeps skip
FEED_RETENTION = 3600.0
"""Seconds the change feed keeps its entries (consumers only read recent ones)."""
READERS = 2
"""Reader threads (each with its own connection) a storage object starts at most:
the second when a read finds the first busy."""


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``sqlite:///path?opt=v`` into the file path and options."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    if parts.netloc or not url[len("sqlite:"):].startswith("//"):
        raise ConfigurationError(
            f"bad sqlite URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    if "#" in url.split("?", 1)[0]:  # urlsplit would cut the path there: another file
        raise ConfigurationError(
            f"bad sqlite URL {url!r}: a path with '#' cannot be given as a URL; rename the "
            "file, or pass SQLiteStorage(path) to Conveyor")
    if parts.fragment or url.endswith("#"):
        raise ConfigurationError(f"bad sqlite URL {url!r}: it takes no '#' fragment")
    # taken as written, not percent-decoded: a URL that named the file 'a%20b.db' still does
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ConfigurationError(f"sqlite URL {url!r} names no file")
    if path.endswith("/"):  # it made a file named as the folder, then could not find it
        raise ConfigurationError(
            f"bad sqlite URL {url!r}: it names a folder (it ends with '/'), not a file: "
            "write the file's name after it, such as sqlite:///data/tasks.db")
    if path == ":memory:":
        raise ConfigurationError("sqlite :memory: cannot be shared between threads: use memory://")
    options = parse_qsl(parts.query, keep_blank_values=True)
    twice = given_twice([key for key, _ in options])
    if twice is not None:
        raise ConfigurationError(f"bad sqlite URL {url!r}: option {twice!r} given twice")
    return path, dict(options)


def _seconds_option(name: str, value: Any) -> float:
    """``value`` of the option ``name`` (``busy_timeout``, ``poll_interval``) when it is a
    number of seconds > 0 and at most :data:`MAX_OPTION_SECONDS`; else
    :class:`ConfigurationError`. NaN and infinity passed a ``<= 0`` check: a write
    then waited for the lock forever, and the watcher spun (NaN) or died (past what
    ``threading`` can wait)."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not 0 < value <= MAX_OPTION_SECONDS):
        raise ConfigurationError(
            f"sqlite option {name} must be a number of seconds > 0 and at most "
            f"{MAX_OPTION_SECONDS:.0f} (an hour), not {value!r}")
    return float(value)


class SQLiteStorage(FanoutFeed, Storage):
    """Tasks in a SQLite file. See the module docstring for the options."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL",
                 busy_timeout: float = 30.0, poll_interval: float = 0.002,
                 url: str | None = None, read_only: bool = False) -> None:
        sync = synchronous.upper() if isinstance(synchronous, str) else None
        if sync not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, not {synchronous!r}")
        busy_timeout = _seconds_option("busy_timeout", busy_timeout)
        poll_interval = _seconds_option("poll_interval", poll_interval)
        if not isinstance(read_only, bool):  # read_only="false" opened the file read-only
            raise ConfigurationError(f"read_only must be True or False, not {read_only!r}")
        if url is not None and not isinstance(url, str):
            raise ConfigurationError(f"url must be a string, not {url!r}")
        self.path = os.fspath(path)
        self.url = url or f"sqlite:///{self.path}"
        self.synchronous = sync
        self.busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        self.read_only = read_only
        self.instance_id = uuid.uuid4().hex
        self._db: DBThread | None = None
        self._readers: ReaderPool | None = None
        self._opening: DBThread | None = None
        self._open_lock = threading.Lock()
        self._opened = False
        self._closed = False
        self._feed = Fanout(self.instance_id, on_first=self._start_watcher)
        self._watcher: threading.Thread | None = None
        self._kick = threading.Event()
        self._stop_watcher = threading.Event()
        # the change feed's position when open() read it, and when: the start of the
        # feed for a watcher started soon after (changes made after open() returned,
        # before the watcher thread's first read, were missed)
        self._p0: tuple[int, float] | None = None

    def after_fork(self) -> SQLiteStorage:
        """In a forked child: a storage on the same file with the same options,
        which opens its own connection and thread (SQLite connections must not
        cross a fork; the parent's is left alone)."""
        return SQLiteStorage(self.path, synchronous=self.synchronous,
                             busy_timeout=self.busy_timeout, poll_interval=self.poll_interval,
                             url=self.url, read_only=self.read_only)

    @classmethod
    def from_url(cls, url: str) -> SQLiteStorage:
        """The storage for a ``sqlite:///path`` URL (see the guide for its options)."""
        path, options = parse_sqlite_url(url)
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            if key == "synchronous":
                kwargs["synchronous"] = value
            elif key in ("busy_timeout", "poll_interval"):
                try:
                    kwargs[key] = float(value)
                except ValueError:
                    raise ConfigurationError(f"sqlite URL option {key} must be a number of "
                                             f"seconds, not {value!r}") from None
            elif key == "mode":
                if value not in ("ro", "rw"):
                    raise ConfigurationError(
                        f"sqlite URL option mode must be ro (read-only) or rw, not {value!r}")
                kwargs["read_only"] = value == "ro"
            else:
                raise ConfigurationError(
                    f"unknown sqlite URL option {key!r} (known: synchronous, busy_timeout, "
                    "poll_interval, mode)")
        return cls(path, url=url.split("?", 1)[0], **kwargs)

    # -- plumbing -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StorageError(
                f"conveyor needs SQLite >= {'.'.join(map(str, MIN_SQLITE))}; "
                f"this Python has {sqlite3.sqlite_version}")
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise StorageError(
                f"cannot open database {self.path!r}: folder {folder!r} does not exist")
        try:
            # timeout=0: waits for the write lock happen in _sqlthread, with short sleeps
            if self.read_only:  # the file as it is: no journal mode set, nothing written
                conn = self._connect_read_only()
            else:
                conn = sqlite3.connect(self.path, timeout=0.0, isolation_level=None,
                                       check_same_thread=False)
            try:  # before anything is written (the WAL mode is, in the file's header)
                retry_busy(lambda: self._refuse_foreign(conn), self.busy_timeout)
            except BaseException:
                conn.close()
                raise
            if self.read_only:
                _register_functions(conn)
                return conn
            retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone(),
                       self.busy_timeout)
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            # the -wal file grows while a long read holds back checkpoints; once they
            # catch up it is cut back to this size (it kept its peak size until the
            # last connection closed)
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT:d}")
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open database {self.path!r}: {exc}") from None
        _register_functions(conn)
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` as a read, on a reader thread: reads run beside the
        writes and beside each other (WAL), a long one holds up neither."""
        return await self._submit(fn, write=False)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` as a write on the database thread. Writes queued
        together share one transaction (group commit), each in its own savepoint."""
        return await self._submit(fn, write=True)

    async def _submit(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        if not self._opened:
            await self.open()
        db = self._db
        readers = self._readers
        if db is None or readers is None:
            raise StorageError("storage is closed")
        if write and self.read_only:
            raise StorageError(f"database {self.path!r} is opened read-only (mode=ro): "
                               "nothing can be written")
        try:
            result: T = await asyncio.wrap_future(
                db.submit(fn) if write else readers.submit(fn))
        except sqlite3.IntegrityError:
            raise  # a unique key taken: the callers handle it
        except sqlite3.DatabaseError as exc:
            # failed for the database's sake: a disk full, a file made read-only, an
            # I/O error, a lock held past busy_timeout
            if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
                raise StorageError(f"the database is busy: {exc}") from None
            raise StorageError(f"cannot use database {self.path!r}: {exc}") from None
        return result

    def _committed(self) -> None:
        if self._feed.active and self._feed.wants_own():
            self._kick.set()

    def _connect_read_only(self) -> sqlite3.Connection:
        """A read-only connection (``mode=ro``). A file in WAL mode (every file conveyor
        makes, and a ``.backup`` copy) is read through its ``-shm`` index, which SQLite
        creates beside it: in a folder one may not write, it is read as it is instead
        (``immutable=1``: a snapshot; changes made meanwhile are not seen)."""
        if not os.path.exists(self.path):
            raise StorageError(f"cannot open database {self.path!r} read-only: no such file")
        uri = pathlib.Path(os.path.abspath(self.path)).as_uri()
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=0.0,
                               isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA user_version").fetchone()
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            text = str(exc)
            if "readonly" not in text and "unable to open" not in text:
                raise
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=0.0,
                               isolation_level=None, check_same_thread=False)

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """A file with a schema version but none of conveyor's tables is another
        application's (``user_version`` is its too), and one that development versions
        of the first day made cannot be migrated: both refused, unchanged (this runs on
        every connection, before anything is written)."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version and not conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE name = 'conveyor_tasks'").fetchone()[0]:
            raise SchemaError(
                f"database {self.path!r} is not a conveyor database: it has none of "
                f"conveyor's tables, and its schema version ({version}) is another "
                "application's; check the URL")
        if version and version < 4 and not any(
                row[1] == "batch" for row in conn.execute("PRAGMA table_info(conveyor_changes)")):
            # version 1 as development versions before 7d6c617 made it (a change row per
            # task by triggers): the later migrations do not apply to it
            raise SchemaError(
                f"database {self.path!r} was made by a development version of conveyor "
                "whose version-1 schema differs from the released one (its change feed "
                "has no batch column); it cannot be migrated: move its tasks to a new "
                "database")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise SchemaError(
                f"database {self.path!r} has schema version {current}, newer than this conveyor "
                f"knows ({SCHEMA_VERSION}): upgrade conveyor")
        if self.read_only and current != SCHEMA_VERSION:
            raise SchemaError(
                f"database {self.path!r} opened read-only (mode=ro) has schema version "
                f"{current}, and this conveyor reads version {SCHEMA_VERSION}: "
                + ("it is not a conveyor database, or an empty file" if not current else
                   "migrate a copy of it (without mode=ro) to read it"))
        if current == SCHEMA_VERSION:
            return
        begin_immediate(conn, self.busy_timeout)
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current == 0:
                existing = conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE name = 'conveyor_tasks'"
                ).fetchone()[0]
                if existing:
                    raise SchemaError(f"database {self.path!r} has conveyor tables but no version")
            # (a development file of the first day was refused by _refuse_foreign)
            for migration in MIGRATIONS:
                if migration.version > current:
                    for statement in _split_statements(migration.sql):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {migration.version:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def open(self) -> None:
        """Open the connection (on the database thread) and create or migrate the
        schema. Calls made meanwhile, from any loop, wait for the same opening; a
        caller that is cancelled leaves it running for the others."""
        with self._open_lock:  # never held across an await: other callers share the loop
            if self._opened:
                return
            db = self._opening
            if db is None:
                db = self._opening = DBThread(self._open_connection, self.busy_timeout,
                                              self._committed)
        try:
            await db.wait_started()  # a cancelled caller leaves it to the others
        except asyncio.CancelledError:
            raise
        except BaseException:
            with self._open_lock:
                if self._opening is db:
                    self._opening = None
            db.close()
            raise
        with self._open_lock:
            if self._opening is db:
                self._opening = None
                self._db = db
                self._readers = ReaderPool(self._connect, self.busy_timeout, READERS)
                self._opened = True
            elif self._db is not db:  # not opened by another caller: closed meanwhile
                raise StorageError("storage was closed while it opened")

    def _open_connection(self) -> sqlite3.Connection:
        """The database thread's connection, with the schema migrated."""
        conn = self._connect()
        try:
            self._migrate(conn)
            self._p0 = (int(conn.execute(Q["last_change"]).fetchone()[0]), time.monotonic())
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StorageError(f"cannot use database {self.path!r}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close connections and threads; the object may be opened again."""
        with self._open_lock:
            opening, self._opening = self._opening, None
            closing = self._opened and not self._closed
            if closing:
                self._closed = True
        if opening is not None:  # still opening (its callers may all have been cancelled)
            await asyncio.to_thread(opening.close)
        if not closing:
            return
        try:
            self._stop_watcher.set()
            self._kick.set()
            self._feed.close()
            if self._watcher is not None:
                await asyncio.to_thread(self._watcher.join, 5)
            with self._open_lock:
                db, self._db = self._db, None
                readers, self._readers = self._readers, None
            try:
                if readers is not None:
                    await asyncio.to_thread(readers.close)
            finally:
                if db is not None:
                    await asyncio.to_thread(db.close)
        finally:
            with self._open_lock:
                self._watcher = None
                self._stop_watcher = threading.Event()
                self._kick = threading.Event()
                self._feed = Fanout(self.instance_id, on_first=self._start_watcher)
                self._p0 = None
                self._opened = False
                self._closed = False

    # -- change feed ----------------------------------------------------------------

    def _start_watcher(self) -> None:
        self._kick.set()  # a watcher polling slowly for nobody reads at once
        if self._watcher is None and not self._closed:
            self._watcher = threading.Thread(target=self._watch,
                                             args=(opened_start(self._p0),),
                                             name="conveyor-sqlite-watch", daemon=True)
            self._watcher.start()

    def _watch(self, last: int | None) -> None:
        """The watcher thread: notice commits (PRAGMA data_version changes when
        another connection commits) and publish the new change-feed rows after
        ``last`` (None: from the position when it starts)."""
        slot = ConnSlot()  # its connection, closed by a fork (see _sqlthread)
        version = -1
        failures = 0
        feed = self._feed
        look_for_readers = time.monotonic() + _UNREAD_CHECK
        unread = False  # no stream is read: poll slowly, for nobody
        while not self._stop_watcher.is_set():
            if time.monotonic() >= look_for_readers:
                look_for_readers = time.monotonic() + _UNREAD_CHECK
                unread = feed.unread()
            try:
                with slot:
                    if slot.conn is None:
                        slot.conn = self._connect()
                        version = -1  # a new connection: read what a fork's pause hid
                    if last is None:
                        last = int(slot.conn.execute(Q["last_change"]).fetchone()[0])
                        version = slot.conn.execute("PRAGMA data_version").fetchone()[0]
                # (an app never closed whose loop ended: its watcher polled every few
                # milliseconds for the rest of the process; a new stream kicks it and
                # gets the changes since its last read, at most a second old)
                kicked = self._kick.wait(_UNREAD_CHECK if unread else self.poll_interval)
                if unread and feed.active:
                    unread = False
                if self._stop_watcher.is_set():
                    break
                if kicked:
                    self._kick.clear()
                else:
                    with slot:
                        if slot.conn is None:
                            continue
                        now_version = slot.conn.execute("PRAGMA data_version").fetchone()[0]
                    if now_version == version:
                        continue
                    version = now_version
                last = self._read_changes(slot, last)
                failures = 0
            except (sqlite3.Error, StorageError) as exc:
                # busy, or the file went away for a moment: try again, never give up
                failures += 1
                with slot:
                    if slot.conn is not None and slot.conn.in_transaction:
                        slot.conn.rollback()
                if failures in (1, 10) or failures % 1000 == 0:
                    log.warning("sqlite change watcher: %s (retrying)", exc)
                self._stop_watcher.wait(min(1.0, self.poll_interval * 2 ** min(failures, 9)))
        with slot:
            slot.close()

    def _wanted(self) -> int:
        """What the streams want now, as an index of ``_CHANGE_QUERIES``: 2 every
        change, 1 other writers' changes, 0 other writers' wake-ups."""
        if self._feed.wants_own():
            return 2
        return 1 if self._feed.wants_all() else 0

    def _read_changes(self, slot: ConnSlot, last: int) -> int:
        """Publish the changes after ``last``; returns the new position.

        When no stream wants this object's own changes, only other writers'
        rows are turned into Python objects. A connection closed by a fork
        leaves the position where it was (the watcher reads again once open)."""
        while True:
            with slot:
                conn = slot.conn
                if conn is None:
                    return last
                conn.execute("BEGIN")  # one snapshot for the rows and the end position
                try:
                    end = conn.execute(Q["last_change"]).fetchone()[0]
                    params = {"after": last, "upto": end, "origin": self.instance_id,
                              "limit": 1000}
                    wanted = self._wanted()
                    while True:
                        rows = conn.execute(_CHANGE_QUERIES[wanted], params).fetchall()
                        # a stream that started wanting more while the rows were read
                        # (events() called meanwhile) gets them: read again, wider
                        now = self._wanted()
                        if now <= wanted:
                            break
                        wanted = now
                finally:
                    conn.execute("COMMIT")
            if rows:
                changes: list[Change] = []
                for seq, task_id, version, status, event, origin, ts, batch in rows:
                    st = _STATUS[status]
                    if batch is None:
                        changes.append(Change(seq, task_id, version, st, event, origin, ts))
                    else:
                        changes.extend(Change(seq, tid, ver, st, event, origin, ts)
                                       for tid, ver in _json.loads(batch))
                self._feed.publish(changes)
            if len(rows) < 1000:
                return int(end)
            last = rows[-1][0]

    # -- helpers on the database thread -----------------------------------------------

    def _save(self, conn: sqlite3.Connection, old: Task, new: Task, event: str) -> None:
        if _ops.enters_key_scope(old, new):  # the key, if another took it meanwhile
            conn.execute(Q["yield_key"], {"id": new.id, "status": new.status.value})
        params = task_to_row(new)
        params["event"] = event
        params["origin"] = self.instance_id
        params["expected_version"] = old.version
        cur = conn.execute(Q["update_task"], params)
        if cur.rowcount != 1:  # pragma: no cover - the write lock makes this impossible
            raise StorageError(f"task {old.id} changed during an update")
        self._record(conn, new.status.value, event, [(new.id, new.version)])

    def _record(self, conn: sqlite3.Connection, status: str, event: str,
                pairs: Sequence[tuple[str, int]]) -> None:
        """Add one change-feed row for ``pairs`` of (task id, new version)."""
        if not pairs:
            return
        if len(pairs) == 1:
            self._record_text(conn, status, event, None, pairs[0])
        else:
            self._record_text(conn, status, event, _json.dumps(pairs))

    def _record_text(self, conn: sqlite3.Connection, status: str, event: str,
                     batch: str | None, one: tuple[str, int] | None = None) -> None:
        """One change-feed row: ``batch``, pairs already encoded as a JSON array (of
        one or more), or the single pair ``one``."""
        task_id, version = one if one is not None else (None, None)
        conn.execute(Q["record_change"], {
            "task_id": task_id, "version": version, "status": status, "event": event,
            "origin": self.instance_id, "now": time.time(), "batch": batch})

    def _must(self, conn: sqlite3.Connection, task_id: str) -> Task:
        row = conn.execute(Q["get_task"], {"id": task_id}).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return row_to_task(row)

    def _expire_pickups(self, conn: sqlite3.Connection, now: float) -> list[str]:
        rows = conn.execute(Q["pickup_expired"], {"now": now}).fetchall()
        expired = []
        for row in rows:
            task = row_to_task(row)
            self._save(conn, task, _ops.pickup_expired(task, now), "expired")
            expired.append(task.id)
        return expired

    # -- tasks --------------------------------------------------------------------

    async def add(self, specs: Sequence[TaskSpec]) -> list[AddResult]:
        if not specs:
            return []
        now = time.time()
        tasks = [_ops.new_task(spec, now) for spec in specs]
        rows = [_insert_row(task) for task in tasks]
        unique = any(spec.unique_key is not None for spec in specs)
        origin = self.instance_id

        def insert(conn: sqlite3.Connection, batch: list[list[Any]]) -> None:
            if batch:
                conn.execute(Q["insert_tasks"], {"rows": _json.dumps(batch), "origin": origin})
                self._record(conn, "queued", "added", [(row[0], 1) for row in batch])

        def tx(conn: sqlite3.Connection) -> list[AddResult]:
            if not unique:
                insert(conn, rows)
                return [AddResult(task, True) for task in tasks]
            out: list[AddResult] = []
            plain: list[list[Any]] = []
            for spec, task, row in zip(specs, tasks, rows, strict=True):
                if spec.unique_key is None:
                    plain.append(row)
                    out.append(AddResult(task, True))
                    continue
                insert(conn, plain)
                plain = []
                found = conn.execute(Q["find_live_duplicate"], {
                    "unique_key": spec.unique_key, "scope": encode_scope(spec.unique_scope),
                }).fetchone()
                if found is not None:
                    out.append(AddResult(row_to_task(found), created=False))
                    continue
                insert(conn, [row])
                out.append(AddResult(task, created=True))
            insert(conn, plain)
            return out

        try:
            return await self._write(tx)
        except sqlite3.IntegrityError as exc:
            raise StorageError(f"could not add tasks: {exc}") from None

    async def get(self, task_id: str) -> Task | None:
        def read(conn: sqlite3.Connection) -> Task | None:
            row = conn.execute(Q["get_task"], {"id": task_id}).fetchone()
            return None if row is None else row_to_task(row)

        return await self._run(read)

    async def get_many(self, task_ids: Sequence[str]) -> list[Task]:
        ids = _json.dumps(list(task_ids))
        return await self._run(
            lambda conn: [row_to_task(r) for r in conn.execute(Q["get_tasks"], {"ids": ids})])

    async def key_holders(self, wanted: Sequence[tuple[str, Sequence[Status]]]
                          ) -> list[Task | None]:
        def read(conn: sqlite3.Connection) -> list[Task | None]:
            out: list[Task | None] = []
            for key, scope in wanted:
                row = conn.execute(Q["find_live_duplicate"], {
                    "unique_key": key, "scope": encode_scope(scope)}).fetchone()
                out.append(None if row is None else row_to_task(row))
            return out

        return await self._run(read)

    async def find(self, query: Query) -> list[Task]:
        where, params = compile_sqlite(query.filter)
        order, order_params = compile_sort_sqlite(query.sort)
        sql = f"SELECT * FROM conveyor_tasks WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?"
        args = [*params, *order_params, -1 if query.limit is None else query.limit, query.skip]
        return await self._run(lambda conn: [row_to_task(r) for r in conn.execute(sql, args)])

    async def count(self, where: Filter) -> int:
        sql, params = compile_sqlite(where)
        return await self._run(
            lambda conn: int(conn.execute(
                f"SELECT count(*) FROM conveyor_tasks WHERE {sql}", params).fetchone()[0]))

    async def stats(self) -> dict[str, dict[str, int]]:
        def read(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for action, status, n in conn.execute(Q["stats"]):
                out.setdefault(action, {})[status] = n
            return out

        return await self._run(read)

    async def delete(self, task_ids: Sequence[str]) -> list[str]:
        ids = _json.dumps(list(dict.fromkeys(task_ids)))

        def tx(conn: sqlite3.Connection) -> list[str]:
            after = conn.execute(Q["last_change"]).fetchone()[0]
            deleted = [r[0] for r in conn.execute(Q["delete_finished"], {"ids": ids}).fetchall()]
            if deleted:
                conn.execute(Q["own_deletions"], {"origin": self.instance_id, "after": after})
                conn.execute(Q["delete_logs"], {"ids": _json.dumps(deleted)})
            return deleted

        return await self._write(tx)

    # -- running ------------------------------------------------------------------

    async def claim(self, worker: str, actions: Sequence[str], limit: int, lease: float,
                    limits: ClaimLimits | None = None) -> list[Task]:
        if limit <= 0 or not actions:
            return []
        per_action = dict(limits.per_action) if limits else {}

        def tx(conn: sqlite3.Connection) -> tuple[str, Mapping[str, Any]] | None:
            now = time.time()
            self._expire_pickups(conn, now)
            budget: dict[str, int] = {}
            if per_action:
                running = dict(conn.execute(
                    Q["running_per_action"], {"actions": _json.dumps(list(per_action))}).fetchall())
                budget = {a: cap - running.get(a, 0) for a, cap in per_action.items()}
            wanted = [a for a in dict.fromkeys(actions) if budget.get(a, 1) > 0]
            if not wanted:
                return None
            base = {"worker": worker, "token": new_token(), "lease_until": now + lease,
                    "now": now, "origin": self.instance_id}
            taken: list[str] = []
            if not per_action and len(wanted) <= _TOP_ACTIONS:
                # the common case: no per-action limit; if no candidate has conditions,
                # the first `limit` ready tasks are the claim, read in one statement
                top, conditional = conn.execute(_claim_top(len(wanted)), {
                    **{f"a{i}": a for i, a in enumerate(wanted)}, "now": now,
                    "limit": limit}).fetchone()
                if not conditional:
                    if top == "[]":
                        return None
                    conn.execute(Q["claim_tasks"], {**base, "ids": top})
                    return self._claimed(conn, base, top)
            pending: list[str] = []

            def flush() -> None:
                if pending:
                    conn.execute(Q["claim_tasks"], {**base, "ids": _json.dumps(pending)})
                    taken.extend(pending)
                    pending.clear()

            memo: dict[str, int] = {}
            for action, task_id, conditional in _ready_in_order(conn, wanted, now, limit):
                if budget.get(action, 1) <= 0:
                    continue
                if conditional:
                    if pending:
                        flush()
                        memo.clear()
                    try:
                        allowed = self._conditions_allow(conn, task_id, memo)
                    except sqlite3.OperationalError:
                        error = take_timeout()  # a $regex that ran too long
                        if error is None:
                            raise
                        self._fail_condition(conn, task_id, now, str(error))
                        continue
                    if not allowed:
                        continue
                    pending.append(task_id)
                    flush()
                    memo.clear()
                else:
                    pending.append(task_id)
                if action in budget:
                    budget[action] -= 1
                if len(taken) + len(pending) >= limit:
                    break
            flush()
            return self._claimed(conn, base, _json.dumps(taken)) if taken else None

        got = await self._write(tx)
        if got is None:
            return []
        text, base = got
        held = (worker, base["token"], base["lease_until"], base["now"])
        tasks = [claimed_to_task(r, *held) for r in _json.loads(text)]
        tasks.sort(key=lambda t: (t.priority, t.run_at, t.id))
        return tasks

    def _claimed(self, conn: sqlite3.Connection, base: Mapping[str, Any],
                 ids: str) -> tuple[str, Mapping[str, Any]]:
        """Record a claim in the change feed and read its rows back, as one JSON text
        (each statement returns one row, so the database thread takes the GIL back a
        few times per claim, not once per task), with the claim's values (``base``)
        that the rows leave out. ``ids``: the claimed ids, a JSON array."""
        params = {"ids": ids, "token": base["token"]}
        conn.execute(Q["record_claimed"], {**params, "origin": base["origin"],
                                           "now": base["now"]})
        text: str = conn.execute(Q["claimed_rows"], params).fetchone()[0]
        return text, base

    def _fail_condition(self, conn: sqlite3.Connection, task_id: str, now: float,
                        message: str) -> None:
        """Fail a candidate whose condition could not be evaluated: it would fail every
        claim (of every action) for as long as the value it is stuck on is there."""
        task = self._must(conn, task_id)
        self._save(conn, task, _ops.condition_failed(task, now, message), "condition_failed")

    def _conditions_allow(self, conn: sqlite3.Connection, task_id: str,
                          memo: dict[str, int]) -> bool:
        """Whether the task's concurrency conditions let it run now. ``memo``
        keeps counts that do not depend on the candidate (scopes without
        ``queued``) for the rest of this claim, until a task is taken."""
        row = conn.execute(Q["task_conditions"], {"id": task_id}).fetchone()
        for text in _condition_texts(row[0]):
            count_sql, params, limit, own = _condition_query(text)
            n = memo.get(text)
            if n is None:
                n = conn.execute(count_sql, [*params, task_id] if own else params).fetchone()[0]
                if not own:
                    memo[text] = n
            if n >= limit:
                return False
        return True

    async def heartbeat(self, worker: str, leases: Sequence[Lease], lease: float) -> HeartbeatReply:
        def tx(conn: sqlite3.Connection) -> HeartbeatReply:
            now = time.time()
            lost: set[str] = set()
            for item in leases:
                cur = conn.execute(Q["heartbeat_task"], {
                    "lease_until": now + lease, "id": item.task_id, "token": item.token})
                if cur.rowcount != 1:
                    lost.add(item.task_id)
            held = [item.task_id for item in leases if item.task_id not in lost]
            aborts = dict(conn.execute(Q["abort_requests"], {"ids": _json.dumps(held)}).fetchall())
            known = conn.execute(Q["touch_worker"], {"now": now, "running": len(held),
                                                     "id": worker}).rowcount == 1
            return HeartbeatReply(frozenset(lost), aborts, known=known)

        return await self._write(tx)

    async def update_progress(self, updates: Sequence[tuple[Lease, Progress]]) -> list[str]:
        if not updates:
            return []

        def tx(conn: sqlite3.Connection) -> list[str]:
            now = time.time()
            refused = []
            pairs: list[tuple[str, int]] = []
            for item, progress in updates:
                row = conn.execute(Q["update_progress"], {
                    "progress": _json.dumps(progress.to_json()), "now": now,
                    "origin": self.instance_id, "id": item.task_id,
                    "token": item.token}).fetchone()
                if row is None:
                    refused.append(item.task_id)
                else:
                    pairs.append((item.task_id, row[0]))
            self._record(conn, "running", "progress", pairs)
            return refused

        return await self._write(tx)

    async def finish(self, worker: str, completions: Sequence[Completion]) -> list[str]:
        if not completions:
            return []
        completions, repeated = _ops.first_per_task(completions)
        return await self._finish(completions) + repeated

    async def _finish(self, completions: Sequence[Completion]) -> list[str]:
        rows: list[tuple[bool, list[Any]]] = []  # (a plain success: the short query, row)
        for c in completions:
            t = c.transition
            progress = None if c.progress is None else c.progress.to_json()
            if (t.status is Status.SUCCEEDED and t.error is None and t.reason is None
                    and not t.refund_attempt and c.event in (None, "succeeded")):
                rows.append((True, [c.task_id, c.token, t.result, progress]))
                continue
            rows.append((False, [
                c.task_id, c.token, t.status.value,
                t.run_at if t.status is Status.QUEUED else None,
                t.result,
                None if t.error is None else t.error.to_json(),
                t.reason,
                1 if t.refund_attempt else 0,
                progress,
                c.event or _ops.completion_event(t),
            ]))

        try:
            return await self._write(lambda conn: self._finish_rows(conn, completions, rows))
        except sqlite3.IntegrityError:
            # a task going back into its key's scope while another took the key (the
            # unique index refused it): one by one, each giving its key up if another
            # task holds it by then
            def one_by_one(conn: sqlite3.Connection) -> list[str]:
                refused = []
                for c, row in zip(completions, rows, strict=True):
                    conn.execute(Q["yield_key"], {"id": c.task_id,
                                                  "status": c.transition.status.value})
                    refused += self._finish_rows(conn, [c], [row])
                return refused

            return await self._write(one_by_one)

    def _finish_rows(self, conn: sqlite3.Connection, completions: Sequence[Completion],
                     rows: Sequence[tuple[bool, list[Any]]]) -> list[str]:
        """The transaction of :meth:`finish`: ``rows`` are the completions' rows."""
        now = time.time()
        origin = self.instance_id
        done: set[str] = set()
        plain = [row for is_plain, row in rows if is_plain]
        other = [row for is_plain, row in rows if not is_plain]
        if plain:
            # which rows still hold their token, as one JSON text; then the update
            # (one row per statement: see _claimed)
            plain_rows = _json.dumps(plain)
            pairs, held = conn.execute(Q["finishable"], {"rows": plain_rows}).fetchone()
            conn.execute(Q["finish_succeeded"], {
                "rows": plain_rows, "origin": origin, "now": now})
            if held:
                if held == len(plain):  # the common case: every lease still held
                    done.update(row[0] for row in plain)
                else:
                    done.update(task_id for task_id, _ in _json.loads(pairs))
                self._record_text(conn, "succeeded", "succeeded", pairs)
        if other:
            groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
            for task_id, version, status, event in conn.execute(Q["finish_tasks"], {
                    "rows": _json.dumps(other), "origin": origin, "now": now}).fetchall():
                done.add(task_id)
                groups.setdefault((status, event), []).append((task_id, version))
            for (status, event), pairs in groups.items():
                self._record(conn, status, event, pairs)
        again = {c.task_id: c for c in completions if c.task_id not in done
                 and c.transition.status is Status.QUEUED}
        if again:  # still held? then an abort was requested: it wins
            held = conn.execute(Q["held_tasks"], {"ids": _json.dumps(list(again))})
            for task in [row_to_task(row) for row in held.fetchall()]:
                change = _ops.finished_overruled(task, again[task.id], now)
                if change is not None:
                    self._save(conn, *change)
        return [c.task_id for c in completions if c.task_id not in done]

    async def release(self, worker: str, leases: Sequence[Lease]) -> list[str]:
        if not leases:
            return []
        tokens = {item.task_id: item.token for item in leases}

        def tx(conn: sqlite3.Connection) -> list[str]:
            now = time.time()
            done = []
            rows = conn.execute(Q["held_tasks"], {"ids": _json.dumps(list(tokens))}).fetchall()
            for row in rows:
                task = row_to_task(row)
                if task.token != tokens[task.id]:
                    continue
                if task.abort_requested is not None:
                    new, event = _ops.rescued(task, now, max_rescues=1 << 30)
                else:
                    new, event = _ops.released(task, now), "released"
                self._save(conn, task, new, event)
                done.append(task.id)
            return done

        return await self._write(tx)

    async def recover(self, max_rescues: int) -> RecoverReport:
        # For a moment after a write of this storage waited long for the write lock
        # (another process, a sqlite3 shell or a backup, held it), sweeps rescue
        # nothing: no worker could renew a lease while the lock was held either, and
        # their heartbeats, queued behind it, land once it is free. (Tasks were
        # rescued, and ran twice, when the lock went to a sweep before them.)
        def tx(conn: sqlite3.Connection) -> RecoverReport:
            db = self._db
            ended = None if db is None else db.stall_ended
            if ended is not None and time.monotonic() - ended < _SWEEP_GRACE:
                log.info("a write waited for the database's lock %.1fs ago; leases are "
                         "judged by a later sweep", time.monotonic() - ended)
                return RecoverReport((), (), (), ())
            now = time.time()
            expired = self._expire_pickups(conn, now)
            groups: dict[str, list[str]] = {"rescued": [], "lost": [], "lost_aborted": []}
            for row in conn.execute(Q["expired_leases"], {"now": now}).fetchall():
                task = row_to_task(row)
                new, event = _ops.rescued(task, now, max_rescues)
                self._save(conn, task, new, event)
                groups[event].append(task.id)
            return RecoverReport(tuple(groups["rescued"]), tuple(groups["lost"]),
                                 tuple(groups["lost_aborted"]), tuple(expired))

        return await self._write(tx)

    async def next_run_at(self, actions: Sequence[str]) -> float | None:
        acts = _json.dumps(list(actions))
        def read(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(Q["next_run_at"], {"actions": acts}).fetchone()
            return None if row is None else float(row[0])

        return await self._run(read)

    # -- control ------------------------------------------------------------------

    async def abort(self, task_id: str, reason: str) -> Task:
        def tx(conn: sqlite3.Connection) -> Task:
            task = self._must(conn, task_id)
            new, event = _ops.abort(task, reason, time.time())
            if event:
                self._save(conn, task, new, event)
            return new

        return await self._write(tx)

    async def prioritize(self, task_id: str, priority: float) -> Task:
        def tx(conn: sqlite3.Connection) -> Task:
            task = self._must(conn, task_id)
            new = _ops.prioritized(task, priority, time.time())
            self._save(conn, task, new, "prioritized")
            return new

        return await self._write(tx)

    async def retry(self, task_id: str, run_at: float | None = None) -> Task:
        def tx(conn: sqlite3.Connection) -> Task:
            now = time.time()
            task = self._must(conn, task_id)
            new = _ops.retried(task, now if run_at is None else run_at, now)
            if task.unique_key is not None:
                row = conn.execute(Q["find_live_duplicate"], {
                    "unique_key": task.unique_key, "scope": encode_scope(task.unique_scope),
                }).fetchone()
                if row is not None and row[0] != task.id:
                    raise DuplicateTask(
                        f"task {row[0]} already holds unique key {task.unique_key!r}", task)
            self._save(conn, task, new, "retried")
            return new

        return await self._write(tx)

    # -- logs ---------------------------------------------------------------------

    async def append_logs(self, logs: Sequence[NewLog]) -> list[int | None]:
        if not logs:
            return []
        rows = [{"task_id": log.task_id, "ts": log.ts, "level": int(log.level),
                 "message": log.message,
                 "data": None if log.data is None else _json.dumps(log.data)} for log in logs]
        fenced = _json.dumps(list({log.task_id for log in logs if log.token is not None}))

        def tx(conn: sqlite3.Connection) -> list[int | None]:
            keep = [True] * len(logs)
            if fenced != "[]":  # lines of runs: kept only while the run holds its task
                held = set(conn.execute(Q["running_tokens"], {"ids": fenced}).fetchall())
                keep = [log.token is None or (log.task_id, log.token) in held for log in logs]
            kept = [row for row, ok in zip(rows, keep, strict=True) if ok]
            seq = conn.execute(Q["log_seq"]).fetchone()[0]
            conn.executemany(Q["insert_log"], kept)
            ids = list(dict.fromkeys(row["task_id"] for row in kept))
            conn.execute(Q["log_changes"], {"origin": self.instance_id, "now": time.time(),
                                            "ids": _json.dumps(ids)})
            seqs: list[int | None] = []
            for ok in keep:
                if ok:
                    seq += 1
                seqs.append(seq if ok else None)
            return seqs

        return await self._write(tx)

    async def read_logs(self, task_id: str, after_seq: int = 0,
                        max_level: LogLevel = LogLevel.DEBUG,
                        limit: int | None = None) -> list[LogRecord]:
        params = {"task_id": task_id, "after_seq": after_seq, "min_level": int(max_level),
                  "limit": -1 if limit is None else limit}

        def read(conn: sqlite3.Connection) -> list[LogRecord]:
            return [
                LogRecord(r[0], r[1], r[2], LogLevel(r[3]), r[4],
                          None if r[5] is None else _json.loads(r[5]))
                for r in conn.execute(Q["read_logs"], params)
            ]

        return await self._run(read)

    # -- workers ------------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        params = {"id": info.id, "host": info.host, "pid": info.pid,
                  "actions": _json.dumps(list(info.actions)), "concurrency": info.concurrency,
                  "running": info.running, "started_at": info.started_at,
                  "last_seen": info.last_seen, "info": _json.dumps(dict(info.info))}
        await self._write(lambda conn: conn.execute(Q["upsert_worker"], params))

    async def unregister_worker(self, worker_id: str) -> None:
        await self._write(lambda conn: conn.execute(Q["delete_worker"], {"id": worker_id}))

    async def list_workers(self) -> list[WorkerInfo]:
        def read(conn: sqlite3.Connection) -> list[WorkerInfo]:
            return [
                WorkerInfo(id=r[0], host=r[1], pid=r[2], actions=tuple(_json.loads(r[3])),
                           concurrency=r[4], running=r[5], started_at=r[6], last_seen=r[7],
                           info=_json.loads(r[8]))
                for r in conn.execute(Q["list_workers"])
            ]

        return await self._run(read)

    async def forget_workers(self) -> list[str]:
        return await self._write(lambda conn: [r[0] for r in conn.execute(
            Q["forget_workers"], {"now": time.time()}).fetchall()])

    # -- retention ----------------------------------------------------------------

    async def prune(self, older_than: float | None, batch: int = 500) -> int:
        total = 0
        while older_than is not None:
            def tx(conn: sqlite3.Connection) -> int:
                ids = [r[0] for r in conn.execute(
                    Q["old_finished"], {"before": older_than, "batch": batch})]
                if not ids:
                    return 0
                doomed = _json.dumps(ids)
                deleted = conn.execute(Q["delete_finished"], {"ids": doomed}).fetchall()
                conn.execute(Q["delete_logs"], {"ids": doomed})
                return len(deleted)

            n = await self._write(tx)
            total += n
            if n < batch:
                break
        feed_before = time.time() - FEED_RETENTION
        while True:
            n = await self._write(lambda conn: conn.execute(
                Q["prune_changes"], {"before": feed_before, "batch": batch}).rowcount)
            if n < batch:
                break
        return total


@functools.lru_cache(maxsize=1024)
def _condition_texts(column: str) -> list[str]:
    """The conditions stored in a task's ``concurrency`` column, each as canonical JSON."""
    return [_json.dumps(c) for c in _json.loads(column)]


@functools.lru_cache(maxsize=1024)
def _condition_query(text: str) -> tuple[str, list[Any], int, bool]:
    """The count query of a condition: (sql, params, limit, counts_queued).

    When the scope includes ``queued`` the candidate itself must not be
    counted, so the query takes its id as a last parameter."""
    cond = _json.loads(text)
    where, params = compile_sqlite(parse_filter(cond["query"]))
    scope = cond["scope"] if isinstance(cond["scope"], list) else [cond["scope"]]
    own = "queued" in scope
    marks = ", ".join("?" for _ in scope)
    sql = (f"SELECT count(*) FROM conveyor_tasks WHERE status IN ({marks}) AND ({where})"
           + (" AND id != ?" if own else ""))
    return sql, [*scope, *params], int(cond["limit"]), own


def _insert_row(task: Task) -> list[Any]:
    """A new task as a row of the insert_tasks query."""
    return [
        task.id, task.action, task.payload, task.priority, task.run_at, task.created_at,
        task.max_attempts, task.run_timeout, task.pickup_timeout, task.pickup_deadline,
        task.backoff.to_json() if task.backoff else None, task.unique_key,
        encode_scope(task.unique_scope),
        [c.to_json() for c in task.concurrency] if task.concurrency else None,
        task.tags, task.parent_id,
    ]


# claim_top joins one member per action (SQLite allows 500 in a compound select);
# a worker with more actions claims through _ready_in_order
_TOP_ACTIONS = 64


@functools.cache
def _claim_top(actions: int) -> str:
    """The claim_top query for a worker with ``actions`` actions (:a0, :a1, ...)."""
    one = "\n".join(line for line in Q["claim_top_of_action"].splitlines()
                    if not line.startswith("--"))
    members = "\n    UNION ALL\n    ".join(
        one.replace(":action", f":a{i}") for i in range(actions))
    return Q["claim_top"].replace("{members}", members)


def _ready_in_order(conn: sqlite3.Connection, actions: Sequence[str], now: float,
                    page: int) -> Iterator[tuple[str, str, bool]]:
    """Ready tasks of several actions, merged in claim order (priority, run_at, id).

    Each action is read a page at a time along its own ready index; a row is
    only yielded once no unread row of any action can come before it.
    Yields ``(action, id, has_conditions)``.
    """
    page = max(page, 16)
    buffered: list[tuple[float, float, str, str, bool]] = []
    after: dict[str, tuple[float, float, str]] = {a: (-math.inf, -math.inf, "") for a in actions}
    left: dict[str, int] = dict.fromkeys(actions, 0)
    open_actions = set(actions)
    query = Q["claim_candidates"]
    while True:
        for action in list(open_actions):
            if left[action]:
                continue
            key = after[action]
            rows = conn.execute(query, {"action": action, "now": now, "after_priority": key[0],
                                        "after_run_at": key[1], "after_id": key[2],
                                        "page": page}).fetchall()
            for priority, run_at, task_id, conditional in rows:
                buffered.append((priority, run_at, task_id, action, bool(conditional)))
            left[action] += len(rows)
            if rows:
                last = rows[-1]
                after[action] = (last[0], last[1], last[2])
            if len(rows) < page:
                open_actions.discard(action)
        if not buffered:
            return
        buffered.sort()
        bound = min((after[a] for a in open_actions), default=None)
        taken = 0
        for item in buffered:
            if bound is not None and (item[0], item[1], item[2]) > bound:
                break
            taken += 1
            left[item[3]] -= 1
            yield item[3], item[2], item[4]
        del buffered[:taken]


def _split_statements(script: str) -> list[str]:
    """Split a migration script into statements (triggers contain ';' inside BEGIN...END)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements

