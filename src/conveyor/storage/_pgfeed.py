"""The PostgreSQL change feed: a listener thread that turns committed change rows into
:class:`~conveyor.storage.base.Change` objects for :class:`~conveyor.storage._feed.Fanout`.

NOTIFY is only a hint. The truth is the ``changes`` table, read by snapshot:
each read returns the rows committed after the previous read's snapshot and
visible in its own (rows of transactions the previous snapshot saw running, or
that started after it), so every committed row is read exactly once whatever
the order in which transactions commit, and nothing is lost while the
connection is down: the first read after a reconnect catches up from the last
snapshot. A read takes only rows of transactions its own snapshot sees completed:
rows restored from a cluster whose transaction counter was ahead carry xids of
this cluster's future, and are not delivered at every read (see the query).
See docs/postgres.md, "Change feed".
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from ..model import Status
from ._feed import Fanout
from .base import Change

__all__ = ["Listener"]

log = logging.getLogger("conveyor.storage.postgres")
_STATUS = {s.value: s for s in Status}
PAGE = 5000
# After waking the workers for a task queued elsewhere, the read of the change
# table waits this long: the woken worker's claim then runs without this
# thread taking the GIL (and the server) from it, which halved enqueue-to-start
# latency (docs/benchmarks.md); the feed's own latency grows by as much.
_HINT_DEFER = 0.002
# While nothing in the process wants changes (an app that only adds tasks), the
# listener does not LISTEN (each of the process's own inserts would wake this
# thread, which then contends for the GIL with the insert's caller: ~0.1 ms per
# add) and looks this often whether something wants them again.
_IDLE_CHECK = 0.02


class Listener:
    """LISTENs on a dedicated connection (not from the pool) in its own thread and
    event loop; reads the change table after each notification, at least every
    ``poll_interval`` seconds (the fallback and the health check), and
    reconnects with backoff after errors."""

    def __init__(self, *, connect: Callable[[], Any], queries: dict[str, str], channel: str,
                 feed: Fanout, origin: str, poll_interval: float, listen: bool,
                 since: str | None, on_ready: Callable[[], bool] | None = None,
                 wanted: Callable[[], bool] | None = None) -> None:
        self._connect = connect
        self._q = queries
        self._channel = channel
        self._feed = feed
        self._origin = origin
        self._poll = poll_interval
        self._listen = listen
        self._on_ready = on_ready  # called (in this thread) when another writer queued a task;
        # True if it woke someone
        self._wanted = wanted or feed.wants_any  # whether anything here wants changes
        self.listening = False
        self.since = since  # snapshot (text) of the last read
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._stopping = False
        self.connected = False
        self.last_read = 0.0
        self.failures = 0
        self.backend_pid: int | None = None

    # -- life -----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="conveyor-pg-listener",
                                        daemon=True)
        self._thread.start()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._run())
            self._ready.set()
            loop.run_until_complete(self._task)
        except BaseException:  # cancelled on stop, or a bug: the feed must not take the app down
            if not self._stopping:
                log.exception("postgres change listener stopped")
        finally:
            self._ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._ready.wait(timeout)
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the loop -------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self._connect()
                self.backend_pid = conn.info.backend_pid
                if self._listen:
                    await conn.execute(f'LISTEN "{self._channel}"')
                    self.listening = True
                if self.since is None:
                    cur = await conn.execute(self._q["snapshot"])
                    row = await cur.fetchone()
                    assert row is not None
                    self.since = str(row[0])
                # catch up: everything committed since the last snapshot (after a
                # reconnect too); LISTEN came first, so nothing falls in between
                await self._read(conn)
                self.connected = True
                if self.failures:
                    log.info("postgres change listener reconnected")
                self.failures = 0
                backoff = 0.05
                await self._serve(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected = False
                self.failures += 1
                if self.failures in (1, 10) or self.failures % 100 == 0:
                    log.warning("postgres change listener: %s (reconnecting in %.2fs)",
                                exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self.connected = False
                self.listening = False
                if conn is not None:
                    try:
                        await conn.close()
                    except Exception:  # pragma: no cover - closing a broken connection
                        pass

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Wait for notifications (at most ``poll_interval``), then read."""
        while not self._stopping:
            if self._listen and not self._wanted():
                await self._idle(conn)
                continue
            foreign = False
            own = False
            got = False
            hinted = False
            if self._listen:
                async for note in conn.notifies(timeout=self._poll, stop_after=1):
                    got = True
                    origin, _, flags = note.payload.partition(" ")
                    if origin == self._origin:
                        own = True
                    else:
                        foreign = True
                        if flags == "q" and self._on_ready is not None:
                            # a task became ready elsewhere: wake the workers now, the
                            # read of the change table below can come after
                            hinted = self._on_ready() or hinted
            else:
                await asyncio.sleep(self._poll)
            if hinted:
                await asyncio.sleep(_HINT_DEFER)
            if got and not foreign and own and not self._feed.wants_own():
                continue  # only our own writes, which nobody here wants: skip the read
            await self._read(conn)

    async def _idle(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Nothing wants changes: stop listening, read every ``poll_interval`` (so
        the next catch-up stays short), LISTEN again and read as soon as something
        wants them. The reads are by snapshot: nothing committed meanwhile is lost."""
        await conn.execute(f'UNLISTEN "{self._channel}"')
        self.listening = False
        next_read = time.monotonic() + self._poll
        while not self._stopping and not self._wanted():
            await asyncio.sleep(_IDLE_CHECK)
            if time.monotonic() >= next_read:
                await self._read(conn)
                next_read = time.monotonic() + self._poll
        await conn.execute(f'LISTEN "{self._channel}"')
        self.listening = True
        await self._read(conn)

    def _filter(self) -> tuple[str | None, bool]:
        """What the streams want now: (origin to leave out or None, wake-ups only)."""
        origin = None if self._feed.wants_own() else self._origin
        return origin, not self._feed.wants_all()

    def _wants_more(self, origin: str | None, wakeups: bool) -> bool:
        """Whether the streams want more than a read filtered by (origin, wakeups)
        returned: one started wanting them while the read ran."""
        now_origin, now_wakeups = self._filter()
        return (origin is not None and now_origin is None) or (wakeups and not now_wakeups)

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Publish the changes committed since ``self.since``; advance it.

        The filter (own changes, wake-ups only) is chosen when the read starts. A
        stream that starts wanting more meanwhile (``events()`` called while the
        read ran) must still get every change committed after it asked, and the
        read's snapshot may hold some the filter left out: the read is then done
        again from the same ``since``, with the wider filter."""
        since = self.since
        assert since is not None
        while True:
            origin, wakeups = self._filter()
            cur = await conn.execute(self._q["changes_since"], {
                "since": since, "origin": origin, "wakeups": wakeups, "limit": PAGE})
            rows = await cur.fetchall()
            if not self._wants_more(origin, wakeups):
                break
        self.last_read = time.time()
        snap = rows[0][0] if rows else since
        found = [r[1:] for r in rows if r[1] is not None]
        if len(found) < PAGE:
            self.since = snap
            changes = _changes(found)
            if changes:
                self._feed.publish(changes)
            return
        # a big backlog (a long disconnect): page through one fixed snapshot
        seen: set[int] = set()
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur = await conn.execute(self._q["snapshot"])
            row = await cur.fetchone()
            assert row is not None
            snap = str(row[0])
            after = 0
            while True:
                cur = await conn.execute(self._q["changes_page"], {
                    "since": since, "origin": origin, "wakeups": wakeups, "after": after,
                    "limit": PAGE})
                page = await cur.fetchall()
                if self._wants_more(origin, wakeups):
                    # wider from here on: page again from the start, skipping what went out
                    origin, wakeups = self._filter()
                    after = 0
                    continue
                batch = _changes([r for r in page if r[0] not in seen])
                seen.update(r[0] for r in page)
                if batch:
                    self._feed.publish(batch)
                if len(page) < PAGE:
                    break
                after = page[-1][0]
        self.since = snap


def _changes(rows: Any) -> list[Change]:
    """The changes of change-table rows; a row of several tasks (``ids`` and
    ``versions``, schema version 3) gives one change per task, sharing its seq."""
    out: list[Change] = []
    for seq, task_id, version, status, event, origin, ts, ids, versions in rows:
        st = _STATUS[status]
        if ids is None:
            out.append(Change(int(seq), task_id, version, st, event, origin, ts))
        else:
            n = int(seq)
            out.extend(Change(n, i, v, st, event, origin, ts)
                       for i, v in zip(ids, versions, strict=True))
    return out
