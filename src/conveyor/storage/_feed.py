"""Fan-out of the change feed to any number of async consumers on any loops."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

from ..model import Status
from .base import Change

__all__ = ["OPENED_FRESH", "Fanout", "FanoutFeed", "ReadyHooks", "is_wakeup", "opened_start"]

_P = TypeVar("_P")

OPENED_FRESH = 2.0
"""Seconds the feed position that ``open()`` read stays the start of a feed begun later
(changes made after ``open()`` returned, before the feed's first read, are delivered)."""


def opened_start(p0: tuple[_P, float] | None) -> _P | None:
    """The position ``open()`` read (``(position, time.monotonic() then)``) while it is
    fresh; None when there is none, or it is older than :data:`OPENED_FRESH`."""
    if p0 is None or time.monotonic() - p0[1] >= OPENED_FRESH:
        return None
    return p0[0]


def is_wakeup(change: Change) -> bool:
    """A change that can make a worker act: a task became ready, or an abort was asked."""
    return change.status is Status.QUEUED or change.event == "abort_requested"


class ReadyHooks:
    """Functions a backend calls, each on its own event loop, when a task may have been
    queued (a worker's ``wake``): a hint ahead of the change feed, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def add(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` on the running event loop from now on."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._hooks.append((loop, hook))

    def remove(self, hook: Callable[[], None]) -> None:
        with self._lock:
            self._hooks = [(lp, h) for lp, h in self._hooks if h != hook]

    def call(self) -> bool:
        """Run every hook on its loop (at once when that is the running one); whether
        any ran. A hook whose loop is closed is dropped."""
        with self._lock:
            hooks = list(self._hooks)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        woke = False
        for loop, hook in hooks:
            if loop is running:
                hook()
                woke = True
                continue
            try:
                loop.call_soon_threadsafe(hook)
                woke = True
            except RuntimeError:  # that loop is closed
                self.remove(hook)
        return woke


def _flag(value: Callable[[], bool] | bool) -> Callable[[], bool]:
    if isinstance(value, bool):
        return (lambda: True) if value else (lambda: False)
    return value


class _Consumer:
    __slots__ = ("include_own", "loop", "queue", "wakeups_only", "wanted")

    def __init__(self, include_own: Callable[[], bool], wakeups_only: Callable[[], bool],
                 wanted: Callable[[], bool]) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Sequence[Change] | None] = asyncio.Queue()
        self.include_own = include_own
        self.wakeups_only = wakeups_only
        self.wanted = wanted


class Fanout:
    """Delivers batches of changes to every open :meth:`stream`.

    :meth:`publish` may be called from any thread. A consumer that stops
    iterating is dropped. ``on_first`` runs when the first stream opens
    (backends start their watcher lazily). A stream whose ``include_own()``
    is false does not get the changes whose origin is ``origin`` (the
    storage object's own writes).
    """

    def __init__(self, origin: str, on_first: Callable[[], None] | None = None) -> None:
        self.origin = origin
        self._lock = threading.Lock()
        self._consumers: list[_Consumer] = []
        self._on_first = on_first
        self._closed = False

    @property
    def active(self) -> bool:
        return bool(self._consumers)

    def wants_own(self) -> bool:
        """Whether any stream currently wants changes made by this storage object."""
        return any(c.include_own() for c in self._consumers)

    def wants_all(self) -> bool:
        """Whether any stream currently wants more than wake-ups (see :func:`is_wakeup`)."""
        return any(not c.wakeups_only() for c in self._consumers)

    def wants_any(self) -> bool:
        """Whether any stream currently wants changes at all (see ``wanted`` of
        :meth:`batches`)."""
        return any(c.wanted() for c in self._consumers)

    def unread(self) -> bool:
        """Whether no stream is read: none is open, or each one's event loop is closed
        (an app never closed whose loop ended: nothing reads it again; those are
        dropped). A backend's watcher then has nobody to poll for."""
        with self._lock:
            self._consumers = [c for c in self._consumers if not c.loop.is_closed()]
            return not self._consumers

    def publish(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        with self._lock:
            consumers = list(self._consumers)
        foreign: Sequence[Change] | None = None
        for consumer in consumers:
            batch = changes
            if not consumer.include_own():
                if foreign is None:
                    foreign = [c for c in changes if c.origin != self.origin]
                batch = foreign
            if consumer.wakeups_only():
                batch = [c for c in batch if is_wakeup(c)]
            if not batch:
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is consumer.loop:
                consumer.queue.put_nowait(batch)
            else:
                try:
                    consumer.loop.call_soon_threadsafe(consumer.queue.put_nowait, batch)
                except RuntimeError:  # that loop is closed
                    self._remove(consumer)

    def close(self) -> None:
        """End every stream."""
        with self._lock:
            self._closed = True
            consumers = list(self._consumers)
        for consumer in consumers:
            try:
                consumer.loop.call_soon_threadsafe(consumer.queue.put_nowait, None)
            except RuntimeError:
                pass

    def _remove(self, consumer: _Consumer) -> None:
        with self._lock:
            if consumer in self._consumers:
                self._consumers.remove(consumer)

    async def stream(self, include_own: Callable[[], bool] | bool = True,
                     wakeups_only: Callable[[], bool] | bool = False,
                     wanted: Callable[[], bool] | bool = True) -> AsyncIterator[Change]:
        async for batch in self.batches(include_own, wakeups_only, wanted):
            for change in batch:
                yield change

    async def batches(self, include_own: Callable[[], bool] | bool = True,
                      wakeups_only: Callable[[], bool] | bool = False,
                      wanted: Callable[[], bool] | bool = True
                      ) -> AsyncIterator[Sequence[Change]]:
        consumer = _Consumer(_flag(include_own), _flag(wakeups_only), _flag(wanted))
        with self._lock:
            if self._closed:
                return
            first = not self._consumers
            self._consumers.append(consumer)
        if first and self._on_first is not None:
            self._on_first()
        try:
            while True:
                batch = await consumer.queue.get()
                if batch is None:
                    return
                while not consumer.queue.empty() and len(batch) < 2000:
                    more = consumer.queue.get_nowait()
                    if more is None:
                        yield batch
                        return
                    batch = [*batch, *more]
                yield batch
        finally:
            self._remove(consumer)


class FanoutFeed:
    """``changes`` and ``change_batches`` of a backend that publishes through a
    :class:`Fanout` kept in ``self._feed`` (mix in before :class:`Storage`)."""

    _feed: Fanout

    def changes(self, include_own: Callable[[], bool] | bool = True,
                wakeups_only: Callable[[], bool] | bool = False,
                wanted: Callable[[], bool] | bool = True) -> AsyncIterator[Change]:
        return self._feed.stream(include_own, wakeups_only, wanted)

    def change_batches(self, include_own: Callable[[], bool] | bool = True,
                       wakeups_only: Callable[[], bool] | bool = False,
                       wanted: Callable[[], bool] | bool = True
                       ) -> AsyncIterator[Sequence[Change]]:
        return self._feed.batches(include_own, wakeups_only, wanted)
