"""An app never closed whose event loop ended (a test that failed before its
``close()``) leaves its SQLite change watcher polling for nobody: every 2 ms for
the rest of the process (100 such apps took a core). Once every stream it served
has a closed loop, the watcher polls once a second; a new stream wakes it."""

from __future__ import annotations

import asyncio
import resource
import time
from pathlib import Path

from conveyor import Conveyor


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_watchers_of_apps_whose_loop_ended_stop_polling_fast(tmp_path: Path) -> None:
    apps = []
    for i in range(30):
        app = Conveyor(f"sqlite:///{tmp_path / f'{i}.db'}")

        async def use(app: Conveyor = app) -> None:
            await app.add("a", None)
            await app.find()
            app.on("task.added", lambda event: None)

        asyncio.run(use())  # its loop ends, the app is never closed
        apps.append(app)
    time.sleep(1.5)  # the scenario: the watchers look for readers once a second
    before = _cpu()
    time.sleep(2.0)
    used = _cpu() - before
    # 30 watchers polling every 2 ms used 0.4-0.6 s of CPU in these 2 s; once a second
    # they use next to nothing
    assert used < 0.15, used

    # an app used again in a new loop gets its events at once
    app = apps[0]

    async def again() -> float:
        seen = asyncio.Event()
        app.on("task.added", lambda event: seen.set())
        other = Conveyor(f"sqlite:///{tmp_path / '0.db'}")
        try:
            await app.find()
            start = time.monotonic()
            await other.add("a", None)
            await asyncio.wait_for(seen.wait(), 10)
            return time.monotonic() - start
        finally:
            await other.close()
            await app.close()

    assert asyncio.run(again()) < 0.5
    for app in apps[1:]:
        asyncio.run(app.close())
