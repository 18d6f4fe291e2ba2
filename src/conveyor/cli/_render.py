"""How tasks, logs, stats and workers look in a terminal (rich)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import select
import socket
import stat
import sys
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import IO, Any, TypeVar, cast

from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from conveyor.model import LogLevel, LogRecord, Status, Task
from conveyor.storage import WorkerInfo

__all__ = [
    "STALE_AFTER",
    "ChunkedOut",
    "ago",
    "err_console",
    "log_line",
    "out_console",
    "print_log",
    "progress_text",
    "shown",
    "stats_table",
    "status_text",
    "task_details",
    "tasks_table",
    "timestamp",
    "until_reader_gone",
    "worker_alive",
    "workers_table",
]

STATUS_STYLE: Mapping[str, str] = {
    Status.QUEUED: "cyan",
    Status.RUNNING: "yellow",
    Status.SUCCEEDED: "green",
    Status.FAILED: "red",
    Status.ABORTED: "magenta",
}
LEVEL_STYLE: Mapping[LogLevel, str] = {
    LogLevel.DEBUG: "dim",
    LogLevel.INFO: "",
    LogLevel.WARNING: "yellow",
    LogLevel.ERROR: "bold red",
}
def _escapes(one_line: bool) -> dict[int, str]:
    table = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0)) if c != 0x09}
    table.update({c: f"\\u{c:04x}" for c in (0x200e, 0x200f, *range(0x202a, 0x202f),
                                              *range(0x2066, 0x206a), 0x2028, 0x2029)})
    table.update({0x0a: "\\n", 0x0d: "\\r"})
    if not one_line:
        del table[0x0a]
    return table


_ONE_LINE = _escapes(one_line=True)
_LINES = _escapes(one_line=False)


def shown(text: str, *, lines: bool = False) -> str:
    """Text a task carries (a log line, a message, an error), safe for a terminal:
    control characters (ESC, BEL, CR, C1), bidirectional overrides and line
    separators written as escapes (``\\x1b``, ``\\u202e``), newlines too unless
    ``lines``: a handler or a remote worker cannot move the cursor, recolour or
    clear the operator's screen, or forge a line of output."""
    return text.translate(_LINES if lines else _ONE_LINE)


STALE_AFTER = 90.0
"""Seconds without a heartbeat after which a registered worker is presumed gone
(workers beat every ``lease / 3`` seconds, 10 s by default)."""


def _width(stderr: bool) -> int | None:
    """Rich's width, except that a pipe or file gets wide lines instead of 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return None if tty or os.environ.get("COLUMNS") else 200


class _Console(Console):
    """A rich console whose closed pipe (``| head``) is a ``BrokenPipeError``, which
    the command line ends quietly wherever it is raised, rather than rich's
    ``SystemExit`` (a traceback when it is raised in an asyncio task)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


T = TypeVar("T")


async def until_reader_gone(work: Awaitable[T], *, interval: float = 0.1) -> T:
    """``work``, unless the reader of standard output goes away first (``| head``
    has had its lines): then ``work`` is cancelled and ``BrokenPipeError`` raised,
    which the command line ends quietly. A closed pipe is otherwise noticed only at
    the next write, which may be long in coming when the output is a task's log."""
    future = asyncio.ensure_future(work)
    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):  # no real standard output
        return await future
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) or not hasattr(select, "poll"):
        return await future  # (no poll on Windows: noticed at the next write there)
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR and POLLHUP are reported whatever the mask
    try:
        while not future.done():
            if poller.poll(0):
                future.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await future
                raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
            await asyncio.wait([future], timeout=interval)
        return future.result()
    finally:
        if not future.done():  # this one was cancelled (Ctrl-C): so is the work
            future.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await future


class ChunkedOut:
    """Standard output written in pieces of at most 64 KiB. A single large write to a
    pipe whose reader goes away (``| head``) is cut short without an error (the rest
    is lost and the command would end with exit code 0); in pieces, the next one
    raises ``BrokenPipeError``."""

    PIECE = 1 << 16

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        for start in range(0, len(text), self.PIECE):
            self._stream.write(text[start:start + self.PIECE])
            self._stream.flush()
        return len(text)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, flush, ...
        return getattr(self._stream, name)


def out_console() -> Console:
    return _Console(highlight=False, width=_width(False),
                    file=cast("IO[str]", ChunkedOut(sys.stdout)))


