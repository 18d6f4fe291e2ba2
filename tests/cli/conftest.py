from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ._support import Background


@pytest.fixture
def db(tmp_path: Path) -> str:
    """The URL of a SQLite file in a fresh directory (not created yet)."""
    return f"sqlite:///{tmp_path / 'tasks.db'}"


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    """Start CLI subprocesses in the background; they are killed at teardown."""
    started: list[Background] = []

    def start(*args: str, **kwargs: object) -> Background:
        proc = Background(*args, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
