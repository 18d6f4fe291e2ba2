"""An async handler that blocks the event loop (a sync driver, ``time.sleep``)
cannot be cancelled, but its run timeout and an abort requested meanwhile still
decide when it returns: the task ended ``succeeded`` with the value, the timeout
and the abort lost."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor, Status

from ..conftest import BACKENDS, backend_url, drop_pg_schema


async def test_a_run_timeout_passed_while_the_loop_was_blocked_decides(app: Conveyor) -> None:
    @app.handler("block", timeout=0.2)
    async def block(ctx: Context[Any]) -> str:
        time.sleep(0.6)  # noqa: ASYNC251 (the scenario: blocks the loop, its timer cannot fire)
        return "late"

    @app.handler("quick", timeout=5)
    async def quick(ctx: Context[Any]) -> str:
        return "in time"

    async with app:
        late = await app.add("block")
        fine = await app.add("quick")
        ended = await app.wait_task(late.id, timeout=10)
        assert await app.wait(fine.id, timeout=10) == "in time"
    assert ended.status is Status.ABORTED and ended.reason == "timeout"
    assert ended.result is None


@pytest.mark.parametrize("kind", [b for b in BACKENDS if b != "memory"])
async def test_an_abort_the_heartbeat_brought_while_the_loop_was_blocked_wins(
        kind: str, tmp_path: Path) -> None:
    url = backend_url(kind, tmp_path)
    app = Conveyor(url, lease=0.9)  # a heartbeat every 0.3 s
    started = threading.Event()

    @app.handler("block")
    async def block(ctx: Context[Any]) -> str:
        started.set()
        time.sleep(1.5)  # noqa: ASYNC251 (the scenario: blocks the loop, the abort waits)
        return "late"

    def abort_from_elsewhere(task_id: str) -> None:
        started.wait(10)

        async def abort() -> None:
            other = Conveyor(url)
            try:
                await other.abort(task_id)
            finally:
                await other.close()

        asyncio.run(abort())

    try:
        task = await app.add("block")
        aborting = threading.Thread(target=abort_from_elsewhere, args=(task.id,))
        aborting.start()
        await app.start()
        ended = await app.wait_task(task.id, timeout=20)
        aborting.join(10)
        assert ended.status is Status.ABORTED and ended.reason == "aborted"
        assert ended.result is None
    finally:
        await app.close()
        if kind == "postgres":
            drop_pg_schema(url)
