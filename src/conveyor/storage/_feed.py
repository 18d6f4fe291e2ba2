"""Fan-out of the change feed to any number of async consumers on any loops."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence

from .base import Change

__all__ = ["Fanout"]


class _Consumer:
    __slots__ = ("loop", "queue")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Sequence[Change] | None] = asyncio.Queue()


class Fanout:
    """Delivers batches of changes to every open :meth:`stream`.

    :meth:`publish` may be called from any thread. A consumer that stops
    iterating is dropped. ``on_first`` runs when the first stream opens
    (backends start their watcher lazily).
    """

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._consumers: list[_Consumer] = []
        self._on_first = on_first
        self._closed = False

    @property
    def active(self) -> bool:
        return bool(self._consumers)

    def publish(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        with self._lock:
            consumers = list(self._consumers)
        for consumer in consumers:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is consumer.loop:
                consumer.queue.put_nowait(changes)
            else:
                try:
                    consumer.loop.call_soon_threadsafe(consumer.queue.put_nowait, changes)
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

    async def stream(self) -> AsyncIterator[Change]:
        consumer = _Consumer()
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
                for change in batch:
                    yield change
        finally:
            self._remove(consumer)
