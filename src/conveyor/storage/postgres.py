"""The PostgreSQL backend (``postgresql://user:password@host:port/db``): many processes
and machines on one database.

- psycopg 3, asynchronous, with a :class:`psycopg_pool.AsyncConnectionPool`
  per event loop; every hot path (add, claim, heartbeat, progress, finish,
  logs) is one statement and one round trip whatever the batch size.
- Claims take ready tasks along a partial index of queued tasks (action,
  priority, run_at, id) with ``FOR UPDATE SKIP LOCKED``. Tasks with
  concurrency conditions and actions with claim limits go through a careful
  path that holds transaction-level advisory locks, so two workers can never
  exceed a limit together.
- Dedupe by a partial unique index: ``INSERT ... ON CONFLICT DO NOTHING``,
  then the live holder of the key is read.
- The change feed is a table filled by statement-level triggers, which also
  ``NOTIFY``; a dedicated listener connection reads the table by snapshot
  after each notification and at least every ``poll_interval`` seconds.
- The schema lives in its own PostgreSQL schema (``conveyor`` by default) and
  is created and upgraded by versioned migrations: :func:`migrate`
  (``conveyor migrate``) or ``?migrate=true``.

URL options (removed before the URL goes to libpq, which gets the rest):
``schema`` (default ``conveyor``), ``migrate`` (``true``: create or upgrade
the schema on open), ``pool_min`` / ``pool_max`` (connections of the first event
loop's pool, default 1 / 10; another loop's pool has at most 4),
``pool_timeout`` (seconds a call waits for a pooled connection, default 30),
``poll_interval`` (seconds between change-feed reads without a notification,
default 1, at most an hour), ``listen`` (``false``: poll only, for poolers in
transaction mode), ``prepare`` (``false``: never use prepared statements, for
PgBouncer before 1.21 in transaction mode). See docs/postgres.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import re
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast
from urllib.parse import SplitResult, quote, unquote, urlencode, urlsplit

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.adapt import AdaptersMap
from psycopg.rows import tuple_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .. import _json
from ..errors import (
    ConfigurationError,
    DuplicateTask,
    QueryError,
    SchemaError,
    StorageError,
    TaskNotFound,
    ValidationError,
)
from ..model import (
    LogLevel,
    LogRecord,
    Progress,
    Status,
    Task,
    TaskSpec,
    new_token,
)
from ..query import Filter, Query, compile_postgres, compile_sort_postgres, matches, parse_filter
from . import _ops
from ._codec import encode_scope, row_to_task
from ._feed import Fanout, FanoutFeed, ReadyHooks, opened_start
from ._pgfeed import Listener
from ._pgsync import SyncConnection
from ._sqlfile import load_migrations, load_queries, load_sql
from ._url import MAX_OPTION_SECONDS, given_twice
from ._url import hide_password as _hide_password
from ._url import misplaced_userinfo as _misplaced_userinfo
from ._url import scrub_password as _scrub_password
from .base import (
    AddResult,
    ClaimLimits,
    Completion,
    HeartbeatReply,
    Lease,
    NewLog,
    RecoverReport,
    Storage,
    WorkerInfo,
    key_holder,
)

__all__ = ["CLOCK_TOLERANCE", "FEED_RETENTION", "SCHEMA_VERSION", "PostgresStorage", "migrate",
           "parse_postgres_url"]

log = logging.getLogger("conveyor.storage.postgres")
_RAW_QUERIES = load_queries("postgres")
MIGRATIONS = load_migrations("postgres")
SCHEMA_VERSION = MIGRATIONS[-1].version
"""The schema version this code needs: the number of the last migration."""
# the definitions that name the schema (see the file), made again by migrate when
# they name another one, and the functions among them
_BOUND_SQL = load_sql("postgres", "bound.sql")
_BOUND_FUNCTIONS = ("tasks_inserted", "tasks_updated", "tasks_deleted")
# the origin of changes written by add_in, after the storage's instance id: not this
# storage's own writes (which the app announces as it makes them) but announced when
# the caller's transaction commits, through the feed, in this process too
_TX_ORIGIN = "-tx"
_MIGRATE_TRIES = 6  # a migration that meets a deadlock with workers is run again
_ADD_CHUNK = 250  # rows per insert statement of a big add (see _insert_overlapped)
_LOCK_IDLE_FLOOR = 5.0  # seconds; see _lock_idle
_CLOSE_DRAIN = 5.0  # seconds close() waits for the calls under way on a pool
_UNCOUNTED = 1 << 62  # a condition's count that one claim could not learn
MIN_SERVER = 130000  # xid8, pg_current_snapshot(), pg_snapshot_xip()
FEED_RETENTION = 3600.0
"""Seconds the change feed keeps its entries (consumers only read recent ones)."""
_STATUS = {s.value: s for s in Status}
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
CLOCK_TOLERANCE = 2.0
"""Seconds this host's clock may be off the server's before opening logs a warning."""
_OPTIONS = ("schema", "migrate", "pool_min", "pool_max", "pool_timeout", "poll_interval", "listen",
            "prepare")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# ---------------------------------------------------------------------------
# URLs


@dataclass(frozen=True, slots=True)
class PgOptions:
    schema: str = "conveyor"
    migrate: bool = False
    pool_min: int = 1
    pool_max: int = 10
    pool_timeout: float = 30.0
    poll_interval: float = 1.0
    listen: bool = True
    prepare: bool = True

    @property
    def prepare_threshold(self) -> int | None:
        """psycopg's ``prepare_threshold``: its default, or never (``prepare=false``)."""
        return 5 if self.prepare else None


def _flag(key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigurationError(f"postgres URL option {key} must be true or false, not {value!r}")


_UTF8_NAMES = frozenset({"UTF8", "UNICODE"})


def parse_postgres_url(url: str) -> tuple[str, PgOptions, str]:
    """Split a ``postgresql://`` URL into the libpq connection string, conveyor's
    options, and a display URL without the password."""
    if not isinstance(url, str):
        raise ConfigurationError("a postgres URL must be a string")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"bad postgres URL: {exc}") from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigurationError(f"not a postgres URL: {_hide_password(url)!r}")
    if not url.partition(":")[2].startswith("//"):
        raise ConfigurationError(  # the URL is not shown: its password could not be found
            f"bad postgres URL: no '//' after '{parts.scheme}:'; write "
            "postgresql://USER:PASSWORD@HOST/DATABASE (or postgresql:///DATABASE for the "
            "local socket)")
    if _misplaced_userinfo(parts):
        raise ConfigurationError(
            f"bad postgres URL {_hide_password(url)!r}: a '/', '?' or '#' in the user name or "
            "password must be percent-encoded (%2F, %3F, %23)")
    if parts.fragment or url.endswith("#"):  # it was dropped silently; SQLite refuses it
        raise ConfigurationError(
            f"bad postgres URL {_hide_password(url)!r}: it takes no '#' fragment (a '#' in a "
            "database name or an option's value is written %23)")
    try:
        # libpq's several hosts (``h1:5432,h2:5433``, for failover): each port is checked
        for host in parts.netloc.rpartition("@")[2].split(","):
            urlsplit(f"//{host}").port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ConfigurationError(f"bad postgres URL {_hide_password(url)!r}: {exc}") from None
    if parts.netloc.count("@") > 1:
        raise ConfigurationError(
            f"bad postgres URL {_hide_password(url)!r}: more than one '@' before the host; "
            "write an '@' in the user name or password as %40")
    try:
        query = _parse_query(parts.query)
    except ValueError as exc:
        raise ConfigurationError(f"bad postgres URL {_hide_password(url)!r}: {exc}") from None
    _check_keys(url, parts, [k for k, _ in query])
    _check_libpq_values(url, query)
    ours = {k: v for k, v in query if k in _OPTIONS}
    rest = [(k, v) for k, v in query if k not in _OPTIONS]
    kwargs: dict[str, Any] = {}
    for key, value in ours.items():
        if key == "schema":
            if not _SCHEMA_NAME.fullmatch(value) or value.startswith("pg_"):
                raise ConfigurationError(
                    f"postgres URL option schema={value!r}: use lower-case letters, digits and "
                    "underscores (at most 48, not starting with a digit or pg_)")
            kwargs[key] = value
        elif key in ("migrate", "listen", "prepare"):
            kwargs[key] = _flag(key, value)
        elif key in ("pool_min", "pool_max"):
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise ConfigurationError(
                    f"postgres URL option {key} must be an integer, not {value!r}") from None
        else:
            try:
                kwargs[key] = float(value)
            except ValueError:
                raise ConfigurationError(
                    f"postgres URL option {key} must be a number, not {value!r}") from None
    options = PgOptions(**kwargs)
    _check_options(options)
    if not any(k == "connect_timeout" for k, _ in rest):
        rest.append(("connect_timeout", "10"))
    encodings = [v for k, v in rest if k == "client_encoding"]
    if not encodings:
        # the text conveyor sends and reads is UTF-8 whatever the database or role
        # sets by default (a LATIN1 default failed every claim of a task holding a
        # character LATIN1 lacks); libpq's parameter wins over an options "-c"
        rest.append(("client_encoding", "UTF8"))
    elif encodings[-1].replace("-", "").replace("_", "").upper() not in _UTF8_NAMES:
        raise ConfigurationError(
            f"postgres URL option client_encoding={encodings[-1]!r}: conveyor's connections "
            "use UTF8 (leave the option out)")
    # quote, not urlencode's default quote_plus: libpq reads "+" as itself, not a space
    conninfo = _unsplit(parts._replace(scheme="postgresql",
                                       query=urlencode(rest, quote_via=quote)))
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise ConfigurationError(f"bad postgres URL {_hide_password(url)!r}: "
                                 f"{_scrub_password(_first_line(exc), url)}") from None
    display = _hide_password(_unsplit(parts._replace(
        query=urlencode([(k, v) for k, v in query if k != "password"], quote_via=quote))))
    return conninfo, options, display


