"""What every command shares: exit codes, errors, ``--db``, input parsing, the app."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import click

from conveyor._hub_url import hub_url_problem
from conveyor.app import DB_ENV, DEFAULT_URL, Conveyor
from conveyor.errors import (
    ConfigurationError,
    ConveyorError,
    StorageError,
    TaskNotFound,
    UnknownAction,
    ValidationError,
)
from conveyor.model import MAX_SECONDS
from conveyor.storage._url import hide_password

if TYPE_CHECKING:
    from conveyor.client import HTTPClient

__all__ = [
    "DB_ENV",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "HUB_COMMANDS",
    "HUB_ENV",
    "KEY_ENV",
    "CliError",
    "Duration",
    "HubTarget",
    "Number",
    "Store",
    "Target",
    "connect",
    "db_option",
    "db_option_with",
    "db_url",
    "describe_error",
    "dump_json",
    "explicit_hub",
    "explicit_key",
    "hub_option",
    "open_store",
    "parse_json",
    "read_json_arg",
    "store_options",
    "store_target",
]

EXIT_OK = 0
EXIT_FAILED = 1
"""The command was well formed but did not succeed: the task failed or was
aborted, the task is in the wrong state for the operation, the storage could
not be used."""
EXIT_USAGE = 2
"""The command line was refused: usage, malformed input, unknown task id, bad URL."""
EXIT_INTERRUPTED = 130
"""Ctrl-C while following a task (the task itself goes on)."""

HUB_ENV = "CONVEYOR_HUB"
KEY_ENV = "CONVEYOR_KEY"
_DB_KEY = "conveyor.db"
_HUB_KEY = "conveyor.hub"
_KEY_KEY = "conveyor.key"
HUB_COMMANDS = frozenset({"add", "ls", "show", "tail", "abort", "retry", "prioritize", "delete",
                          "prune", "stats", "workers"})
"""The commands that can work through a hub (``--hub URL``) instead of a database."""

F = TypeVar("F", bound=Callable[..., Any])


class CliError(Exception):
    """An error the CLI reports as one line ``error: <message>`` and exit ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# the top-level modules of the optional extras, by extra
_EXTRAS = {"starlette": "hub", "uvicorn": "hub", "websockets": "hub", "httpx": "hub",
           "prometheus_client": "hub", "orjson": "hub", "psycopg": "postgres",
           "psycopg_pool": "postgres"}


