"""SQLite: the change feed starts where ``open()`` left it.

A listener's feed starts when its watcher thread first reads the feed's position.
That came after ``open()`` returned (the thread connects first; slow under load):
another process's changes made in between were never delivered. The position is
read by ``open()`` now, and a watcher started soon after begins there."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from conveyor import Conveyor


async def test_changes_made_just_after_open_reach_the_listeners(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'feed.db'}"
    writer, listener = Conveyor(url), Conveyor(url)
    await writer.open()
    connect = listener.storage._connect  # type: ignore[attr-defined]

    def slow_watcher_connect(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "conveyor-sqlite-watch":
            time.sleep(0.3)  # the watcher thread connects late (a loaded machine)
        return connect(*args, **kwargs)

    listener.storage._connect = slow_watcher_connect  # type: ignore[attr-defined]
    try:
        await listener.open()
        events = listener.events("task.*")
        task = await writer.add("feed:x", 1)  # while the watcher still connects
        await writer.abort(task.id)
        seen = []
        while len(seen) < 2:
            event = await events.get(timeout=10)
            assert event is not None, seen
            if event.task_id == task.id:
                seen.append(event.type)
        assert seen == ["task.added", "task.aborted"]
        events.close()
    finally:
        await listener.close()
        await writer.close()
