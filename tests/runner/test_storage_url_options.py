"""Storage URL options and keywords that were accepted and should have been refused
(the config audit): a clear ConfigurationError when the app or storage is made, and
nothing created."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.errors import ConfigurationError
from conveyor.storage.sqlite import SQLiteStorage


@pytest.mark.parametrize(("query", "needle"), [
    # NaN and infinity passed "<= 0": a write waited for the lock forever (busy_timeout),
    # the watcher spun (poll_interval=nan) or died past threading.TIMEOUT_MAX (inf, 1e10)
    ("busy_timeout=nan", "sqlite option busy_timeout must be a number of seconds > 0 and at "
                         "most 3600 (an hour), not nan"),
    ("busy_timeout=inf", "busy_timeout must be a number of seconds > 0"),
    ("busy_timeout=-inf", "busy_timeout must be a number of seconds > 0"),
    ("busy_timeout=3600.5", "busy_timeout must be a number of seconds > 0"),
    ("busy_timeout=0", "busy_timeout must be a number of seconds > 0"),
    ("busy_timeout=soon", "sqlite URL option busy_timeout must be a number of seconds, "
                          "not 'soon'"),
    ("poll_interval=nan", "poll_interval must be a number of seconds > 0"),
    ("poll_interval=inf", "poll_interval must be a number of seconds > 0"),
    ("poll_interval=1e10", "poll_interval must be a number of seconds > 0"),
    ("poll_interval=-0.5", "poll_interval must be a number of seconds > 0"),
    # last-wins hid the first value; the PostgreSQL URL refuses it too
    ("synchronous=normal&synchronous=full", "option 'synchronous' given twice"),
    ("busy_timeout=5&mode=rw&busy_timeout=1", "option 'busy_timeout' given twice"),
])
def test_bad_sqlite_url_options_are_refused(tmp_path: Path, query: str, needle: str) -> None:
    path = tmp_path / "t.db"
    with pytest.raises(ConfigurationError, match=re.escape(needle)):
        Conveyor(f"sqlite:///{path}?{query}")
    assert not path.exists()


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"read_only": "false"}, "read_only must be True or False, not 'false'"),  # read-only!
    ({"read_only": 0}, "read_only must be True or False"),
    ({"busy_timeout": True}, "busy_timeout must be a number of seconds > 0"),
    ({"busy_timeout": "5"}, "busy_timeout must be a number of seconds > 0"),
    ({"busy_timeout": float("nan")}, "busy_timeout must be a number of seconds > 0"),
    ({"poll_interval": float("inf")}, "poll_interval must be a number of seconds > 0"),
    ({"poll_interval": threading.TIMEOUT_MAX}, "poll_interval must be a number of seconds"),
    ({"poll_interval": None}, "poll_interval must be a number of seconds > 0"),
    ({"synchronous": 1}, "synchronous must be one of OFF, NORMAL, FULL, EXTRA, not 1"),
])
def test_bad_sqlite_keywords_are_refused(tmp_path: Path, kwargs: dict[str, Any],
                                         needle: str) -> None:
    path = tmp_path / "t.db"
    with pytest.raises(ConfigurationError, match=re.escape(needle)):
        SQLiteStorage(path, **kwargs)
    assert not path.exists()


async def test_sqlite_options_at_their_bounds_work(tmp_path: Path) -> None:
    from conveyor.storage.sqlite import MAX_OPTION_SECONDS

    assert MAX_OPTION_SECONDS == 3600 < threading.TIMEOUT_MAX
    app = Conveyor(f"sqlite:///{tmp_path / 't.db'}?busy_timeout=3600&poll_interval=3600"
                   "&synchronous=normal&mode=rw")
    try:
        task = await app.add("a")
        assert (await app.get(task.id)).action == "a"
    finally:
        await app.close()
    storage = SQLiteStorage(tmp_path / "t.db", busy_timeout=1, poll_interval=0.5,
                            read_only=True)
    assert (storage.busy_timeout, storage.poll_interval) == (1.0, 0.5)
    await storage.close()


@pytest.mark.parametrize("url", ["memory://name", "memory://?foo=1", "memory://#x",
                                 "memory:", "memory:/", "memory:///x", "MEMORY://shared"])
def test_memory_url_takes_nothing_after_the_scheme(url: str) -> None:
    """memory://name looked like a named, shared store; it was a new empty one."""
    with pytest.raises(ConfigurationError, match=re.escape(
            f"bad memory URL {url!r}: write memory:// with nothing after it")):
        Conveyor(url)


async def test_memory_url_still_works() -> None:
    for url in ("memory://", "MEMORY://"):
        app = Conveyor(url)
        try:
            assert (await app.add("a")).action == "a"
        finally:
            await app.close()


@pytest.mark.parametrize(("path", "needle"), [
    ("dir/", "it names a folder (it ends with '/'), not a file"),
    ("/abs/dir/", "it names a folder"),
])
def test_sqlite_url_of_a_folder_is_refused(path: str, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(needle)):
        Conveyor(f"sqlite:///{path}")


@pytest.mark.parametrize("url", ["postgresql://u:p@127.0.0.1/db#x",
                                 "postgresql://u:p@127.0.0.1/db?schema=s#x",
                                 "postgresql://u:p@127.0.0.1/db#"])
def test_postgres_url_with_a_fragment_is_refused(url: str) -> None:
    """The fragment was dropped silently (`db#x` connected to `db`); SQLite refuses it."""
    from conveyor.storage.postgres import parse_postgres_url  # the [postgres] extra

    with pytest.raises(ConfigurationError, match="it takes no '#' fragment") as caught:
        parse_postgres_url(url)
    assert ":p@" not in str(caught.value)  # the password stays hidden
