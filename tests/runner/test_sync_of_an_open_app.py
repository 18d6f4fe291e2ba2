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


def _relay_loop(app: Conveyor) -> Any:
    relay = app._relay
    assert relay is not None and relay._task is not None
    return relay._task.get_loop()


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


async def test_an_app_the_sync_face_opened_first_moves_to_the_programs_loop(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The sync face opened the app first (``conv.open()`` at a module's import, a
    warm-up add), then the program ran it in a loop of its own (``conveyor worker``,
    an ASGI lifespan): the change relay stayed in the face's loop, so it woke
    neither the worker nor the waits of the program's loop (each a second late on
    SQLite), and the app's close hung 10 s on it. It moves to the program's loop, and
    the face's later calls go there."""
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    app = Conveyor(url)

    @app.handler("inc")
    async def inc(ctx: Context[Any]) -> int:
        return int(ctx.payload) + 1

    before = _sync_loops()
    face = SyncConveyor(app)
    await asyncio.to_thread(face.open)  # at import, from a plain thread
    assert _relay_loop(app) is not asyncio.get_running_loop()
    other = Conveyor(url)  # another process adds
    try:
        await app.start()  # the program's loop: `conveyor worker`, a lifespan
        here = asyncio.get_running_loop()
        assert _relay_loop(app) is here
        task = await other.add("inc", 1)
        assert await app.wait(task.id, timeout=10) == 2
        # a sync view now: its call runs in the program's loop, where the app lives
        assert await asyncio.to_thread(lambda: face.count({"status": "succeeded"})) == 1
        assert face._portal is not None and face._portal.loop is here
    finally:
        await other.close()
        started = asyncio.get_running_loop().time()
        await app.close()
        await asyncio.to_thread(face.close)
    assert asyncio.get_running_loop().time() - started < 5  # it waited 10 s on the relay
    assert "did not stop" not in caplog.text
    assert _sync_loops() == before  # the face's own loop ended with its close()
