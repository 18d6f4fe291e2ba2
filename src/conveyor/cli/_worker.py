"""``conveyor worker MODULE:APP``: run an application's worker until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sys
from typing import Any

import click

from conveyor._worker import Worker
from conveyor.app import MAX_CONCURRENCY, Conveyor
from conveyor.events import Event
from conveyor.storage import open_storage
from conveyor.sync import SyncConveyor

from ._base import EXIT_OK, CliError, Duration, db_option_with, explicit_db
from ._signals import StopSignal, run_leaving_stuck_tasks, stop_signals

__all__ = ["load_app", "use_explicit_db", "worker_command"]


def load_app(target: str) -> Conveyor:
    """Import ``module:attribute`` (``attribute`` defaults to ``app``) and return the
    :class:`Conveyor` it names (the ``.app`` of a :class:`SyncConveyor`)."""
    module_name, _, attribute = target.partition(":")
    module_name, attribute = module_name.strip(), (attribute.strip() or "app")
    if not module_name:
        raise CliError(f"expected MODULE:APP (for example myproject.tasks:app), not {target!r}")
    if "/" in module_name or os.sep in module_name or (
            module_name.endswith(".py") and os.path.isfile(module_name)):
        dotted = module_name.removesuffix(".py").replace(os.sep, ".").replace("/", ".")
        raise CliError(f"{module_name!r} is a file path: give the module's name, as "
                       f"`import` takes it ({dotted.strip('.')}:{attribute}), from the "
                       "folder that holds its package")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise CliError(f"cannot import {module_name!r}: no module named {missing!r} "
                           f"(searched the current directory and sys.path)") from None
        raise CliError(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        detail = " ".join(str(exc).split())
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {detail}") \
            from None
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(obj, SyncConveyor):
        obj = obj.app
    if not isinstance(obj, Conveyor):
        raise CliError(f"{module_name}:{attribute} is a {type(obj).__name__}, "
                       "not a Conveyor application")
    return obj


def use_explicit_db(ctx: click.Context, app: Conveyor, target: str) -> None:
    """Put ``app`` (loaded from ``target``) on the storage of ``--db``, when given and
    not already the app's. An app whose worker started when its module was imported
    is refused (:class:`CliError`, exit 2): that worker would go on running on the
    app's own storage, unseen, while the command worked on the other one."""
    url = explicit_db(ctx)
    if url is None or url == app.storage.url:
        return
    other = open_storage(url)  # not connected yet
    if other.url == app.storage.url:
        # the app's own database, written another way (its shown URL hides a
        # password and leaves out options): nothing moves
        return
    if app.worker is not None:
        raise CliError(
            f"{target}'s worker is already running on {app.storage.url} (started when "
            "its module was imported): --db cannot move it; start the worker under "
            "`if __name__ == \"__main__\":` or in your server's startup instead")
    app.storage = other


@click.command("worker", short_help="Run the worker of a Conveyor app.")
@click.argument("target", metavar="MODULE:APP")
@click.option("--concurrency", type=click.IntRange(min=1, max=MAX_CONCURRENCY),
              help="Tasks run at once (overrides the app's setting).")
@click.option("--stop-timeout", type=Duration("seconds"),
              help="On stop, seconds running tasks get to finish before they are handed "
                   "back to the queue (overrides the app's setting, default 10).")
@click.option("--burst", is_flag=True,
              help="Run what is due, and what those tasks add, until nothing is; then stop "
                   "and exit (Conveyor.drain: for cron jobs and CI).")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@db_option_with("Run on this storage instead of the app's own ($CONVEYOR_DB is not read).")
