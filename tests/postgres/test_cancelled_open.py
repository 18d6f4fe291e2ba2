"""An ``open()`` cancelled while its connection pool opens (a startup timeout, a
lifespan cancelled) closes that pool: its tasks were left pending, unreferenced, and
reported destroyed later ("Task was destroyed but it is pending!")."""

from __future__ import annotations

import asyncio
import gc

from conveyor import Conveyor


async def test_a_cancelled_open_leaves_no_pool_task_behind(schema_url: str) -> None:
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(str(context)))
    app = Conveyor(schema_url)
    try:
        took = loop.time()
        await app.open()
        took = loop.time() - took
        await app.close()
        cancelled = 0
        for step in range(40):  # the cancel lands at successive points of the open
            opening = asyncio.create_task(app.open())
            await asyncio.sleep(took * step / 40)
            opening.cancel()
            try:
                await opening
            except asyncio.CancelledError:
                cancelled += 1
            await app.close()
        assert cancelled >= 5  # many rounds were cut short somewhere in the open
        pool_tasks = [t for t in asyncio.all_tasks()
                      if "AsyncConnectionPool" in repr(t.get_coro())]
        assert pool_tasks == []
        gc.collect()
        await asyncio.sleep(0)
        assert [r for r in reported if "destroyed" in r] == []
    finally:
        loop.set_exception_handler(previous)
        await app.close()