def _parse_query(text: str) -> list[tuple[str, str]]:
    """The ``key=value`` pairs of a URL's query, percent-decoded as libpq does it: a
    ``+`` stays a ``+`` (``parse_qsl`` would make it a space)."""
    pairs = []
    for item in text.split("&"):
        if item:
            key, _, value = item.partition("=")
            if _BAD_ESCAPE.search(item):  # libpq refuses it; unquote would keep it
                raise ValueError(f"invalid percent-encoded token in {unquote(key)!r} (write "
                                 "a '%' as %25)")
            pairs.append((unquote(key), unquote(value)))
    return pairs


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby",
                             "prefer-standby"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "load_balance_hosts": ("disable", "random"),
}
"""libpq options with a fixed list of values (libpq refuses others only when connecting)."""
_INTEGER = re.compile(r"\s*-?\d+\s*")


def _check_libpq_values(url: str, query: Sequence[tuple[str, str]]) -> None:
    """The libpq options whose values libpq would only refuse when connecting
    (as a connection error) are checked here, as the URL's mistakes they are."""
    for key, value in query:
        problem = ""
        choices = _CHOICES.get(key)
        if choices is not None and value not in choices:
            problem = f"must be one of {', '.join(choices)}"
        elif key in ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
                     "keepalives_count", "tcp_user_timeout") and not _INTEGER.fullmatch(value):
            problem = {"keepalives": "must be 0 or 1",
                       "tcp_user_timeout": "must be a whole number of milliseconds"}.get(
                key, "must be a whole number of seconds")
        elif key == "port" and not all(p.strip().isdigit() and 0 < int(p) < 65536
                                       for p in value.split(",")):
            problem = "must be a port number (1-65535), or a comma-separated list of them"
        if problem:
            raise ConfigurationError(
                f"bad postgres URL {_hide_password(url)!r}: option {key}={value!r} {problem}")


def _unsplit(parts: SplitResult) -> str:
    """``urlunsplit`` that keeps ``//`` when the host is empty: ``postgresql:///db``
    (the local socket) must not become ``postgresql:/db``."""
    url = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return f"{url}?{parts.query}" if parts.query else url


def _check_options(o: PgOptions) -> None:
    for name in ("migrate", "listen", "prepare"):
        if not isinstance(getattr(o, name), bool):
            raise ConfigurationError(
                f"postgres option {name} must be True or False, not {getattr(o, name)!r}")
    for name in ("pool_min", "pool_max"):
        value = getattr(o, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"postgres option {name} must be an integer, not {value!r}")
    for name in ("poll_interval", "pool_timeout"):
        value = getattr(o, name)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise ConfigurationError(
                f"postgres option {name} must be a number of seconds, not {value!r}")
    if not isinstance(o.schema, str):
        raise ConfigurationError(f"postgres option schema must be a string, not {o.schema!r}")
    if o.pool_min < 0 or o.pool_max < 1 or o.pool_min > o.pool_max:
        raise ConfigurationError("postgres pool sizes need 0 <= pool_min <= pool_max and "
                                 f"pool_max >= 1 (got {o.pool_min}, {o.pool_max})")
    for name in ("poll_interval", "pool_timeout"):
        if not getattr(o, name) > 0:
            raise ConfigurationError(f"postgres {name} must be > 0 seconds")
    if o.poll_interval > MAX_OPTION_SECONDS:  # the feed would be read once a day, say
        raise ConfigurationError(f"postgres poll_interval must be at most "
                                 f"{MAX_OPTION_SECONDS:g} seconds, not {o.poll_interval!r}")
    if not _SCHEMA_NAME.fullmatch(o.schema) or o.schema.startswith("pg_"):
        raise ConfigurationError(
            f"bad schema name {o.schema!r}: use lower-case letters, digits and underscores "
            "(at most 48, not starting with a digit or pg_)")


def _check_keys(url: str, parts: SplitResult, keys: Sequence[str]) -> None:
    """Every option of the URL's query is conveyor's or libpq's, and given once."""
    known = _libpq_keywords()
    for key in keys:
        if key not in _OPTIONS and key not in known:
            raise ConfigurationError(
                f"bad postgres URL {_hide_password(url)!r}: unknown option {key!r} (conveyor's "
                f"are {', '.join(sorted(_OPTIONS))}; the rest go to libpq, which does not "
                "know it)")
    twice = given_twice(keys)
    if twice is not None:
        raise ConfigurationError(
            f"bad postgres URL {_hide_password(url)!r}: option {twice!r} given twice")
    hosts = parts.netloc.rpartition("@")[2]
    port = re.search(r":\d*$", hosts)  # the last host's; "[::1]" has none
    written = {"user": bool(parts.username), "password": parts.password is not None,
               "host": bool(hosts[:port.start()] if port else hosts), "port": bool(port),
               "dbname": parts.path not in ("", "/")}
    for key in keys:
        if written.get(key):
            where = {"dbname": "path"}.get(key, key)
            raise ConfigurationError(
                f"bad postgres URL {_hide_password(url)!r}: option {key!r} given twice (in "
                f"the URL's {where} and in its query); give it once")


@functools.cache
def _libpq_keywords() -> frozenset[str]:
    return frozenset(d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults())




