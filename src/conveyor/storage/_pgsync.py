"""A synchronous psycopg ``Connection`` behind the few awaitable methods the
PostgreSQL backend's add path uses, so ``add_in`` takes the caller's sync
connection too (Django, Flask, scripts, :class:`~conveyor.SyncConveyor`).

Each blocking call runs in a worker thread (``asyncio.to_thread``): a statement
that waits on a lock held by another transaction does not stall the event loop
(and the heartbeats of the handlers running on it). The caller's connection is
used by one call at a time, as psycopg requires.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg

__all__ = ["SyncConnection"]


class _Cursor:
    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    @property
    def adapters(self) -> Any:
        return self._cursor.adapters

    async def execute(self, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None
                      ) -> _Cursor:
        await asyncio.to_thread(self._cursor.execute, query, params)
        return self

    async def fetchall(self) -> list[Any]:
        return await asyncio.to_thread(self._cursor.fetchall)

    async def fetchone(self) -> Any:
        return await asyncio.to_thread(self._cursor.fetchone)


class SyncConnection:
    """``conn`` (a ``psycopg.Connection``) with awaitable ``execute``,
    ``cursor().execute/fetchall/fetchone`` (and its ``adapters``) and ``transaction()``."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @property
    def autocommit(self) -> bool:
        return self._conn.autocommit

    @property
    def info(self) -> Any:
        return self._conn.info

    def cursor(self, *, row_factory: Any = None) -> _Cursor:
        return _Cursor(self._conn.cursor(row_factory=row_factory))

    async def execute(self, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None
                      ) -> _Cursor:
        return await self.cursor().execute(query, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """A transaction, or a savepoint inside the caller's transaction."""
        tx = self._conn.transaction()
        await asyncio.to_thread(tx.__enter__)
        try:
            yield
        except BaseException as exc:
            if not await asyncio.to_thread(tx.__exit__, type(exc), exc, exc.__traceback__):
                raise
        else:
            await asyncio.to_thread(tx.__exit__, None, None, None)
