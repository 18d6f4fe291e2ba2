"""Claims of docs/cli.md that no other test checked, each through the real CLI: the
error lines the doc quotes, the commands that never create a database, migrate,
bench and serve defaults, CONVEYOR_DEBUG, ls details, prune's units, JSON depth
with --db and through a hub, worker signals and targets, the demo app and demo.

Not repeated here: what the other tests/cli/test_*.py already check.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import textwrap
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conveyor.hub._credentials import CredentialStore

from ._support import (
    Background,
    Result,
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

MISSING = "01a00000-0000-7000-8000-000000000000"


def _all(calls: dict[str, Sequence[str]], **kwargs: object) -> dict[str, Result]:
    """Run every command line of ``calls`` concurrently; their results by name."""
    with ThreadPoolExecutor(6) as pool:
        futures = {name: pool.submit(cli, *args, **kwargs)  # type: ignore[arg-type]
                   for name, args in calls.items()}
        return {name: future.result() for name, future in futures.items()}


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


# -- output, errors and exit codes -------------------------------------------------------


def test_the_error_lines_the_doc_quotes_and_refused_values(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    add(url, "seed:task")
    results = _all({
        "payload": ("add", "mail:send", '{"to": ', "--db", url),
        "near": ("ls", '{"priority": {"$near": 1}}', "--db", url),
        "show": ("show", MISSING, "--db", url),
        "or": ("ls", '{"$or": [{"action": "a:b"}, {"priority": {"$gt": "x"}}]}', "--db", url),
        "inf": ("add", "a:b", "--priority", "inf", "--db", url),
    })
    assert assert_error(results["payload"], 2) == (
        "error: payload is not valid JSON: Expecting value (line 1, column 8)")
    assert assert_error(results["near"], 2).startswith(
        "error: filter.priority.$near: unknown operator $near; valid operators are $eq, $ne, ")
    assert assert_error(results["show"], 2) == f"error: no task with id {MISSING}"
    assert_error(results["or"], 2, "filter.$or[1].priority.$gt")
    assert_error(results["inf"], 2, "--priority", "finite")
    assert count(url) == 1  # bad input changed nothing


def test_conveyor_debug_adds_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "garbage.db").write_text("this is not a database\n")
    url = f"sqlite:///{tmp_path / 'garbage.db'}"
    debug = cli("ls", "--db", url, env=clean_env(CONVEYOR_DEBUG="1"))
    assert debug.code == 1, debug
    first = debug.err.splitlines()[0]
    assert first.startswith("error: ") and "not a database" in first, debug
    assert "Traceback (most recent call last)" in debug.err, debug


@pytest.mark.parametrize("args", [("add", "a:b", "1", "--delay", "5x"),
                                  ("add", "a:b", "1", "--priority", "nan"),
                                  ("nosuchcmd",)])
def test_conveyor_debug_adds_the_traceback_of_usage_errors_too(tmp_path: Path,
                                                                args: tuple[str, ...]) -> None:
    """"of any error, bad input too": a value an option refuses and an unknown
    command also print their traceback (they printed the one line only)."""
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    plain = cli(*args, "--db", url, env=clean_env())
    debug = cli(*args, "--db", url, env=clean_env(CONVEYOR_DEBUG="1"))
    assert plain.code == debug.code == 2, (plain, debug)
    assert "Traceback" not in plain.err and len(plain.err.splitlines()) == 1, plain
    assert debug.err.splitlines()[0] == plain.err.splitlines()[0], debug
    assert "Traceback (most recent call last)" in debug.err, debug


# -- which commands create a SQLite file -----------------------------------------------------


def test_tail_retry_prioritize_delete_never_create_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    url = f"sqlite:///{missing}"
    results = _all({"tail": ("tail", MISSING, "--db", url),
                    "retry": ("retry", MISSING, "--db", url),
                    "prioritize": ("prioritize", MISSING, "1", "--db", url),
                    "delete": ("delete", MISSING, "--db", url)})
    for result in results.values():
        assert_error(result, 1, "no database at", "typo.db")
    assert not missing.exists()


def test_migrate_prints_its_line_is_safe_in_parallel_and_takes_db_first(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    first = f"sqlite:///{tmp_path / 'first.db'}"
    results = _all({"a": ("migrate", "--db", url), "b": ("migrate", "--db", url),
                    "first": ("--db", first, "migrate")})
    versions = set()
    for result in results.values():
        assert result.code == 0, result
        found = re.fullmatch(r"schema version (\d+) at (\S+)\n", result.out)
        assert found is not None, result
        versions.add(found.group(1))
    assert len(versions) == 1
    assert results["a"].out == f"schema version {versions.pop()} at {url}\n"
    assert (tmp_path / "new.db").exists() and (tmp_path / "first.db").exists()
    assert count(url) == 0


def test_memory_and_sqlite_url_options_are_accepted(tmp_path: Path) -> None:
    with_options = f"sqlite:///{tmp_path / 'opt.db'}?synchronous=normal"
    added = cli("add", "a:b", "--db", with_options)
    assert added.code == 0, added
    assert (tmp_path / "opt.db").exists()
    assert not any("?" in p.name for p in tmp_path.iterdir())
    listed = cli("ls", "--json", "--db", with_options)
    assert [t["id"] for t in json.loads(listed.out)] == [added.out.strip()]
    memory = cli("add", "a:b", "--json", "--db", "memory://", cwd=tmp_path)
    assert memory.code == 0 and json.loads(memory.out)["action"] == "a:b", memory
    assert not (tmp_path / "conveyor.db").exists()


def test_bench_creates_a_given_file_and_never_reads_conveyor_db(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    env_db = tmp_path / "env.db"
    small = ("bench", "--tasks", "1", "--latency-samples", "0", "--json")
    with ThreadPoolExecutor(2) as pool:
        given = pool.submit(cli, *small, "--db", f"sqlite:///{fresh}", cwd=tmp_path)
        scratch = pool.submit(cli, *small, cwd=tmp_path,
                              env=clean_env(CONVEYOR_DB=f"sqlite:///{env_db}"))
        given_result, scratch_result = given.result(), scratch.result()
    assert given_result.code == 0, given_result
    assert json.loads(given_result.out)["storage"] == f"sqlite:///{fresh}"
    assert fresh.exists() and find(f"sqlite:///{fresh}") == []  # its tasks are deleted
    assert scratch_result.code == 0, scratch_result
    assert "conveyor-bench-" in json.loads(scratch_result.out)["storage"]
    assert not env_db.exists() and not (tmp_path / "conveyor.db").exists()


def test_documented_defaults_in_help_and_refusals_without_a_hub(tmp_path: Path) -> None:
    nowhere = "http://127.0.0.1:1"
    results = _all({
        "serve": ("serve", "--help"),
        "demo-hub": ("--hub", nowhere, "demo"),
        "credentials-hub": ("--hub", nowhere, "credentials", "list"),
        "lease": ("serve", "--service-lease", "0.05", "--insecure", "--port", "0"),
        # nan and inf were accepted: every WebSocket's welcome then failed to encode
        "lease-nan": ("serve", "--service-lease", "nan", "--insecure", "--port", "0"),
        "lease-inf": ("serve", "--service-lease", "inf", "--insecure", "--port", "0"),
        "public-url": ("serve", "--public-url", "notaurl", "--insecure", "--port", "0"),
        "concurrency": ("worker", "m:app", "--concurrency", "3000000000"),
        "older-than": ("prune", "--older-than", "1e300", "--db",
                       f"sqlite:///{tmp_path / 'none.db'}"),
        "older-than-hub": ("prune", "--older-than", "1e300", "--hub", nowhere, "--key", "k"),
    }, cwd=tmp_path)
    serve = " ".join(results["serve"].out.split())
    for default in ("default: 127.0.0.1]", "default: 8765;", "at least 0.1.",
                    "default: 30.0]"):
        assert default in serve, (default, serve)
    assert_error(results["demo-hub"], 2, "'demo' does not work through a hub")
    assert_error(results["credentials-hub"], 2, "'credentials' does not work through a hub")
    assert_error(results["lease"], 2, "--service-lease")
    assert_error(results["lease-nan"], 2, "--service-lease", "finite")
    assert_error(results["lease-inf"], 2, "--service-lease", "finite")
    assert_error(results["public-url"], 2, "--public-url", "http://")
    assert_error(results["concurrency"], 2, "--concurrency", "100000")
    # the 100-year bound of durations names the option, with --db and through a hub
    assert_error(results["older-than"], 2, "--older-than", "100 years")
    assert_error(results["older-than-hub"], 2, "--older-than", "100 years")
    assert not any(tmp_path.iterdir())  # nothing was created


# -- ls, abort, prune --------------------------------------------------------------------------


def test_ls_stdin_filter_json_path_sort_repeated_options_and_abort_reason(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    bob = add(url, "mail:send", {"user": "bob"})
    ann = add(url, "mail:send", {"user": "ann"})
    cid = add(url, "geo:code", {"user": "cid"})
    dan = add(url, "geo:code", {"user": "dan"})
    run(lambda app: app.abort(dan.id), url)
    other = add(url, "pdf:make", tags={"long": "y" * 400})
    results = _all({
        "stdin": ("ls", "-", "--json", "--db", url),
        "sort": ("ls", "--sort", "payload.user", "--action", "mail:send", "--action",
                 "geo:code", "--json", "--db", url),
        "statuses": ("ls", "--status", "aborted", "--status", "queued", "--action", "geo:code",
                     "--json", "--db", url),
        "wide": ("ls", "--db", url),
    }, input='{"payload.user": "ann"}')

    def ids(name: str) -> list[str]:
        assert results[name].code == 0, results[name]
        return [t["id"] for t in json.loads(results[name].out)]

    assert ids("stdin") == [ann.id]
    assert ids("sort") == [ann.id, bob.id, cid.id, dan.id]
    assert sorted(ids("statuses")) == sorted([cid.id, dan.id])
    # not a terminal: at most 200 columns (COLUMNS: see test_outside_cli.py)
    assert results["wide"].code == 0 and other.id in results["wide"].out
    assert 120 < max(len(line) for line in results["wide"].out.splitlines()) <= 200

    aborted = cli("abort", other.id, "--json", "--db", url)
    assert aborted.code == 0, aborted
    assert json.loads(aborted.out)["reason"] == "aborted"
    assert get(url, other.id).reason == "aborted"


def test_prune_ages_with_every_unit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    done = add(url, "mail:send")
    run(lambda app: app.abort(done.id), url)
    with contextlib.closing(sqlite3.connect(tmp_path / "x.db")) as conn, conn:
        conn.execute("UPDATE conveyor_tasks SET finished_at = ? WHERE id = ?",
                     (time.time() - 86400 - 600, done.id))
    ages = {"30m": 1800.0, "2w": 1209600.0, "86400": 86400.0}
    results = _all({age: ("prune", "--older-than", age, "--json", "--db", url)
                    for age in ages if age != "86400"})
    for age, result in results.items():
        assert result.code == 0, result
        assert json.loads(result.out)["older_than"] == ages[age], (age, result)
    # the task finished a day ago: 30m reaches it, 2w does not
    assert {age: json.loads(result.out)["pruned"] for age, result in results.items()} == {
        "30m": 1, "2w": 0}
    assert count(url) == 0
    keep = add(url, "mail:send")
    run(lambda app: app.abort(keep.id), url)
    seconds = cli("prune", "--older-than", "86400", "--db", url)
    assert seconds.code == 0, seconds
    assert seconds.out.startswith("pruned 0 task(s)"), seconds
    assert [t.id for t in find(url)] == [keep.id]


# -- JSON depth ----------------------------------------------------------------------------------


def test_with_db_the_cli_reads_json_hundreds_of_levels_deep(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    added = cli("add", "deep:json", "-", "--db", url, input=_nested(500))
    assert added.code == 0, added
    payload = get(url, added.out.strip()).payload
    assert json.dumps(payload, separators=(",", ":")) == _nested(500)
    big = cli("add", "big:json", "-", "--db", url, input=json.dumps("x" * (1 << 20)))
    assert_error(big, 2, "over the limit of 1048576 bytes")
    assert count(url) == 1


def test_serve_defaults_from_the_environment_and_the_hubs_depth_limit(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    creds = tmp_path / "env-creds.json"
    _, key = CredentialStore(creds).add("ops", admin=True)
    db = f"sqlite:///{tmp_path / 'env.db'}"
    server = background("serve", "--port", "0", cwd=tmp_path,
                        env=clean_env(CONVEYOR_DB=db, CONVEYOR_CREDENTIALS=str(creds)))
    first = server.wait_for("hub on http://", stream="err")
    assert f"credentials: {creds}" in first and f"storage {db}" in first, first
    server.wait_for("hub ready", stream="err")
    assert (tmp_path / "env.db").exists()
    found = re.search(r"http://127\.0\.0\.1:\d+", first)
    assert found is not None
    env = clean_env(CONVEYOR_HUB=found.group(0), CONVEYOR_KEY=key)
    results = _all({"ok": ("add", "deep:ok", _nested(63)),
                    "deep": ("add", "deep:no", _nested(64)),
                    "big": ("add", "big:no", "-")},
                   cwd=tmp_path, env=env, input=json.dumps("x" * (1 << 20)))
    assert results["ok"].code == 0, results["ok"]
    assert assert_error(results["deep"], 2) == (
        "error: the body is nested more than 64 levels deep")
    assert_error(results["big"], 2, "1048576")
    assert [t.action for t in find(db)] == ["deep:ok"]
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


# -- worker ----------------------------------------------------------------------------------------

HOLD_MODULE = textwrap.dedent('''
    import asyncio
    import os
    import types
    from pathlib import Path

    from conveyor import Context, Conveyor

    registry = types.SimpleNamespace(app=Conveyor(os.environ["CONVEYOR_DB"], stop_timeout=30.0))

    @registry.app.handler("t:hold")
    async def hold(ctx: Context) -> str:
        gate = Path(ctx.payload["gate"])
        while not gate.exists():
            await asyncio.sleep(0.02)
        return "released"

    app = Conveyor(os.environ["CONVEYOR_DB"])

    @app.handler("t:other")
    async def other(ctx: Context) -> None:
        return None
''')


def test_worker_dotted_target_default_attribute_verbose_and_a_second_signal(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    (tmp_path / "holdapp.py").write_text(HOLD_MODULE, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'hold.db'}"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    env = clean_env(CONVEYOR_DB=url)
    worker = background("worker", "holdapp:registry.app", "-v", cwd=tmp_path, env=env)
    plain = background("worker", "holdapp", "--db", other, cwd=tmp_path, env=env)
    started = worker.wait_for("started")
    assert re.fullmatch(rf"worker \S+ started on {re.escape(url)}: 1 action\(s\) \(t:hold\), "
                        r"concurrency \d+; Ctrl-C to stop", started), started
    assert "started on " + other + ": 1 action(s) (t:other)" in plain.wait_for("started")
    worker.wait_for(" INFO ", stream="err")  # -v: conveyor's info messages on stderr

    gate = tmp_path / "gate"
    task = add(url, "t:hold", {"gate": str(gate)})
    eventually(lambda: get(url, task.id).status == "running", what="the task to start")
    worker.signal(signal.SIGTERM)
    worker.wait_for("SIGTERM: stopping; 1 running task(s) get up to 30s to finish",
                    stream="err")
    worker.signal(signal.SIGINT)
    worker.wait_for("SIGINT: already stopping", stream="err")
    gate.touch()
    assert worker.wait() == 0, worker.err
    assert re.fullmatch(r"worker \S+ stopped \(SIGTERM\): 1 task run\(s\) finished, 1 claimed",
                        worker.out[-1]), worker.out
    assert get(url, task.id).result == "released"

    plain.signal(signal.SIGINT)
    assert plain.wait() == 0
    assert plain.out[-1].endswith("stopped (SIGINT): 0 task run(s) finished, 0 claimed")
    assert not any(" INFO " in line for line in plain.err), plain.err  # warnings only


def test_the_demo_module_app_uses_conveyor_db_or_the_demo_file(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    mine = f"sqlite:///{tmp_path / 'mine.db'}"
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    from_env = background("worker", "conveyor.demo:app", cwd=tmp_path,
                          env=clean_env(CONVEYOR_DB=mine))
    default = background("worker", "conveyor.demo:app", cwd=elsewhere)
    assert f"started on {mine}: 3 action(s)" in from_env.wait_for("started")
    assert "started on sqlite:///conveyor-demo.db: 3 action(s)" in default.wait_for("started")
    # the doc's example, on the demo file, with the worker of the demo app
    done = cli("add", "demo:download", '{"size": 4096}', "--wait", "--json", "--db",
               "sqlite:///conveyor-demo.db", cwd=elsewhere)
    assert done.code == 0, done
    task = json.loads(done.out)
    assert task["result"] == {"bytes": 4096, "url": "https://example.com/file.bin"}
    assert (task["progress"]["current"], task["progress"]["total"]) == (20, 20)
    for worker in (from_env, default):
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0


def test_demo_stops_on_sigterm_with_a_summary_and_nothing_left_running(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    demo = background("demo", cwd=tmp_path)
    demo.wait_for("conveyor demo: worker")
    db = f"sqlite:///{tmp_path / 'conveyor-demo.db'}"
    eventually(lambda: count(db) > 0, what="the demo's first tasks")
    demo.signal(signal.SIGTERM)
    assert demo.wait() == 0, demo.err
    out = "\n".join(demo.out)
    assert "stopping (SIGTERM): running tasks get up to 2s to finish" in out, out
    assert "demo stopped (SIGTERM)" in out, out
    assert "demo:download" in out and "queued" in out, out
    assert not any("Traceback" in line for line in demo.err), demo.err
    assert count(db, {"status": "running"}) == 0  # handed back to the queue
