"""add, ls, show, stats, abort, retry, prioritize, delete, prune and --db, through the real CLI."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from conveyor import Conveyor, LogLevel
from conveyor.storage.base import NewLog

from ._support import add, assert_error, clean_env, cli, count, find, get


def test_add_prints_the_id_and_stores_the_task(db: str) -> None:
    result = cli("add", "mail:send", '{"to": "ann@example.com"}', "--db", db)
    assert result.code == 0, result
    task_id = result.out.strip()
    task = get(db, task_id)
    assert task.action == "mail:send"
    assert task.payload == {"to": "ann@example.com"}
    assert task.status == "queued"
    assert task.priority == 0


def test_add_with_every_option_prints_json(db: str) -> None:
    result = cli("add", "geo:code", '{"q": "Paris"}', "--priority", "2.5", "--delay", "60",
                 "--tag", "team=ops", "--tag", "n=3", "--tag", 'obj={"a": [1]}', "--tag", "e=",
                 "--unique-key", "paris", "--max-attempts", "4", "--timeout", "9.5", "--json",
                 "--db", db)
    assert result.code == 0, result
    data = json.loads(result.out)
    assert data["action"] == "geo:code"
    assert data["priority"] == 2.5
    assert data["run_at"] >= data["created_at"] + 59
    assert data["tags"] == {"team": "ops", "n": 3, "obj": {"a": [1]}, "e": ""}
    assert data["unique_key"] == "paris"
    assert data["max_attempts"] == 4
    assert data["run_timeout"] == 9.5
    stored = get(db, data["id"])
    assert stored.tags == data["tags"]

    again = cli("add", "geo:code", '{"q": "Paris"}', "--unique-key", "paris", "--db", db)
    assert again.code == 0, again
    assert again.out.strip() == data["id"]
    assert "already holds unique key 'paris'" in again.err
    assert count(db) == 1


def test_a_pickup_timeout_from_the_command_line(db: str) -> None:
    """The handler's pickup timeout does not reach tasks the CLI adds: it is given here."""
    result = cli("add", "a:b", "--pickup-timeout", "5m", "--json", "--db", db)
    assert result.code == 0, result
    assert json.loads(result.out)["pickup_timeout"] == 300
    assert get(db, json.loads(result.out)["id"]).pickup_timeout == 300
    for bad in ("0", "-1", "soon"):
        assert_error(cli("add", "a:b", "--pickup-timeout", bad, "--db", db), 2,
                     "--pickup-timeout")
    assert count(db) == 1


def test_seconds_may_be_written_with_a_unit(db: str) -> None:
    result = cli("add", "a:b", "--delay", "5m", "--timeout", "1.5h", "--json", "--db", db)
    assert result.code == 0, result
    data = json.loads(result.out)
    assert 299 <= data["run_at"] - data["created_at"] <= 301
    assert data["run_timeout"] == 5400
    in_days = json.loads(cli("add", "a:b", "--delay", "2d", "--json", "--db", db).out)
    assert 2 * 86400 - 1 <= in_days["run_at"] - in_days["created_at"] <= 2 * 86400 + 1
    assert count(db) == 2


def test_payload_from_stdin_and_from_a_file(db: str, tmp_path: Path) -> None:
    from_stdin = cli("add", "a:b", "-", "--db", db, input='{"from": "stdin"}')
    assert from_stdin.code == 0, from_stdin
    payload_file = tmp_path / "payload.json"
    payload_file.write_text('[1, 2, {"three": 3}]', encoding="utf-8")
    from_file = cli("add", "a:b", f"@{payload_file}", "--db", db)
    assert from_file.code == 0, from_file
    no_payload = cli("add", "a:b", "--db", db)
    assert no_payload.code == 0, no_payload
    assert get(db, from_stdin.out.strip()).payload == {"from": "stdin"}
    assert get(db, from_file.out.strip()).payload == [1, 2, {"three": 3}]
    assert get(db, no_payload.out.strip()).payload is None


def test_add_warns_when_no_worker_handles_the_action(db: str) -> None:
    result = cli("add", "nobody:home", "--db", db)
    assert result.code == 0, result
    assert result.err.splitlines() == [
        "warning: no running worker handles 'nobody:home'; the task will wait until one does"]
    assert get(db, result.out.strip()).status == "queued"
    assert count(db) == 1


