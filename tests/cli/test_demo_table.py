"""The demo's live table fits the terminal: at 80 columns the task, action, status and
attempt columns stay whole (it printed `…0…` and `s…`), the note gets what is left."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from rich.console import Console

from conveyor import Conveyor, Status
from conveyor._specs import build_spec
from conveyor.cli._demo import _Board
from conveyor.storage._ops import new_task


@pytest.mark.parametrize("width", [80, 100, 120, 200])
async def test_the_demo_table_fits_its_terminal(width: int) -> None:
    now = time.time()
    base = new_task(build_spec("demo:download", None), now)
    tasks = [replace(base, status=Status.SUCCEEDED, attempts=2, id=base.id[:-1] + "a",
                     result={"bytes": 10240, "note": "x" * 60}),
             replace(base, status=Status.QUEUED, run_at=now + 90, id=base.id[:-1] + "b"),
             replace(base, status=Status.FAILED, id=base.id[:-1] + "c", reason="error")]
    console = Console(width=width, record=True)
    app = Conveyor("memory://")
    board = _Board(app, "sqlite:///demo.db", width=lambda: console.width)
    board.tasks = tasks
    console.print(board._table(now))
    await app.close()
    lines = console.export_text().splitlines()
    assert all(len(line) <= width for line in lines), lines
    text = "\n".join(lines)
    for task in tasks:
        assert "…" + task.id[-8:] in text
    for word in ("demo:download", "succeeded", "queued", "failed", "attempt"):
        assert word in text, (word, text)
    assert "runs in 1m" in text  # the note has room from 80 columns on
    if width >= 120:
        assert '{"bytes":10240,' in text