def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _lock_key(*parts: str) -> int:
    """A stable signed 64-bit advisory lock key."""
    digest = hashlib.blake2b("\x1f".join(("conveyor", *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# ---------------------------------------------------------------------------
# JSON in and out

_LONG_INT = re.compile(rb"\d{17,}")
_decoder = json.JSONDecoder()


def _parse_int(text: str) -> int | float:
    value = int(text)
    if -(2**63) <= value < 2**63:
        return value
    # jsonb keeps numbers as decimals and prints 1e300 as a 1 and 300 zeros: a long
    # integer that is exactly the shortest form of a float was (almost surely) that float
    try:
        f = float(text)
    except OverflowError:
        return value
    if f in (float("inf"), float("-inf")):
        return value
    return f if Decimal(repr(f)) == Decimal(text) else value


_big_decoder = json.JSONDecoder(parse_int=_parse_int)


def _loads(data: bytes | bytearray | memoryview | str) -> Any:
    if isinstance(data, str):
        raw = data.encode()
    else:
        raw = bytes(data)
    text = raw.decode("utf-8")
    if _LONG_INT.search(raw):
        return _big_decoder.decode(text)
    return _decoder.decode(text)


_ADAPTERS = AdaptersMap(psycopg.adapters)
set_json_loads(_loads, _ADAPTERS)
_JSON_LOADERS = [(info.oid, loader) for info in (psycopg.postgres.types["json"],
                                                 psycopg.postgres.types["jsonb"])
                 for fmt in (psycopg.pq.Format.TEXT, psycopg.pq.Format.BINARY)
                 if (loader := _ADAPTERS.get_loader(info.oid, fmt)) is not None]


def _our_json(cur: Any) -> None:
    """Load json and jsonb on ``cur`` as conveyor's own connections do, whatever the
    caller's connection was set up with (Django's psycopg backend loads jsonb as text)."""
    adapters = cur.adapters
    for oid, loader in _JSON_LOADERS:
        if adapters.get_loader(oid, loader.format) is not loader:
            adapters.register_loader(oid, loader)

_ESCAPED_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


# a JSON string (left as it is), or a number that Python wrote with a positive exponent
_STRING_OR_BIG_FLOAT = re.compile(r'"(?:[^"\\]|\\.)*"|(-?\d+(?:\.\d+)?[eE]\+\d+)')


def _positional(match: re.Match[str]) -> str:
    number = match.group(1)
    if number is None:
        return match.group(0)
    return f"{Decimal(number):f}.0"


def _pg_json(value: Any) -> str:
    """JSON text for jsonb that keeps floats floats: jsonb prints ``1e+16`` back as
    the integer ``10000000000000000``, but keeps the ``.0`` of ``10000000000000000.0``.
    (Python writes a float with a positive exponent only from 1e16, where it is whole.)"""
    text = _json.dumps(value)
    if "e+" in text or "E+" in text:
        text = _STRING_OR_BIG_FLOAT.sub(_positional, text)
    return text


def _dumps(value: Any) -> str:
    """JSON text for a jsonb parameter; NUL characters (which jsonb refuses) become U+FFFD."""
    text = _pg_json(value)
    if "\\u0000" in text:
        text = _ESCAPED_NUL.sub(lambda m: m.group(1) + "\\ufffd", text)
    return text


def _text(value: str | None) -> str | None:
    """Text for a text column: PostgreSQL text cannot hold NUL."""
    if value is not None and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _has_nul(text: str) -> bool:
    """Whether JSON text holds an escaped NUL character."""
    return "\\u0000" in text and _ESCAPED_NUL.search(text) is not None


# ---------------------------------------------------------------------------
# the schema


def _queries(schema: str) -> dict[str, str]:
    quoted = f'"{schema}"'
    return {name: text.replace("{schema}", quoted) for name, text in _RAW_QUERIES.items()}


def _channel(schema: str) -> str:
    return f"conveyor:{schema}"


def _fill(text: str, schema: str) -> bytes:
    """A migration's (or bound.sql's) text for ``schema``."""
    return (text.replace("{schema}", f'"{schema}"')
            .replace("{channel}", "'" + _channel(schema) + "'")).encode()


# a qualified name in a trigger function's body, as _fill writes it: "schema".table
_QUALIFIED = re.compile(r'"((?:[^"]|"")+)"\.[a-z_]+')


async def _bound_elsewhere(conn: psycopg.AsyncConnection[Any], schema: str) -> str | None:
    """None when the change-feed trigger functions of ``schema`` write into its own
    tables and its ``changes_notify`` trigger notifies on its own channel; else what
    is wrong, for a message (the schema was renamed, or restored under another
    name, after they were made: see bound.sql). One catalog query."""
    cur = await conn.execute(
        "SELECT proname::text, prosrc, NULL::bytea FROM pg_proc "
        "WHERE pronamespace = to_regnamespace(%(nsp)s) AND proname = ANY(%(names)s) "
        "UNION ALL "
        "SELECT NULL, NULL, tgargs FROM pg_trigger "
        "WHERE tgrelid = to_regclass(%(changes)s) AND tgname = 'changes_notify'",
        {"nsp": f'"{schema}"', "names": list(_BOUND_FUNCTIONS), "changes": f'"{schema}".changes'})
    rows = await cur.fetchall()
    names: set[str] = set()
    channel: bytes | None = None
    for proname, body, args in rows:
        if proname is None:
            channel = bytes(args)
            continue
        names.update(n.replace('""', '"') for n in _QUALIFIED.findall(body))
    others = sorted(names - {schema})
    if others:
        return ("its change-feed triggers write into schema "
                + ", ".join(f'"{n}"' for n in others))
    if channel != _channel(schema).encode() + b"\0":
        if channel is None:
            return "its changes_notify trigger is missing"
        heard = channel.rstrip(b"\0").decode("utf-8", "replace")
        return f'its change-feed trigger notifies on channel "{heard}"'
    return None


_TABLES = ("tasks", "logs", "changes", "workers")
# The columns of the migrations table, in order, as _apply_migrations makes it:
# another tool's table of that name (even an empty one) is not taken over.
_MIGRATIONS_COLUMNS = ("version", "name", "applied_at")


async def _schema_version(conn: psycopg.AsyncConnection[Any], schema: str) -> int | None:
    """The version of conveyor's schema ``schema``, None when it has none; a
    :class:`SchemaError` when the schema holds tables of conveyor's names that
    ``conveyor migrate`` did not make (migrating would fail on them)."""
    names = ("migrations", *_TABLES)
    cur = await conn.execute(
        "SELECT " + ", ".join(["to_regclass(%s) IS NOT NULL"] * len(names)),
        [f'"{schema}".{name}' for name in names])
    row = await cur.fetchone()
    assert row is not None
    has_migrations, *has = row
    found = [name for name, there in zip(_TABLES, has, strict=True) if there]
    if not has_migrations:
        if found:
            raise _foreign(schema, _tables(found))
        return None
    cur = await conn.execute(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (f'"{schema}".migrations',))
    if [name for name, in await cur.fetchall()] != list(_MIGRATIONS_COLUMNS):
        raise _foreign(schema, "a migrations table unlike conveyor's")
    cur = await conn.execute(sql.SQL("SELECT version::integer, name::text FROM {}.migrations "
                                     "ORDER BY version").format(sql.Identifier(schema)))
    applied = [(int(v), str(n)) for v, n in await cur.fetchall()]
    ours = {m.version: m.name for m in MIGRATIONS}
    if any(ours.get(v, n) != n for v, n in applied) or (found and not applied):
        raise _foreign(schema, "a migrations table that conveyor did not write")
    return applied[-1][0] if applied else 0


def _tables(names: Sequence[str]) -> str:
    return f"a {names[0]} table" if len(names) == 1 else f"tables {', '.join(names)}"


def _foreign(schema: str, what: str) -> SchemaError:
    return SchemaError(
        f'schema "{schema}" holds {what} but was not made by `conveyor migrate`: use '
        "another schema (?schema=...) or drop these tables")


async def _apply_migrations(conn: psycopg.AsyncConnection[Any], schema: str) -> int:
    """Create or upgrade the schema; safe to run from many processes at once, and
    beside running workers: a migration that takes a stronger lock on a table after
    a weaker one (an index built, then one dropped) can deadlock with a worker's
    statement, and PostgreSQL then cancels one of the two; the whole migration is
    rolled back and run again, up to ``_MIGRATE_TRIES`` times."""
    for attempt in range(_MIGRATE_TRIES):
        try:
            return await _apply_migrations_once(conn, schema)
        except psycopg.errors.DeadlockDetected:
            if attempt == _MIGRATE_TRIES - 1:
                raise StorageError(
                    f"could not migrate schema \"{schema}\": {_MIGRATE_TRIES} tries met a "
                    "deadlock with running workers (nothing was changed): run it again, "
                    "or stop the workers while it runs") from None
            await asyncio.sleep(0.1 * 2 ** attempt)
    raise AssertionError("unreachable")


async def _apply_migrations_once(conn: psycopg.AsyncConnection[Any], schema: str) -> int:
    ident = sql.Identifier(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("migrate", schema),))
        current = await _schema_version(conn, schema)
        if current is not None and current > SCHEMA_VERSION:
            raise SchemaError(
                f'schema "{schema}" is at version {current}, newer than this conveyor knows '
                f"({SCHEMA_VERSION}): upgrade conveyor")
        if current is None:
            await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            await conn.execute(sql.SQL(
                "CREATE TABLE {}.migrations (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())").format(ident))
            current = 0
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            await conn.execute(_fill(migration.sql, schema))
            await conn.execute(
                sql.SQL("INSERT INTO {}.migrations (version, name) VALUES (%s, %s)").format(ident),
                (migration.version, migration.name))
            current = migration.version
        # The migrations wrote the schema's name into the trigger functions and the
        # channel into a trigger's argument: a schema renamed since (ALTER SCHEMA ...
        # RENAME, the way to restore a dump under another name) still names the old
        # one. Checked at every run (one catalog query) and made again only then, in
        # this transaction and under this lock: runs at once find it done.
        wrong = await _bound_elsewhere(conn, schema)
        if wrong is not None:
            await conn.execute(_fill(_BOUND_SQL, schema))
            log.warning('schema "%s": %s; made them again for this schema', schema, wrong)
    return current


async def _connect(conninfo: str, display: str, *, autocommit: bool = True,
                   **params: Any) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=autocommit,
                                                     context=_ADAPTERS, **params)
    except psycopg.OperationalError as exc:
        raise StorageError(f"cannot connect to PostgreSQL at {display}: {_first_line(exc)}"
                           ) from None
    except psycopg.Error as exc:
        raise StorageError(f"cannot use PostgreSQL at {display}: {_first_line(exc)}") from None


async def migrate(url: str) -> int:
    """Create or upgrade conveyor's schema in the database of ``url`` (the
    ``schema`` option names it); returns the schema version. Safe to run from
    several processes at once. Raises :class:`SchemaError` when the database
    holds a newer schema than this conveyor knows."""
    conninfo, options, display = parse_postgres_url(url)
    conn = await _connect(conninfo, display, prepare_threshold=options.prepare_threshold)
    try:
        await _check_server(conn, display)
        return await _apply_migrations(conn, options.schema)
    except psycopg.Error as exc:
        raise StorageError(f"could not migrate {display}: {_first_line(exc)}") from None
    finally:
        await conn.close()


async def _check_server(conn: psycopg.AsyncConnection[Any], display: str) -> None:
    if conn.info.server_version < MIN_SERVER:
        raise StorageError(f"conveyor needs PostgreSQL 13 or newer; {display} runs "
                           f"{conn.info.server_version // 10000}")
    encoding = conn.info.parameter_status("server_encoding")
    if encoding is not None and str(encoding) not in ("UTF8", "b'UTF8'"):
        raise StorageError(f"conveyor needs a UTF8 database; {display} is {encoding}")


def _no_such_id(task_id: str) -> bool:
    """An id PostgreSQL text cannot hold (a NUL character): no task has it, so it is
    not looked up (the driver would refuse it as a parameter)."""
    return "\x00" in task_id


async def _current_database(conn: psycopg.AsyncConnection[Any]) -> str:
    """The database ``conn`` reaches, as the server names it (behind a pooler the
    name in the URL can be an alias)."""
    cur = conn.cursor(row_factory=tuple_row)  # whatever rows the caller's connection makes
    await cur.execute("SELECT current_database()")
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def _check_clock(conn: psycopg.AsyncConnection[Any], display: str,
                       clock: Callable[[], float] = time.time) -> float:
    """Warn when this host's clock is more than ``CLOCK_TOLERANCE`` seconds off the
    server's: leases, delays and timeouts are written with each process's clock,
    so processes on several hosts need synchronised clocks. Returns the offset."""
    before = clock()
    cur = await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
    row = await cur.fetchone()
    after = clock()
    assert row is not None
    offset = _clock_offset(float(row[0]), before, after)
    if abs(offset) > CLOCK_TOLERANCE:
        log.warning("this host's clock is %.1f s %s the clock of PostgreSQL at %s: leases, "
                    "delays and timeouts use each process's clock; synchronise the hosts' "
                    "clocks (NTP)", abs(offset), "behind" if offset > 0 else "ahead of", display)
    return offset


def _clock_offset(server: float, before: float, after: float) -> float:
    """How far the server's clock (read between local times ``before`` and ``after``)
    is ahead of this host's, in seconds."""
    return server - (before + after) / 2


# ---------------------------------------------------------------------------
# the storage


class PostgresStorage(FanoutFeed, Storage):
    """Tasks in PostgreSQL. See the module docstring and docs/postgres.md.

    ``PostgresStorage(url, migrate=True)`` creates or upgrades the schema on open;
    otherwise opening a database without it is a :class:`SchemaError` that says
    to run ``conveyor migrate``.
    """

    def __init__(self, url: str, *, schema: str | None = None, migrate: bool | None = None,
                 pool_min: int | None = None, pool_max: int | None = None,
                 pool_timeout: float | None = None, poll_interval: float | None = None,
                 listen: bool | None = None, prepare: bool | None = None) -> None:
        conninfo, options, display = parse_postgres_url(url)
        overrides = {k: v for k, v in {
            "schema": schema, "migrate": migrate, "pool_min": pool_min, "pool_max": pool_max,
            "pool_timeout": pool_timeout, "poll_interval": poll_interval, "listen": listen,
            "prepare": prepare}.items() if v is not None}
        if overrides:
            options = PgOptions(**{**_asdict(options), **overrides})
            _check_options(options)
        self._setup(conninfo, options, display, uuid.uuid4().hex)

    def _setup(self, conninfo: str, options: PgOptions, display: str, instance_id: str) -> None:
        self._conninfo = conninfo
        self.options = options
        self.url = display
        self.schema = options.schema
        self.instance_id = instance_id
        self._q = _queries(options.schema)
        self._state = threading.Lock()
        self._pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool[Any]] = {}
        self._guards: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        # calls under way on each pool (waiting for a connection or using one), and the
        # event close() waits on for them to end: each set on its pool's own loop
        self._busy: dict[AsyncConnectionPool[Any], int] = {}
        self._quiet: dict[AsyncConnectionPool[Any], asyncio.Event] = {}
        self._open_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._opened = False
        self._p0: tuple[str, float] | None = None
        self._dbname: str | None = None  # the database's name, read when it opens
        # current_database() of the connections add_in() was given
        self._callers_dbnames: weakref.WeakKeyDictionary[object, str] = (
            weakref.WeakKeyDictionary())
        self._listener: Listener | None = None
        self._feed = Fanout(self.instance_id, on_first=self._start_listener)
        self._ready_hooks = ReadyHooks()

    @classmethod
    def from_url(cls, url: str) -> PostgresStorage:
        """The storage for a ``postgresql://`` URL (see docs/postgres.md for its options)."""
        return cls(url)

    def fork(self) -> PostgresStorage:
        """A storage object for another thread's event loop: same data, same
        ``instance_id``, its own small pool, no listener of its own."""
        return self._twin(PgOptions(**{**_asdict(self.options), "migrate": False,
                                       "pool_min": 0, "pool_max": min(2, self.options.pool_max)}),
                          self.instance_id)

    def after_fork(self) -> PostgresStorage:
        """In a forked child: a storage with the same URL and options and its own
        ``instance_id`` (the child is another process), connecting on open; the
        parent's connections are left alone."""
        return self._twin(self.options, uuid.uuid4().hex)

    def _twin(self, options: PgOptions, instance_id: str) -> PostgresStorage:
        """A new, unopened storage object on the same server and schema."""
        twin = PostgresStorage.__new__(PostgresStorage)
        twin._setup(self._conninfo, options, self.url, instance_id)
        return twin

    # -- life -----------------------------------------------------------------

    async def open(self) -> None:
        if self._opened and self._loop_pool() is not None:
            return
        loop = asyncio.get_running_loop()
        with self._state:
            lock = self._open_locks.setdefault(loop, asyncio.Lock())
        async with lock:
            await self._open()

    async def _open(self) -> None:
        if self._opened and self._loop_pool() is not None:
            return
        if not self._opened:
            conn = await _connect(self._conninfo, self.url,
                                  prepare_threshold=self.options.prepare_threshold)
            try:
                self._dbname = await _current_database(conn)
                await _check_server(conn, self.url)
                if self.options.migrate:
                    await _apply_migrations(conn, self.schema)
                version = await _schema_version(conn, self.schema)
                if version is None:
                    raise SchemaError(
                        f'database {self.url} has no conveyor schema "{self.schema}": run '
                        f"`conveyor migrate --db <url>` (or open it with "
                        "?migrate=true)")
                if version > SCHEMA_VERSION:
                    raise SchemaError(
                        f'schema "{self.schema}" of {self.url} is at version {version}, newer '
                        f"than this conveyor knows ({SCHEMA_VERSION}): upgrade conveyor")
                if version < SCHEMA_VERSION:
                    raise SchemaError(
                        f'schema "{self.schema}" of {self.url} is at version {version}, older '
                        f"than this conveyor ({SCHEMA_VERSION}): run `conveyor migrate`")
                wrong = await _bound_elsewhere(conn, self.schema)
                if wrong is not None:
                    raise SchemaError(
                        f'schema "{self.schema}" of {self.url}: {wrong} (was it renamed, or '
                        "restored under another name?): run `conveyor migrate --db <url>` "
                        f'to make them again for "{self.schema}"')
                await _check_clock(conn, self.url)
                cur = await conn.execute(self._q["snapshot"])
                row = await cur.fetchone()
                assert row is not None
                self._p0 = (str(row[0]), time.monotonic())
            except psycopg.Error as exc:
                raise StorageError(f"cannot use PostgreSQL at {self.url}: {_first_line(exc)}"
                                   ) from None
            finally:
                await conn.close()
        await self._new_pool()
        self._opened = True

    async def _new_pool(self) -> AsyncConnectionPool[Any]:
        loop = asyncio.get_running_loop()
        first = not self._pools
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self._conninfo,
            min_size=self.options.pool_min if first else 0,
            max_size=self.options.pool_max if first else max(1, min(4, self.options.pool_max)),
            kwargs={"autocommit": True, "context": _ADAPTERS,
                    "prepare_threshold": self.options.prepare_threshold},
            open=False, name=f"conveyor-{self.schema}", timeout=self.options.pool_timeout,
            reconnect_timeout=60.0,
        )
        try:
            # opening waits for pool_min connections: not cut short by a small pool_timeout
            await pool.open(wait=first and self.options.pool_min > 0,
                            timeout=max(30.0, self.options.pool_timeout))
        except BaseException as exc:
            # a timeout, or the open cancelled: the pool's own tasks are ended here,
            # else they were left pending, unreferenced
            with contextlib.suppress(Exception):
                await asyncio.shield(pool.close(timeout=1.0))
            if isinstance(exc, PoolTimeout):
                raise StorageError(f"cannot open connections to PostgreSQL at {self.url}"
                                   ) from None
            raise
        with self._state:
            self._pools[loop] = pool
            self._guards[loop] = loop.create_task(self._close_if_cancelled(pool),
                                                  name="conveyor-pool-guard")
        return pool

    async def _close_if_cancelled(self, pool: AsyncConnectionPool[Any]) -> None:
        """Wait until cancelled; then close ``pool`` if it is still open. When
        ``asyncio.run()`` ends with the app left open it cancels every task, and
        psycopg_pool's task that reopens a lost connection catches that
        cancellation and waits for its next job: the run never returned. Closing
        the pool gives that task its stop."""
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            with self._state:
                still_open = any(p is pool for p in self._pools.values())
            if still_open:
                # its idle connections, taken before close() takes them out: close()
                # waits for its worker tasks, which asyncio.run() cancelled too, and
                # that wait raises CancelledError before it closes them (one server
                # connection left open per asyncio.run())
                idle = list(getattr(pool, "_pool", ()))
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await pool.close(timeout=1.0)
                for conn in idle:
                    if not conn.closed:
                        with contextlib.suppress(Exception, asyncio.CancelledError):
                            await conn.close()
                with self._state:  # the loop is ending: nothing of it is kept
                    for loop in [lp for lp, p in self._pools.items() if p is pool]:
                        del self._pools[loop]
                        self._guards.pop(loop, None)
            raise

    def _loop_pool(self) -> AsyncConnectionPool[Any] | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return self._pools.get(loop)

    async def close(self) -> None:
        """Close the pools and the listener; the object may be opened again."""
        listener, self._listener = self._listener, None
        feed, self._feed = self._feed, Fanout(self.instance_id, on_first=self._start_listener)
        feed.close()
        if listener is not None:
            await asyncio.to_thread(listener.stop)
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover
            current = None
        # the calls under way end first, on pools still in place: a call they make
        # meanwhile (the next step of a handler's work) is one of them, not a reopening
        with self._state:
            draining = dict(self._pools)
        for loop, pool in draining.items():
            await _on_loop(loop, current, self._drain(pool), _CLOSE_DRAIN + 5)
        with self._state:
            pools, self._pools = dict(self._pools), {}
            guards, self._guards = dict(self._guards), {}
            self._opened = False
            self._open_locks = {}
        for loop, guard in guards.items():  # their pools are no longer ours: they just end
            if loop is current:
                guard.cancel()
            elif not loop.is_closed():
                loop.call_soon_threadsafe(guard.cancel)
        for loop, pool in pools.items():
            await _on_loop(loop, current, pool.close(), 5)

    async def _drain(self, pool: AsyncConnectionPool[Any]) -> None:
        """On the pool's loop: wait until the calls under way on it (those waiting for a
        connection too, as SQLite's queued calls do) have ended, for at most
        ``_CLOSE_DRAIN`` seconds."""
        with self._state:
            quiet = None
            if self._busy.get(pool):
                quiet = self._quiet.setdefault(pool, asyncio.Event())
        if quiet is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_DRAIN):
                    await quiet.wait()
        with self._state:
            self._quiet.pop(pool, None)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection (autocommit) of this event loop; errors become StorageError."""
        pool = self._loop_pool()
        if pool is None:
            if not self._opened:
                await self.open()
                pool = self._loop_pool()
            if pool is None:
                pool = await self._new_pool()
        task = asyncio.current_task()
        asked = task.cancelling() if task is not None else 0
        with self._state:
            self._busy[pool] = self._busy.get(pool, 0) + 1
        try:
            async with pool.connection() as conn:
                if task is not None and task.cancelling() > asked:
                    # Python 3.11: the pool waits for a free connection with
                    # asyncio.wait_for, which loses a cancellation that comes as the
                    # connection is handed over (CPython gh-86296); the task would go
                    # on (a stopping relay or worker then hangs). Deliver it here.
                    raise asyncio.CancelledError
                yield conn
        except PoolTimeout:
            raise StorageError(f"no PostgreSQL connection available for {self.url} "
                               "(pool exhausted or server unreachable)") from None
        except psycopg.errors.InvalidRegularExpression as exc:
            raise QueryError(f"$regex: {_first_line(exc)}") from None
        except psycopg.errors.UndefinedTable as exc:
            raise SchemaError(f'conveyor schema "{self.schema}" is missing in {self.url}: run '
                              f"`conveyor migrate` ({_first_line(exc)})") from None
        except psycopg.OperationalError as exc:
            raise StorageError(f"PostgreSQL at {self.url}: {_first_line(exc)}") from None
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL at {self.url}: {_first_line(exc)}") from None
        finally:
            with self._state:
                left = self._busy[pool] - 1
                if left:
                    self._busy[pool] = left
                else:
                    del self._busy[pool]
                quiet = None if left else self._quiet.get(pool)
            if quiet is not None:
                quiet.set()

    # -- change feed ----------------------------------------------------------------

    def _start_listener(self) -> None:
        with self._state:
            if self._listener is not None:
                return
            since = opened_start(self._p0)
            conninfo, display = self._conninfo, self.url
            threshold = self.options.prepare_threshold
            listener = Listener(
                connect=lambda: _connect(conninfo, display, prepare_threshold=threshold,
                                         application_name="conveyor-listener"),
                queries=self._q,
                channel=_channel(self.schema), feed=self._feed, origin=self.instance_id,
                poll_interval=self.options.poll_interval, listen=self.options.listen,
                since=since, on_ready=self._ready_hooks.call, wanted=self._feed_wanted)
            self._listener = listener
        listener.start()

    def _feed_wanted(self) -> bool:
        """Whether anything using this storage wants changes now (a stream, a ready hook)."""
        return self._feed.wants_any() or bool(self._ready_hooks)

    def add_ready_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` (on the running event loop) as soon as the listener hears that
        another process queued a task, before the change feed delivers the change.
        Workers use it to claim about half a millisecond sooner; it is a hint only."""
        self._ready_hooks.add(hook)

    def remove_ready_hook(self, hook: Callable[[], None]) -> None:
        """Stop calling ``hook`` (see :meth:`add_ready_hook`)."""
        self._ready_hooks.remove(hook)

    def feed_health(self) -> dict[str, Any]:
        """The listener's state: connected, listening (false while nothing here wants
        changes), consecutive failures, time of the last read, its backend's pid."""
        listener = self._listener
        if listener is None:
            return {"running": False}
        return {"running": True, "connected": listener.connected,
                "listening": listener.listening,
                "failures": listener.failures, "last_read": listener.last_read,
                "backend_pid": listener.backend_pid}

    # -- helpers ------------------------------------------------------------------

    async def _save(self, conn: psycopg.AsyncConnection[Any],
                    changes: Sequence[tuple[Task, Task, str]]) -> None:
        """Write back tasks changed in Python (cold paths), version-checked. One that
        enters its key's scope gives the key up if another task took it meanwhile:
        those one by one (two may enter one key's scope in the same batch)."""
        entering = [c for c in changes if _ops.enters_key_scope(c[0], c[1])]
        if entering:
            for old, new, event in entering:
                await conn.execute(self._q["yield_key"], {"id": new.id,
                                                          "status": new.status.value})
                await self._write_back(conn, [(old, new, event)])
            changes = [c for c in changes if not _ops.enters_key_scope(c[0], c[1])]
        await self._write_back(conn, changes)

    async def _write_back(self, conn: psycopg.AsyncConnection[Any],
                          changes: Sequence[tuple[Task, Task, str]]) -> None:
        if not changes:
            return
        rows = [{
            "id": new.id, "expected": old.version, "status": new.status.value,
            "priority": new.priority, "run_at": new.run_at, "updated_at": new.updated_at,
            "started_at": new.started_at, "finished_at": new.finished_at,
            "attempts": new.attempts, "rescues": new.rescues,
            "pickup_deadline": new.pickup_deadline, "worker": _text(new.worker),
            "lease_until": new.lease_until, "token": new.token,
            "abort_requested": _text(new.abort_requested),
            "progress": new.progress.to_json() if new.progress else None,
            "result": new.result, "error": new.error.to_json() if new.error else None,
            "errors": [e.to_json() for e in new.errors], "reason": _text(new.reason),
            "version": new.version, "event": event,
        } for old, new, event in changes]
        cur = await conn.execute(self._q["save_tasks"], {"rows": _dumps(rows),
                                                         "origin": self.instance_id})
        done = {r[0] for r in await cur.fetchall()}
        if len(done) != len(changes):  # pragma: no cover - rows are locked by the caller
            raise StorageError("tasks changed during an update: " + ", ".join(
                old.id for old, _, _ in changes if old.id not in done))

    async def _rows(self, conn: psycopg.AsyncConnection[Any], query: str,
                    params: Mapping[str, Any] | Sequence[Any] | None = None) -> list[Any]:
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(query, params)
        return await cur.fetchall()

    async def _locked(self, conn: psycopg.AsyncConnection[Any], task_id: str) -> Task:
        if _no_such_id(task_id):
            raise TaskNotFound(task_id)
        rows = await self._rows(conn, self._q["lock_task"], {"id": task_id})
        if not rows:
            raise TaskNotFound(task_id)
        return row_to_task(rows[0], decoded=True)

    # -- tasks --------------------------------------------------------------------

    async def add(self, specs: Sequence[TaskSpec]) -> list[AddResult]:
        if not specs:
            return []
        for attempt in range(3):
            try:
                async with self._conn() as conn:
                    return await self._add_on(conn, specs, self.instance_id)
            except _Retry:
                if attempt == 2:
                    raise StorageError("could not add tasks: deadlocked three times with "
                                       "concurrent adds; try again") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def add_in(self, conn: psycopg.AsyncConnection[Any] | psycopg.Connection[Any],
                     specs: Sequence[TaskSpec | tuple[Any, ...]]) -> list[AddResult]:
        """Add tasks inside the caller's own transaction on ``conn`` (a psycopg
        ``AsyncConnection`` or ``Connection`` to the same database): they exist if
        and only if that transaction commits, and workers see them (and are woken)
        at the commit. On a sync ``Connection`` each statement runs in a worker
        thread, so the event loop is not blocked meanwhile.

        ``specs`` are :class:`TaskSpec` objects or ``(action, payload)`` /
        ``(action, payload, options)`` tuples with the options of ``Conveyor.add``.
        """
        raw = conn
        if isinstance(conn, psycopg.Connection):
            enter = "with conn.transaction():"
            # duck-typed: the awaitable methods the add path uses (see _pgsync)
            conn = cast("psycopg.AsyncConnection[Any]", SyncConnection(conn))
        elif isinstance(conn, psycopg.AsyncConnection):
            enter = "async with conn.transaction():"
        else:
            raise ConfigurationError(
                "add_in() needs a psycopg Connection or AsyncConnection, not "
                f"{type(conn).__module__}.{type(conn).__qualname__}")
        if conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            raise ConfigurationError(
                f"add_in() needs a connection inside a transaction: use `{enter}` "
                "(or a connection without autocommit)")
        if conn.info.encoding != "utf-8":
            raise ConfigurationError(
                f"add_in() needs a connection whose client_encoding is UTF8, not "
                f"{conn.info.parameter_status('client_encoding')!r}: connect with "
                "client_encoding=UTF8 (or SET client_encoding TO 'UTF8')")
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            # psycopg's own InFailedSqlTransaction said only "commands ignored"
            raise ConfigurationError(
                "add_in() needs a transaction that has not failed: an earlier statement "
                "of yours failed, so the server ignores every command until you roll "
                "back (nothing was added)")
        if self._dbname is not None:
            # the name the server gives, not the one asked for (a pooler's alias)
            dbname = self._callers_dbnames.get(raw)
            if dbname is None:
                dbname = self._callers_dbnames[raw] = await _current_database(conn)
            if dbname != self._dbname:
                # its tasks would be stored where this app's workers never look
                raise ConfigurationError(
                    f"add_in() needs a connection to this storage's database "
                    f"{self._dbname!r}, not {dbname!r}")
        built = [s if isinstance(s, TaskSpec) else _build(s) for s in specs]
        if not built:
            return []
        try:
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                # no autocommit, no statement yet: open the caller's transaction now,
                # else psycopg would make our inner transaction() blocks commit it
                await conn.execute("SELECT 1")
            # announced at the commit, through the feed, in this process too
            return await self._add_on(conn, built, self.instance_id + _TX_ORIGIN)
        except _Retry:
            raise StorageError("could not add tasks: deadlock with a concurrent add; the "
                               "transaction is aborted: run it again") from None
        except psycopg.errors.UndefinedTable as exc:
            raise SchemaError(f'conveyor schema "{self.schema}" is missing: run '
                              f"`conveyor migrate` ({_first_line(exc)})") from None

    async def _add_on(self, conn: psycopg.AsyncConnection[Any], specs: Sequence[TaskSpec],
                      origin: str) -> list[AddResult]:
        if len({spec.id for spec in specs}) != len(specs):
            raise StorageError("could not add tasks: a task with this id already exists")
        try:
            if all(spec.unique_key is None for spec in specs):
                return await self._add_plain(conn, lambda start, stop: specs[start:stop],
                                             len(specs), origin)
            now = time.time()
            several = len(specs) > 1
            _check_conditions(specs, 0, several)
            tasks = [_ops.new_task(spec, now) for spec in specs]
            rows = [_insert_row(task) for task in tasks]
            _check_nul(_pg_json(rows), rows, 0, several)
            async with conn.transaction():
                return await self._add_unique(conn, specs, tasks, rows, origin)
        except psycopg.errors.DeadlockDetected:
            raise _Retry() from None
        except psycopg.errors.UniqueViolation as exc:
            raise _id_taken(exc) from None

    async def add_streamed(self, build: Callable[[int, int], Sequence[TaskSpec]],
                           n: int) -> list[AddResult]:
        """Add ``n`` new tasks without unique keys, all or none, where ``build(start,
        stop)`` validates and returns the specs of items ``start`` to ``stop``: each
        part is built while the server inserts the previous one (``Conveyor.add_many``
        of plain items uses it). A ``build`` error rolls everything back."""
        async with self._conn() as conn:
            return await self._add_plain(conn, build, n, self.instance_id)

    async def _add_plain(self, conn: psycopg.AsyncConnection[Any],
                         build: Callable[[int, int], Sequence[TaskSpec]],
                         n: int, origin: str) -> list[AddResult]:
        """Insert ``n`` tasks without unique keys: one statement, or above ``_ADD_CHUNK``
        statements that overlap their building (:meth:`_insert_overlapped`) in one
        transaction."""
        now = time.time()
        try:
            if n <= _ADD_CHUNK:
                tasks, text = _insert_text(build(0, n), now, 0, n > 1)
                await conn.execute(self._q["insert_tasks"], {"rows": text, "origin": origin})
            else:
                async with conn.transaction():
                    tasks = await self._insert_overlapped(conn, build, n, now, origin)
        except psycopg.errors.UniqueViolation as exc:
            raise _id_taken(exc) from None
        return [AddResult(task, True) for task in tasks]

    async def _insert_overlapped(self, conn: psycopg.AsyncConnection[Any],
                                 build: Callable[[int, int], Sequence[TaskSpec]], n: int,
                                 now: float, origin: str) -> list[Task]:
        """Insert ``n`` tasks as statements of ``_ADD_CHUNK`` rows inside the caller's
        transaction, building each statement's rows (``build(start, stop)`` gives the
        specs) while the server runs the one before: a bulk add's Python and the
        server's insert overlap."""
        tasks: list[Task] = []
        pending: asyncio.Task[Any] | None = None
        query = self._q["insert_tasks"]
        try:
            for start in range(0, n, _ADD_CHUNK):
                specs = build(start, min(n, start + _ADD_CHUNK))
                if len(specs) != min(n, start + _ADD_CHUNK) - start:
                    raise StorageError(f"build({start}, ...) gave {len(specs)} specs")
                chunk, text = _insert_text(specs, now, start, n > 1)
                tasks.extend(chunk)
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(
                    conn.execute(query, {"rows": text, "origin": origin}))
                await asyncio.sleep(0)  # the statement goes out before the next is built
            assert pending is not None
            await pending
            pending = None
        finally:
            if pending is not None:  # a later part failed to build: let this one end
                with contextlib.suppress(Exception):
                    await pending
        return tasks

    async def _add_unique(self, conn: psycopg.AsyncConnection[Any], specs: Sequence[TaskSpec],
                          tasks: list[Task], rows: list[list[Any]],
                          origin: str) -> list[AddResult]:
        keys = list({s.unique_key for s in specs if s.unique_key is not None})
        existing = await self._holders(conn, keys)
        out: list[AddResult | None] = [None] * len(specs)
        batch: dict[str, int] = {}  # key -> the item of this call that takes it
        copies: dict[int, int] = {}  # a later item of that key -> the one taking it
        pending: list[int] = []
        for i, spec in enumerate(specs):
            key = spec.unique_key
            if key is None:
                pending.append(i)
                continue
            # the rule over the stored tasks and the one this call adds before it, as
            # if the items were added one by one (the others do so)
            first = tasks[batch[key]] if key in batch else None
            dup = key_holder([*existing.get(key, ()), *([first] if first else [])],
                             spec.unique_scope)
            if dup is not None and dup is first:
                copies[i] = batch[key]
                continue
            if dup is not None:
                out[i] = AddResult(dup, created=False)
                continue
            batch.setdefault(key, i)
            pending.append(i)
        for _ in range(5):
            if not pending:
                break
            # in key order: concurrent batches then wait for each other's keys in one
            # order, and never deadlock
            pending.sort(key=lambda i: (specs[i].unique_key is not None, specs[i].unique_key or ""))
            inserted = {r[0] for r in await self._rows(conn, self._q["insert_unique_tasks"], {
                "rows": _pg_json([rows[i] for i in pending]), "origin": origin})}
            missed = [i for i in pending if tasks[i].id not in inserted]
            for i in pending:
                if tasks[i].id in inserted:
                    out[i] = AddResult(tasks[i], created=True)
            pending = []
            if not missed:
                break
            # a concurrent add took the key after we looked: return its task
            holders = await self._holders(conn, [specs[i].unique_key or "" for i in missed])
            for i in missed:
                spec = specs[i]
                dup = key_holder(holders.get(spec.unique_key or "", ()), spec.unique_scope)
                if dup is not None:
                    out[i] = AddResult(dup, created=False)
                else:  # it went away meanwhile: try again
                    pending.append(i)
        for i, taker in copies.items():
            # the task its first item got: the new one, or, when a concurrent add took
            # the key meanwhile, that add's (the first's own task was never stored)
            taken = out[taker]
            out[i] = None if taken is None else AddResult(taken.task, created=False)
        if pending or any(r is None for r in out):
            raise StorageError("could not add tasks: unique keys kept changing; try again")
        return [r for r in out if r is not None]

    async def _holders(self, conn: psycopg.AsyncConnection[Any], keys: Sequence[str]
                       ) -> dict[str, list[Task]]:
        found: dict[str, list[Task]] = {}
        if not keys:
            return found
        cur = conn.cursor(row_factory=tuple_row)
        _our_json(cur)  # add_in: the caller's connection may load jsonb otherwise
        await cur.execute(self._q["tasks_with_keys"], {"keys": list(keys)})
        for row in await cur.fetchall():
            task = row_to_task(row, decoded=True)
            found.setdefault(task.unique_key or "", []).append(task)
        return found

    async def get(self, task_id: str) -> Task | None:
        if _no_such_id(task_id):
            return None
        async with self._conn() as conn:
            rows = await self._rows(conn, self._q["get_task"], {"id": task_id})
        return row_to_task(rows[0], decoded=True) if rows else None

    async def get_many(self, task_ids: Sequence[str]) -> list[Task]:
        task_ids = [i for i in task_ids if not _no_such_id(i)]
        if not task_ids:
            return []
        async with self._conn() as conn:
            rows = await self._rows(conn, self._q["get_tasks"], {"ids": list(task_ids)})
        return [row_to_task(r, decoded=True) for r in rows]

    async def key_holders(self, wanted: Sequence[tuple[str, Sequence[Status]]]
                          ) -> list[Task | None]:
        keys = sorted({key for key, _ in wanted if not _no_such_id(key)})  # NUL: none has it
        found: dict[str, list[Task]] = {}
        if keys:
            async with self._conn() as conn:
                found = await self._holders(conn, keys)
        return [key_holder(found.get(key, ()), scope) for key, scope in wanted]

    async def find(self, query: Query) -> list[Task]:
        where, params = compile_postgres(query.filter)
        order, order_params = compile_sort_postgres(query.sort)
        text = (f'SELECT * FROM "{self.schema}".tasks WHERE {where} ORDER BY {order} '
                "LIMIT %s OFFSET %s")
        async with self._conn() as conn:
            rows = await self._rows(conn, text, [*params, *order_params, query.limit,
                                                 query.skip])
        return [row_to_task(r, decoded=True) for r in rows]

    async def count(self, where: Filter) -> int:
        text, params = compile_postgres(where)
        async with self._conn() as conn:
            rows = await self._rows(conn, f'SELECT count(*) FROM "{self.schema}".tasks '
                                          f"WHERE {text}", params)
        return int(rows[0][0])

    async def stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        async with self._conn() as conn:
            for action, status, n in await self._rows(conn, self._q["stats"]):
                out.setdefault(action, {})[status] = int(n)
        return out

    async def delete(self, task_ids: Sequence[str]) -> list[str]:
        ids = [i for i in dict.fromkeys(task_ids) if not _no_such_id(i)]
        if not ids:
            return []
        async with self._conn() as conn, conn.transaction():
            await conn.execute(self._q["set_origin"], {"origin": self.instance_id})
            deleted = {r[0] for r in await self._rows(conn, self._q["delete_finished"],
                                                      {"ids": ids})}
        return [i for i in ids if i in deleted]

    # -- running ------------------------------------------------------------------

    async def claim(self, worker: str, actions: Sequence[str], limit: int, lease: float,
                    limits: ClaimLimits | None = None) -> list[Task]:
        if limit <= 0 or not actions:
            return []
        wanted = list(dict.fromkeys(actions))
        per_action = {a: n for a, n in (limits.per_action if limits else {}).items()
                      if a in wanted}
        claimed: list[Task] = []
        expire = False
        async with self._conn() as conn:
            if not per_action:
                now = time.time()
                params: dict[str, Any] = {
                    "worker": worker, "token": new_token(), "lease_until": now + lease,
                    "now": now, "origin": self.instance_id, "limit": limit}
                if len(wanted) == 1:
                    params["action"] = wanted[0]
                    rows = await self._rows(conn, self._q["claim_one_action"], params)
                else:
                    params["actions"] = wanted
                    rows = await self._rows(conn, self._q["claim_actions"], params)
                flags = 0
                for row in rows:
                    if row[0] is None:
                        flags = row[-1]
                    else:
                        claimed.append(row_to_task(row, decoded=True))
                expire = bool(flags & 2)
                careful = bool(flags & 1) and len(claimed) < limit
            else:
                careful = True
            if careful:
                more = await self._claim_carefully(conn, worker, wanted, limit - len(claimed),
                                                   lease, per_action)
                claimed.extend(more)
            if expire:
                await self._expire_pickups(conn)
        claimed.sort(key=lambda t: (t.priority, t.run_at, t.id))
        return claimed

    async def _expire_pickups(self, conn: psycopg.AsyncConnection[Any]) -> list[str]:
        expired: list[str] = []
        while True:
            async with conn.transaction():
                now = time.time()
                rows = await self._rows(conn, self._q["pickup_expired"], {"now": now})
                changes = []
                for row in rows:
                    task = row_to_task(row, decoded=True)
                    changes.append((task, _ops.pickup_expired(task, now), "expired"))
                await self._save(conn, changes)
            expired.extend(old.id for old, _, _ in changes)
            if len(rows) < 1000:
                return expired

    async def _claim_carefully(self, conn: psycopg.AsyncConnection[Any], worker: str,
                               actions: list[str], limit: int, lease: float,
                               per_action: dict[str, int]) -> list[Task]:
        """Claims that honour concurrency conditions and per-action limits.

        Inside one transaction: advisory locks on the limited actions (and on
        conditions, when a conditional task comes up) serialise these claims
        across all workers; the counts are read after the locks are held, and
        the tasks chosen are updated in the same transaction, so no two claimers
        can both see room for the last slot. Tasks without conditions are
        claimed by the fast path concurrently; that is safe, since nothing about
        them is checked (a serial order exists in which they came first or last).
        """
        token = new_token()
        async with conn.transaction():
            keys = sorted(_lock_key("action", a) for a in per_action)
            idle = _lock_idle(lease)
            if keys:
                await conn.execute(self._q["advisory_locks"], {"keys": keys, "idle": idle})
            budget: dict[str, int] = {}
            if per_action:
                running = dict(await self._rows(conn, self._q["running_per_action"],
                                                {"actions": list(per_action)}))
                budget = {a: cap - int(running.get(a, 0)) for a, cap in per_action.items()}
            open_actions = [a for a in actions if budget.get(a, 1) > 0]
            if not open_actions:
                return []
            conditions = _ConditionCounts(self, conn, idle)
            accepted: list[tuple[Task, Task]] = []
            claimed: list[Task] = []
            now = time.time()
            unevaluable: list[tuple[Task, Task, str]] = []
            async for task in self._ready_in_order(conn, open_actions, now, limit):
                if budget.get(task.action, 1) <= 0:
                    continue
                if task.concurrency:
                    try:
                        allowed = await conditions.allow(task)
                    except QueryError as exc:  # would fail every claim while it is queued
                        unevaluable.append((task, _ops.condition_failed(task, now, str(exc)),
                                            "condition_failed"))
                        continue
                    if not allowed:
                        continue
                after = _ops.claimed(task, worker, token, now, lease)
                accepted.append((task, after))
                conditions.apply(task, after)
                if task.action in budget:
                    budget[task.action] -= 1
                if len(accepted) >= limit:
                    break
            if accepted:
                rows = await self._rows(conn, self._q["claim_ids"], {
                    "ids": [t.id for t, _ in accepted], "worker": worker, "token": token,
                    "lease_until": now + lease, "now": now, "origin": self.instance_id})
                claimed = [row_to_task(r, decoded=True) for r in rows]
            if unevaluable:
                await self._save(conn, unevaluable)
            return claimed

    async def _ready_in_order(self, conn: psycopg.AsyncConnection[Any], actions: list[str],
                              now: float, limit: int) -> AsyncIterator[Task]:
        """Ready tasks of several actions, merged in claim order (priority, run_at, id),
        a page per action at a time along each action's ready index."""
        page = max(2 * limit, 64)
        ninf = float("-inf")
        after: dict[str, tuple[float, float, str]] = {a: (ninf, ninf, "") for a in actions}
        buffered: list[Task] = []
        left: dict[str, int] = dict.fromkeys(actions, 0)
        open_actions = list(actions)
        while True:
            fetch = [a for a in open_actions if not left[a]]
            if fetch:
                rows = await self._rows(conn, self._q["claim_candidates"], {
                    "actions": fetch, "after_priority": [after[a][0] for a in fetch],
                    "after_run_at": [after[a][1] for a in fetch],
                    "after_id": [after[a][2] for a in fetch], "now": now, "page": page})
                got: dict[str, int] = dict.fromkeys(fetch, 0)
                for row in rows:
                    task = row_to_task(row, decoded=True)
                    buffered.append(task)
                    got[task.action] += 1
                    left[task.action] += 1
                    key = (task.priority, task.run_at, task.id)
                    if key > after[task.action]:
                        after[task.action] = key
                for action in fetch:
                    if got[action] < page:
                        open_actions.remove(action)
            if not buffered:
                return
            buffered.sort(key=lambda t: (t.priority, t.run_at, t.id))
            bound = min((after[a] for a in open_actions), default=None)
            taken = 0
            for task in buffered:
                if bound is not None and (task.priority, task.run_at, task.id) > bound:
                    break
                taken += 1
                left[task.action] -= 1
                yield task
            del buffered[:taken]

    async def heartbeat(self, worker: str, leases: Sequence[Lease], lease: float) -> HeartbeatReply:
        now = time.time()
        async with self._conn() as conn:
            rows = await self._rows(conn, self._q["heartbeat"], {
                "ids": [item.task_id for item in leases],
                "tokens": [item.token for item in leases],
                "lease_until": now + lease, "now": now, "worker": worker})
        held: set[str] = set()
        aborts: dict[str, str] = {}
        known = False
        for task_id, abort_requested in rows:
            if task_id is None:
                known = True
                continue
            held.add(task_id)
            if abort_requested is not None:
                aborts[task_id] = abort_requested
        lost = frozenset(item.task_id for item in leases if item.task_id not in held)
        return HeartbeatReply(lost, aborts, known=known)

    async def update_progress(self, updates: Sequence[tuple[Lease, Progress]]) -> list[str]:
        if not updates:
            return []
        rows = [{"id": item.task_id, "token": item.token, "progress": progress.to_json()}
                for item, progress in updates]
        async with self._conn() as conn:
            done = {(r[0], r[1]) for r in await self._rows(conn, self._q["update_progress"], {
                "rows": _dumps(rows), "now": time.time(), "origin": self.instance_id})}
        return [item.task_id for item, _ in updates if (item.task_id, item.token) not in done]

    async def finish(self, worker: str, completions: Sequence[Completion]) -> list[str]:
        if not completions:
            return []
        completions, repeated = _ops.first_per_task(completions)
        return await self._finish(completions) + repeated

    async def _finish(self, completions: Sequence[Completion]) -> list[str]:
        rows = []
        for c in completions:
            t = c.transition
            rows.append({
                "id": c.task_id, "token": c.token, "status": t.status.value,
                "run_at": t.run_at if t.status is Status.QUEUED else None,
                "result": t.result, "error": None if t.error is None else t.error.to_json(),
                "reason": _text(t.reason), "refund": 1 if t.refund_attempt else 0,
                "progress": None if c.progress is None else c.progress.to_json(),
                "event": c.event or _ops.completion_event(t),
            })
        async with self._conn() as conn:
            try:
                done = {(r[0], r[1]) for r in await self._rows(conn, self._q["finish_tasks"], {
                    "rows": _dumps(rows), "now": time.time(), "origin": self.instance_id})}
            except psycopg.errors.UniqueViolation:
                # a task going back into its key's scope while another took the key: one
                # by one, each giving its key up if another task holds it by then
                done = set()
                async with conn.transaction():
                    for row in sorted(rows, key=lambda r: str(r["id"])):  # locks in id order
                        await conn.execute(self._q["yield_key"],
                                           {"id": row["id"], "status": row["status"]})
                        done.update((r[0], r[1]) for r in await self._rows(
                            conn, self._q["finish_tasks"], {
                                "rows": _dumps([row]), "now": time.time(),
                                "origin": self.instance_id}))
            again = {c.task_id: c for c in completions if (c.task_id, c.token) not in done
                     and c.transition.status is Status.QUEUED}
            if again:  # still held? then an abort was requested: it wins
                async with conn.transaction():
                    now = time.time()
                    rows = await self._rows(conn, self._q["held_tasks"], {"ids": list(again)})
                    tasks = [row_to_task(row, decoded=True) for row in rows]
                    await self._save(conn, [change for t in tasks if (
                        change := _ops.finished_overruled(t, again[t.id], now))])
        return [c.task_id for c in completions if (c.task_id, c.token) not in done]

    async def release(self, worker: str, leases: Sequence[Lease]) -> list[str]:
        if not leases:
            return []
        tokens = {item.task_id: item.token for item in leases}
        async with self._conn() as conn, conn.transaction():
            now = time.time()
            changes = []
            for row in await self._rows(conn, self._q["held_tasks"], {"ids": list(tokens)}):
                task = row_to_task(row, decoded=True)
                if task.token != tokens[task.id]:
                    continue
                if task.abort_requested is not None:
                    new, event = _ops.rescued(task, now, max_rescues=1 << 30)
                else:
                    new, event = _ops.released(task, now), "released"
                changes.append((task, new, event))
            await self._save(conn, changes)
        done = {old.id for old, _, _ in changes}
        return [item.task_id for item in leases if item.task_id in done]

    async def recover(self, max_rescues: int) -> RecoverReport:
        groups: dict[str, list[str]] = {"rescued": [], "lost": [], "lost_aborted": []}
        async with self._conn() as conn:
            expired = await self._expire_pickups(conn)
            while True:
                async with conn.transaction():
                    now = time.time()
                    rows = await self._rows(conn, self._q["expired_leases"], {"now": now})
                    changes = []
                    for row in rows:
                        task = row_to_task(row, decoded=True)
                        new, event = _ops.rescued(task, now, max_rescues)
                        changes.append((task, new, event))
                    await self._save(conn, changes)
                for old, _, event in changes:
                    groups[event].append(old.id)
                if len(rows) < 1000:
                    break
        return RecoverReport(tuple(groups["rescued"]), tuple(groups["lost"]),
                             tuple(groups["lost_aborted"]), tuple(expired))

    async def next_run_at(self, actions: Sequence[str]) -> float | None:
        if not actions:
            return None
        async with self._conn() as conn:
            rows = await self._rows(conn, self._q["next_run_at"], {"actions": list(actions)})
        value = rows[0][0] if rows else None
        return None if value is None else float(value)

    # -- control ------------------------------------------------------------------

    async def abort(self, task_id: str, reason: str) -> Task:
        async with self._conn() as conn, conn.transaction():
            task = await self._locked(conn, task_id)
            new, event = _ops.abort(task, _text(reason) or "", time.time())
            if event:
                await self._save(conn, [(task, new, event)])
        return new

    async def prioritize(self, task_id: str, priority: float) -> Task:
        async with self._conn() as conn, conn.transaction():
            task = await self._locked(conn, task_id)
            new = _ops.prioritized(task, priority, time.time())
            await self._save(conn, [(task, new, "prioritized")])
        return new

    async def retry(self, task_id: str, run_at: float | None = None) -> Task:
        async with self._conn() as conn:
            try:
                async with conn.transaction():
                    now = time.time()
                    task = await self._locked(conn, task_id)
                    new = _ops.retried(task, now if run_at is None else run_at, now)
                    if task.unique_key is not None and Status.QUEUED in task.unique_scope:
                        rows = await self._rows(conn, self._q["live_duplicate"], {
                            "key": task.unique_key, "id": task.id,
                            "scope": encode_scope(task.unique_scope)})
                        if rows:
                            raise DuplicateTask(f"task {rows[0][0]} already holds unique "
                                                    f"key {task.unique_key!r}", task)
                    # not _save: its yield of the key to an add committed since the
                    # check is for a worker's retry; the caller's is refused (the
                    # unique index: UniqueViolation, below)
                    await self._write_back(conn, [(task, new, "retried")])
            except psycopg.errors.UniqueViolation:
                raise DuplicateTask(
                    f"another task already holds unique key {task.unique_key!r}", task) from None
        return new

    # -- logs ---------------------------------------------------------------------

    async def append_logs(self, logs: Sequence[NewLog]) -> list[int | None]:
        if not logs:
            return []
        rows = [{"task_id": item.task_id, "ts": item.ts, "level": int(item.level),
                 "message": item.message, "data": item.data, "token": item.token}
                for item in logs]
        ids = list(dict.fromkeys(item.task_id for item in logs))
        async with self._conn() as conn:
            [(kept, seqs)] = await self._rows(conn, self._q["append_logs"], {
                "rows": _dumps(rows), "ids": ids, "origin": self.instance_id,
                "now": time.time()})
        at = dict(zip(kept or (), seqs or (), strict=True))
        return [None if (seq := at.get(n)) is None else int(seq)
                for n in range(1, len(logs) + 1)]

    async def read_logs(self, task_id: str, after_seq: int = 0,
                        max_level: LogLevel = LogLevel.DEBUG,
                        limit: int | None = None) -> list[LogRecord]:
        if _no_such_id(task_id):
            return []
        async with self._conn() as conn:
            rows = await self._rows(conn, self._q["read_logs"], {
                "task_id": task_id, "after_seq": after_seq, "min_level": int(max_level),
                "limit": limit})
        return [LogRecord(r[0], int(r[1]), r[2], LogLevel(r[3]), r[4], r[5]) for r in rows]

    # -- workers ------------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        params = {"id": info.id, "host": _text(info.host), "pid": info.pid,
                  "actions": _dumps(list(info.actions)), "concurrency": info.concurrency,
                  "running": info.running, "started_at": info.started_at,
                  "last_seen": info.last_seen, "info": _dumps(dict(info.info))}
        async with self._conn() as conn:
            await conn.execute(self._q["upsert_worker"], params)

    async def unregister_worker(self, worker_id: str) -> None:
        async with self._conn() as conn:
            await conn.execute(self._q["delete_worker"], {"id": worker_id})

    async def list_workers(self) -> list[WorkerInfo]:
        async with self._conn() as conn:
            rows = await self._rows(conn, self._q["list_workers"])
        return [WorkerInfo(id=r[0], host=r[1], pid=r[2], actions=tuple(r[3]), concurrency=r[4],
                           running=r[5], started_at=r[6], last_seen=r[7], info=r[8])
                for r in rows]

    async def forget_workers(self) -> list[str]:
        async with self._conn() as conn:
            return [r[0] for r in await self._rows(conn, self._q["forget_workers"],
                                                   {"now": time.time()})]

    # -- retention ----------------------------------------------------------------

    async def prune(self, older_than: float | None, batch: int = 500) -> int:
        total = 0
        batch = max(1, int(batch))
        async with self._conn() as conn:
            while older_than is not None:
                # no origin set: the feed's deletions name no writer, so that every
                # process, this one too, announces them (as on every backend)
                async with conn.transaction():
                    rows = await self._rows(conn, self._q["prune_finished"],
                                            {"before": older_than, "batch": batch})
                n = int(rows[0][0])
                total += n
                if n < batch:
                    break
            feed_before = time.time() - FEED_RETENTION
            while True:
                cur = await conn.execute(self._q["prune_changes"],
                                         {"before": feed_before, "batch": batch})
                if cur.rowcount < batch:
                    break
        return total


