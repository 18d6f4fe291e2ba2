"""Following one task live: a progress bar, its log lines, until it ends."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from conveyor.app import Conveyor
from conveyor.events import Event
from conveyor.model import LogLevel, Status, Task
from conveyor.model import Progress as TaskProgress

from ._render import STATUS_STYLE, print_log, shown

if TYPE_CHECKING:
    from conveyor.client import HTTPClient

__all__ = ["HUB_POLL", "SNAPSHOT_INTERVAL", "final_line", "follow", "follow_hub"]

SNAPSHOT_INTERVAL = 0.25
"""Seconds between reads of the task's stored snapshot while following it."""
HUB_POLL = 0.5
"""Through a hub: seconds between reads of the task and its log while following it."""


class _Bar:
    """One rich progress bar that mirrors a task's status and progress."""

    def __init__(self, console: Console, task: Task) -> None:
        self.action = task.action
        self.progress = Progress(
            SpinnerColumn(finished_text=" "),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[message]}", markup=False),
            TimeElapsedColumn(),
            console=console,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.id: TaskID = self.progress.add_task(self._describe(task.status), total=None,
                                                 message="")
        self.version = 0
        self.snapshot(task)

    def _describe(self, status: Status) -> str:
        style = STATUS_STYLE.get(status, "")
        return f"{escape(self.action)} [{style}]{status.value}[/]"

    def snapshot(self, task: Task) -> None:
        """Show a stored state of the task, unless a newer one was shown already."""
        if task.version <= self.version or task.terminal:
            return
        self.version = task.version
        self.set_status(task.status)
        self.set_progress(task.progress)

    def apply(self, event: Event) -> None:
        """Show what an event says (progress events from a worker in this
        process carry every update, those from the change feed a version)."""
        version = event.data.get("version")
        if isinstance(version, int):
            if version < self.version:
                return
            self.version = version
        progress = event.data.get("progress")
        if event.type == "task.progress" and isinstance(progress, TaskProgress):
            self.set_status(Status.RUNNING)
            self.set_progress(progress)
        elif event.task is not None and event.type != "task.log" and not event.task.terminal:
            self.set_status(event.task.status)

    def set_status(self, status: Status) -> None:
        self.progress.update(self.id, description=self._describe(status))

    def set_progress(self, progress: TaskProgress | None) -> None:
        if progress is None:
            return
        message = shown(progress.message or "")
        changes: dict[str, Any] = {"message": message}
        if progress.total:
            changes["total"] = progress.total
            changes["completed"] = progress.current or 0
        elif progress.current is not None:
            changes["message"] = f"{progress.current:g} {message}".strip()
        self.progress.update(self.id, **changes)

    def finish(self, task: Task) -> None:
        self.set_status(task.status)
        self.set_progress(task.progress)
        if task.status is Status.SUCCEEDED:
            total = self.progress.tasks[0].total or 1
            self.progress.update(self.id, total=total, completed=total)
        self.progress.stop_task(self.id)


async def follow(app: Conveyor | HTTPClient, task: Task, *, bar_console: Console | None,
                 log_console: Console | None, level: LogLevel = LogLevel.DEBUG) -> Task:
    """Follow ``task`` until it ends and return its final state (through a hub:
    :func:`follow_hub`).

    ``bar_console``: where to draw a live progress bar (None: no bar).
    ``log_console``: where to print its log lines as they arrive (None: no logs).
    The bar is fed by ``task.*`` events of the task, and by its stored
    snapshot read every :data:`SNAPSHOT_INTERVAL` seconds (events from other
    processes come from the storage change feed, which must not be the only
    source); the logs come from :meth:`Conveyor.logs`, the end from
    :meth:`Conveyor.wait_task`.
    """
    if not isinstance(app, Conveyor):
        return await follow_hub(app, task, bar_console=bar_console, log_console=log_console,
                                level=level)
    await app.open()
    events = app.events("task.*", task_id=task.id)  # subscribe before reading the state
    bar: _Bar | None = None
    try:
        task = await app.get(task.id)
        if bar_console is not None and not task.terminal:
            bar = _Bar(bar_console, task)
            bar.progress.start()
        printer = bar.progress.console if bar is not None else log_console

        async def pump_logs() -> None:
            assert printer is not None
            async for record in app.logs(task.id, max_level=level):
                print_log(printer, record)

        async def pump_events(bar: _Bar) -> None:
            async for event in events:
                bar.apply(event)

        async def pump_snapshots(bar: _Bar) -> None:
            while True:
                await asyncio.sleep(SNAPSHOT_INTERVAL)
                bar.snapshot(await app.get(task.id))

        helpers: list[asyncio.Task[None]] = []
        if log_console is not None:
            helpers.append(asyncio.create_task(pump_logs()))
        if bar is not None:
            helpers.append(asyncio.create_task(pump_events(bar)))
            helpers.append(asyncio.create_task(pump_snapshots(bar)))
        waiter = asyncio.ensure_future(app.wait_task(task.id))
        try:
            if log_console is not None:
                # the log stream ends by itself once it sees that the task ended; one
                # that ends before (its output closed: `| head`) ends the following
                await asyncio.wait([waiter, helpers[0]], return_when=asyncio.FIRST_COMPLETED)
                if helpers[0].done() and helpers[0].exception() is not None:
                    await helpers[0]
            final = await waiter
            if log_console is not None:
                await asyncio.wait(helpers[:1], timeout=5)
        finally:
            waiter.cancel()
            for helper in helpers:
                helper.cancel()
            for helper in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
        if bar is not None:
            bar.finish(final)
        return final
    finally:
        events.close()
        if bar is not None:
            bar.progress.stop()


async def follow_hub(client: HTTPClient, task: Task, *, bar_console: Console | None,
                     log_console: Console | None, level: LogLevel = LogLevel.DEBUG,
                     poll: float = HUB_POLL) -> Task:
    """:func:`follow` through a hub's REST API: long polls of the task's end of
    ``poll`` seconds (60 s when nothing is shown), and its log read after each."""
    task = await client.get(task.id)
    bar: _Bar | None = None
    if bar_console is not None and not task.terminal:
        bar = _Bar(bar_console, task)
        bar.progress.start()
    printer = bar.progress.console if bar is not None else log_console
    wait = poll if bar is not None or log_console is not None else 60.0
    seq = 0
    try:
        while True:
            if log_console is not None and printer is not None:
                page = await client.logs(task.id, after_seq=seq, max_level=level)
                for record in page.records:
                    print_log(printer, record)
                seq = page.next_seq
                if len(page.records) >= 1000:
                    continue  # more lines waiting
                if page.complete:  # the task had ended before its log was read
                    final = await client.get(task.id)
                    break
            current, ended = await client.wait_once(task.id, wait)
            if ended and log_console is None:
                final = current
                break
            if bar is not None and not ended:
                bar.snapshot(current)
        if bar is not None:
            bar.finish(final)
        return final
    finally:
        if bar is not None:
            bar.progress.stop()


def final_line(task: Task) -> Text:
    took = ""
    if task.started_at and task.finished_at:
        took = f" in {task.finished_at - task.started_at:.1f}s"
    return Text(f"task {task.id} ({task.action}) {task.status.value}{took}",
                style=STATUS_STYLE.get(task.status, ""))