def describe_error(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an error raised by a command."""
    if isinstance(exc, CliError):
        return exc.code, exc.message
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in _EXTRAS:
        extra = _EXTRAS[(exc.name or "").split(".")[0]]
        return EXIT_FAILED, (f"this needs the [{extra}] extra (no module {exc.name!r}): "
                             f"pip install 'conveyor[{extra}]' (in a clone: scripts/setup "
                             f"{extra})")
    if isinstance(exc, json.JSONDecodeError):
        return EXIT_USAGE, f"invalid JSON: {_json_problem(exc)}"
    if isinstance(exc, ValidationError | ConfigurationError | TaskNotFound | UnknownAction):
        # QueryError is a ValidationError: a malformed filter or sort.
        return EXIT_USAGE, str(exc)
    if isinstance(exc, StorageError):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, ConveyorError):
        # InvalidTransition, TaskFailed, TaskAborted, WaitTimeout, LeaseLost, ...
        return EXIT_FAILED, str(exc)
    if isinstance(exc, OSError):
        where = f" {exc.filename!r}" if exc.filename else ""
        return EXIT_FAILED, f"{exc.strerror or exc}{':' if where else ''}{where}"
    return EXIT_FAILED, f"unexpected {type(exc).__name__}: {exc}"


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- --db -----------------------------------------------------------------------------


def _remember_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        if not value.strip():
            raise click.BadParameter("must be a storage URL such as sqlite:///conveyor.db")
        ctx.find_root().meta[_DB_KEY] = value


def db_option_with(help: str) -> Callable[[F], F]:
    """``--db URL`` (see :func:`db_option`) with its own help text, for the commands
    that do not read ``$CONVEYOR_DB``."""

    def decorate(fn: F) -> F:
        return click.option(
            "--db", metavar="URL", default=None, expose_value=False, callback=_remember_db,
            help=help,
        )(fn)

    return decorate


def db_option(fn: F) -> F:
    """``--db URL``, accepted both before the command name and after it."""
    return db_option_with(f"Storage URL [env {DB_ENV}; default {DEFAULT_URL}].")(fn)


def db_url(ctx: click.Context, *, default: str = DEFAULT_URL, use_env: bool = True) -> str:
    """The storage URL: ``--db`` (after or before the command), else ``$CONVEYOR_DB``
    (when ``use_env``), else ``default``."""
    explicit = explicit_db(ctx)
    if explicit is not None:
        return explicit
    if use_env:
        env = os.environ.get(DB_ENV, "").strip()
        if env:
            return env
    return default


def explicit_db(ctx: click.Context) -> str | None:
    """The URL given with ``--db`` on the command line, if any."""
    value = ctx.find_root().meta.get(_DB_KEY)
    return value if isinstance(value, str) else None


def _require_existing(url: str) -> None:
    """Refuse to create a new SQLite file for a command that only reads or changes tasks."""
    if not url.lower().startswith("sqlite:"):
        return
    from conveyor.storage.sqlite import parse_sqlite_url

    path, _ = parse_sqlite_url(url)
    if not os.path.exists(path):
        raise CliError(
            f"no database at {path!r} ({url}): check --db or ${DB_ENV}; "
            "'conveyor add' or a worker creates it", EXIT_FAILED)
    if _empty_file(path):
        raise CliError(
            f"{path!r} ({url}) is an empty file, not a conveyor database: check --db or "
            f"${DB_ENV}; 'conveyor migrate', 'conveyor add' or a worker makes it one",
            EXIT_FAILED)
    if _foreign_file(path):
        raise CliError(
            f"{path!r} ({url}) is not a conveyor database (it has tables, none of them "
            f"conveyor's): check --db or ${DB_ENV}; 'conveyor migrate' adds conveyor's "
            "tables to it", EXIT_FAILED)


def _foreign_file(path: str) -> bool:
    """Whether ``path`` is a SQLite file with tables but none of conveyor's (read
    without writing to it: a read command must not make it a conveyor database)."""
    try:
        conn = sqlite3.connect(f"{pathlib.Path(path).absolute().as_uri()}?mode=ro", uri=True,
                               timeout=5)
    except sqlite3.Error:
        return False  # let the storage say what is wrong
    try:
        names = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return bool(names) and "conveyor_tasks" not in names


def _empty_file(path: str) -> bool:
    """Whether ``path`` is a 0-byte file (with no write-ahead log holding its pages)."""
    try:
        if not os.path.isfile(path) or os.path.getsize(path):
            return False
    except OSError:
        return False  # let the storage say what is wrong
    try:
        return not os.path.getsize(path + "-wal")
    except OSError:
        return True  # no -wal file


@asynccontextmanager
async def connect(url: str, *, create: bool = False) -> AsyncIterator[Conveyor]:
    """A :class:`Conveyor` on ``url``, closed on the way out. It opens on first use.

    Without ``create``, a SQLite file that does not exist is an error instead
    of a new empty database.
    """
    if not create:
        _require_existing(url)
    app = Conveyor(url)
    try:
        yield app
    finally:
        await app.close()


# -- --hub, --key ---------------------------------------------------------------------


@dataclass(frozen=True)
class HubTarget:
    """Work through the hub at ``url`` (its REST API) with ``key``."""

    url: str
    key: str | None


Target: TypeAlias = "str | HubTarget"
"""Where a command's tasks are: a storage URL, or a hub."""
Store: TypeAlias = "Conveyor | HTTPClient"
"""What a command talks to: the library on a storage, or a hub's REST client."""