class _Retry(Exception):
    """A transaction lost a deadlock and may simply run again."""


class _ConditionCounts:
    """Counts of tasks matching the concurrency conditions met during one careful claim.

    Each condition is counted in SQL once (after the advisory lock is held); the
    tasks claimed in this transaction are then applied in Python with the query
    evaluator (which agrees with the SQL compiler on every filter), so later
    candidates see the earlier ones of the same batch.
    """

    def __init__(self, storage: PostgresStorage, conn: psycopg.AsyncConnection[Any],
                 idle: str) -> None:
        self.storage = storage
        self.conn = conn
        self.idle = idle
        self.locked = False
        self.counts: dict[tuple[tuple[str, ...], str], int] = {}
        self.filters: dict[tuple[tuple[str, ...], str], Filter] = {}
        self.accepted: list[tuple[Task, Task]] = []

    @staticmethod
    def key(cond: Any) -> tuple[tuple[str, ...], str]:
        return tuple(sorted(s.value for s in cond.scope)), _json.dumps(cond.query)

    def inside(self, key: tuple[tuple[str, ...], str], task: Task) -> int:
        return int(task.status.value in key[0] and matches(self.filters[key], task))

    async def allow(self, task: Task) -> bool:
        if not self.locked:
            # one lock for every conditional claim: conditions may overlap in ways
            # no per-condition key can see (a task can match another task's condition)
            await self.conn.execute(self.storage._q["advisory_locks"],
                                    {"keys": [_lock_key("conditions", self.storage.schema)],
                                     "idle": self.idle})
            self.locked = True
        missing = []
        for cond in task.concurrency:
            key = self.key(cond)
            if key not in self.counts and key not in missing:
                missing.append(key)
                self.filters[key] = parse_filter(cond.query)
        if missing:
            parts: list[str] = []
            params: list[Any] = []
            for key in missing:
                where, args = compile_postgres(self.filters[key])
                parts.append(f'(SELECT count(*) FROM "{self.storage.schema}".tasks '
                             f"WHERE status = ANY(%s::text[]) AND ({where}))")
                params.extend([list(key[0]), *args])
            row = (await self.storage._rows(self.conn, "SELECT " + ", ".join(parts), params))[0]
            for key, n in zip(missing, row, strict=True):
                # the database does not see this batch's claims yet: add them
                self.counts[key] = int(n)
                self._add(key, self.accepted)
        for cond in task.concurrency:
            key = self.key(cond)
            if self.counts[key] >= _UNCOUNTED:
                return False  # not known in this claim: the task waits for the next one
            # a QueryError here is the task's own value stuck in its own condition's
            # $regex: the caller fails the task
            if self.counts[key] - self.inside(key, task) >= cond.limit:
                return False
        return True

    def apply(self, old: Task, new: Task) -> None:
        self.accepted.append((old, new))
        for key in self.counts:
            self._add(key, [(old, new)])

    def _add(self, key: tuple[tuple[str, ...], str], moves: list[tuple[Task, Task]]) -> None:
        """Count ``moves`` (claimed tasks, before and after) in ``key``'s count; a
        ``$regex`` stuck on one of their values (Python's matcher gives up after a
        second) leaves the count unknown for the rest of this claim."""
        try:
            self.counts[key] += sum(self.inside(key, new) - self.inside(key, old)
                                    for old, new in moves)
        except QueryError:
            self.counts[key] = _UNCOUNTED