@click.pass_context
def worker_command(ctx: click.Context, target: str, concurrency: int | None,
                   stop_timeout: float | None, burst: bool, verbose: int) -> int:
    """Run the worker of the Conveyor app MODULE:APP until Ctrl-C or SIGTERM.

    MODULE is imported with the current directory on the import path; APP is
    an attribute holding a Conveyor or SyncConveyor (default: app). The
    storage is the app's own, unless --db is given on the command line. On
    Ctrl-C or SIGTERM the worker stops claiming, lets running tasks finish
    for up to --stop-timeout seconds, hands the rest back to the queue and
    exits 0. With --burst it stops by itself once no task of its actions is
    due or running, and says how many ended how.
    """
    app = load_app(target)
    if not len(app.registry) and not getattr(app, "schedules", None):
        raise CliError(f"{target} has no handlers registered: nothing to work on")
    if burst and not len(app.registry):
        raise CliError(f"{target} has schedules but no handlers: nothing to drain (--burst)")
    use_explicit_db(ctx, app, target)
    if concurrency is not None:
        app.concurrency = concurrency
        app.batch_size = min(concurrency, 100)
    if stop_timeout is not None:
        app.stop_timeout = stop_timeout
    level = logging.WARNING if not verbose else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("conveyor").setLevel(level)
    return run_leaving_stuck_tasks(_run_worker(app, burst), "worker")


async def _run_worker(app: Conveyor, burst: bool) -> int:
    with stop_signals() as stop:
        stop.on_repeat = lambda name: click.echo(
            f"{name}: already stopping (running tasks get up to {app.stop_timeout:g}s to "
            "finish, then a grace to unwind: 5 s for async handlers, abort_grace for sync "
            "ones)", err=True)
        try:
            worker = await (_burst(app, stop) if burst else _until_stopped(app, stop))
        finally:
            await app.close()
    why = stop.name or "nothing due"
    if worker is None:
        click.echo(f"worker stopped ({why}) before it started")
    else:
        click.echo(f"worker {worker.id} stopped ({why}): {worker.finished_total} task "
                   f"run(s) finished, {worker.claimed_total} claimed")
    return EXIT_OK


def _say_started(worker: Worker) -> None:
    actions = ", ".join(worker.actions)
    schedules = len(worker.app.schedules)
    keeps = f", {schedules} schedule(s)" if schedules else ""
    click.echo(f"worker {worker.id} started on {worker.app.storage.url}: "
               f"{len(worker.actions)} action(s) ({actions}){keeps}, "
               f"concurrency {worker.concurrency}; Ctrl-C to stop")


def _say_stopping(worker: Worker, stop: StopSignal) -> None:
    running = len(worker.running)
    if running:
        click.echo(f"{stop.name}: stopping; {running} running task(s) get up to "
                   f"{worker.app.stop_timeout:g}s to finish", err=True)


async def _until_stopped(app: Conveyor, stop: StopSignal) -> Worker:
    await app.start()
    worker = app.worker
    assert worker is not None
    _say_started(worker)
    await stop.wait()
    _say_stopping(worker, stop)
    await app.stop()
    return worker


async def _burst(app: Conveyor, stop: StopSignal) -> Worker | None:
    """``--burst``: ``app.drain()``, which starts the worker itself (so that what it
    counts holds every run of that worker) and stops it once nothing is due. A stop
    signal stops the worker gracefully, then cancels the drain."""
    await app.open()
    started: list[Worker] = []
    has_started = asyncio.Event()

    def seen(_event: Event) -> None:
        if app.worker is not None and not started:
            started.append(app.worker)
            has_started.set()

    unsubscribe = app.on("worker.started", seen)
    drain = asyncio.ensure_future(app.drain())
    signal = asyncio.ensure_future(stop.wait())
    announced = asyncio.ensure_future(has_started.wait())
    try:
        await asyncio.wait({drain, signal, announced}, return_when=asyncio.FIRST_COMPLETED)
        if started:
            _say_started(started[0])
        await asyncio.wait({drain, signal}, return_when=asyncio.FIRST_COMPLETED)
        if not drain.done():
            if started:
                _say_stopping(started[0], stop)
            await app.stop()  # the graceful stop (--stop-timeout), then the drain ends
            drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            tally = await drain
            click.echo("drained: " + ", ".join(f"{n} {key}" for key, n in tally.items()))
    finally:
        unsubscribe()
        for future in (drain, signal, announced):
            future.cancel()
    return started[0] if started else None