def _remember(name: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            if not value.strip():
                raise click.BadParameter("must not be empty")
            ctx.find_root().meta[name] = value.strip()

    return remember


def hub_option(fn: F) -> F:
    """``--hub URL`` and ``--key KEY``, accepted both before the command name and after it."""
    fn = click.option(
        "--key", metavar="KEY", default=None, expose_value=False, callback=_remember(_KEY_KEY),
        help=f"The hub credential's key [env {KEY_ENV}].")(fn)
    return click.option(
        "--hub", metavar="URL", default=None, expose_value=False, callback=_remember(_HUB_KEY),
        help=f"Work through the hub at URL instead of a database [env {HUB_ENV}].")(fn)


def store_options(fn: F) -> F:
    """``--db`` and ``--hub`` / ``--key``: the options of commands on tasks."""
    return db_option(hub_option(fn))


def explicit_hub(ctx: click.Context) -> str | None:
    value = ctx.find_root().meta.get(_HUB_KEY)
    return value if isinstance(value, str) else None


def explicit_key(ctx: click.Context) -> str | None:
    """The key given with ``--key`` on the command line, if any."""
    value = ctx.find_root().meta.get(_KEY_KEY)
    return value if isinstance(value, str) else None


def store_target(ctx: click.Context) -> Target:
    """Where the tasks are: ``--db`` or ``--hub`` (not both), else ``$CONVEYOR_HUB``,
    else the storage URL of :func:`db_url`."""
    db, hub = explicit_db(ctx), explicit_hub(ctx)
    if db is not None and hub is not None:
        raise CliError("give --db or --hub, not both")
    where = "--hub"
    if db is None and hub is None:
        hub = os.environ.get(HUB_ENV, "").strip() or None
        where = f"${HUB_ENV}"
    if hub is None:
        if ctx.find_root().meta.get(_KEY_KEY) is not None:
            raise CliError("--key is the key of a hub: it does not go with --db" if db is not None
                           else "--key is the key of a hub: give --hub URL (or $CONVEYOR_HUB) "
                                "too")
        return db_url(ctx)
    problem = hub_url_problem(hub)
    if problem is not None:
        raise CliError(f"{where} must be the hub's http:// or https:// URL with a host, "
                       f"not {hide_password(hub)!r} ({problem})")
    key = ctx.find_root().meta.get(_KEY_KEY) or os.environ.get(KEY_ENV, "").strip() or None
    return HubTarget(hub.rstrip("/"), key)


@asynccontextmanager
async def open_store(target: Target, *, create: bool = False) -> AsyncIterator[Store]:
    """A :class:`Conveyor` on a storage URL (see :func:`connect`) or an
    :class:`HTTPClient` of a hub, closed on the way out."""
    if isinstance(target, HubTarget):
        from conveyor.client import HTTPClient

        async with HTTPClient(target.url, target.key) as client:
            yield client
    else:
        async with connect(target, create=create) as app:
            yield app


# -- input --------------------------------------------------------------------------


def _json_problem(exc: json.JSONDecodeError) -> str:
    return f"{exc.msg} (line {exc.lineno}, column {exc.colno})"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400: a float of infinity, no JSON value either
        raise ValueError(f"{text} is out of a number's range")
    return number


def parse_json(text: str, what: str) -> Any:
    """``text`` as JSON, or a :class:`CliError` that names ``what``."""
    try:
        return json.loads(text, parse_constant=_no_constants, parse_float=_finite)
    except RecursionError:
        raise CliError(f"{what} is nested too deeply to be read") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {_json_problem(exc)}") from None
    except ValueError as exc:  # NaN, Infinity, an integer of too many digits
        if "integer string conversion" in str(exc):  # Python's bound (CVE-2020-10735)
            raise CliError(f"{what} holds an integer of more than "
                           f"{sys.get_int_max_str_digits()} digits, the most conveyor "
                           "takes") from None
        raise CliError(f"{what} is not valid JSON: {exc}") from None


def read_json_arg(arg: str, what: str) -> Any:
    """A JSON argument: the text itself, ``-`` for standard input, ``@path`` for a file."""
    if arg == "-":
        text = sys.stdin.read()
        source = f"{what} (from standard input)"
    elif arg.startswith("@"):
        path = arg[1:]
        if not path:
            raise CliError(f"{what}: '@' must be followed by a file name")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise CliError(f"cannot read {what} file {path!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise CliError(f"cannot read {what} file {path!r}: not UTF-8 text ({exc.reason})") \
                from None
        source = f"{what} file {path!r}"
    else:
        text, source = arg, what
    if not text.strip():
        raise CliError(f"{source} is empty: give a JSON value (for example {{}} or null)")
    return parse_json(text, source)


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)([smhdw]?)",
                       re.ASCII)