async def _on_loop(loop: asyncio.AbstractEventLoop, current: asyncio.AbstractEventLoop | None,
                   work: Coroutine[Any, Any, None], timeout: float) -> None:
    """Run ``work`` on ``loop`` (this one, or another thread's, waiting at most
    ``timeout`` seconds for it); dropped when that loop no longer runs."""
    if loop is current:
        await work
    elif not loop.is_closed() and loop.is_running():
        fut = asyncio.run_coroutine_threadsafe(work, loop)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wrap_future(fut)
        except (TimeoutError, RuntimeError):  # pragma: no cover
            pass
    else:
        work.close()


def _asdict(o: PgOptions) -> dict[str, Any]:
    return {name: getattr(o, name) for name in PgOptions.__dataclass_fields__}


def _insert_text(specs: Sequence[TaskSpec], now: float, start: int = 0,
                 several: bool = False) -> tuple[list[Task], str]:
    """The new tasks of ``specs`` (items ``start``... of the call; ``several`` when
    the call has more than one, so that errors name the item) and the JSON rows of
    the insert_tasks query."""
    _check_conditions(specs, start, several)
    tasks = [_ops.new_task(spec, now) for spec in specs]
    rows = [_insert_row(task) for task in tasks]
    text = _pg_json(rows)
    _check_nul(text, rows, start, several)
    return tasks, text


