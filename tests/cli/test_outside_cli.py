"""Outside-in tests of the command line, written from docs/cli.md, the README's CLI tour
and issues 2 and 5: the columns of the tables, the formats, the progress bars on a
terminal, exit codes, ``CONVEYOR_DB`` / ``CONVEYOR_HUB`` and the credentials file.

Not repeated here: what tests/cli/test_*.py and tests/runner/test_outside_core.py
already check.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor
from conveyor.storage import WorkerInfo

from ._support import CLI, Background, add, assert_error, clean_env, cli, eventually, get, run

ANSI = re.compile(r"\x1b\[")

STEPS_MODULE = textwrap.dedent('''
    import asyncio
    import os

    from conveyor import Context, Conveyor

    app = Conveyor(os.environ["CONVEYOR_DB"], stop_timeout=1.0)

    @app.handler("t:steps")
    async def steps(ctx: Context) -> object:
        for step in range(1, 5):
            await ctx.progress(step, total=4, message=f"step {step} of 4")
            ctx.log.info("did step %d", step)
            await asyncio.sleep(0.3)
        return {"steps": 4}

    @app.handler("t:fail")
    async def fail(ctx: Context) -> object:
        raise ValueError("it broke")

    @app.handler("t:block")
    async def block(ctx: Context) -> object:
        await asyncio.sleep(300)
        return "never"
''')


def _url(tmp_path: Path, name: str = "x.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def _worker(background: Callable[..., Background], tmp_path: Path, url: str) -> Background:
    (tmp_path / "stepsapp.py").write_text(STEPS_MODULE, encoding="utf-8")
    worker = background("worker", "stepsapp:app", cwd=tmp_path, env=clean_env(CONVEYOR_DB=url))
    worker.wait_for("started")
    return worker


def _on_a_terminal(args: list[str], stream: str, *, cwd: Path, timeout: float = 60.0,
                   shown_first: Callable[[], object] | None = None) -> tuple[int, str, str]:
    """Run the CLI with ``stream`` ('out' or 'err') on a pseudo-terminal, the other on
    a pipe; ``shown_first()`` is called once the terminal showed something. Returns
    (exit code, what the terminal showed, what the pipe got)."""
    master, slave = pty.openpty()
    env = clean_env(COLUMNS="120", TERM="xterm")
    kwargs: dict[str, Any] = {"stdout": slave, "stderr": subprocess.PIPE} if stream == "out" \
        else {"stdout": subprocess.PIPE, "stderr": slave}
    proc = subprocess.Popen([*CLI, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            **kwargs)
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end closed
                break
            if not chunk:
                break
            shown += chunk
            if shown_first is not None:
                shown_first()
                shown_first = None
        elif proc.poll() is not None:
            break
    os.close(master)
    piped = proc.stderr if stream == "out" else proc.stdout
    assert piped is not None
    other = piped.read().decode()
    piped.close()
    return proc.wait(timeout), shown.decode(errors="replace"), other


# -- ls ---------------------------------------------------------------------------------


def test_ls_table_has_every_documented_column_and_no_colours_on_a_pipe(tmp_path: Path) -> None:
    url = _url(tmp_path)

    async def go(app: Conveyor) -> tuple[str, str, str]:
        @app.handler("t:half")
        async def half(ctx: Context[Any]) -> None:
            await ctx.progress(1, total=4, message="a quarter")

        async with app:
            ran = await app.add("t:half", max_attempts=3)
            await app.wait_task(ran.id, timeout=10)
        delayed = await app.add("t:later", delay=600, priority=2.5, tags={"team": "ops"})
        plain = await app.add("t:plain")
        return ran.id, delayed.id, plain.id

    ran, delayed, plain = run(go, url)
    result = cli("ls", "--db", url)
    assert result.code == 0, result
    assert not ANSI.search(result.out), result.out
    header = next(line for line in result.out.splitlines() if "action" in line)
    columns = [c.strip() for c in re.split(r"[┃│|]", header) if c.strip()]
    assert columns == ["id", "action", "status", "priority", "attempts", "progress", "created",
                       "tags"]
    rows = {task_id: line for line in result.out.splitlines()
            for task_id in (ran, delayed, plain) if task_id in line}
    assert len(rows) == 3, result.out
    assert "1/3" in rows[ran] and "25% a quarter" in rows[ran] and "succeeded" in rows[ran]
    # a delayed task shows when it runs
    assert re.search(r"queued \(in (9m|10m)\)", rows[delayed]), rows[delayed]
    assert "2.5" in rows[delayed] and "team=ops" in rows[delayed]
    # no maximum of attempts: just the count
    plain_cells = [c.strip() for c in re.split(r"[┃│|]", rows[plain]) if c.strip()]
    assert plain_cells[4] == "0", plain_cells
    assert "3 of 3 task(s)" in result.out and "see --limit" not in result.out


def test_ls_pages_by_50_unless_limit_0_and_says_so(tmp_path: Path) -> None:
    url = _url(tmp_path)
    run(lambda app: app.add_many([("t:many", i) for i in range(55)]), url)
    assert len(json.loads(cli("ls", "--json", "--db", url).out)) == 50
    assert len(json.loads(cli("ls", "--json", "--limit", "0", "--db", url).out)) == 55
    table = cli("ls", "--db", url)
    assert "50 of 55 task(s) (see --limit and --skip)" in table.out, table.out
    everything = cli("ls", "--limit", "0", "--db", url)
    assert "55 of 55 task(s)" in everything.out and "see --limit" not in everything.out
    rest = cli("ls", "--skip", "50", "--db", url)
    assert "51-55 of 55 task(s)" in rest.out, rest.out
    empty = cli("ls", "--status", "failed", "--db", url)
    assert empty.code == 0 and empty.out.strip() == "no tasks match"


def test_ls_width_follows_columns(tmp_path: Path) -> None:
    url = _url(tmp_path)
    task = add(url, "t:wide", tags={"description": "x" * 60})
    wide = cli("ls", "--db", url)
    assert max(len(line) for line in wide.out.splitlines()) > 120
    assert task.id in wide.out  # the id is never cut
    narrow = cli("ls", "--db", url, env=clean_env(COLUMNS="70"))
    assert narrow.code == 0, narrow
    assert max(len(line) for line in narrow.out.splitlines()) <= 70, narrow.out


async def test_abort_of_a_running_task_returns_at_once_and_ls_shows_aborting(
        tmp_path: Path) -> None:
    url = _url(tmp_path)
    app = Conveyor(url, lease=6.0)
    release = threading.Event()
    started = threading.Event()

    @app.handler("t:stubborn", abort_grace=60)
    def stubborn(ctx: Context[Any]) -> str:  # a sync handler that ignores ctx.aborted
        started.set()
        release.wait(30)
        return "done"

    try:
        async with app:
            task = await app.add("t:stubborn")
            assert await asyncio.to_thread(started.wait, 10)
            aborted = await asyncio.to_thread(cli, "abort", task.id, "--db", url)
            assert aborted.code == 0, aborted
            assert aborted.out.strip() == (f"abort requested: task {task.id} is running; "
                                           "its worker stops it shortly")
            listed = await asyncio.to_thread(cli, "ls", "--db", url)
            assert "running (aborting)" in listed.out, listed.out
            as_json = json.loads((await asyncio.to_thread(
                cli, "ls", "--json", "--db", url)).out)
            assert as_json[0]["status"] == "running"
            release.set()
            final = await app.wait_task(task.id, timeout=20)
            assert final.status.value == "aborted"
    finally:
        release.set()
        await app.close()


# -- show ---------------------------------------------------------------------------------


def test_show_logs_lines_levels_and_every_error(tmp_path: Path) -> None:
    url = _url(tmp_path)

    async def go(app: Conveyor) -> tuple[str, str]:
        @app.handler("t:talk", max_attempts=2, backoff=0.01)
        async def talk(ctx: Context[Any]) -> None:
            ctx.log.debug("quiet detail")
            ctx.log.info("hello %s", "ann", data={"k": 1})
            ctx.log.warning("careful")
            ctx.log.error("bad thing")
            raise KeyError(f"attempt {ctx.task.attempts}")

        async with app:
            talker = await app.add("t:talk")
            await app.wait_task(talker.id, timeout=10)
        silent = await app.add("t:silent")
        return talker.id, silent.id

    talker, silent = run(go, url)
    shown = cli("show", talker, "--logs", "--db", url)
    assert shown.code == 0, shown
    lines = shown.out.splitlines()
    info = [line for line in lines if line.endswith('hello ann {"k":1}')]
    assert len(info) == 2, shown.out  # one per attempt
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} INFO +hello ann \{\"k\":1\}", info[0]), info
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} DEBUG +quiet detail", line)
               for line in lines), shown.out
    # the last error with its traceback, and every earlier error
    assert "KeyError: 'attempt 2'" in shown.out
    assert "Traceback" in shown.out
    assert re.search(r"attempt 1: KeyError: 'attempt 1'", shown.out), shown.out
    assert re.search(r"created_at +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \((now|\d+s ago)\)",
                     shown.out), shown.out

    warnings = cli("show", talker, "--logs", "--level", "warning", "--db", url)
    logged = [line for line in warnings.out.splitlines()
              if re.match(r"\d\d:\d\d:\d\d\.\d{3} ", line)]
    assert [line.split(None, 2)[1:] for line in logged] == [
        ["WARNING", "careful"], ["ERROR", "bad thing"]] * 2, warnings.out
    as_json = json.loads(cli("show", talker, "--json", "--logs", "--level", "error",
                             "--db", url).out)
    assert [line["message"] for line in as_json["logs"]] == ["bad thing", "bad thing"]
    assert [e["attempt"] for e in as_json["errors"]] == [1, 2]

    nothing = cli("show", silent, "--logs", "--db", url)
    assert nothing.code == 0 and "no log lines" in nothing.out
    assert_error(cli("show", silent, "--logs", "--level", "loud", "--db", url), 2, "--level")


# -- add --wait, tail: results, failures, progress bars -------------------------------------


def test_add_wait_json_failure_and_abort(tmp_path: Path,
                                          background: Callable[..., Background]) -> None:
    url = _url(tmp_path)
    _worker(background, tmp_path, url)
    done = cli("add", "t:steps", "--wait", "--json", "--db", url)
    assert done.code == 0, done
    final = json.loads(done.out)
    assert final["status"] == "succeeded" and final["result"] == {"steps": 4}
    assert final["progress"]["current"] == 4
    assert done.err.splitlines()[0] == f"added task {final['id']}"

    failed = cli("add", "t:fail", "--wait", "--max-attempts", "1", "--db", url)
    assert failed.code == 1, failed
    assert failed.out == ""
    task_id = failed.err.splitlines()[0].removeprefix("added task ")
    assert failed.err.splitlines()[-1] == (
        f"error: task {task_id} (t:fail) failed: ValueError: it broke")
    assert "Traceback" not in failed.err

    waiting = background("add", "t:block", "--wait", "--db", url)
    blocked = waiting.wait_for("added task", stream="err").split()[-1]
    assert cli("abort", blocked, "--reason", "enough", "--db", url).code == 0
    assert waiting.wait() == 1
    assert waiting.err[-1] == f"error: task {blocked} (t:block) was aborted: enough", waiting.err
    assert waiting.out == []


def test_add_wait_draws_a_progress_bar_on_a_terminal_only(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    url = _url(tmp_path)
    _worker(background, tmp_path, url)
    code, bar, out = _on_a_terminal(["add", "t:steps", "--wait", "--db", url], "err",
                                    cwd=tmp_path)
    assert code == 0, (bar, out)
    assert json.loads(out) == {"steps": 4}  # the result on stdout, the bar on stderr
    assert "added task" in bar
    assert "t:steps" in bar and "succeeded" in bar and "100%" in bar, bar
    assert "step 4 of 4" in bar, bar
    assert "━" in bar, bar
    # not a terminal: no bar, only the one line
    piped = cli("add", "t:steps", "--wait", "--db", url)
    assert piped.code == 0, piped
    assert piped.err.splitlines() == [piped.err.splitlines()[0]]
    assert piped.err.startswith("added task ") and "━" not in piped.err


def test_tail_follows_logs_with_a_bar_on_a_terminal(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    url = _url(tmp_path)
    task_id = cli("add", "t:steps", "--db", url).out.strip()
    # the worker starts once tail shows the task (queued): tail follows the whole run
    # (started first, a busy machine's tail could come after the end: no bar then)
    code, shown, err = _on_a_terminal(["tail", task_id, "--db", url], "out", cwd=tmp_path,
                                      shown_first=lambda: _worker(background, tmp_path, url))
    assert code == 0, (shown, err)
    for step in range(1, 5):
        assert f"did step {step}" in shown, shown
    assert "━" in shown and "t:steps" in shown, shown
    assert re.search(rf"task {task_id} \(t:steps\) succeeded in \d+\.\ds", err), err


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_tail_of_a_queued_task_warns_and_ctrl_c_exits_130(
        tmp_path: Path, background: Callable[..., Background], sig: signal.Signals,
        code: int) -> None:
    """Ctrl-C exits 130; SIGTERM (which ended it without a word) says the same and
    exits 143."""
    url = _url(tmp_path)
    task = add(url, "nobody:here")
    tail = background("tail", task.id, "--db", url)
    tail.wait_for("no running worker handles 'nobody:here'", stream="err")
    tail.signal(sig)
    assert tail.wait() == code
    assert f"interrupted: task {task.id} goes on (queued)" in tail.err
    assert not any("Traceback" in line for line in tail.err)
    assert get(url, task.id).status.value == "queued"


# -- retry, stats, workers -----------------------------------------------------------------


def test_retry_with_a_delay_keeps_the_id_and_the_history(tmp_path: Path) -> None:
    url = _url(tmp_path)
    task = add(url, "t:again")
    assert cli("abort", task.id, "--db", url).code == 0
    retried = cli("retry", task.id, "--delay", "5m", "--json", "--db", url)
    assert retried.code == 0, retried
    data = json.loads(retried.out)
    assert data["id"] == task.id and data["status"] == "queued"
    assert data["run_at"] >= time.time() + 290
    plain = cli("ls", "--db", url)
    assert re.search(r"queued \(in [45]m\)", plain.out), plain.out
    assert_error(cli("retry", task.id, "--delay", "-1", "--db", url), 2, "--delay")


def test_stats_table_columns_and_totals(tmp_path: Path) -> None:
    url = _url(tmp_path)
    add(url, "mail:send")
    add(url, "mail:send")
    doomed = add(url, "geo:code")
    assert cli("abort", doomed.id, "--db", url).code == 0
    table = cli("stats", "--db", url)
    assert table.code == 0, table
    assert not ANSI.search(table.out)

    def cells(line: str) -> list[str]:
        return [c.strip() for c in re.split(r"[┃│|]", line) if c.strip()]

    rows = [cells(line) for line in table.out.splitlines() if re.search(r"[┃│|]", line)]
    assert rows[0] == ["action", "queued", "running", "succeeded", "failed", "aborted", "total"]
    body = {row[0]: row[1:] for row in rows[1:]}
    assert body["geo:code"] == ["0", "0", "0", "0", "1", "1"]
    assert body["mail:send"] == ["2", "0", "0", "0", "0", "2"]
    assert body["total"] == ["2", "0", "0", "0", "1", "3"]
    empty = _url(tmp_path, "empty.db")
    assert cli("migrate", "--db", empty).code == 0
    none = cli("stats", "--db", empty)
    assert none.code == 0 and none.out.strip() == "no tasks"
    assert json.loads(cli("stats", "--json", "--db", empty).out) == {}


def test_workers_table_shows_gone_workers_and_add_ignores_them(tmp_path: Path) -> None:
    url = _url(tmp_path)
    now = time.time()

    async def go(app: Conveyor) -> None:
        await app.open()
        await app.storage.register_worker(WorkerInfo(
            id="w-stale", host="far.example", pid=4242, actions=("t:stale",), concurrency=4,
            started_at=now - 4000, last_seen=now - 3600, running=1, info={"name": "billing"}))
        await app.storage.register_worker(WorkerInfo(
            id="w-fresh", host="far.example", pid=4343, actions=("t:fresh", "t:more"),
            concurrency=8, started_at=now - 100, last_seen=now - 1, running=2))

    run(go, url)
    table = cli("workers", "--db", url)
    assert table.code == 0, table
    header = next(line for line in table.out.splitlines() if "host" in line)
    assert [c.strip() for c in re.split(r"[┃│|]", header) if c.strip()] == [
        "id", "host", "pid", "actions", "concurrency", "running", "started", "last seen"]
    stale = next(line for line in table.out.splitlines() if "w-stale" in line)
    fresh = next(line for line in table.out.splitlines() if "w-fresh" in line)
    assert "w-stale (billing)" in stale and "(gone?)" in stale and "1h00m ago" in stale
    assert "(gone?)" not in fresh and "t:fresh, t:more" in fresh and "8" in fresh
    listed = {w["id"]: w for w in json.loads(cli("workers", "--json", "--db", url).out)}
    assert listed["w-stale"]["alive"] is False and listed["w-fresh"]["alive"] is True
    assert listed["w-fresh"]["running"] == 2 and listed["w-fresh"]["concurrency"] == 8

    # a worker not seen for 90 s does not count as running the action
    stale_add = cli("add", "t:stale", "--db", url)
    assert "warning: no running worker handles 't:stale'" in stale_add.err
    fresh_add = cli("add", "t:fresh", "--db", url)
    assert fresh_add.code == 0 and fresh_add.err == "", fresh_add


# -- where the tasks are: --db, CONVEYOR_DB, CONVEYOR_HUB -----------------------------------


def test_an_explicit_db_wins_over_conveyor_hub(tmp_path: Path) -> None:
    url = _url(tmp_path)
    nowhere = "http://127.0.0.1:1"
    added = cli("add", "t:here", "--db", url, env=clean_env(CONVEYOR_HUB=nowhere))
    assert added.code == 0, added
    assert get(url, added.out.strip()).action == "t:here"
    # CONVEYOR_DB is not an explicit --db: the hub of CONVEYOR_HUB is used (and unreachable)
    refused = cli("ls", env=clean_env(CONVEYOR_HUB=nowhere, CONVEYOR_DB=url))
    assert_error(refused, 1, "cannot reach the hub")
    assert_error(cli("ls", "--db", url, "--hub", nowhere), 2, "--db or --hub, not both")


def test_read_commands_never_create_the_conveyor_db_file(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    for command in (["ls"], ["stats"], ["workers"], ["show", "x"], ["abort", "x"],
                    ["prune", "--older-than", "1d"]):
        result = cli(*command, env=clean_env(CONVEYOR_DB=f"sqlite:///{missing}"))
        assert_error(result, 1, "no database at", "typo.db")
    assert not missing.exists()


# -- credentials -------------------------------------------------------------------------------


def test_credentials_file_from_the_environment_or_the_current_directory(tmp_path: Path) -> None:
    made = cli("credentials", "add", "ops", "--admin", "--max-instances", "3", cwd=tmp_path)
    assert made.code == 0, made
    key = made.out.strip()
    assert re.fullmatch(r"cvk_[0-9a-f]+_\S+", key), key
    assert made.out.count("cvk_") == 1
    assert "not shown again" in made.err and "conveyor-credentials.json" in made.err
    stored = tmp_path / "conveyor-credentials.json"
    assert stored.exists() and key not in stored.read_text()

    elsewhere = tmp_path / "other.json"
    env = clean_env(CONVEYOR_CREDENTIALS=str(elsewhere))
    assert cli("credentials", "add", "shop", "--publish", "mail:*", cwd=tmp_path,
               env=env).code == 0
    assert elsewhere.exists()
    listed = json.loads(cli("credentials", "list", "--json", cwd=tmp_path).out)
    assert [(c["name"], c["admin"], c["max_instances"]) for c in listed] == [("ops", True, 3)]
    assert key.split("_")[1] == listed[0]["key_id"]
    assert "key" not in listed[0] and key not in json.dumps(listed)
    other = json.loads(cli("credentials", "list", "--json", cwd=tmp_path, env=env).out)
    assert [(c["name"], c["publish"]) for c in other] == [("shop", ["mail:*"])]

    assert cli("credentials", "revoke", "ops", cwd=tmp_path).code == 0
    table = cli("credentials", "list", cwd=tmp_path)
    assert table.code == 0 and "revoked" in table.out
    assert_error(cli("credentials", "revoke", "nobody", cwd=tmp_path), 2, "'nobody'")


def test_credentials_list_is_wide_on_a_pipe(tmp_path: Path) -> None:
    path = str(tmp_path / "c.json")
    patterns = [f"--publish=service-number-{i}:*" for i in range(6)]
    assert cli("credentials", "add", "a-rather-long-credential-name", *patterns,
               "--credentials", path).code == 0
    table = cli("credentials", "list", "--credentials", path)
    assert table.code == 0, table
    assert not ANSI.search(table.out)
    assert "a-rather-long-credential-name" in table.out, table.out
    assert "service-number-5:*" in table.out, table.out


# -- serve -----------------------------------------------------------------------------------


def test_serve_serves_the_dashboard_and_refuses_data_without_a_key(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    server = background("serve", "--db", "sqlite:///hub.db", "--port", "0", cwd=tmp_path)
    first = server.wait_for("hub on http://", stream="err")
    assert "credentials: conveyor-credentials.json" in first, first
    assert any("warning: no credentials in conveyor-credentials.json" in line
               for line in server.err), server.err
    server.wait_for("hub ready", stream="err")
    found = re.search(r"http://127\.0\.0\.1:\d+", first)
    assert found is not None
    base = found.group(0)
    with urllib.request.urlopen(base + "/", timeout=10) as page:
        assert page.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert b"dashboard.js" in page.read()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(base + "/api/v1/stats", timeout=10)
    refused.value.close()
    assert refused.value.code == 401
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert "hub stopped (SIGTERM)" in server.err[-1]


def test_serve_refuses_a_bad_delivery_mode(tmp_path: Path) -> None:
    result = cli("serve", "--db", "sqlite:///hub.db", "--insecure", "--port", "0",
                 "--delivery", "mail:*=some", cwd=tmp_path)
    assert_error(result, 2, "--delivery", "mail:*=some")
    assert "web dashboard (at /)" in " ".join(cli("serve", "--help").out.split())
    assert_error(cli("--hub", "http://127.0.0.1:1", "serve", cwd=tmp_path), 2,
                 "does not work through a hub")


def test_serve_insecure_warns_only_off_the_loopback(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    local = background("serve", "--db", "sqlite:///a.db", "--insecure", "--port", "0",
                       "--host", "127.0.0.2", cwd=tmp_path)
    assert "(insecure)" in local.wait_for("hub on http://127.0.0.2:", stream="err")
    local.wait_for("hub ready", stream="err")
    open_to_all = background("serve", "--db", "sqlite:///b.db", "--insecure", "--port", "0",
                             "--host", "0.0.0.0", cwd=tmp_path)
    open_to_all.wait_for("hub ready", stream="err")
    assert any(line.startswith("warning: serving on 0.0.0.0 with --insecure")
               for line in open_to_all.err), open_to_all.err
    assert not any("warning" in line for line in local.err), local.err
    for server in (local, open_to_all):
        server.signal(signal.SIGINT)
        assert server.wait() == 0
        assert "hub stopped (SIGINT)" in server.err[-1]


# -- commands that do not read CONVEYOR_DB -----------------------------------------------------


def test_demo_ignores_conveyor_db_and_stops_on_ctrl_c_with_a_summary(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    real = tmp_path / "real.db"
    demo = background("demo", "--every", "0.5", cwd=tmp_path,
                      env=clean_env(CONVEYOR_DB=f"sqlite:///{real}"))
    demo_db = f"sqlite:///{tmp_path / 'conveyor-demo.db'}"

    def some_succeeded() -> bool:
        assert demo.proc.poll() is None, demo.err
        if not (tmp_path / "conveyor-demo.db").exists():
            return False
        return bool(run(lambda app: app.count({"status": "succeeded"}), demo_db))

    eventually(some_succeeded, timeout=30, interval=0.2, what="a demo task to succeed")
    demo.signal(signal.SIGINT)
    assert demo.wait() == 0, demo.err
    assert not any("Traceback" in line for line in demo.err), demo.err
    summary = "\n".join(demo.out)
    assert "demo stopped" in summary
    assert "demo:download" in summary and "succeeded" in summary
    assert not real.exists()


def test_worker_runs_on_its_apps_storage_not_conveyor_db(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    own = tmp_path / "own.db"
    other = tmp_path / "other.db"
    (tmp_path / "ownapp.py").write_text(textwrap.dedent(f'''
        from conveyor import Context, Conveyor

        app = Conveyor("sqlite:///{own}", stop_timeout=1.0)

        @app.handler("t:own")
        async def own(ctx: Context) -> str:
            return "ran"
    '''), encoding="utf-8")
    worker = background("worker", "ownapp:app", cwd=tmp_path,
                        env=clean_env(CONVEYOR_DB=f"sqlite:///{other}"))
    started = worker.wait_for("started")
    assert f"started on sqlite:///{own}" in started, started
    done = cli("add", "t:own", "--wait", "--db", f"sqlite:///{own}")
    assert done.code == 0 and json.loads(done.out) == "ran", done
    assert not other.exists()
    # --db on the command line replaces the app's storage
    replaced = background("worker", "ownapp:app", "--db", f"sqlite:///{other}", cwd=tmp_path)
    assert f"started on sqlite:///{other}" in replaced.wait_for("started")
    worker.signal(signal.SIGTERM)
    replaced.signal(signal.SIGTERM)
    assert worker.wait() == 0 and replaced.wait() == 0
