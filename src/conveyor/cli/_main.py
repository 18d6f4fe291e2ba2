"""The ``conveyor`` group, and ``main``: one-line errors and exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from ._base import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    HUB_COMMANDS,
    db_option,
    describe_error,
    explicit_db,
    explicit_hub,
    explicit_key,
    hub_option,
    one_line,
)
from ._signals import EXIT_TERMINATED, Terminated

__all__ = ["COMMANDS", "cli", "main", "run"]

DEBUG_ENV = "CONVEYOR_DEBUG"
"""Set it to ``1`` (or ``true``, ``yes``, ``on``) to print the traceback of an error
after its one-line message; any other value (``0``, ``false``, empty) leaves it off."""
_DEBUG_ON = frozenset({"1", "true", "yes", "on"})

# command name -> module and attribute; a command's module is imported when it is used
COMMANDS: dict[str, tuple[str, str]] = {
    "add": ("_tasks", "add_command"),
    "ls": ("_tasks", "ls_command"),
    "show": ("_tasks", "show_command"),
    "tail": ("_tasks", "tail_command"),
    "abort": ("_tasks", "abort_command"),
    "retry": ("_tasks", "retry_command"),
    "prioritize": ("_tasks", "prioritize_command"),
    "delete": ("_tasks", "delete_command"),
    "prune": ("_tasks", "prune_command"),
    "stats": ("_tasks", "stats_command"),
    "workers": ("_tasks", "workers_command"),
    "worker": ("_worker", "worker_command"),
    "demo": ("_demo", "demo_command"),
    "bench": ("_bench", "bench_command"),
    "serve": ("_hub", "serve_command"),
    "credentials": ("_hub", "credentials_group"),
    "migrate": ("_hub", "migrate_command"),
}


class _LazyGroup(click.Group):
    """Imports a command's module only when the command runs (or help lists it)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module = importlib.import_module(f"{__package__}.{where[0]}")
        command = getattr(module, where[1])
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="conveyor", prog_name="conveyor")
@db_option
@hub_option
@click.pass_context
def cli(ctx: click.Context) -> None:
    """conveyor: a durable task runner.

    Every command but credentials takes --db URL (before or after the command
    name); without it the storage is $CONVEYOR_DB, else sqlite:///conveyor.db
    (worker uses its app's storage, demo sqlite:///conveyor-demo.db, bench
    a scratch SQLite file).

    The commands on tasks (add, ls, show, tail, abort, retry, prioritize,
    delete, prune, stats, workers) can work through a hub instead: --hub URL
    with --key KEY (or $CONVEYOR_HUB and $CONVEYOR_KEY).

    Exit codes: 0 success; 1 the operation failed (a task failed or was
    aborted, a task is in the wrong state, storage errors, the hub refused
    the key); 2 bad input (usage, malformed JSON or filter, unknown task id,
    bad URL); 130 Ctrl-C; 143 SIGTERM while following a task or in bench.
    """
    command = ctx.invoked_subcommand
    if command == "credentials" and explicit_db(ctx) is not None:
        raise click.UsageError("'credentials' does not use --db: credentials are kept in "
                               "their own file (--credentials FILE or $CONVEYOR_CREDENTIALS), "
                               "not in the database")
    if explicit_hub(ctx) is not None and command is not None and command not in HUB_COMMANDS:
        raise click.UsageError(f"'{command}' does not work through a hub: --hub is for "
                               f"{', '.join(sorted(HUB_COMMANDS))}")
    if explicit_key(ctx) is not None and command is not None and command not in HUB_COMMANDS:
        # it was ignored silently (`conveyor --key K migrate --db ...`)
        raise click.UsageError(f"--key is the key of a hub: '{command}' does not work "
                               f"through a hub (--key is for "
                               f"{', '.join(sorted(HUB_COMMANDS))})")


def run(args: Sequence[str] | None = None, *, prog_name: str = "conveyor") -> int:
    """Run the command line and return its exit code (errors are reported on stderr)."""
    try:
        rv = cli.main(args=list(args) if args is not None else None, prog_name=prog_name,
                      standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message(), err=True)
        return EXIT_USAGE
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _error(one_line(exc.format_message()) + hint)
        _debug_traceback(exc)
        return EXIT_USAGE
    except click.ClickException as exc:
        _error(one_line(exc.format_message()))
        _debug_traceback(exc)
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt, asyncio.CancelledError):
        return EXIT_INTERRUPTED
    except Terminated:
        return EXIT_TERMINATED
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # the reader went away (| head): stop quietly
            _silence_stdout()
            return EXIT_FAILED
        return _report(exc)
    except Exception as exc:
        return _report(exc)
    if isinstance(rv, int) and not isinstance(rv, bool):
        return rv
    return 0


def main(args: Sequence[str] | None = None, *, prog_name: str = "conveyor") -> NoReturn:
    """The console script: run and exit with the command's exit code."""
    code = run(args, prog_name=prog_name)
    try:
        sys.stdout.flush()
    except OSError as exc:
        _silence_stdout()
        if exc.errno == errno.EPIPE and code == 0:
            code = EXIT_FAILED  # the reader went away before the end: not all was written
    sys.exit(code)


def _report(exc: BaseException) -> int:
    code, message = describe_error(exc)
    _error(one_line(message))
    _debug_traceback(exc)
    return code


def _debug_traceback(exc: BaseException) -> None:
    """With ``CONVEYOR_DEBUG=1`` (or true, yes, on), the traceback of ``exc`` on stderr
    (``CONVEYOR_DEBUG=0`` or ``false`` turned it on: any non-empty value did)."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in _DEBUG_ON:
        import traceback

        with contextlib.suppress(OSError):
            traceback.print_exception(exc, file=sys.stderr)


def _error(message: str) -> None:
    with contextlib.suppress(OSError):
        click.echo(f"error: {message}", err=True)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