def _item_error(exc: ValidationError, index: int, several: bool) -> ValidationError:
    from .._specs import in_batch

    return in_batch(exc, index) if several else exc


def _check_conditions(specs: Sequence[TaskSpec], start: int, several: bool) -> None:
    """Refuse a concurrency condition whose query PostgreSQL cannot run (a ``$regex``
    it cannot express): stored, it would fail every conditional claim."""
    for i, spec in enumerate(specs):
        for j, cond in enumerate(spec.concurrency or ()):
            try:
                _condition_sql(_json.dumps(cond.query), j)
            except QueryError as exc:
                raise _item_error(exc, start + i, several) from None


@functools.lru_cache(maxsize=256)
def _condition_sql(query: str, index: int) -> None:
    compile_postgres(parse_filter(_json.loads(query), where=f"concurrency[{index}].query"))


def _check_nul(text: str, rows: Sequence[Sequence[Any]] = (), start: int = 0,
               several: bool = False) -> None:
    if not _has_nul(text):
        return
    refusal = "PostgreSQL cannot store the NUL character (\\u0000)"
    for i, row in enumerate(rows):
        for name, value in zip(_ROW_FIELDS, row, strict=True):
            if _has_nul(_json.dumps(value)):
                label = "unique key" if name == "unique_key" else name
                raise _item_error(ValidationError(
                    f"{name}: {refusal}: remove it from the {label}"), start + i, several)
    raise ValidationError(f"{refusal}: remove it from the payload, the tags and the "
                          "unique key")


