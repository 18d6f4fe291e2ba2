"""A SyncConveyor closed by one thread while others use it (a web app's shutdown
hook, a reload): the close itself never fails, leaves no thread behind, and the
other threads' calls end with the documented errors; iterators give what they
held, then end as the async ones do."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, ConveyorError, SyncConveyor


def _ours() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("conveyor"))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_close_racing_adds_and_waits_with_a_worker(tmp_path: Path, kind: str) -> None:
    """Threads adding and waiting while the worker runs and another thread closes
    the app: a call arriving during the close opened a second loop on the app, so
    the close raised RuntimeError ("Set changed size during iteration", 5 of 10
    rounds) and SQLite threads and files stayed open for good (7 of 23 rounds)."""
    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'race.db'}"
    before = _ours()
    app = SyncConveyor(url)

    @app.handler("race:x")
    async def quick(ctx: Context[Any]) -> int:
        return 1

    stop = threading.Event()
    lock = threading.Condition()
    done = 0
    other: list[BaseException] = []

    def user() -> None:
        nonlocal done
        while not stop.is_set():
            try:
                task = app.add("race:x")
                app.wait(task.id, timeout=5)  # after the last close: no worker
            except ConveyorError:
                continue
            except BaseException as exc:  # what must not happen
                other.append(exc)
                return
            with lock:
                done += 1
                lock.notify_all()

    closes: list[BaseException | None] = []
    threads = [threading.Thread(target=user) for _ in range(12)]
    for t in threads:
        t.start()
    try:
        for _ in range(6):
            app.start()  # a worker runs (started again after each close)
            with lock:  # the users are at work (on a new loop after a close)
                seen = done
                assert lock.wait_for(lambda s=seen: done >= s + 20, timeout=60)
            try:
                app.close()
                closes.append(None)
            except BaseException as exc:  # the outcome is what the test checks
                closes.append(exc)
    finally:
        stop.set()
        app.close()  # ends the waits under way
        for t in threads:
            t.join(60)
        app.close()
    assert closes == [None] * 6, closes
    assert not other, other[:3]
    assert _ours() == before  # no loop, SQLite or worker thread left


def test_calls_during_a_close_say_so(tmp_path: Path) -> None:
    """A call made while another thread's close() runs (here held by the graceful
    stop of a running handler) is refused in words that say so, rather than
    opening the app again beside the close; once the close has returned, a call
    opens it again."""
    app = SyncConveyor(f"sqlite:///{tmp_path / 'tasks.db'}", stop_timeout=30)
    started, release = threading.Event(), threading.Event()

    @app.handler("slow")
    def slow(ctx: Context[Any]) -> str:
        started.set()
        release.wait(30)
        return "done"

    task = app.add("slow")
    app.start()
    assert started.wait(10)
    closer = threading.Thread(target=app.close)
    closer.start()
    try:
        assert wait_until(lambda: app._closing)
        with pytest.raises(ConveyorError, match="being closed by another thread"):
            app.add("x")
        with pytest.raises(ConveyorError, match="already being closed"):
            app.close()
    finally:
        release.set()
        closer.join(30)
    assert not closer.is_alive()
    assert app.get(task.id).result == "done"  # after the close: opened again
    app.close()


def wait_until(condition: Any, timeout: float = 10.0) -> bool:
    """Poll ``condition`` (a flag another thread sets, with no event to wait on)."""
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while not condition():
            if deadline.wait(0.005):
                return bool(condition())
        return True
    finally:
        timer.cancel()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_an_iterator_gives_what_it_held_when_the_app_closes(tmp_path: Path, kind: str) -> None:
    """As the async app's: the events already held, then "closed while this call
    waited" (the SyncConveyor's said "this SyncConveyor is closed" at once, and
    the held events were lost: 5 of 5); closing the iterator afterwards is
    harmless (it raised)."""
    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'tasks.db'}"
    app = SyncConveyor(url)
    events = app.events("task.added")
    added = [app.add("x").id, app.add("x").id]
    follow = app.logs(added[0], follow=True)
    app.close()
    assert [next(events).task_id for _ in added] == added
    with pytest.raises(ConveyorError, match="closed while this call waited"):
        next(events)
    with pytest.raises(StopIteration):
        next(events)
    with pytest.raises(ConveyorError, match="closed while this call waited"):
        next(follow)
    events.close()
    events.close()
    follow.close()
    with app.events("task.added") as again:  # the app opens again for a new call
        task = app.add("x")
        got = again.get(10)
        assert got is not None and got.task_id == task.id
        app.close()
    # leaving the with block after the close raised ConveyorError before
    app.close()


def test_close_from_an_on_callback_or_a_handler_is_refused_and_changes_nothing(
        tmp_path: Path) -> None:
    """From an ``on()`` callback (the portal's own loop) close() stopped that loop
    with the app open on it: a wait in another thread hung for ever. From a sync
    handler of the app it waited for the handler itself. Both are refused at once."""
    before = _ours()
    app = SyncConveyor(f"sqlite:///{tmp_path / 'tasks.db'}")
    seen: list[str] = []
    refused = threading.Event()

    def on_added(event: Any) -> None:
        try:
            app.close()
        except ConveyorError as exc:
            seen.append(f"callback: {exc}")
        refused.set()

    @app.handler("closes")
    def closes(ctx: Context[Any]) -> str:
        try:
            app.close()
        except ConveyorError as exc:
            return str(exc)
        return "closed"

    with app:
        app.on("task.added", on_added)
        task = app.add("closes")
        assert refused.wait(10)
        said = app.wait(task.id, timeout=10)  # the app still runs
        assert "inside the handler of task" in said
        assert seen and "cannot be closed from its own event loop" in seen[0]
    assert not app.app._opened
    assert _ours() == before
