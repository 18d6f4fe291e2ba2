"""Configuration the command line took and should have refused (the config audit):
each is one ``error:`` line with exit 2, and nothing is started, created or changed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ._support import STARTED_AT_IMPORT, assert_error, clean_env, cli


def test_serve_app_db_refuses_an_app_whose_worker_started_at_import(tmp_path: Path) -> None:
    """``serve --app M:APP --db OTHER`` moved the hub to OTHER while the app's
    import-started worker went on on its own storage: tasks added through the hub
    were never run. It is refused as ``worker M:APP --db`` refuses it."""
    (tmp_path / "startsatimport.py").write_text(STARTED_AT_IMPORT, encoding="utf-8")
    own = f"sqlite:///{tmp_path / 'own.db'}"
    other = tmp_path / "other.db"
    env = clean_env(CONVEYOR_DB=own)
    worker = cli("worker", "startsatimport:conv", "--db", f"sqlite:///{other}", cwd=tmp_path,
                 env=env)
    served = cli("serve", "--app", "startsatimport:conv", "--db", f"sqlite:///{other}",
                 "--port", "0", "--insecure", cwd=tmp_path, env=env, timeout=30)
    line = assert_error(served, 2, "startsatimport:conv's worker is already running on",
                        "--db cannot move it")
    assert line == assert_error(worker, 2)  # the same check, the same words
    assert "hub on" not in served.err and served.out == ""
    assert not other.exists()


def test_db_naming_the_apps_own_database_another_way_is_not_another(tmp_path: Path) -> None:
    """`--db` written with an option (or, on PostgreSQL, a password) that the app's
    shown URL leaves out named "another" database: an import-started app was
    refused, though nothing would move."""
    (tmp_path / "startsatimport.py").write_text(STARTED_AT_IMPORT, encoding="utf-8")
    own = f"sqlite:///{tmp_path / 'own.db'}?busy_timeout=5"
    env = clean_env(CONVEYOR_DB=own)
    burst = cli("worker", "startsatimport:conv", "--db", own, "--burst", cwd=tmp_path,
                env=env, timeout=60)
    assert burst.code == 0, burst.err
    assert "already running" not in burst.err


@pytest.mark.parametrize(("url", "problem"), [
    ("http://hub.example:99999", "its port must be a number from 1 to 65535"),
    ("http://hub.example:0", "its port must be a number from 1 to 65535"),
    ("http://hub.example/base?x=1", "it must not have a query"),
    ("http://hub.example/#frag", "it must not have a fragment"),
])
def test_serve_public_url_is_checked_as_hub_is(tmp_path: Path, url: str, problem: str) -> None:
    """`--public-url http://h:99999` with --insecure crashed the hub at startup (a
    traceback, exit 3); without it every task's public_url carried the bad port, and a
    query or fragment ended up in front of the task's path. Refused as --hub is."""
    db = tmp_path / "p.db"
    served = cli("serve", "--db", f"sqlite:///{db}", "--port", "0", "--insecure",
                 "--public-url", url, cwd=tmp_path, timeout=30)
    assert_error(served, 2, "--public-url", f"not {url!r}", problem)
    assert not db.exists()
    through_hub = cli("ls", "--hub", url, cwd=tmp_path)
    assert_error(through_hub, 2, f"--hub must be the hub's http:// or https:// URL with a "
                                 f"host, not {url!r}", problem)


def test_serve_bind_errors_name_the_host_and_port(tmp_path: Path) -> None:
    """`error: Address already in use` named neither --host nor --port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        served = cli("serve", "--db", "memory://", "--port", str(port), "--insecure",
                     cwd=tmp_path, timeout=30)
    assert_error(served, 1, f"error: cannot listen on 127.0.0.1:{port}: Address already in use")
    unknown = cli("serve", "--db", "memory://", "--port", "0", "--insecure",
                  "--host", "no such host.invalid", cwd=tmp_path, timeout=30)
    # (after the warning that --insecure off loopback prints)
    assert unknown.code == 1 and "Traceback" not in unknown.err, unknown
    assert unknown.err.splitlines()[-1].startswith(
        "error: cannot listen on no such host.invalid:0: "), unknown
    empty = cli("serve", "--db", "memory://", "--port", "0", "--insecure", "--host", "",
                cwd=tmp_path, timeout=30)
    assert_error(empty, 2, "host must be a non-empty host name or address, not ''")


def test_key_with_a_command_that_does_not_talk_to_a_hub_is_refused(tmp_path: Path) -> None:
    """`conveyor --key K migrate --db ...` ignored the key (exit 0); `ls --db --key` was
    refused. Refused for every command that does not work through a hub."""
    db = tmp_path / "m.db"
    for command in (["migrate", "--db", f"sqlite:///{db}"],
                    ["serve", "--db", f"sqlite:///{db}", "--port", "0"],
                    ["credentials", "list"]):
        result = cli("--key", "K", *command, cwd=tmp_path, timeout=30)
        assert_error(result, 2, "--key is the key of a hub", f"'{command[0]}' does not work "
                                                           "through a hub")
    assert not db.exists()
    assert cli("migrate", "--db", f"sqlite:///{db}", cwd=tmp_path).code == 0


@pytest.mark.parametrize(("value", "traceback"), [
    ("1", True), ("true", True), ("YES", True), ("on", True),
    ("0", False), ("false", False), ("no", False), ("off", False), ("", False),
])
def test_conveyor_debug_values(tmp_path: Path, value: str, traceback: bool) -> None:
    """CONVEYOR_DEBUG=0 or =false turned tracebacks on (any non-empty value did)."""
    result = cli("ls", "--db", f"sqlite:///{tmp_path / 'missing.db'}", cwd=tmp_path,
                 env=clean_env(CONVEYOR_DEBUG=value))
    assert result.code == 1
    assert result.err.startswith("error: no database at")
    assert ("Traceback" in result.err) is traceback, result


def test_sqlite_url_of_a_folder_is_refused_at_once(tmp_path: Path) -> None:
    """`add --db sqlite:///dir/` made a file named `dir` and added the task; `ls` then
    said there was no database at 'dir/'."""
    (tmp_path / "data").mkdir()
    for args in (["add", "a:b"], ["ls"]):
        result = cli(*args, "--db", "sqlite:///data/", cwd=tmp_path)
        assert_error(result, 2, "bad sqlite URL 'sqlite:///data/': it names a folder")
    missing = cli("add", "a:b", "--db", "sqlite:///nothere/", cwd=tmp_path)
    assert_error(missing, 2, "it names a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert not any((tmp_path / "data").iterdir())


@pytest.mark.parametrize("value", ["nan", "inf", "0", "0.05"])
def test_service_lease_messages_name_the_real_minimum(tmp_path: Path, value: str) -> None:
    result = cli("serve", "--db", "memory://", "--port", "0", "--service-lease", value,
                 cwd=tmp_path, timeout=30)
    line = assert_error(result, 2, "--service-lease")
    assert "0.1" in line and ">= 0," not in line, line
