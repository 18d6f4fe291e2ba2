"""``sqlite:///copy.db?mode=ro``: a backup (or a file one may not write) inspected
without changing it: conveyor set its journal mode to WAL at every open (a copy
made by ``VACUUM INTO`` changed, a read-only one could not be read at all), and
nothing is written: every write is a clear StorageError, the schema is not
migrated."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.errors import ConfigurationError, SchemaError, StorageError


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _copy(tmp_path: Path) -> tuple[Path, str]:
    live = tmp_path / "live.db"
    app = Conveyor(f"sqlite:///{live}")
    try:
        task = await app.add("a", {"n": 1})
        await app.add("b", {"n": 2})
    finally:
        await app.close()
    copy = tmp_path / "copy.db"
    with contextlib.closing(sqlite3.connect(live)) as conn:
        conn.execute(f"VACUUM INTO '{copy}'")
    return copy, task.id


async def test_a_copy_is_read_and_left_as_it_was(tmp_path: Path) -> None:
    copy, task_id = await _copy(tmp_path)
    before = _digest(copy)
    app = Conveyor(f"sqlite:///{copy}?mode=ro")
    try:
        assert await app.count() == 2
        assert (await app.get(task_id)).payload == {"n": 1}
        assert [t.action for t in await app.find({"action": "a"})] == ["a"]
        for write in (lambda: app.add("c", None), lambda: app.abort(task_id),
                      lambda: app.prioritize(task_id, 3)):
            with pytest.raises(StorageError, match=r"opened read-only \(mode=ro\)"):
                await write()
    finally:
        await app.close()
    assert _digest(copy) == before
    assert [n for n in _names(tmp_path) if n.startswith("copy")] == ["copy.db"]
    with contextlib.closing(sqlite3.connect(copy)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_the_cli_reads_a_copy_read_only(tmp_path: Path) -> None:
    copy, task_id = asyncio.run(_copy(tmp_path))
    before = _digest(copy)
    url = f"sqlite:///{copy}?mode=ro"
    cli = [sys.executable, "-m", "conveyor"]
    listed = subprocess.run([*cli, "ls", "--db", url, "--json"], capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert task_id in listed.stdout
    shown = subprocess.run([*cli, "show", task_id, "--db", url], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0 and task_id in shown.stdout
    added = subprocess.run([*cli, "add", "a", "{}", "--db", url], capture_output=True,
                           text=True, timeout=60)
    assert added.returncode != 0 and "opened read-only (mode=ro)" in added.stderr
    assert _digest(copy) == before


async def test_mode_ro_refuses_what_it_cannot_read_unchanged(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="mode must be ro"):
        Conveyor(f"sqlite:///{tmp_path / 'x.db'}?mode=rx")
    missing = Conveyor(f"sqlite:///{tmp_path / 'missing.db'}?mode=ro")
    with pytest.raises(StorageError, match="no such file"):
        await missing.count()
    await missing.close()
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:  # a file of an older schema: not migrated here
        conn.execute("CREATE TABLE conveyor_tasks (id TEXT)")
        conn.execute("CREATE TABLE conveyor_changes (seq INTEGER, batch TEXT)")
        conn.execute("PRAGMA user_version = 3")
    before = _digest(old)
    app = Conveyor(f"sqlite:///{old}?mode=ro")
    with pytest.raises(SchemaError, match="migrate a copy of it"):
        await app.count()
    await app.close()
    assert _digest(old) == before