def err_console() -> Console:
    return _Console(stderr=True, highlight=False, width=_width(True))


def status_text(status: Status | str) -> Text:
    value = str(status)
    return Text(value, style=STATUS_STYLE.get(value, ""))


def _local(ts: float) -> datetime | None:
    """``ts`` as a local datetime, or None when it is not a time a datetime can
    hold (a value stored by an older version, or NaN)."""
    try:
        return datetime.fromtimestamp(ts)
    except (OverflowError, OSError, ValueError, TypeError):
        return None


def _no_time(ts: Any) -> str:
    """How a stored value that is not a valid time is shown, instead of failing."""
    try:
        text = f"{ts:g}"
    except (TypeError, ValueError):
        text = repr(ts)
    return f"{text} (not a valid time)"


def ago(ts: float | None, now: float | None = None) -> str:
    """``12s ago``, ``in 3m``, or a date for anything older than a day."""
    if ts is None:
        return ""
    now = time.time() if now is None else now
    try:
        delta = now - ts
    except TypeError:
        return _no_time(ts)
    future = delta < 0
    delta = abs(delta)
    if not delta < 86400:  # NaN too
        moment = _local(ts)
        return _no_time(ts) if moment is None else moment.strftime("%Y-%m-%d %H:%M")
    if delta < 1:
        return "now" if not future else "in <1s"
    if delta < 60:
        amount = f"{delta:.0f}s"
    elif delta < 3600:
        amount = f"{delta // 60:.0f}m"
    else:
        amount = f"{delta // 3600:.0f}h{(delta % 3600) // 60:02.0f}m"
    return f"in {amount}" if future else f"{amount} ago"


def timestamp(ts: float | None) -> str:
    """An absolute local time with milliseconds, and how long ago."""
    if ts is None:
        return ""
    moment = _local(ts)
    if moment is None:
        return _no_time(ts)
    stamp = moment.isoformat(sep=" ", timespec="milliseconds")
    return f"{stamp} ({ago(ts)})"


def progress_text(task: Task) -> str:
    progress = task.progress
    if progress is None:
        return ""
    parts = []
    fraction = progress.fraction
    if fraction is not None:
        parts.append(f"{fraction * 100:.0f}%")
    elif progress.current is not None:
        parts.append(f"{progress.current:g}")
    if progress.message:
        parts.append(shown(progress.message))
    return " ".join(parts)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def tags_text(tags: Mapping[str, Any]) -> str:
    return " ".join(f"{shown(k)}={shown(v) if isinstance(v, str) else shown(_compact(v))}"
                    for k, v in tags.items())


