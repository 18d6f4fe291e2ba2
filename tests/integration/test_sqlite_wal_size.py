"""The ``-wal`` file, grown past ``WAL_SIZE_LIMIT`` while a long read held back the
checkpoints (a backup, a sqlite3 shell), is cut back once they catch up; it kept its
peak size until the last connection closed (SQLite operations audit)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from conveyor import Conveyor
from conveyor.storage.sqlite import WAL_SIZE_LIMIT


def size(path: str) -> int:
    return os.path.getsize(path)


async def test_the_wal_is_cut_back_after_a_long_read(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    wal = f"{path}-wal"
    app = Conveyor(f"sqlite:///{path}")
    try:
        await app.add("a")
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM conveyor_tasks").fetchone()  # a snapshot held
        payload = "x" * 200_000
        while size(wal) <= WAL_SIZE_LIMIT:
            await app.add_many([("a", payload)] * 50)
        reader.execute("COMMIT")
        reader.close()
        sizes = []
        for _ in range(5):  # a checkpoint completes, then a write restarts the log
            await app.add("a")
            sizes.append(size(wal))
        assert sizes[-1] <= WAL_SIZE_LIMIT, sizes
        assert await app.count({"payload": payload}) >= 50  # nothing lost on the way
    finally:
        await app.close()
