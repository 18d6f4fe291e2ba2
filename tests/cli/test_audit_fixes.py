"""Fixes from the CLI audit: help texts that tell the truth, --db where it means
nothing, every unknown id named, empty sorts, deeply nested JSON, migrate on
memory://, and ``conveyor serve``: the real port, exit 0 after a graceful stop."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.hub._credentials import CredentialStore

from ._support import (
    Background,
    add,
    assert_error,
    clean_env,
    cli,
    count,
    eventually,
    find,
    get,
    run,
)

MISSING = ["01a00000-0000-7000-8000-000000000001", "01a00000-0000-7000-8000-000000000002"]


# -- help texts ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["worker", "demo"])
def test_worker_and_demo_help_say_conveyor_db_is_not_read(command: str) -> None:
    result = cli(command, "--help")
    assert result.code == 0, result
    text = " ".join(result.out.split())
    assert "env CONVEYOR_DB" not in text, text
    assert "$CONVEYOR_DB is not read" in text, text


def test_main_help_names_the_commands_without_conveyor_db() -> None:
    text = " ".join(cli("--help").out.split())
    assert "Every command but credentials takes --db URL" in text, text


# -- credentials and --db ----------------------------------------------------------------


def test_credentials_refuse_db_before_the_command(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "creds.json")
    store.add("ann", publish=["mail:*"])
    result = cli("--db", f"sqlite:///{tmp_path / 'w.db'}", "credentials", "list", "--json",
                 "--credentials", str(store.path), cwd=tmp_path)
    assert_error(result, 2, "'credentials' does not use --db", "--credentials FILE")
    assert result.out == ""
    assert not (tmp_path / "w.db").exists()
    # after the command name it is no option of credentials either
    result = cli("credentials", "list", "--db", "sqlite:///w.db", cwd=tmp_path)
    assert_error(result, 2, "No such option '--db'")
    # without --db it works
    result = cli("credentials", "list", "--json", "--credentials", str(store.path),
                 cwd=tmp_path)
    assert result.code == 0, result
    assert [c["name"] for c in json.loads(result.out)] == ["ann"]


# -- migrate -------------------------------------------------------------------------------


def test_migrate_creates_a_missing_sqlite_file(tmp_path: Path) -> None:
    result = cli("migrate", "--db", "sqlite:///new.db", cwd=tmp_path)
    assert result.code == 0, result
    assert (tmp_path / "new.db").exists()
    assert "schema version" in result.out


def test_migrate_memory_says_it_needs_no_migration(tmp_path: Path) -> None:
    result = cli("migrate", "--db", "memory://", cwd=tmp_path)
    assert result.code == 0, result
    assert result.out.strip() == ("memory:// needs no migration: it lives only as long as "
                                  "the process that opens it")
    assert "schema version 0" not in result.out


# -- delete -----------------------------------------------------------------------------


def test_delete_names_every_unknown_id(db: str, tmp_path: Path) -> None:
    done = add(db, "a:b")
    run(lambda app: app.abort(done.id), db)
    result = cli("delete", MISSING[0], done.id, MISSING[1], "--db", db, cwd=tmp_path)
    assert_error(result, 2, f"no tasks with ids {MISSING[0]}, {MISSING[1]}")
    assert [t.id for t in find(db)] == [done.id]  # nothing deleted
    result = cli("delete", done.id, MISSING[1], "--db", db, cwd=tmp_path)
    assert_error(result, 2, f"no task with id {MISSING[1]}")
    assert count(db) == 1


# -- ls --sort ----------------------------------------------------------------------------


@pytest.mark.parametrize("sort", ["", " ", ",", "priority,", "-priority,,created_at"])
def test_ls_refuses_an_empty_sort_field(db: str, tmp_path: Path, sort: str) -> None:
    add(db, "a:b")
    result = cli("ls", "--sort", sort, "--db", db, cwd=tmp_path)
    assert_error(result, 2, f"--sort {sort!r}: every field must be named")
    assert result.out == ""


def test_ls_sort_with_spaces_still_works(db: str, tmp_path: Path) -> None:
    first = add(db, "a:b", priority=1)
    second = add(db, "a:b", priority=0)
    result = cli("ls", "--sort", "priority, created_at", "--json", "--db", db, cwd=tmp_path)
    assert result.code == 0, result
    assert [t["id"] for t in json.loads(result.out)] == [second.id, first.id]


def test_ls_says_when_status_or_action_make_the_filter_too_large(db: str,
                                                                  tmp_path: Path) -> None:
    """A filter at the bound of 2,000 comparisons passes alone; with --status it was
    refused at ``filter.$and[1].status.$in``, a path the user never wrote."""
    add(db, "a:b")
    full = json.dumps({"id": {"$in": [f"id-{i}" for i in range(2000)]}})
    assert cli("ls", full, "--db", db, cwd=tmp_path).code == 0
    result = cli("ls", full, "--status", "failed", "--db", db, cwd=tmp_path)
    assert_error(result, 2, "the filter with --status/--action added: the filter is too large")
    assert "$and" not in result.err
    # the filter's own errors keep their own paths
    assert_error(cli("ls", '{"id": {"$bad": 1}}', "--status", "failed", "--db", db,
                     cwd=tmp_path), 2, "filter.id.$bad: unknown operator")


# -- deeply nested JSON ------------------------------------------------------------------


def test_deeply_nested_payload_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text("[" * 1500 + "]" * 1500)
    result = cli("add", "x:y", "@deep.json", "--db", "sqlite:///t.db", cwd=tmp_path)
    assert_error(result, 2, "payload file 'deep.json' is nested too deeply")
    assert not (tmp_path / "t.db").exists()  # nothing written, not even the file
    result = cli("add", "x:y", "-", "--db", "sqlite:///t.db", cwd=tmp_path,
                 input="{\"a\":" * 1500 + "1" + "}" * 1500)
    assert_error(result, 2, "payload (from standard input) is nested too deeply")
    assert not (tmp_path / "t.db").exists()


def test_deeply_nested_filter_is_bad_input(db: str, tmp_path: Path) -> None:
    add(db, "a:b")
    (tmp_path / "filter.json").write_text("{\"a\":" * 1500 + "1" + "}" * 1500)
    result = cli("ls", "@filter.json", "--db", db, cwd=tmp_path)
    assert_error(result, 2, "filter file 'filter.json' is nested too deeply")
    assert result.out == ""


# -- serve ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_on_port_0_shows_the_real_port_and_exits_0_on_a_signal(
        tmp_path: Path, background: Callable[..., Background], sig: signal.Signals) -> None:
    server = background("serve", "--db", "sqlite:///hub.db", "--insecure", "--port", "0",
                        cwd=tmp_path)
    first = server.wait_for("hub on http://", stream="err")
    ready = server.wait_for("hub ready on http://", stream="err")
    found = re.search(r"http://127\.0\.0\.1:(\d+)", first)
    assert found is not None, first
    port = int(found.group(1))
    assert port != 0, first
    assert f"http://127.0.0.1:{port} " in ready, ready
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
        assert json.load(answer) == {"status": "ok"}
    server.signal(sig)
    assert server.wait() == 0, server.err
    assert f"hub stopped ({sig.name})" in server.err, server.err
    assert not any("Traceback" in line for line in server.err), server.err


# -- add through a hub: the "no running worker" warning ---------------------------------------

HANDLERS = '''
from conveyor import Context, Conveyor

app = Conveyor("memory://", stop_timeout=1.0)


@app.handler("mail:send")
async def send(ctx: Context) -> str:
    return "sent"
'''


def test_add_and_tail_through_a_hub_warn_when_no_worker_runs_the_action(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    (tmp_path / "hubtasks.py").write_text(HANDLERS)
    server = background("serve", "--db", "sqlite:///hub.db", "--insecure", "--port", "0",
                        "--app", "hubtasks:app", cwd=tmp_path)
    found = re.search(r"http://127\.0\.0\.1:\d+", server.wait_for("hub on", stream="err"))
    assert found is not None
    server.wait_for("hub ready", stream="err")
    url = found.group(0)
    nobody = cli("add", "nobody:z", "--hub", url, cwd=tmp_path)
    assert nobody.code == 0, nobody
    assert nobody.err.strip() == ("warning: no running worker handles 'nobody:z'; the task "
                                  "will wait until one does"), nobody
    task_id = nobody.out.strip()
    handled = cli("add", "mail:send", "--hub", url, "--wait", cwd=tmp_path)
    assert handled.code == 0, handled
    assert "warning" not in handled.err, handled
    # tail warns too, then follows until the task ends (aborted here: exit 1)
    tail = Background("tail", task_id, "--hub", url, cwd=tmp_path)
    try:
        tail.wait_for("no running worker handles 'nobody:z'", stream="err")
        assert cli("abort", task_id, "--hub", url, cwd=tmp_path).code == 0
        assert tail.wait() == 1
    finally:
        tail.stop()


# -- the CLI audit of this stop ------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://[::1", "http://", "ftp://x", "http://h:99999",
                                 "http://a b"])
def test_a_malformed_hub_url_is_bad_input(url: str) -> None:
    """`http://[::1` was an "unexpected InvalidURL" and `http://` a connection error
    (exit 1); from the environment, the variable is named instead of --hub."""
    assert_error(cli("ls", "--hub", url, "--key", "k"), 2,
                 f"--hub must be the hub's http:// or https:// URL with a host, not {url!r}")
    assert_error(cli("stats", env=clean_env(CONVEYOR_HUB=url)), 2,
                 "$CONVEYOR_HUB must be the hub's http:// or https:// URL with a host")


def test_a_key_with_db_is_named_as_such(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    assert_error(cli("ls", "--db", db, "--key", "K",
                     env=clean_env(CONVEYOR_HUB="http://127.0.0.1:1")), 2,
                 "--key is the key of a hub: it does not go with --db")


def test_credential_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nodir" / "c.json"
    message = assert_error(cli("credentials", "add", "y", "--admin", "--credentials",
                               str(missing)), 1, "No such file or directory", str(missing))
    assert ".credentials-" not in message  # not the temporary file beside it
    for content, needle in (('{"credentials": 5}', 'not {"credentials": [...]}'),
                            ("[1]", 'not {"credentials": [...]}'),
                            ('{"credentials": [{"name": "x"}]}', "a credential has no")):
        bad = tmp_path / "bad.json"
        bad.write_text(content, encoding="utf-8")
        assert_error(cli("credentials", "list", "--credentials", str(bad)), 2,
                     f"cannot read credentials file {str(bad)!r}", needle)


def test_bench_that_cannot_open_its_storage_leaves_no_note(tmp_path: Path) -> None:
    result = cli("bench", "--db", f"sqlite:///{tmp_path / 'nodir' / 'x.db'}", "--tasks", "10")
    assert result.code == 1, result
    assert result.err.splitlines()[-1].startswith("error: cannot open database"), result
    assert "bench stopped" not in result.err, result.err


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_serve_on_ipv6_loopback_shows_a_url(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    server = background("serve", "--db", "sqlite:///hub.db", "--insecure", "--host", "::1",
                        "--port", "0", cwd=tmp_path)
    first = server.wait_for("hub on http://", stream="err")
    found = re.search(r"hub on http://\[::1\]:(\d+) ", first)
    assert found is not None, first
    with urllib.request.urlopen(f"http://[::1]:{found.group(1)}/healthz", timeout=10) as answer:
        assert json.load(answer) == {"status": "ok"}
    server.signal(signal.SIGTERM)
    assert server.wait() == 0, server.err


BLOCK_STARLETTE = """
import sys


