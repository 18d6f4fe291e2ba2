"""``conveyor demo``: a worker with example handlers, fed with tasks, shown live."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from conveyor import demo
from conveyor.app import Conveyor
from conveyor.events import Event
from conveyor.model import Progress, Status, Task

from ._base import EXIT_OK, Duration, db_option_with, explicit_db
from ._render import STATUS_STYLE, ago, out_console, shown, stats_table, status_text
from ._signals import stop_signals

__all__ = ["demo_command"]

ROWS = 14
BAR_WIDTH = 20


@click.command("demo")
@click.option("--duration", type=Duration("seconds", strict=True),
              help="Stop after SECONDS (default: run until Ctrl-C).")
@click.option("--every", type=Duration("seconds", strict=True), default=3.0, show_default=True,
              help="Seconds between new batches of tasks.")
@db_option_with(f"Storage URL [default {demo.DEMO_URL}; $CONVEYOR_DB is not read].")
@click.pass_context
def demo_command(ctx: click.Context, duration: float | None, every: float) -> int:
    """Run a worker with example handlers and watch it work.

    Starts a worker in this process on a SQLite file (default
    sqlite:///conveyor-demo.db; $CONVEYOR_DB is not used, so the demo never
    writes into your real database by accident), adds a few tasks of each
    demo action (demo:download reports progress, demo:poll reschedules
    itself, demo:flaky fails once then succeeds on retry), then a new batch
    every few seconds, and shows them live until Ctrl-C or --duration.
    """
    url = explicit_db(ctx) or demo.DEMO_URL
    app = demo.build_app(url, concurrency=8, stop_timeout=2.0)
    return int(asyncio.run(_run_demo(app, url, duration, every)))


class _Board:
    """What the live display knows: session tasks from storage, progress from events."""

    def __init__(self, app: Conveyor, url: str, width: Callable[[], int] | None = None) -> None:
        self.app = app
        self.url = url
        self.width = width  # the terminal's width now, when known
        self.started = time.time()
        self.tasks: list[Task] = []
        self.progress: dict[str, Progress] = {}
        self.added = 0
        self.worker_id = ""

    def on_progress(self, event: Event) -> None:
        progress = event.data.get("progress")
        if event.task_id is not None and isinstance(progress, Progress):
            self.progress[event.task_id] = progress

    async def refresh(self) -> None:
        self.tasks = await self.app.find({"created_at": {"$gte": self.started - 1}},
                                         sort="-created_at")
        running = {t.id for t in self.tasks if t.status is Status.RUNNING}
        for task_id in list(self.progress):
            if task_id not in running:
                del self.progress[task_id]

    def render(self) -> RenderableType:
        now = time.time()
        header = Text.assemble(("conveyor demo", "bold"), f"  {self.url}  ",
                               (f"worker {self.worker_id}", "dim"),
                               f"  {now - self.started:.0f}s  ", ("Ctrl-C to stop", "dim"))
        return Group(header, _counts_line(self.tasks, self.added), self._table(now))

    def _table(self, now: float) -> Table:
        tasks = _interesting(self.tasks)[:ROWS]
        cells = [("…" + t.id[-8:], t.action, status_text(t.status), str(t.attempts))
                 for t in tasks]
        # the note takes what the terminal has left (at most 44 columns; none below 8),
        # with a shorter bar when it is narrow: a narrow terminal cuts the note rather
        # than squeezing the other columns
        width = self.width() if self.width is not None else 200
        fixed = _fixed_width(cells) + 1  # the columns, their padding and borders
        bar = BAR_WIDTH if width - fixed - BAR_WIDTH - 6 >= 16 else BAR_WIDTH // 2
        note = min(44, width - fixed - bar - 6)
        table = Table(header_style="bold", expand=False)
        table.add_column("task", no_wrap=True, style="dim")
        table.add_column("action", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("attempt", justify="right", no_wrap=True)
        table.add_column("progress", no_wrap=True)
        if note >= 8:
            table.add_column("", no_wrap=True, max_width=note, overflow="ellipsis")
        for task, (short_id, action, status, attempts) in zip(tasks, cells, strict=True):
            progress = self.progress.get(task.id, task.progress)
            row: list[RenderableType] = [short_id, escape(action), status, attempts,
                                         _bar(task, progress, bar)]
            if note >= 8:
                row.append(_note(task, progress, now))
            table.add_row(*row)
        return table


def _fixed_width(cells: Sequence[tuple[str, str, Text, str]]) -> int:
    """The width of the demo table's first four columns: each one's widest cell or
    header, plus its padding (2) and left border (1)."""
    heads = ("task", "action", "status", "attempt")
    widest = [max([len(head)] + [_cell_len(row[i]) for row in cells])
              for i, head in enumerate(heads)]
    return sum(w + 3 for w in widest)


def _cell_len(cell: str | Text) -> int:
    return len(cell) if isinstance(cell, str) else cell.cell_len


def _interesting(tasks: Sequence[Task]) -> list[Task]:
    order = {Status.RUNNING: 0, Status.QUEUED: 1}

    def key(t: Task) -> tuple[int, float]:
        rank = order.get(t.status, 2)
        if rank == 0:
            return rank, t.started_at or 0.0
        if rank == 1:
            return rank, t.run_at
        return rank, -(t.finished_at or 0.0)

    return sorted(tasks, key=key)


def _counts_line(tasks: Sequence[Task], added: int) -> Text:
    counts = Counter(t.status for t in tasks)
    line = Text(f"{added} added: ")
    for i, status in enumerate(Status):
        if i:
            line.append(" · ")
        line.append(f"{counts.get(status, 0)} {status.value}", style=STATUS_STYLE[status])
    return line


def _bar(task: Task, progress: Progress | None, width: int = BAR_WIDTH) -> RenderableType:
    if task.status is Status.SUCCEEDED:
        return ProgressBar(total=1, completed=1, width=width)
    if progress is None or progress.fraction is None or task.terminal:
        return Text(" " * width)
    return ProgressBar(total=1, completed=progress.fraction, width=width)


def _note(task: Task, progress: Progress | None, now: float) -> str:
    if task.status is Status.RUNNING:
        return escape(shown(progress.message or "")) if progress else ""
    if task.status is Status.QUEUED:
        if task.run_at > now + 0.05:
            why = "retry" if task.error is not None else "next poll" \
                if task.action == "demo:poll" else "runs"
            return f"{why} {ago(task.run_at, now)}"
        return "waiting for a slot"
    if task.status is Status.SUCCEEDED:
        return escape(shown(json.dumps(task.result, separators=(",", ":"))))
    err = task.error
    return escape(shown(f"{err.type}: {err.message}" if err else (task.reason or "")))


async def _run_demo(app: Conveyor, url: str, duration: float | None, every: float) -> int:
    console = out_console()
    board = _Board(app, app.storage.url, width=lambda: console.width)  # no password
    app.on("task.progress", board.on_progress)
    with stop_signals() as stop:
        try:
            await app.start()
            assert app.worker is not None
            board.worker_id = app.worker.id
            console.print(f"conveyor demo: worker {app.worker.id} on {board.url} "
                          f"({', '.join(demo.ACTIONS)})")

            async def feed() -> None:
                batch = 1
                board.added += len(await app.add_many(
                    demo.demo_batch(batch, downloads=3, polls=2, flakies=2)))
                while True:
                    await asyncio.sleep(every)
                    batch += 1
                    board.added += len(await app.add_many(demo.demo_batch(batch)))

            feeder = asyncio.create_task(feed())
            deadline = None if duration is None else time.monotonic() + duration
            try:
                with Live(board.render(), console=console, refresh_per_second=8,
                          redirect_stdout=False, redirect_stderr=False) as live:
                    while True:
                        if feeder.done():
                            feeder.result()  # an error adding tasks ends the demo
                        await board.refresh()
                        live.update(board.render())
                        pause = 0.25
                        if deadline is not None:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                stop.trigger(f"{duration:g}s passed")
                            pause = max(0.0, min(pause, left))
                        if await stop.wait(pause):
                            break
                if not console.is_terminal:
                    console.line()  # a live display that was not animated ends mid-line
            finally:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder
            console.print(f"stopping ({stop.name}): running tasks get up to "
                          f"{app.stop_timeout:g}s to finish")
            await app.stop()
            await board.refresh()
        finally:
            await app.close()
    _summary(console, board, stop.name or "stopped")
    return EXIT_OK


def _summary(console: Any, board: _Board, why: str) -> None:
    tasks = board.tasks
    stats: dict[str, dict[str, int]] = {}
    for task in tasks:
        per = stats.setdefault(task.action, {})
        per[task.status.value] = per.get(task.status.value, 0) + 1
    elapsed = time.time() - board.started
    console.print()
    console.print(f"demo stopped ({why}) after {elapsed:.1f}s: {board.added} task(s) added")
    if stats:
        console.print(stats_table(stats))
    retried = [t for t in tasks if t.action == "demo:flaky" and t.status is Status.SUCCEEDED
               and t.attempts > 1]
    polled = [t for t in tasks if t.action == "demo:poll" and t.status is Status.SUCCEEDED]
    if retried:
        console.print(f"- {len(retried)} demo:flaky task(s) failed once and succeeded on retry")
    if polled:
        console.print(f"- {len(polled)} demo:poll task(s) rescheduled themselves "
                      f"{demo.POLLS - 1} times before finishing")
    left = [t for t in tasks if not t.terminal]
    if left:
        console.print(f"- {len(left)} task(s) left queued: they run when a worker starts "
                      "on this database again")
    db = f"--db {board.url}"
    console.print(f"explore:  conveyor ls {db}\n"
                  f"          conveyor show ID --logs {db}\n"
                  f"          conveyor stats {db}", style="dim")
