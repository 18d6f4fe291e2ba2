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


async def test_an_app_the_sync_face_opened_first_works_from_the_programs_loop(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The sync face opened the app first (``conv.open()`` at a module's import, a
    warm-up add), then the program runs it in a loop of its own (``conveyor worker
    module:conv``, an ASGI lifespan): the change relay stays in the face's loop, and
    what it sets for the program's loop (the worker's wake-up, the waits' signals)
    is handed to that loop. The worker was not woken (each task waited for its
    ``idle_poll``), waits ended on their one-second poll, and the close hung 10 s
    on the relay of the other loop."""
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    app = Conveyor(url, idle_poll=60)  # a worker not woken would sleep a minute

    @app.handler("inc")
    async def inc(ctx: Context[Any]) -> int:
        return int(ctx.payload) + 1

    face = SyncConveyor(app)
    await asyncio.to_thread(face.open)  # at import, from a plain thread
    other = Conveyor(url)  # another process adds
    try:
        await app.start()  # the program's loop: `conveyor worker`, a lifespan
        task = await other.add("inc", 1)
        done = await app.wait_task(task.id, timeout=20)
        assert done.result == 2
    finally:
        await other.close()
        await app.close()
        await asyncio.to_thread(face.close)
    assert "did not stop" not in caplog.text



def test_close_after_the_lent_loop_ended(tmp_path: Path) -> None:
    """Sync views used the app an ASGI lifespan had open; once the server's loop
    ended, the face's close() (a test's teardown, an exit hook) raised "this
    SyncConveyor is closed" although nobody had closed it (lifecycle audit)."""
    app = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}")

    @app.handler("inc")
    async def inc(ctx: Context[Any]) -> int:
        return int(ctx.payload) + 1

    before = _sync_loops()
    face = SyncConveyor(app)

    async def lifespan() -> Any:
        async with app:
            def view() -> Any:
                return face.wait(face.add("inc", 1).id, timeout=10)

            return await asyncio.to_thread(view)

    assert asyncio.run(lifespan()) == 2
    face.close()  # raised ConveyorError
    assert _sync_loops() == before  # the loop it closed the app in has ended too