def test_db_option_before_or_after_the_command_and_from_the_environment(
        tmp_path: Path) -> None:
    first = f"sqlite:///{tmp_path / 'first.db'}"
    second = f"sqlite:///{tmp_path / 'second.db'}"
    third = f"sqlite:///{tmp_path / 'third.db'}"
    assert cli("--db", first, "add", "x:one").code == 0
    assert cli("add", "x:two", "--db", second).code == 0
    assert cli("add", "x:three", env=clean_env(CONVEYOR_DB=third)).code == 0
    # the option after the command wins over the one before it, and both over the env
    assert cli("--db", third, "add", "x:two-b", "--db", second,
               env=clean_env(CONVEYOR_DB=first)).code == 0
    assert [t["action"] for t in json.loads(cli("ls", "--json", "--db", first).out)] == ["x:one"]
    assert sorted(t["action"] for t in json.loads(cli("--db", second, "ls", "--json").out)) \
        == ["x:two", "x:two-b"]
    listed = cli("ls", "--json", env=clean_env(CONVEYOR_DB=third))
    assert [t["action"] for t in json.loads(listed.out)] == ["x:three"]
    # without --db nor the env: sqlite:///conveyor.db in the current directory
    assert cli("add", "x:default", cwd=tmp_path).code == 0
    assert (tmp_path / "conveyor.db").exists()


def test_ls_filters_sorts_and_pages(db: str) -> None:
    a = add(db, "mail:send", {"user": "ann"}, priority=3, tags={"team": "ops"})
    b = add(db, "mail:send", {"user": "bob"}, priority=1)
    c = add(db, "geo:code", {"user": "ann"}, priority=2)
    add(db, "geo:code", {"user": "cid"})
    d = add(db, "geo:code", {"user": "dan"})
    run_abort = cli("abort", d.id, "--db", db)
    assert run_abort.code == 0, run_abort

    def ids(*args: str) -> list[str]:
        result = cli("ls", *args, "--json", "--db", db)
        assert result.code == 0, result
        return [t["id"] for t in json.loads(result.out)]

    assert len(ids()) == 5
    assert ids()[0] == d.id  # newest first by default
    assert ids('{"payload.user": "ann"}', "--sort", "created_at") == [a.id, c.id]
    assert ids("--action", "mail:send", "--sort", "priority") == [b.id, a.id]
    assert ids("--status", "aborted") == [d.id]
    assert ids('{"tags.team": "ops"}') == [a.id]
    assert ids("--sort", "-priority,created_at", "--limit", "2") == [a.id, c.id]
    assert ids("--sort", "-priority,created_at", "--limit", "2", "--skip", "1") == [c.id, b.id]
    assert ids('{"priority": {"$gt": 1}}', "--action", "geo:code") == [c.id]
    # a name no task can have is refused, not answered with "no tasks match"
    assert_error(cli("ls", "--action", "mail:send", "--action", "bad action!", "--db", db),
                 2, "--action: invalid action name 'bad action!'")

    table = cli("ls", "--sort", "-priority", "--limit", "4", "--db", db)
    assert table.code == 0, table
    for task in (a, b, c):
        assert task.id in table.out
    assert "mail:send" in table.out and "team=ops" in table.out and "geo:code" in table.out
    assert "4 of 5 task(s) (see --limit and --skip)" in table.out


def test_show_prints_every_field(db: str) -> None:
    task = add(db, "mail:send", {"to": "ann"}, tags={"team": "ops"}, priority=4)
    result = cli("show", task.id, "--db", db)
    assert result.code == 0, result
    for field in task.to_json():
        assert field in result.out, field
    assert task.id in result.out and '"to": "ann"' in result.out and "queued" in result.out

    as_json = cli("show", task.id, "--json", "--logs", "--db", db)
    assert as_json.code == 0, as_json
    data = json.loads(as_json.out)
    assert data == {**task.to_json(), "logs": []}


def test_stats_counts_per_action_and_status(db: str) -> None:
    add(db, "mail:send")
    add(db, "mail:send")
    doomed = add(db, "geo:code")
    assert cli("abort", doomed.id, "--db", db).code == 0
    result = cli("stats", "--json", "--db", db)
    assert result.code == 0, result
    assert json.loads(result.out) == {"mail:send": {"queued": 2}, "geo:code": {"aborted": 1}}
    table = cli("stats", "--db", db)
    assert table.code == 0, table
    assert "mail:send" in table.out and "geo:code" in table.out and "total" in table.out


