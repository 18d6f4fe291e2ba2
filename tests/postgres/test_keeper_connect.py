"""A worker that starts while its database refuses new connections (a deploy where old
and new workers overlap at ``max_connections``): its lease keeper cannot connect, and
must keep trying. It gave up at its first try, and the worker went on claiming and
running tasks whose leases nobody renewed; another worker then ran them again."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg

from conveyor import Context, Conveyor, Status

from .test_faults import fresh_database


class _Said(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.said = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.loop.call_soon_threadsafe(self.said.set)


async def test_a_keeper_that_cannot_connect_at_start_renews_leases_once_it_can(
        server: str) -> None:
    with fresh_database(server) as (url, name):
        app = Conveyor(f"{url}?migrate=true", lease=1.5, concurrency=1)
        release = asyncio.Event()

        @app.handler("hold")
        async def hold(ctx: Context[Any]) -> str:
            await release.wait()
            return "ok"

        said = _Said("lease keeper cannot connect")
        logging.getLogger("conveyor.worker").addHandler(said)
        async with await psycopg.AsyncConnection.connect(server, autocommit=True) as admin:
            try:
                await app.open()
                cur = await admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,))
                row = await cur.fetchone()
                assert row is not None and row[0] >= 1
                # the app's connections so far, and not one more
                await admin.execute(f'ALTER DATABASE "{name}" CONNECTION LIMIT {row[0]}')
                await app.start()
                await asyncio.wait_for(said.said.wait(), 15)
                await admin.execute(f'ALTER DATABASE "{name}" CONNECTION LIMIT -1')

                task = await app.add("hold")
                deadline = time.monotonic() + 15
                first = None
                while True:  # its lease renewed by the keeper, beat by beat
                    now = await app.get(task.id)
                    if now.status is Status.RUNNING and now.lease_until is not None:
                        first = now.lease_until if first is None else first
                        if now.lease_until > first + 0.2:
                            break
                    assert time.monotonic() < deadline, now
                    await asyncio.sleep(0.05)
                release.set()
                assert await app.wait(task.id, timeout=15) == "ok"
                done = await app.get(task.id)
                assert done.attempts == 1 and done.rescues == 0
            finally:
                logging.getLogger("conveyor.worker").removeHandler(said)
                release.set()
                await app.close()