class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "starlette":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Missing())
from conveyor.cli import main

main(["serve", "--db", "sqlite:///x.db", "--insecure", "--port", "0"])
"""


def test_a_missing_extra_is_named(tmp_path: Path) -> None:
    """`conveyor serve` without the [hub] extra said "unexpected ModuleNotFoundError"."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", BLOCK_STARLETTE], cwd=tmp_path, text=True,
                         capture_output=True, timeout=60, check=False, env=clean_env())
    assert out.returncode == 1, out
    assert out.stderr.splitlines() == [
        "error: this needs the [hub] extra (no module 'starlette'): pip install "
        "'conveyor[hub]' (in a clone: scripts/setup hub)"], out.stderr


def test_read_commands_refuse_another_applications_file_unchanged(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "theirs.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    url = f"sqlite:///{path}"
    for args in (("ls",), ("stats",), ("workers",), ("show", "01a00000-0000-7000-8000-0000")):
        result = cli(*args, "--db", url)
        assert_error(result, 1, "is not a conveyor database")
    assert path.read_bytes() == before and not (tmp_path / "theirs.db-wal").exists()
    migrated = cli("migrate", "--db", url)  # asked for: conveyor's tables beside theirs
    assert migrated.code == 0, migrated
    assert cli("ls", "--db", url).code == 0


# -- worker: a handler that does not let itself be cancelled ------------------------------

STUBBORN = '''
import asyncio

from conveyor import Context, Conveyor

app = Conveyor(stop_timeout=0.5)


@app.handler("x:stubborn")
async def stubborn(ctx: Context) -> str:
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass  # and goes on
'''


def test_a_worker_exits_after_its_stop_even_with_a_handler_that_ignores_cancellation(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    """The worker handed the task back and said it stopped, then the process stayed,
    for ever, waiting for the handler (asyncio.run awaits every task at its end)."""
    (tmp_path / "stubbornapp.py").write_text(STUBBORN, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'stubborn.db'}"
    worker = background("worker", "stubbornapp:app", cwd=tmp_path,
                        env=clean_env(CONVEYOR_DB=url))
    worker.wait_for("started")
    task = add(url, "x:stubborn")
    eventually(lambda: get(url, task.id).status == "running", what="the task to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.err  # stop_timeout 0.5 + 5 s to unwind + 2 s
    assert "stopped (SIGTERM)" in worker.out[-1], worker.out
    assert any("1 task(s) ignored their cancellation" in line for line in worker.err), \
        worker.err
    assert get(url, task.id).status.value == "queued"  # handed back by the stop