def _lock_idle(lease: float) -> str:
    """How long a claim transaction holding advisory locks may wait for its client
    (``idle_in_transaction_session_timeout``, in ms): the claim's lease, at least
    ``_LOCK_IDLE_FLOOR``. A claimer quiet for longer is paused or cut off, and its
    claim would be worthless by then anyway."""
    return f"{int(max(lease, _LOCK_IDLE_FLOOR) * 1000)}"


def _id_taken(exc: psycopg.errors.UniqueViolation) -> StorageError:
    return StorageError(f"could not add tasks: a task with this id already exists "
                        f"({_first_line(exc)})")


_ROW_FIELDS = ("id", "action", "payload", "priority", "run_at", "created_at", "max_attempts",
               "run_timeout", "pickup_timeout", "pickup_deadline", "backoff", "unique_key",
               "unique_scope", "concurrency", "tags", "parent_id")
"""The task fields of a row of :func:`_insert_row`, in order."""


def _insert_row(task: Task) -> list[Any]:
    """A new task as a row of the insert_tasks query."""
    return [
        task.id, task.action, task.payload, task.priority, task.run_at, task.created_at,
        task.max_attempts, task.run_timeout, task.pickup_timeout, task.pickup_deadline,
        task.backoff.to_json() if task.backoff else None, task.unique_key,
        encode_scope(task.unique_scope),
        [c.to_json() for c in task.concurrency] if task.concurrency else None,
        task.tags, task.parent_id,
    ]


def _build(item: tuple[Any, ...]) -> TaskSpec:
    from .._specs import build_spec

    if not isinstance(item, tuple) or len(item) not in (2, 3) or (
            len(item) == 3 and not isinstance(item[2], Mapping)):
        raise ValidationError("add_in() takes TaskSpec objects or (action, payload) and "
                              "(action, payload, options) tuples")
    return build_spec(item[0], item[1], **(dict(item[2]) if len(item) == 3 else {}))

