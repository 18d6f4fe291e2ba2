"""Commands on tasks: add, ls, show, tail, abort, retry, prioritize, delete, stats, workers."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from conveyor._registry import check_action
from conveyor._specs import MAX_ATTEMPTS
from conveyor.app import Conveyor
from conveyor.errors import ConveyorError, QueryError, TaskNotFound, ValidationError, _shown_id
from conveyor.model import LogLevel, Status, Task
from conveyor.query import parse_filter, parse_query
from conveyor.storage import WorkerInfo

from ._base import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    Duration,
    Number,
    Store,
    Target,
    dump_json,
    open_store,
    parse_json,
    read_json_arg,
    store_options,
    store_target,
)
from ._render import (
    ChunkedOut,
    err_console,
    out_console,
    print_log,
    shown,
    stats_table,
    task_details,
    tasks_table,
    until_reader_gone,
    worker_alive,
    workers_table,
)
from ._signals import run_stopping_on_sigterm

__all__ = [
    "abort_command",
    "add_command",
    "delete_command",
    "ls_command",
    "prioritize_command",
    "prune_command",
    "retry_command",
    "show_command",
    "stats_command",
    "tail_command",
    "workers_command",
]

PRIORITY = Number("priority", note=" (lower runs first)")
SECONDS = Duration("seconds")
POSITIVE_SECONDS = Duration("seconds", strict=True)
LEVELS = click.Choice([level.name.lower() for level in LogLevel], case_sensitive=False)
STATUSES = click.Choice([s.value for s in Status], case_sensitive=False)

level_option = click.option(
    "--level", default="debug", show_default=True, type=LEVELS,
    help="Least severe log level to show (info shows info, warning and error).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _echo_json(value: Any) -> None:
    ChunkedOut(sys.stdout).write(dump_json(value) + "\n")


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


# -- add ----------------------------------------------------------------------------


def _parse_tag(raw: str) -> tuple[str, Any]:
    key, sep, text = raw.partition("=")
    if not sep or not key:
        raise CliError(f"--tag must be key=value, not {raw!r}")
    try:
        value = parse_json(text, "tag") if text.strip() else text
    except CliError:
        value = text
    return key, value


def handles(workers: Sequence[WorkerInfo], action: str) -> bool:
    """Whether a live registered worker runs ``action``."""
    now = time.time()
    return any(worker_alive(w, now) and w.runs(action) for w in workers)


@click.command("add")
@click.argument("action")
@click.argument("payload", required=False)
@click.option("--priority", type=PRIORITY, help="Priority >= 0; lower runs first [default 0].")
@click.option("--delay", type=SECONDS,
              help="Run no earlier than SECONDS from now (90, or 90s, 5m, 2h, 1d).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
              help="A tag (repeatable); VALUE is parsed as JSON when it parses, else text.")
@click.option("--unique-key",
              help="Return the task holding this key (in scope) instead of a new one.")
@click.option("--max-attempts", type=click.IntRange(min=1, max=MAX_ATTEMPTS),
              help="Attempts before it fails.")
@click.option("--timeout", type=POSITIVE_SECONDS,
              help="Run timeout of one attempt, in seconds (or 30s, 5m, 1h).")
@click.option("--pickup-timeout", type=POSITIVE_SECONDS,
              help="Fail the task if no worker starts it within SECONDS of being ready.")
@click.option("--wait", is_flag=True,
              help="Follow the task with a progress bar until it ends; print its result.")
@json_option
@store_options
@click.pass_context
def add_command(ctx: click.Context, action: str, payload: str | None, priority: float | None,
                delay: float | None, tags: tuple[str, ...], unique_key: str | None,
                max_attempts: int | None, timeout: float | None,
                pickup_timeout: float | None, wait: bool, as_json: bool) -> int:
    """Add a task for ACTION with a JSON PAYLOAD.

    PAYLOAD is JSON text, '-' to read it from standard input, or @FILE to read
    it from a file. Without a payload the task's payload is null. Prints the
    new task's id (or the task with --json).
    """
    data = read_json_arg(payload, "payload") if payload is not None else None
    options: dict[str, Any] = {}
    if priority is not None:
        options["priority"] = priority
    if delay is not None:
        options["delay"] = delay
    if tags:
        options["tags"] = dict(_parse_tag(t) for t in tags)
    if unique_key is not None:
        options["unique_key"] = unique_key
    if max_attempts is not None:
        options["max_attempts"] = max_attempts
    if timeout is not None:
        options["timeout"] = timeout
    if pickup_timeout is not None:
        options["pickup_timeout"] = pickup_timeout
    url = store_target(ctx)
    return int(run_stopping_on_sigterm(_add(url, action, data, options, wait=wait,
                                            as_json=as_json)))


async def _add(url: Target, action: str, payload: Any, options: dict[str, Any], *, wait: bool,
               as_json: bool) -> int:
    async with open_store(url, create=True) as app:
        # a client logs the hub's "unserved" answer: the CLI says it below, once
        quiet = logging.getLogger("conveyor.client")
        quiet.addFilter(_not_unserved)
        try:
            task, created = await app.add_checked(action, payload, **options)
        finally:
            quiet.removeFilter(_not_unserved)
        if isinstance(app, Conveyor):
            unhandled = not task.terminal and not handles(await app.workers(), action)
        else:
            # the hub lists its remote workers (and the workers of its storage) too
            unhandled = not task.terminal and not await _handled_by_hub(app, action)
        if not created:
            _warn(f"a task already holds unique key {options['unique_key']!r}: "
                  f"{task.id} ({task.status.value}); nothing was added")
        elif unhandled:
            _warn(f"no running worker handles {action!r}; the task will wait until one does")
        if not wait:
            if as_json:
                _echo_json(task.to_json())
            else:
                click.echo(task.id)
            return EXIT_OK
        click.echo(f"added task {task.id}", err=True)
        return await _wait_and_report(app, task, as_json=as_json)


async def _handled_by_hub(client: Store, action: str) -> bool:
    """Whether a live worker the hub lists runs ``action`` (True when the hub cannot say)."""
    try:
        return handles(await client.workers(), action)
    except ConveyorError:
        return True


def _not_unserved(record: logging.LogRecord) -> bool:
    from conveyor.client._unserved import is_unserved_warning

    return not is_unserved_warning(record)


async def _wait_and_report(app: Store, task: Task, *, as_json: bool) -> int:
    from ._follow import follow  # rich.progress: imported only when following

    err = err_console()
    try:
        final = await follow(app, task, bar_console=err if err.is_terminal else None,
                             log_console=None)
    except asyncio.CancelledError:
        current = await _status_now(app, task.id)
        click.echo(f"interrupted: task {task.id} goes on ({current})", err=True)
        raise
    if as_json:
        _echo_json(final.to_json())
    elif final.status is Status.SUCCEEDED:
        _echo_json(final.result)
    return _report_end(final)


async def _status_now(app: Store, task_id: str) -> str:
    try:
        return (await asyncio.shield(app.get(task_id))).status.value
    except BaseException:
        return "status unknown"


def _report_end(task: Task) -> int:
    if task.status is Status.SUCCEEDED:
        return EXIT_OK
    if task.status is Status.ABORTED:
        detail = shown(task.reason or "aborted")
        click.echo(f"error: task {task.id} ({task.action}) was aborted: {detail}", err=True)
    else:
        err = task.error
        detail = f"{err.type}: {err.message}" if err else (task.reason or "failed")
        click.echo(f"error: task {task.id} ({task.action}) failed: "
                   f"{shown(' '.join(detail.split()))}", err=True)
    return EXIT_FAILED


# -- ls -----------------------------------------------------------------------------


@click.command("ls")
@click.argument("filter", required=False, metavar="[FILTER]")
@click.option("--status", "statuses", multiple=True, type=STATUSES,
              help="Only tasks in this status (repeatable).")
@click.option("--action", "actions", multiple=True, help="Only tasks of this action (repeatable).")
@click.option("--sort", default="-created_at,-id", show_default=True,
              help="Sort fields, comma separated; '-' in front sorts descending.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=0),
              help="Most tasks shown; 0 shows all.")
@click.option("--skip", default=0, type=click.IntRange(min=0), help="Tasks skipped first.")
@json_option
@store_options
@click.pass_context
def ls_command(ctx: click.Context, filter: str | None, statuses: tuple[str, ...],
               actions: tuple[str, ...], sort: str, limit: int, skip: int,
               as_json: bool) -> int:
    """List tasks, newest first.

    FILTER is a JSON filter of the query language (docs/query.md), for example
    '{"payload.user": "ann", "attempts": {"$gt": 1}}'; --status and --action
    narrow it further.
    """
    parts: list[dict[str, Any]] = []
    if filter is not None:
        raw = read_json_arg(filter, "filter")
        if raw is not None and not isinstance(raw, dict):
            parse_filter(raw)  # the library's QueryError: "a filter must be an object, not a list"
        if raw:  # {} and null: no filter
            parts.append(raw)
    if statuses:
        parts.append({"status": {"$in": sorted({s.lower() for s in statuses})}})
    if actions:
        for action in actions:  # a name no task can have is a typo: say so
            try:
                check_action(action)
            except ValidationError as exc:
                raise CliError(f"--action: {exc}") from None
        parts.append({"action": {"$in": list(dict.fromkeys(actions))}})
    where: dict[str, Any] | None = None
    if len(parts) == 1:
        where = parts[0]
    elif parts:
        if len(parts) > 1 and filter is not None and raw:
            parse_filter(raw)  # its own errors first, with its own paths
        where = {"$and": parts}
        try:
            parse_filter(where)
        except QueryError as exc:  # --status and --action count in the bound too
            raise CliError(f"the filter with --status/--action added: {exc.reason}") from None
    sort_keys = [s.strip() for s in sort.split(",")]
    if not all(sort_keys):
        raise CliError(f"--sort {sort!r}: every field must be named (comma-separated fields "
                       "such as -priority,created_at)")
    parse_query(where, sort_keys or None, limit or None, skip)  # bad input fails before any I/O
    url = store_target(ctx)
    return int(_run(_ls(url, where, sort_keys, limit or None, skip, as_json)))


async def _ls(url: Target, where: dict[str, Any] | None, sort: list[str], limit: int | None,
              skip: int, as_json: bool) -> int:
    async with open_store(url) as app:
        tasks = await app.find(where, sort=sort or None, limit=limit, skip=skip)
        if as_json:
            _echo_json([t.to_json() for t in tasks])
            return EXIT_OK
        total = len(tasks) + skip
        if (limit is not None and len(tasks) >= limit) or skip:
            total = await app.count(where)
    console = out_console()
    if not tasks:
        console.print("no tasks" + (" match" if where else "") +
                      (f" (skipped {skip} of {total})" if skip else ""))
        return EXIT_OK
    shown = f"{skip + 1}-{skip + len(tasks)}" if skip else str(len(tasks))
    caption = f"{shown} of {total} task(s)"
    if skip + len(tasks) < total:
        caption += " (see --limit and --skip)"
    console.print(tasks_table(tasks, caption=caption))
    return EXIT_OK


# -- show, tail -----------------------------------------------------------------------


@click.command("show")
@click.argument("task_id", metavar="ID")
@click.option("--logs", "with_logs", is_flag=True, help="Also print the task's log lines.")
@level_option
@json_option
@store_options
@click.pass_context
def show_command(ctx: click.Context, task_id: str, with_logs: bool, level: str,
                 as_json: bool) -> int:
    """Show every field of a task (and its logs with --logs)."""
    url = store_target(ctx)
    return int(_run(_show(url, task_id, with_logs, LogLevel.parse(level), as_json)))


async def _show(url: Target, task_id: str, with_logs: bool, level: LogLevel, as_json: bool) -> int:
    async with open_store(url) as app:
        task = await app.get(task_id, logs=with_logs, max_level=level)
    if as_json:
        _echo_json(task.to_json())
        return EXIT_OK
    console = out_console()
    console.print(task_details(task))
    if with_logs:
        console.print()
        if not task.logs:
            console.print("no log lines", style="dim")
        for record in task.logs or ():
            print_log(console, record)
    return EXIT_OK


@click.command("tail", short_help="Follow a task live until it ends.")
@click.argument("task_id", metavar="ID")
@level_option
@store_options
@click.pass_context
def tail_command(ctx: click.Context, task_id: str, level: str) -> int:
    """Follow a task live: its log lines and a progress bar, until it ends.

    Exits 0 if it succeeded, 1 if it failed or was aborted, 130 on Ctrl-C.
    """
    url = store_target(ctx)
    return int(run_stopping_on_sigterm(_tail(url, task_id, LogLevel.parse(level))))


async def _tail(url: Target, task_id: str, level: LogLevel) -> int:
    from ._follow import final_line, follow

    out = out_console()
    async with open_store(url) as app:
        task = await app.get(task_id)
        if task.status is Status.QUEUED and not (
                handles(await app.workers(), task.action) if isinstance(app, Conveyor)
                else await _handled_by_hub(app, task.action)):
            _warn(f"no running worker handles {task.action!r}; the task will wait until one does")
        try:
            final = await until_reader_gone(follow(
                app, task, bar_console=out if out.is_terminal else None, log_console=out,
                level=level))
        except asyncio.CancelledError:
            current = await _status_now(app, task_id)
            click.echo(f"interrupted: task {task_id} goes on ({current})", err=True)
            raise
    if final.status is Status.SUCCEEDED:
        err_console().print(final_line(final))
        return EXIT_OK
    return _report_end(final)


# -- control --------------------------------------------------------------------------


@click.command("abort", short_help="Abort a queued or running task.")
@click.argument("task_id", metavar="ID")
@click.option("--reason", default="aborted", show_default=True, help="Why (kept on the task).")
@json_option
@store_options
@click.pass_context
def abort_command(ctx: click.Context, task_id: str, reason: str, as_json: bool) -> int:
    """Abort a task: a queued one ends at once, a running one is asked to stop."""
    if not reason.strip():
        raise CliError("--reason must not be empty")
    url = store_target(ctx)

    async def go() -> Task:
        async with open_store(url) as app:
            return await app.abort(task_id, reason)

    task = _run(go())
    if as_json:
        _echo_json(task.to_json())
    elif task.status is Status.RUNNING:
        click.echo(f"abort requested: task {task.id} is running; its worker stops it shortly")
    else:
        click.echo(f"task {task.id} {task.status.value}")
    return EXIT_OK


@click.command("retry", short_help="Queue a failed or aborted task again.")
@click.argument("task_id", metavar="ID")
@click.option("--delay", type=SECONDS,
              help="Run it again no earlier than SECONDS from now (90, or 5m, 2h).")
@json_option
@store_options
@click.pass_context
def retry_command(ctx: click.Context, task_id: str, delay: float | None, as_json: bool) -> int:
    """Queue a failed or aborted task again (same id, one more attempt)."""
    url = store_target(ctx)

    async def go() -> Task:
        async with open_store(url) as app:
            return await app.retry(task_id, delay=delay)

    task = _run(go())
    if as_json:
        _echo_json(task.to_json())
    else:
        click.echo(f"task {task.id} queued again")
    return EXIT_OK


@click.command("prioritize", short_help="Change the priority of a queued task.",
               context_settings={"ignore_unknown_options": True})
@click.argument("task_id", metavar="ID")
@click.argument("priority", type=PRIORITY)
@json_option
@store_options
@click.pass_context
def prioritize_command(ctx: click.Context, task_id: str, priority: float, as_json: bool) -> int:
    """Change the PRIORITY of a queued task (>= 0; lower runs first)."""
    url = store_target(ctx)

    async def go() -> Task:
        async with open_store(url) as app:
            return await app.prioritize(task_id, priority)

    task = _run(go())
    if as_json:
        _echo_json(task.to_json())
    else:
        click.echo(f"task {task.id} priority {task.priority:g}")
    return EXIT_OK


@click.command("delete")
@click.argument("task_ids", nargs=-1, required=True, metavar="ID...")
@store_options
@click.pass_context
def delete_command(ctx: click.Context, task_ids: tuple[str, ...]) -> int:
    """Delete finished tasks and their logs.

    All or nothing: if an id is unknown or its task has not ended, nothing is deleted.
    """
    url = store_target(ctx)
    ids = list(dict.fromkeys(task_ids))

    async def go() -> list[str]:
        async with open_store(url) as app:
            tasks: list[Task] = []
            unknown: list[str] = []
            for task_id in ids:
                try:
                    tasks.append(await app.get(task_id))
                except TaskNotFound:
                    unknown.append(task_id)
            if unknown:
                shown = ", ".join(_shown_id(task_id) for task_id in unknown)
                raise CliError(f"no task with id {shown}" if len(unknown) == 1
                               else f"no tasks with ids {shown}")
            live = [t for t in tasks if not t.terminal]
            if live:
                listed = ", ".join(f"{t.id} ({t.status.value})" for t in live)
                raise CliError(f"only finished tasks can be deleted; not finished: {listed}",
                               EXIT_FAILED)
            return await app.delete(ids)

    deleted = _run(go())
    click.echo(f"deleted {len(deleted)} task(s)")
    return EXIT_OK if len(deleted) == len(ids) else EXIT_FAILED


@click.command("prune", short_help="Delete tasks that finished long enough ago.")
@click.option("--older-than", "older_than", required=True, type=Duration("age"),
              help="Age since the task finished: seconds, or with a unit: 30m, 12h, 7d, 2w.")
@json_option
@store_options
@click.pass_context
def prune_command(ctx: click.Context, older_than: float, as_json: bool) -> int:
    """Delete finished tasks (succeeded, failed, aborted) and their logs, when they
    finished more than --older-than ago. Queued and running tasks are never touched.

    On a database it deletes in small batches (as the workers' own retention does);
    through a hub it deletes 1,000 at a time, with the admin right.
    """
    url = store_target(ctx)

    async def go() -> int:
        async with open_store(url) as app:
            if isinstance(app, Conveyor):
                return await app.prune(older_than)
            # in requests of 1,000 ids (each answered at once, whatever the backlog)
            cutoff = time.time() - older_than
            old = {"finished_at": {"$lt": cutoff},
                   "status": {"$in": ["succeeded", "failed", "aborted"]}}
            pruned = 0
            while True:
                found = await app.find(old, limit=1000)
                deleted = await app.delete([t.id for t in found]) if found else []
                pruned += len(deleted)
                if len(found) < 1000 or not deleted:
                    return pruned

    pruned = _run(go())
    if as_json:
        _echo_json({"pruned": pruned, "older_than": older_than})
    else:
        click.echo(f"pruned {pruned} task(s) that finished more than {older_than:.15g} s ago")
    return EXIT_OK


# -- overview --------------------------------------------------------------------------


@click.command("stats")
@json_option
@store_options
@click.pass_context
def stats_command(ctx: click.Context, as_json: bool) -> int:
    """Task counts per action and status."""
    url = store_target(ctx)

    async def go() -> dict[str, dict[str, int]]:
        async with open_store(url) as app:
            return await app.stats()

    stats = _run(go())
    if as_json:
        _echo_json(stats)
    elif not stats:
        out_console().print("no tasks")
    else:
        out_console().print(stats_table(stats))
    return EXIT_OK


@click.command("workers")
@json_option
@store_options
@click.pass_context
def workers_command(ctx: click.Context, as_json: bool) -> int:
    """Workers registered in the storage, with their last heartbeat."""
    url = store_target(ctx)

    async def go() -> list[WorkerInfo]:
        async with open_store(url) as app:
            return await app.workers()

    workers = _run(go())
    if as_json:
        now = time.time()
        _echo_json([{**w.to_json(), "alive": worker_alive(w, now)} for w in workers])
    elif not workers:
        out_console().print("no workers")
    else:
        out_console().print(workers_table(workers))
    return EXIT_OK