def tasks_table(tasks: Sequence[Task], *, caption: str | None = None) -> Table:
    now = time.time()
    table = Table(caption=caption, caption_justify="left", header_style="bold")
    table.add_column("id", no_wrap=True, overflow="fold")
    table.add_column("action", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("priority", justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("progress")
    table.add_column("created", no_wrap=True)
    table.add_column("tags")
    for task in tasks:
        attempts = str(task.attempts)
        if task.max_attempts:
            attempts += f"/{task.max_attempts}"
        status = status_text(task.status)
        if task.status is Status.QUEUED and task.run_at > now + 0.5:
            status.append(f" ({ago(task.run_at, now)})", style="dim")
        elif task.abort_requested and task.status is Status.RUNNING:
            status.append(" (aborting)", style="dim")
        table.add_row(task.id, escape(task.action), status, f"{task.priority:g}", attempts,
                      escape(progress_text(task)), ago(task.created_at, now),
                      escape(tags_text(task.tags)))
    return table


def _json_block(value: Any) -> str:
    compact = json.dumps(value, ensure_ascii=False)
    if len(compact) <= 60:
        return shown(compact)
    return shown(json.dumps(value, indent=2, ensure_ascii=False), lines=True)


def task_details(task: Task) -> Table:
    """Every field of the task, one per row."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    times = {"run_at", "created_at", "updated_at", "started_at", "finished_at", "lease_until",
             "pickup_deadline"}
    for name, value in task.to_json().items():
        if name == "logs":
            continue
        cell: Text | str
        if name == "status":
            cell = status_text(task.status)
        elif name in times:
            cell = timestamp(value) if value is not None else "-"
        elif name == "error" and task.error is not None:
            cell = Text()
            cell.append(shown(f"{task.error.type}: {task.error.message}", lines=True),
                        style="red")
            if task.error.traceback:
                cell.append("\n" + shown(task.error.traceback.rstrip(), lines=True),
                            style="dim")
        elif name == "errors":
            if not task.errors:
                cell = "-"
            else:
                cell = Text()
                for i, err in enumerate(task.errors):
                    if i:
                        cell.append("\n")
                    when = f" ({ago(err.at)})" if err.at else ""
                    cell.append(shown(f"attempt {err.attempt}: {err.type}: {err.message}",
                                      lines=True) + when)
        elif name == "progress":
            described = progress_text(task) or "-"
            if task.progress is not None and task.progress.current is not None:
                total = "" if task.progress.total is None else f" of {task.progress.total:g}"
                described += f" ({task.progress.current:g}{total})"
            cell = Text(described)
        elif value is None or value == [] or value == {}:
            cell = "-"
        elif isinstance(value, str):
            cell = escape(shown(value, lines=True))
        elif isinstance(value, bool | int | float):
            cell = f"{value:g}" if isinstance(value, float) else str(value)
        else:
            cell = Text(_json_block(value))
        table.add_row(name, cell)
    return table


def log_line(record: LogRecord) -> Text:
    moment = _local(record.ts)
    stamp = _no_time(record.ts) if moment is None else moment.strftime("%H:%M:%S.%f")[:-3]
    text = Text()
    text.append(f"{stamp} ", style="dim")
    text.append(f"{record.level.name:<7}", style=LEVEL_STYLE.get(record.level, ""))
    text.append(" " + shown(record.message))
    if record.data:
        text.append(" " + shown(_compact(record.data)), style="dim")
    return text


def print_log(console: Console, record: LogRecord) -> None:
    """One log line, whole: a terminal gets it styled (folded to the screen's width);
    a pipe or a file gets it plain and on one line however long (rich wrapped it at
    200 columns there), written at once (rich's rendering took about 0.5 ms a line:
    100,000 lines took 45 s)."""
    if console.is_terminal:
        console.print(log_line(record))
    else:
        console.file.write(log_line(record).plain + "\n")


STATUS_ORDER: tuple[str, ...] = tuple(s.value for s in Status)


def stats_table(stats: Mapping[str, Mapping[str, int]]) -> Table:
    table = Table(header_style="bold", show_footer=len(stats) > 1)
    totals = dict.fromkeys(STATUS_ORDER, 0)
    for counts in stats.values():
        for status, n in counts.items():
            totals[status] = totals.get(status, 0) + n
    table.add_column("action", footer="total")
    for status in STATUS_ORDER:
        table.add_column(status_text(status), justify="right", footer=str(totals[status]))
    table.add_column("total", justify="right", footer=str(sum(totals.values())))
    for action in sorted(stats):
        counts = stats[action]
        table.add_row(escape(action), *(str(counts.get(s, 0)) for s in STATUS_ORDER),
                      str(sum(counts.values())))
    return table


def worker_alive(worker: WorkerInfo, now: float | None = None) -> bool:
    """Whether a registered worker looks alive: its process exists (when it runs
    on this host) and it sent a heartbeat within :data:`STALE_AFTER` seconds."""
    now = time.time() if now is None else now
    if worker.host == socket.gethostname():
        try:
            os.kill(worker.pid, 0)
        except ProcessLookupError:
            return False
        except (PermissionError, OSError):
            pass
    return now - worker.last_seen < STALE_AFTER


def workers_table(workers: Iterable[WorkerInfo]) -> Table:
    now = time.time()
    table = Table(header_style="bold")
    for name in ("id", "host", "pid", "actions", "concurrency", "running", "started",
                 "last seen"):
        justify: JustifyMethod = "right" if name in ("pid", "concurrency", "running") else "left"
        table.add_column(name, justify=justify)
    for w in workers:
        alive = worker_alive(w, now)
        seen = Text(ago(w.last_seen, now))
        if not alive:
            seen.append(" (gone?)", style="red")
        app_name = w.info.get("name")
        label = f"{w.id} ({app_name})" if isinstance(app_name, str) and app_name else w.id
        table.add_row(escape(shown(label)), escape(shown(w.host)), str(w.pid),
                      escape(shown(", ".join(w.actions))),
                      str(w.concurrency), str(w.running), ago(w.started_at, now), seen,
                      style=None if alive else "dim")
    return table
