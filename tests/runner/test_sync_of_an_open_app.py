"""``SyncConveyor(app)`` of an app already open in a loop that another thread runs (a
web server's lifespan opened it; sync views call it from the server's thread pool):
the calls run in that loop, where the app's worker, waits and feed live. They ran in
a loop of the SyncConveyor's own: each wait ended on its 1-second poll instead of the
task's event, and ``close()`` raised ``RuntimeError`` (a future of another loop)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor, ConveyorError, SyncConveyor


def _sync_loops() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "conveyor-sync-loop")


async def test_calls_run_in_the_loop_the_app_is_open_in(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}")

    @app.handler("inc")
    async def inc(ctx: Context[Any]) -> int:
        return int(ctx.payload) + 1

    async with app:
        before = _sync_loops()
        face = SyncConveyor(app)

        def view(n: int) -> Any:
            task = face.add("inc", n)
            return face.wait(task.id, timeout=10)

        assert [await asyncio.to_thread(view, n) for n in range(3)] == [1, 2, 3]
        assert _sync_loops() == before  # no loop of its own was started

        # from the app's own loop a blocking call would wait for itself: refused
        with pytest.raises(ConveyorError, match="await the app's own methods"):
            face.count()

        await asyncio.to_thread(face.close)  # closes the app, in its loop
        assert app.worker is None
    # closed, the app is opened again by the next call, in a loop of the face's own
    assert face.add("inc", 5).action == "inc"
    face.close()