"""A decimal number (digits 0-9, an exponent allowed) and at most one lower-case
unit: ``90``, ``2.5``, ``1e3``, ``30m``."""


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """Seconds, as a number or a number with a unit: ``90``, ``30m``, ``12h``, ``7d``, ``2w``;
    more than 0 when ``strict``, at least ``minimum``, at most 100 years."""

    name = "duration"

    def __init__(self, what: str, *, strict: bool = False, minimum: float = 0.0) -> None:
        self.what = what
        self.strict = strict
        self.minimum = minimum

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.what.upper()

    def _bound(self) -> str:
        """The least value, as messages say it (the real one: ``--service-lease nan``
        said ">= 0" of an option whose least is 0.1)."""
        if self.minimum > 0:
            return f">= {self.minimum:g}"
        return "> 0" if self.strict else ">= 0"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number, unit = float(value), 1.0
        else:
            text = str(value).strip()
            if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
                self.fail(f"must be a finite duration {self._bound()}, not {value!r}",
                          param, ctx)
            parsed = _DURATION.fullmatch(text)
            if parsed is None:
                self.fail(f"must be seconds or a number with a unit (s, m, h, d, w) such as "
                          f"30m or 7d, not {value!r}", param, ctx)
            number, unit = float(parsed[1]), _UNITS.get(parsed[2], 1.0)
        seconds = number * unit + 0.0  # -0 is 0
        if not math.isfinite(seconds) or seconds < 0 or (self.strict and seconds == 0):
            self.fail(f"must be a finite duration {self._bound()}, not {value!r}", param, ctx)
        if seconds < self.minimum:
            self.fail(f"must be at least {self.minimum:g} seconds, not {value!r}", param, ctx)
        if seconds > MAX_SECONDS:  # what every duration of the library allows
            self.fail(f"must be at most {MAX_SECONDS:.0f} seconds (100 years), not {value!r}",
                      param, ctx)
        return seconds


_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


class Number(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A finite number, at least ``minimum``; ``what`` names it in errors."""

    name = "number"

    def __init__(self, what: str, *, minimum: float = 0.0, note: str = "") -> None:
        self.what = what
        self.minimum = minimum
        self.note = note

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.what.upper()

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        else:
            text = str(value).strip()
            try:
                number = float(text)
            except ValueError:
                self.fail(f"must be a number, not {value!r}", param, ctx)
            if math.isfinite(number) and not _NUMBER.fullmatch(text):
                # float() takes "1_0" and digits of other scripts too
                self.fail(f"must be a number written with the digits 0-9 (an exponent "
                          f"allowed), not {value!r}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"must be a finite number, not {value!r}", param, ctx)
        if number < self.minimum:
            self.fail(f"must be a number >= {self.minimum:g}{self.note}, not {value!r}",
                      param, ctx)
        return number
