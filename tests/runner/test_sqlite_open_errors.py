"""A SQLite file conveyor cannot use, opened by several calls at once.

Each call gets the clear error, nothing hangs, and the database thread never
dies on a caller that stopped waiting (a cancelled call used to make it raise
``InvalidStateError: CANCELLED`` in the thread: "Exception in thread
conveyor-sqlite"). Each scenario runs its own event loop, as a program does,
so that ``asyncio.run`` cancels what is left when it returns.
"""

from __future__ import annotations

import asyncio
import gc
import re
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.errors import ConfigurationError, SchemaError, StorageError
from conveyor.query import parse_filter
from conveyor.storage.sqlite import SQLiteStorage, parse_sqlite_url


def not_a_database(path: Path) -> None:
    path.write_text("this is not a database\n" * 200)


def newer_schema(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE conveyor_tasks (id TEXT PRIMARY KEY)")
    conn.execute("PRAGMA user_version = 9999")
    conn.commit()
    conn.close()


BAD_FILES: dict[str, tuple[Callable[[Path], None], type[Exception], str]] = {
    "text-file": (not_a_database, StorageError, "file is not a database"),
    "newer-schema": (newer_schema, SchemaError, "newer than this conveyor knows"),
}


@pytest.fixture(params=list(BAD_FILES))
def bad_file(request: pytest.FixtureRequest,
             tmp_path: Path) -> tuple[str, type[Exception], str]:
    make, error, message = BAD_FILES[request.param]
    path = tmp_path / "bad.db"
    make(path)
    return str(path), error, message


@pytest.fixture
def thread_errors(caplog: pytest.LogCaptureFixture) -> Iterator[list[threading.ExceptHookArgs]]:
    """Exceptions that end threads during the test (the database threads are
    joined before it looks), and errors nobody retrieved from a future."""
    caught: list[threading.ExceptHookArgs] = []
    before = set(threading.enumerate())
    previous = threading.excepthook
    threading.excepthook = caught.append
    try:
        yield caught
        for thread in set(threading.enumerate()) - before:
            if thread.name.startswith("conveyor-sqlite"):
                thread.join(10)
                assert not thread.is_alive(), f"{thread.name} is still running"
    finally:
        threading.excepthook = previous
    assert not caught, [f"{a.thread.name if a.thread else '?'}: {a.exc_value!r}" for a in caught]
    gc.collect()  # "Future exception was never retrieved" is logged when the future goes
    lost = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not lost, lost


def run_in_thread(main: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 30) -> Any:
    """``asyncio.run(main())`` in a thread of its own, so that a deadlocked loop
    fails the test instead of hanging it."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(asyncio.run(main()))
        except BaseException as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=target, name="test-loop", daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the event loop is stuck"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def test_concurrent_first_calls_all_raise_the_error(
        bad_file: tuple[str, type[Exception], str],
        thread_errors: list[threading.ExceptHookArgs]) -> None:
    path, error, message = bad_file

    async def main() -> list[Any]:
        app = Conveyor(f"sqlite:///{path}")
        try:
            return await asyncio.gather(app.count(), app.count(), app.count(),
                                        return_exceptions=True)
        finally:
            await app.close()

    results = run_in_thread(main)
    assert len(results) == 3
    for result in results:
        assert isinstance(result, error), result
        assert message in str(result)


def test_calls_left_running_when_the_program_ends(
        bad_file: tuple[str, type[Exception], str],
        thread_errors: list[threading.ExceptHookArgs]) -> None:
    """The first error ends the program; ``asyncio.run`` cancels the other call
    while the database thread is still opening the file for it."""
    path, error, message = bad_file

    async def main() -> None:
        app = Conveyor(f"sqlite:///{path}")
        await asyncio.gather(app.count(), app.count())

    with pytest.raises(error, match=message):
        run_in_thread(main)


def test_concurrent_opens_of_one_storage_share_the_outcome(
        bad_file: tuple[str, type[Exception], str],
        thread_errors: list[threading.ExceptHookArgs]) -> None:
    path, error, message = bad_file

    async def main() -> list[Any]:
        storage = SQLiteStorage(path)
        try:
            everything = parse_filter({})
            return await asyncio.gather(storage.count(everything), storage.count(everything),
                                        storage.open(), return_exceptions=True)
        finally:
            await storage.close()

    results = run_in_thread(main)
    for result in results:
        assert isinstance(result, error), result
        assert message in str(result)


def test_concurrent_first_calls_on_a_good_file(
        tmp_path: Path, thread_errors: list[threading.ExceptHookArgs]) -> None:
    """Calls made while the storage opens wait for that opening (they used to
    deadlock the event loop on the storage's open lock)."""

    async def main() -> list[Any]:
        storage = SQLiteStorage(tmp_path / "tasks.db")
        try:
            everything = parse_filter({})
            return await asyncio.gather(storage.count(everything), storage.count(everything),
                                        storage.stats())
        finally:
            await storage.close()

    assert run_in_thread(main) == [0, 0, {}]


def test_a_cancelled_opener_does_not_cancel_the_others(
        tmp_path: Path, thread_errors: list[threading.ExceptHookArgs]) -> None:
    async def main() -> int:
        storage = SQLiteStorage(tmp_path / "tasks.db")
        try:
            first = asyncio.ensure_future(storage.open())
            second = asyncio.ensure_future(storage.count(parse_filter({})))
            await asyncio.sleep(0)  # both are waiting for the opening
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            return await second
        finally:
            await storage.close()

    assert run_in_thread(main) == 0


def test_a_file_of_a_development_version_1_is_refused_unchanged(tmp_path: Path) -> None:
    """Development versions before 7d6c617 wrote schema version 1 with a change feed
    fed by triggers and no ``batch`` column; migrating it marked it version 4 and then
    every write failed ("no column named batch"). It is refused, and left as it was."""
    from conveyor.storage.sqlite import MIGRATIONS

    path = tmp_path / "early.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0].sql)
    conn.executescript(
        "DROP TABLE conveyor_changes; CREATE TABLE conveyor_changes (seq INTEGER PRIMARY KEY,"
        " task_id TEXT NOT NULL, version INTEGER, status TEXT, event TEXT, ts REAL,"
        " origin TEXT); PRAGMA user_version = 1;")
    conn.close()
    storage = SQLiteStorage(str(path))
    with pytest.raises(SchemaError, match=r"development version.*cannot be migrated"):
        asyncio.run(storage.open())
    asyncio.run(storage.close())
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        columns = [row[1] for row in conn.execute("PRAGMA table_info(conveyor_changes)")]
        assert "batch" not in columns
    finally:
        conn.close()


@pytest.mark.parametrize(("url", "needle"), [
    ("sqlite:///queue#2.db", "a path with '#' cannot be given as a URL"),
    ("sqlite:/abs.db", "use sqlite:///relative/path.db"),
    ("sqlite:///e.db?busy_timeout=5#frag", "it takes no '#' fragment"),
])
def test_sqlite_urls_that_would_name_another_file_are_refused(url: str, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(needle)):
        parse_sqlite_url(url)


async def test_a_sqlite_path_is_taken_as_written(tmp_path: Path) -> None:
    # not percent-decoded: a URL that named 'jobs%20q.db' keeps naming it
    app = Conveyor(f"sqlite:///{tmp_path}/jobs%20q.db")
    try:
        await app.add("a")
    finally:
        await app.close()
    assert (tmp_path / "jobs%20q.db").exists() and not (tmp_path / "jobs q.db").exists()


@pytest.mark.parametrize("version", [1, 3, 7])
async def test_another_applications_versioned_file_is_refused_unchanged(
        tmp_path: Path, version: int) -> None:
    path = tmp_path / "theirs.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    app = Conveyor(f"sqlite:///{path}")
    with pytest.raises(SchemaError, match="is not a conveyor database"):
        await app.add("a")
    await app.close()
    assert path.read_bytes() == before  # not even switched to WAL
