"""The CLI through a hub: ``--hub URL --key KEY`` (or $CONVEYOR_HUB / $CONVEYOR_KEY).

A real hub (``conveyor serve`` with an app's handlers) runs in a subprocess for
the whole module; every command runs as its own subprocess too.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conveyor.hub._credentials import CredentialStore

from ._support import Background, Result, assert_error, clean_env, cli

HANDLERS = '''
import asyncio

from conveyor import Context, Conveyor

app = Conveyor("memory://", stop_timeout=1.0)


@app.handler("mail:send")
async def send(ctx: Context) -> dict:
    ctx.log.debug("connecting")
    ctx.log.info("sending to %s", ctx.payload["to"])
    await ctx.progress(1, total=1)
    await asyncio.sleep(ctx.payload.get("sleep", 0))
    return {"sent": ctx.payload["to"]}


@app.handler("job:fail")
async def fail(ctx: Context) -> None:
    ctx.log.error("about to fail")
    raise RuntimeError("kaput")
'''


@dataclass
class Hub:
    url: str
    db: str
    admin: str
    publisher: str
    folder: Path

    def run(self, *args: str, key: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60.0) -> Result:
        flags = ["--hub", self.url] + (["--key", key] if key else [])
        return cli(*args, *flags, cwd=self.folder, env=env, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("hub")
    (folder / "hubtasks.py").write_text(textwrap.dedent(HANDLERS))
    store = CredentialStore(folder / "credentials.json")
    _, admin = store.add("admin", admin=True)
    _, publisher = store.add("publisher", publish=["mail:*"])
    db = f"sqlite:///{folder / 'hub.db'}"
    port = _free_port()
    server = Background("serve", "--db", db, "--port", str(port), "--credentials",
                        str(store.path), "--app", "hubtasks:app", cwd=folder)
    try:
        server.wait_for("hub ready", stream="err", timeout=30)
        yield Hub(f"http://127.0.0.1:{port}", db, admin, publisher, folder)
    finally:
        server.stop()


def _json(result: Result) -> Any:
    assert result.code == 0, result
    return json.loads(result.out)


def test_add_show_ls_stats_workers(hub: Hub) -> None:
    added = cli("--hub", hub.url, "--key", hub.publisher, "add", "mail:send",
                '{"to": "ann", "sleep": 60}', "--priority", "2", "--tag", "team=a", "--json",
                cwd=hub.folder)
    assert added.code == 0, added
    task = json.loads(added.out)
    assert task["action"] == "mail:send" and task["priority"] == 2
    assert task["tags"] == {"team": "a"}
    assert task["public_url"].endswith(f"/ws/tasks/{task['id']}")
    assert "warning" not in added.err

    shown = hub.run("show", task["id"], "--json", key=hub.publisher)
    assert shown.code == 0 and json.loads(shown.out)["id"] == task["id"]
    table = hub.run("show", task["id"], key=hub.publisher)
    assert table.code == 0 and "mail:send" in table.out

    listed = hub.run("ls", '{"tags.team": "a"}', "--json", key=hub.publisher)
    assert [t["id"] for t in _json(listed)] == [task["id"]]
    table = hub.run("ls", "--action", "mail:send", key=hub.publisher)
    assert table.code == 0 and task["id"] in table.out

    stats = _json(hub.run("stats", "--json", key=hub.publisher))
    assert isinstance(stats, dict) and "mail:send" in stats
    workers = _json(hub.run("workers", "--json", key=hub.admin))
    assert isinstance(workers, list) and any("mail:send" in w["actions"] for w in workers)
    assert all(w["alive"] for w in workers)

    aborted = hub.run("abort", task["id"], "--reason", "test over", key=hub.admin)
    assert aborted.code == 0, aborted


def test_environment_variables_and_wait(hub: Hub) -> None:
    env = clean_env(CONVEYOR_HUB=hub.url, CONVEYOR_KEY=hub.publisher)
    result = cli("add", "mail:send", '{"to": "bob"}', "--wait", cwd=hub.folder, env=env)
    assert result.code == 0, result
    assert json.loads(result.out) == {"sent": "bob"}
    assert "added task" in result.err

    failed = cli("add", "job:fail", "--wait", cwd=hub.folder,
                 env=clean_env(CONVEYOR_HUB=hub.url, CONVEYOR_KEY=hub.admin))
    assert failed.code == 1, failed
    assert "failed: RuntimeError: kaput" in failed.err
    assert "Traceback" not in failed.err


def test_tail_follows_logs_until_the_end(hub: Hub) -> None:
    added = hub.run("add", "mail:send", '{"to": "cy", "sleep": 1}', key=hub.publisher)
    assert added.code == 0, added
    task_id = added.out.strip()
    tail = hub.run("tail", task_id, key=hub.publisher)
    assert tail.code == 0, tail
    assert "sending to cy" in tail.out
    assert "connecting" in tail.out
    assert "succeeded" in tail.err
    quiet = hub.run("tail", task_id, "--level", "info", key=hub.publisher)
    assert quiet.code == 0 and "connecting" not in quiet.out
    show = hub.run("show", task_id, "--logs", key=hub.publisher)
    assert "sending to cy" in show.out

    failing = hub.run("add", "job:fail", key=hub.admin).out.strip()
    tail = hub.run("tail", failing, key=hub.admin)
    assert tail.code == 1
    assert "about to fail" in tail.out
    assert "kaput" in tail.err


def test_control_commands_need_the_admin_right(hub: Hub) -> None:
    task_id = hub.run("add", "mail:send", '{"to": "d"}', "--delay", "600",
                      key=hub.publisher).out.strip()
    for args in [("abort", task_id), ("retry", task_id), ("prioritize", task_id, "5")]:
        refused = hub.run(*args, key=hub.publisher)
        assert_error(refused, 1, "credential 'publisher' may not", "admin",
                     "(HTTP 403)")
    moved = hub.run("prioritize", task_id, "5", "--json", key=hub.admin)
    assert _json(moved)["priority"] == 5
    aborted = hub.run("abort", task_id, key=hub.admin)
    assert aborted.code == 0 and "aborted" in aborted.out
    retried = hub.run("retry", task_id, "--delay", "600", key=hub.admin)
    assert retried.code == 0 and "queued again" in retried.out
    not_ended = hub.run("delete", task_id, key=hub.admin)
    assert_error(not_ended, 1, "only finished tasks")
    hub.run("abort", task_id, key=hub.admin)
    assert_error(hub.run("delete", task_id, key=hub.publisher), 1,
                 "credential 'publisher' may not", "(HTTP 403)")
    deleted = hub.run("delete", task_id, key=hub.admin)
    assert deleted.code == 0 and "deleted 1 task" in deleted.out
    assert_error(hub.run("show", task_id, key=hub.admin), 2,
                 f"no task with id {task_id}")


def test_errors_stay_one_line_with_the_exit_codes(hub: Hub, tmp_path: Path) -> None:
    assert_error(hub.run("stats", key="cvk_000000000000_" + "x" * 43), 1,
                 "invalid or revoked key", "(HTTP 401)")
    assert_error(hub.run("ls"), 1, "a credential is required", "(HTTP 401)")
    assert_error(hub.run("add", "geo:code", key=hub.publisher), 1,
                 "may not publish 'geo:code'", "(HTTP 403)")
    assert_error(hub.run("show", "01a00000-0000-7000-8000-000000000000",
                         key=hub.admin), 2, "no task with id")
    assert_error(hub.run("ls", '{"priority": {"$gt": "x"}}', key=hub.admin), 2,
                 "filter.priority.$gt")
    assert_error(hub.run("add", "bad name", key=hub.admin), 2,
                 "invalid action name")
    assert_error(hub.run("add", "mail:send", "--unique-key", "x" * 600,
                         key=hub.admin), 2, "unique_key")
    assert_error(cli("--hub", hub.url, "--db", hub.db, "stats", cwd=tmp_path), 2,
                 "--db or --hub, not both")
    assert_error(cli("--hub", hub.url, "worker", "hubtasks:app", cwd=tmp_path), 2,
                 "does not work through a hub")
    assert_error(cli("stats", "--hub", "localhost:1", cwd=tmp_path), 2, "http:// or https://")
    assert_error(cli("stats", "--key", hub.admin, "--db", hub.db, cwd=tmp_path), 2,
                 "--key is the key of a hub: it does not go with --db")
    assert_error(cli("stats", "--key", hub.admin, cwd=tmp_path), 2, "give --hub URL")
    assert_error(cli("stats", "--hub", f"http://127.0.0.1:{_free_port()}", cwd=tmp_path), 1,
                 "cannot reach the hub")
    # a hub URL's password is hidden, as a database URL's is
    for hub_url, code in ((f"http://ann:s3cret@127.0.0.1:{_free_port()}/", 1),
                          (f"http://ann:s3cret@127.0.0.1:{_free_port()}/?password=pw2", 2),
                          ("htp://ann:s3cret@127.0.0.1:1", 2)):
        hidden = cli("stats", "--hub", hub_url, cwd=tmp_path)
        assert_error(hidden, code, "ann:***@127.0.0.1")
        assert "s3cret" not in hidden.err and "pw2" not in hidden.err
    # nothing was added by any of these
    count = cli("ls", "--db", hub.db, "--status", "queued", "--json", cwd=tmp_path)
    assert all(t["action"] != "geo:code" for t in json.loads(count.out))


def test_a_publisher_sees_only_its_actions(hub: Hub) -> None:
    hub.run("add", "job:fail", "--delay", "600", key=hub.admin)
    hub.run("add", "mail:send", '{"to": "q"}', "--delay", "600", key=hub.admin)  # its own
    mine = _json(hub.run("ls", "--json", "--limit", "0", key=hub.publisher))
    everything = _json(hub.run("ls", "--json", "--limit", "0", key=hub.admin))
    assert isinstance(mine, list) and isinstance(everything, list)
    assert {t["action"] for t in mine} == {"mail:send"}
    assert "job:fail" in {t["action"] for t in everything}
    stats = _json(hub.run("stats", "--json", key=hub.publisher))
    assert set(stats) == {"mail:send"}


def _ended_ten_days_ago(hub: Hub) -> str:
    """A task aborted through the hub, made to look finished ten days ago (other
    tests' tasks stay recent)."""
    task_id = hub.run("add", "mail:send", '{"to": "p"}', "--delay", "600",
                      key=hub.admin).out.strip()
    assert hub.run("abort", task_id, key=hub.admin).code == 0
    with contextlib.closing(sqlite3.connect(hub.db.removeprefix("sqlite:///"))) as conn, conn:
        conn.execute("UPDATE conveyor_tasks SET finished_at = finished_at - 864000 "
                     "WHERE id = ?", (task_id,))
    return task_id


def test_prune_through_the_hub(hub: Hub) -> None:
    task_id = _ended_ten_days_ago(hub)
    assert_error(hub.run("prune", "--older-than", "7d", key=hub.publisher), 1,
                 "credential 'publisher' may not", "(HTTP 403)")
    pruned = hub.run("prune", "--older-than", "7d", "--json", key=hub.admin)
    assert pruned.code == 0, pruned
    assert _json(pruned) == {"pruned": 1, "older_than": 604800.0}
    assert_error(hub.run("show", task_id, key=hub.admin), 2, f"no task with id {task_id}")


def test_prune_through_the_hub_goes_in_pages_of_1000(hub: Hub) -> None:
    """More than one page of old tasks: each page is a find and a delete by ids
    (one delete by filter of the whole backlog outlasted the client's timeout)."""
    task_id = _ended_ten_days_ago(hub)
    path = hub.db.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        before = conn.execute("SELECT count(*) FROM conveyor_tasks").fetchone()[0]
        # 1,500 more that ended ten days ago, copies of that row but for their ids
        row = conn.execute("SELECT * FROM conveyor_tasks WHERE id = ?", (task_id,)).fetchone()
        names = [r[1] for r in conn.execute("PRAGMA table_info(conveyor_tasks)")]
        rows = [tuple(f"old-{n:04d}" if name == "id" else value
                      for name, value in zip(names, row, strict=True)) for n in range(1500)]
        conn.executemany(f"INSERT INTO conveyor_tasks VALUES ({', '.join('?' * len(names))})",
                         rows)
    pruned = hub.run("prune", "--older-than", "7d", "--json", key=hub.admin)
    assert pruned.code == 0, pruned
    assert _json(pruned) == {"pruned": 1501, "older_than": 604800.0}
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM conveyor_tasks").fetchone()[0] == before - 1