def test_abort_retry_prioritize_delete(db: str) -> None:
    task = add(db, "mail:send")
    other = add(db, "mail:send")

    prioritized = cli("prioritize", task.id, "7", "--db", db)
    assert prioritized.code == 0, prioritized
    assert get(db, task.id).priority == 7
    zero = cli("prioritize", task.id, "0", "--json", "--db", db)
    assert json.loads(zero.out)["priority"] == 0

    aborted = cli("abort", task.id, "--reason", "not needed", "--db", db)
    assert aborted.code == 0, aborted
    assert f"task {task.id} aborted" in aborted.out
    stored = get(db, task.id)
    assert (stored.status, stored.reason) == ("aborted", "not needed")

    again = cli("abort", task.id, "--db", db)
    assert again.code == 1
    assert "already aborted" in again.err

    late = cli("prioritize", task.id, "3", "--db", db)
    assert late.code == 1 and "only queued tasks" in late.err

    retried = cli("retry", task.id, "--db", db)
    assert retried.code == 0, retried
    assert get(db, task.id).status == "queued"
    not_failed = cli("retry", other.id, "--db", db)
    assert not_failed.code == 1 and "only failed or aborted" in not_failed.err

    # delete: finished tasks only, and all or nothing
    assert cli("abort", task.id, "--db", db).code == 0
    refused = cli("delete", task.id, other.id, "--db", db)
    assert refused.code == 1, refused
    assert other.id in refused.err and "not finished" in refused.err
    assert count(db) == 2
    deleted = cli("delete", task.id, "--db", db)
    assert deleted.code == 0, deleted
    assert "deleted 1 task(s)" in deleted.out
    assert count(db) == 1


def test_workers_lists_nothing_without_workers(db: str) -> None:
    add(db, "x:y")
    result = cli("workers", "--json", "--db", db)
    assert result.code == 0, result
    assert json.loads(result.out) == []
    assert cli("workers", "--db", db).out.strip() == "no workers"


def test_help_and_version() -> None:
    result = cli("--help")
    assert result.code == 0
    for command in ("add", "ls", "show", "tail", "abort", "retry", "prioritize", "delete",
                    "prune", "stats", "workers", "worker", "demo", "bench"):
        assert f"  {command} " in result.out, command
    assert cli("--version").out.startswith("conveyor, version")


def test_prune_deletes_only_tasks_finished_long_enough_ago(db: str) -> None:
    done = add(db, "mail:send")
    queued = add(db, "mail:send")
    assert cli("abort", done.id, "--db", db).code == 0

    young = cli("prune", "--older-than", "1h", "--db", db)
    assert young.code == 0, young
    assert "pruned 0 task(s)" in young.out and count(db) == 2
    weeks = cli("prune", "--older-than", "2w", "--db", db)
    assert weeks.code == 0 and "finished more than 1209600 s ago" in weeks.out, weeks

    for bad in ("7x", "-1", "", "inf"):
        assert_error(cli("prune", "--older-than", bad, "--db", db), 2, "--older-than")
    assert_error(cli("prune", "--db", db), 2, "--older-than")
    assert count(db) == 2

    pruned = cli("prune", "--older-than", "0", "--json", "--db", db)
    assert pruned.code == 0, pruned
    assert json.loads(pruned.out) == {"pruned": 1, "older_than": 0.0}
    assert [t.id for t in find(db)] == [queued.id]


def test_max_attempts_beyond_what_a_backend_stores_is_exit_2(tmp_path: Path) -> None:
    """PostgreSQL stores max_attempts as an integer column: 2**31 and more were a
    storage error there (exit 1) and a float on SQLite (exit 0)."""
    db = f"sqlite:///{tmp_path / 'big.db'}"
    for bad in ("2147483648", "99999999999999999999"):
        assert_error(cli("add", "x:y", "--max-attempts", bad, "--db", db), 2,
                     "--max-attempts", "2147483647")
    assert count(db) == 0
    task_id = cli("add", "x:y", "--max-attempts", "2147483647", "--db", db).out.strip()
    assert get(db, task_id).max_attempts == 2**31 - 1


def test_tail_and_show_write_a_long_log_line_whole_to_a_pipe(tmp_path: Path) -> None:
    """To a pipe or a file each log line is one line, however long, and plain (rich
    wrapped it at 200 columns, and rendered each line slowly: 100,000 lines took
    45 s)."""
    db = f"sqlite:///{tmp_path / 'tasks.db'}"
    long = "word " * 100 + "end"

    async def fill() -> str:
        async with Conveyor(db) as app:
            task = await app.add("logs:long", None)
            await app.storage.append_logs([
                NewLog(task.id, LogLevel.INFO, long, time.time(), {"k": "v"}),
                NewLog(task.id, LogLevel.WARNING, "short", time.time())])
            await app.abort(task.id, "done")
            return task.id

    task_id = asyncio.run(fill())
    for args in (("tail", task_id), ("show", task_id, "--logs")):
        result = cli(*args, "--db", db)
        lines = [line for line in result.out.splitlines() if "INFO" in line or "WARNING" in line]
        assert len(lines) == 2, result.out
        assert lines[0].endswith(f"INFO    {long} " + '{"k":"v"}'), lines[0]
        assert lines[1].endswith("WARNING short") and "\x1b" not in result.out
