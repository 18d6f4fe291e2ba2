"""``conveyor serve`` (the hub) and ``conveyor credentials add/list/revoke``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import click

from conveyor.app import Conveyor
from conveyor.storage import open_storage

from ._base import EXIT_OK, CliError, Duration, db_option, db_url
from ._signals import stop_signals

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from conveyor.hub import HubConfig
    from conveyor.hub._credentials import CredentialStore

T = TypeVar("T")

__all__ = ["credentials_group", "migrate_command", "serve_command"]

CREDENTIALS_ENV = "CONVEYOR_CREDENTIALS"
DEFAULT_CREDENTIALS = "conveyor-credentials.json"

_credentials_option = click.option(
    "--credentials", "credentials_path", metavar="FILE", default=None,
    help=f"The credentials file [env {CREDENTIALS_ENV}; default {DEFAULT_CREDENTIALS}].")


def _public_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from conveyor._hub_url import hub_url_problem
    from conveyor.storage._url import hide_password

    problem = hub_url_problem(value)  # as --hub and HubConfig.public_url are checked
    if problem is not None:
        raise click.BadParameter(f"must be an http:// or https:// URL with a host, not "
                                 f"{hide_password(value)!r} ({problem})")
    return value


def _credentials_file(path: str | None) -> str:
    return path or os.environ.get(CREDENTIALS_ENV, "").strip() or DEFAULT_CREDENTIALS


@click.command("serve", short_help="Run the hub: HTTP API, WebSocket protocol, dashboard.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (bind others only on purpose).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on (0: a free port).")
@click.option("--app", "target", metavar="MODULE:APP", default=None,
              help="Also run the handlers of this Conveyor app in the hub's process "
                   "(its storage is used unless --db is given).")
@click.option("--insecure", is_flag=True,
              help="Accept every client without a credential (every client is an admin).")
@click.option("--public-url", default=None, metavar="URL", callback=_public_url,
              help="The URL clients reach the hub at (for tasks' public_url).")
@click.option("--service-lease", type=Duration("seconds", minimum=0.1), default=30.0,
              show_default=True, metavar="SECONDS",
              help="How long a remote worker's claim lasts without a heartbeat (tasks of a "
                   "hub that died come back after this); at least 0.1.")
@click.option("--delivery", multiple=True, metavar="PATTERN=MODE",
              help="Delivery mode of matching actions: one (the default) or all; repeatable.")
@_credentials_option
@db_option
@click.pass_context
def serve_command(ctx: click.Context, host: str, port: int, target: str | None, insecure: bool,
                  public_url: str | None, service_lease: float, delivery: tuple[str, ...],
                  credentials_path: str | None) -> int:
    """Serve the REST API, the WebSocket protocol and the web dashboard (at /)
    until Ctrl-C or SIGTERM.

    Ctrl-C or SIGTERM stops it gracefully (exit 0); a second one stops it
    without waiting for open requests. With --port 0 a free port is used (the
    first line says which).

    Every route and message needs a credential (see 'conveyor credentials')
    unless --insecure is given. The hub listens on 127.0.0.1 unless --host
    says otherwise.
    """
    from conveyor.hub import HubConfig
    from conveyor.hub._config import is_loopback
    from conveyor.hub._credentials import CredentialStore

    path = _credentials_file(credentials_path)
    modes: dict[str, str] = {}
    for item in delivery:
        pattern, _, mode = item.partition("=")
        if not pattern or mode not in ("one", "all"):
            raise CliError(f"--delivery {item!r}: expected PATTERN=one or PATTERN=all")
        modes[pattern] = mode
    # checked before anything is imported, opened or said (--host '' included)
    config = HubConfig(host=host, port=port, insecure=insecure, credentials_path=path,
                       public_url=public_url, service_lease=service_lease, delivery=modes)
    if target is not None:
        from ._worker import load_app, use_explicit_db

        app = load_app(target)
        use_explicit_db(ctx, app, target)
    else:
        app = Conveyor(db_url(ctx))
    store = None if insecure else CredentialStore(path)
    if insecure and not is_loopback(host):
        click.echo(f"warning: serving on {host} with --insecure: anyone who can reach it "
                   "can add, read and abort tasks", err=True)
    if store is not None and not store.list():
        click.echo(f"warning: no credentials in {path}: create one with "
                   "'conveyor credentials add NAME'", err=True)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def bound(config: HubConfig) -> None:  # the real port, also with --port 0
        shown = f"[{config.host}]" if ":" in config.host else config.host  # IPv6
        click.echo(f"hub on http://{shown}:{config.port} "
                   f"({'insecure' if insecure else 'credentials: ' + path}), "
                   f"storage {app.storage.url}", err=True)

    stopped_by = run_loop(_serve(app, config, store, bound))
    click.echo(f"hub stopped ({stopped_by})", err=True)
    return EXIT_OK


async def _serve(app: Conveyor, config: HubConfig, store: CredentialStore | None,
                 bound: Callable[[HubConfig], None]) -> str:
    """Serve until SIGINT or SIGTERM, then stop gracefully; a second signal stops it
    without waiting for open requests. Returns the name of the first signal."""
    from conveyor.hub._serve import run_hub

    force = asyncio.Event()

    def again(name: str) -> None:
        if not force.is_set():
            click.echo(f"{name}: stopping now, without waiting for open requests", err=True)
            force.set()

    try:
        await app.open()  # a storage that cannot be used is one line, before binding
    except BaseException:
        await app.close()
        raise
    with stop_signals() as stop:
        stop.on_repeat = again
        await run_hub(app, config, credentials=store, stop=stop.event, force=force,
                      bound=bound)
    return stop.name or "stopped"


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the hub on uvloop when it is installed (as uvicorn itself would: it comes
    with ``uvicorn[standard]``), else on asyncio's own loop."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


@click.group("credentials", short_help="Manage the hub's credentials.")
def credentials_group() -> None:
    """Add, list and revoke the credentials the hub accepts.

    A credential has a name, a key (shown once when it is created; only its
    hash is stored), publish, subscribe and read permissions as action
    patterns (mail:*), an optional limit of simultaneous connections, and optionally
    the admin right (abort, retry, prioritize, delete, the dashboard). A
    running hub picks up changes within a second; a revoked key's
    connections are closed.
    """


@credentials_group.command("add")
@click.argument("name")
@click.option("--publish", multiple=True, metavar="PATTERN",
              help="Actions it may publish (add) and read; repeatable; * and ? wildcards.")
@click.option("--subscribe", multiple=True, metavar="PATTERN",
              help="Actions it may work on as a remote worker, and read; repeatable.")
@click.option("--read", multiple=True, metavar="PATTERN",
              help="Actions it may only read (get, find, watch, live queries, stats); "
                   "repeatable.")
@click.option("--admin", is_flag=True, help="May abort, retry, prioritize and delete, and "
              "read every action.")
@click.option("--max-instances", type=click.IntRange(min=1), default=None,
              help="Most simultaneous WebSocket connections.")
@click.option("--json", "as_json", is_flag=True, help="Print the credential and key as JSON.")
@_credentials_option
def credentials_add(name: str, publish: tuple[str, ...], subscribe: tuple[str, ...],
                    read: tuple[str, ...], admin: bool, max_instances: int | None,
                    as_json: bool, credentials_path: str | None) -> int:
    """Create credential NAME and print its key (once: only a hash is kept)."""
    from conveyor.hub._credentials import CredentialStore

    store = CredentialStore(_credentials_file(credentials_path))
    cred, key = store.add(name, publish=publish, subscribe=subscribe, read=read, admin=admin,
                          max_instances=max_instances)
    if as_json:
        click.echo(json.dumps({**cred.public(), "key": key}))
    else:
        click.echo(key)
        click.echo(f"credential {name!r} created in {store.path}; keep the key above, it is "
                   "not shown again", err=True)
    return EXIT_OK


@credentials_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_credentials_option
def credentials_list(as_json: bool, credentials_path: str | None) -> int:
    """List credentials (never their keys)."""
    from conveyor.hub._credentials import CredentialStore

    store = CredentialStore(_credentials_file(credentials_path))
    if not os.path.exists(store.path):
        # An empty list alone would look the same as a file that holds no credential.
        click.echo(f"no credentials file at {store.path}; 'conveyor credentials add' creates "
                   "it", err=True)
    creds = [c.public() for c in store.list()]
    if as_json:
        click.echo(json.dumps(creds))
        return EXIT_OK
    from rich.table import Table

    from ._render import out_console

    table = Table("name", "key id", "publish", "subscribe", "read", "admin", "max instances",
                  "state")
    for c in creds:
        table.add_row(c["name"], c["key_id"], " ".join(c["publish"]) or "-",
                      " ".join(c["subscribe"]) or "-", " ".join(c["read"]) or "-",
                      "yes" if c["admin"] else "no",
                      str(c["max_instances"] or "-"), "revoked" if c["revoked"] else "live")
    out_console().print(table)
    return EXIT_OK


@credentials_group.command("revoke")
@click.argument("name")
@_credentials_option
def credentials_revoke(name: str, credentials_path: str | None) -> int:
    """Revoke credential NAME: its key stops working and its connections close."""
    from conveyor.hub._credentials import CredentialStore

    store = CredentialStore(_credentials_file(credentials_path))
    if not store.revoke(name):
        raise CliError(f"no live credential named {name!r} in {store.path}")
    click.echo(f"credential {name!r} revoked", err=True)
    return EXIT_OK


@click.command("migrate", short_help="Create or upgrade the database schema.")
@db_option
@click.pass_context
def migrate_command(ctx: click.Context) -> int:
    """Create or upgrade the conveyor schema in the database (--db or CONVEYOR_DB).

    Safe to run from several processes at once. SQLite files migrate
    themselves when opened; PostgreSQL databases need this (or ?migrate=true).
    A SQLite file that does not exist yet is created.
    """
    from conveyor.storage import migrate

    url = db_url(ctx)
    if url.lower().startswith("memory:"):
        click.echo(f"{url} needs no migration: it lives only as long as the process "
                   "that opens it")
        return EXIT_OK
    shown = open_storage(url).url  # without the password
    version = asyncio.run(migrate(url))
    click.echo(f"schema version {version} at {shown}")
    return EXIT_OK
