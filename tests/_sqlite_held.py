"""A SQLite storage whose every reader thread is busy with a long read (as a
deep ``skip`` or a sort on a payload field over millions of rows would keep it):
reads made meanwhile wait for one to end. Writes go on, on the writer thread."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from typing import Any

from conveyor.storage import sqlite as sqlite_storage


@contextlib.asynccontextmanager
async def sqlite_reads_held(storage: Any) -> AsyncIterator[None]:
    release = threading.Event()
    inside = threading.Semaphore(0)

    def long_read(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT count(*) FROM conveyor_tasks").fetchone()
        inside.release()
        release.wait(60)

    readers = storage._readers
    held = [readers.submit(long_read) for _ in range(sqlite_storage.READERS)]
    try:
        for _ in held:
            assert await asyncio.to_thread(inside.acquire, True, 10), "a reader never started"
        yield
    finally:
        release.set()
        for future in held:
            await asyncio.wrap_future(future)
