"""Black-box tests of the core, written from issue 2, the README and the docs.

They use only the public API (``from conveyor import ...``), SQLite files in
``tmp_path``, ``memory://`` and the real CLI in subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import conveyor
from conveyor import (
    DEFAULT_URL,
    ConfigurationError,
    Context,
    Conveyor,
    ConveyorError,
    ErrorItem,
    Event,
    EventOverflow,
    LogLevel,
    QueryError,
    ResultItem,
    SchemaError,
    Status,
    StorageError,
    SyncConveyor,
    TaskAborted,
    TaskFailed,
    TaskNotFound,
    ValidationError,
    WaitTimeout,
)
from conveyor.events import EVENT_TYPES

from ..cli._support import assert_error, clean_env, cli

# --- the task model and the names the docs promise ---------------------------------


def test_statuses_and_the_default_url() -> None:
    assert [s.value for s in Status] == ["queued", "running", "succeeded", "failed", "aborted"]
    assert Status("queued") is Status.QUEUED and Status.FAILED == "failed"
    assert [level.name.lower() for level in LogLevel] == ["debug", "info", "warning", "error"]
    assert DEFAULT_URL == "sqlite:///conveyor.db"
    assert issubclass(QueryError, ValidationError) and issubclass(ValidationError, ValueError)
    assert issubclass(TaskNotFound, LookupError) and issubclass(WaitTimeout, TimeoutError)
    assert issubclass(SchemaError, StorageError) and issubclass(StorageError, ConveyorError)
    assert issubclass(ConfigurationError, ConveyorError)
    assert issubclass(ConfigurationError, ValueError)
    with pytest.raises(ValueError, match="unknown storage URL"):
        Conveyor("nosuch://x")


def test_every_documented_event_type_is_known() -> None:
    documented = {
        "task.added", "task.started", "task.progress", "task.log", "task.result",
        "task.succeeded", "task.failed", "task.aborted", "task.retrying", "task.rescheduled",
        "task.prioritized", "task.abort_requested", "task.released", "task.rescued",
        "task.retried", "task.expired", "task.deleted", "task.ended", "worker.started",
        "worker.stopped",
    }
    assert documented <= set(EVENT_TYPES)


# --- the README's example -----------------------------------------------------------


async def test_the_readme_example_runs(app: Conveyor) -> None:
    @app.handler("files:download", environment={"chunk": 1024}, max_attempts=3, timeout=60)
    async def download(ctx: Context[Any]) -> dict[str, Any]:
        assert ctx.env is ctx.environment
        for i in range(10):
            await ctx.progress(i + 1, total=10, message="downloading")
            ctx.log.info("chunk %s", i)
        return {"bytes": 10 * ctx.env["chunk"]}

    async with app:
        before = time.time()
        task = await app.add("files:download", {"url": "..."}, priority=-1, delay=0.2,
                             tags={"user": "ann"})
        assert task.status is Status.QUEUED and task.priority == -1.0
        # 0.2 s after the call (its created_at, when the row was written, can come
        # later than the call's "now" under load: 76 ms once with 2 busy processes)
        assert task.run_at >= before + 0.2
        assert task.max_attempts == 3 and task.run_timeout == 60
        result = await app.wait(task.id, timeout=30)
    assert result == {"bytes": 10240}
    done = await app.get(task.id, logs=True)
    assert done.status is Status.SUCCEEDED and done.tags == {"user": "ann"}
    assert done.started_at is not None and done.started_at >= task.run_at
    assert done.progress is not None and (done.progress.current, done.progress.total) == (10, 10)
    assert done.progress.message == "downloading"
    assert done.logs is not None
    assert [line.message for line in done.logs] == [f"chunk {i}" for i in range(10)]
    assert [line.seq for line in done.logs] == sorted(line.seq for line in done.logs)


async def test_the_context_shortcuts(app: Conveyor) -> None:
    seen: dict[str, Any] = {}

    @app.handler("ctx:look", environment="env!")
    async def look(ctx: Context[Any]) -> None:
        seen.update(id=ctx.id, action=ctx.action, tags=ctx.tags, attempt=ctx.attempt,
                    status=ctx.task.status, payload=ctx.payload, env=ctx.env,
                    aborted=ctx.aborted, reason=ctx.abort_reason)

    async with app:
        task = await app.add("ctx:look", {"a": [1, 2]}, tags={"t": 1})
        await app.wait(task.id, timeout=10)
    assert seen == {"id": task.id, "action": "ctx:look", "tags": {"t": 1}, "attempt": 1,
                    "status": Status.RUNNING, "payload": {"a": [1, 2]}, "env": "env!",
                    "aborted": False, "reason": None}


# --- adding -------------------------------------------------------------------------


async def test_priorities_are_floats_lower_first_fifo_within(app: Conveyor) -> None:
    ran: list[int] = []

    @app.handler("prio:run")
    async def run(ctx: Context[Any]) -> None:
        ran.append(ctx.payload)

    await app.open()
    ids = [(await app.add("prio:run", i, priority=p)).id
           for i, p in enumerate([1.5, 0, -2.25, 0, 1.5, -2.25, 0.5])]
    async with app:
        for task_id in ids:
            await app.wait(task_id, timeout=10)
    assert ran == [2, 5, 1, 3, 6, 0, 4]


async def test_an_action_nobody_handles_is_accepted(app: Conveyor) -> None:
    task = await app.add("nobody:handles", {"x": 1})
    assert (await app.get(task.id)).status is Status.QUEUED


@pytest.mark.parametrize("options", [
    {"payload": object()},
    {"payload": {"x": float("nan")}},
    {"payload": "a" * (1 << 20)},
    {"priority": "high"},
    {"priority": float("inf")},
    {"delay": -1},
    {"tags": ["user", "ann"]},
    {"tags": {"a.b": 1}},
    {"bogus_option": 1},
])
async def test_bad_input_is_refused_and_nothing_is_written(app: Conveyor,
                                                           options: dict[str, Any]) -> None:
    options = dict(options)
    payload = options.pop("payload", None)
    with pytest.raises(ValidationError):
        await app.add("bad:input", payload, **options)
    with pytest.raises(ValidationError):
        await app.add_many([("bad:input", 1), {"action": "bad:input", "payload": payload,
                                                **options}])
    assert await app.count() == 0


async def test_the_payload_limit_is_one_mib_and_configurable(url: str) -> None:
    app = Conveyor(url)
    try:
        exactly = "a" * ((1 << 20) - 2)  # its JSON text, with the quotes, is exactly 1 MiB
        await app.add("size:ok", exactly)
        with pytest.raises(ValidationError, match="payload"):
            await app.add("size:big", exactly + "a")
        assert await app.count({"action": "size:big"}) == 0
    finally:
        await app.close()
    small = Conveyor(url, max_payload=100)
    try:
        await small.add("size:ok", "a" * 98)
        with pytest.raises(ValidationError, match="payload"):
            await small.add("size:big", "a" * 99)
        with pytest.raises(ValidationError, match="tags"):
            await small.add("size:big", None, tags={"t": "a" * 100})
        assert await small.count({"action": "size:big"}) == 0
        assert await small.count({"action": "size:ok"}) >= 1
    finally:
        await small.close()


async def test_add_many_takes_every_documented_item_form(app: Conveyor) -> None:
    tasks = await app.add_many([("a:x", 1), ("b:x", 2, {"priority": 3}),
                                {"action": "c:x", "payload": None, "delay": 10}])
    assert [(t.action, t.payload, t.priority) for t in tasks] == [
        ("a:x", 1, 0.0), ("b:x", 2, 3.0), ("c:x", None, 0.0)]
    # the delay counts from the call; created_at is when the row was built, a moment later
    # (more than 0.1 s on a loaded machine)
    assert 9.0 <= tasks[2].run_at - tasks[2].created_at <= 10.0
    assert [t.id for t in await app.find(sort="created_at")] == [t.id for t in tasks]


# --- reading ------------------------------------------------------------------------


async def test_get_find_find_one_count_exists_and_stats(app: Conveyor) -> None:
    a = await app.add("read:a", {"size": 10}, priority=2, tags={"user": "ann"})
    b = await app.add("read:a", {"size": 2000}, priority=1)
    c = await app.add("read:b", {"size": 5000})
    assert (await app.get(a.id)).payload == {"size": 10}
    with pytest.raises(TaskNotFound):
        await app.get("01a00000-0000-7000-8000-000000000000")
    assert [t.id for t in await app.find({"action": "read:a"}, sort="priority")] == [b.id, a.id]
    assert [t.id for t in await app.find(sort="-created_at", limit=2)] == [c.id, b.id]
    assert [t.id for t in await app.find(sort="created_at", limit=1, skip=1)] == [b.id]
    first = await app.find_one({"action": "read:a"}, sort="-priority")
    assert first is not None and first.id == a.id
    assert await app.find_one({"action": "read:none"}) is None
    assert await app.count({"payload.size": {"$gt": 1000}}) == 2
    assert await app.count() == 3
    assert await app.exists(a.id)
    assert not await app.exists("01a00000-0000-7000-8000-000000000000")
    assert await app.exists({"tags.user": "ann"})
    assert not await app.exists({"tags.user": "bob"})
    await app.abort(c.id)
    assert await app.stats() == {"read:a": {"queued": 2}, "read:b": {"aborted": 1}}
    with pytest.raises(QueryError) as info:
        await app.find({"priority": {"$near": 1}})
    assert info.value.path == "filter.priority.$near"


async def test_sort_orders_types_as_documented(app: Conveyor) -> None:
    missing = object()
    values: list[Any] = [[1], "b", 2, True, None, "a", False, 1.5, {"k": 1}, missing]
    ids = [(await app.add("sort:v", {} if v is missing else {"v": v})).id for v in values]

    def order(tasks: list[Any]) -> list[int]:
        return [ids.index(t.id) for t in tasks]

    # missing / null < false < true < numbers < strings < objects and lists; ties by id
    assert order(await app.find(sort="payload.v")) == [4, 9, 6, 3, 7, 2, 5, 1, 0, 8]
    # descending reverses the whole order, but ties still go by id ascending
    assert order(await app.find(sort=[["payload.v", "desc"]])) == [0, 8, 1, 5, 2, 7, 3, 6, 4, 9]
    assert order(await app.find({"payload.v": {"$gt": 1}}, sort={"payload.v": -1})) == [2, 7]
    assert order(await app.find({"payload.v": {"$gte": "a"}}, sort="-payload.v")) == [1, 5]


async def test_get_with_logs_up_to_a_level(app: Conveyor) -> None:
    @app.handler("logs:levels")
    async def levels(ctx: Context[Any]) -> None:
        ctx.log.debug("d")
        ctx.log.info("i", data={"n": 1})
        ctx.log.warning("w")
        ctx.log.error("e")

    async with app:
        task = await app.add("logs:levels")
        await app.wait(task.id, timeout=10)
    assert (await app.get(task.id)).logs is None

    async def messages(level: str | LogLevel) -> list[str]:
        logs = (await app.get(task.id, logs=True, max_level=level)).logs
        assert logs is not None
        return [line.message for line in logs]

    assert await messages("debug") == ["d", "i", "w", "e"]
    assert await messages("info") == ["i", "w", "e"]
    assert await messages(LogLevel.WARNING) == ["w", "e"]
    assert await messages("error") == ["e"]
    full = await app.get(task.id, logs=True)
    assert full.logs is not None
    assert [(line.level, line.data) for line in full.logs][:2] == [
        (LogLevel.DEBUG, None), (LogLevel.INFO, {"n": 1})]
    with pytest.raises(ValidationError):
        await app.get(task.id, logs=True, max_level="verbose")


# --- waiting, logs and events -------------------------------------------------------


async def test_wait_raises_clear_errors(app: Conveyor) -> None:
    @app.handler("wait:fail")
    async def fail(ctx: Context[Any]) -> None:
        raise KeyError("nope")

    async with app:
        task = await app.add("wait:fail")
        with pytest.raises(TaskFailed) as failed:
            await app.wait(task.id, timeout=10)
        assert failed.value.task.id == task.id and failed.value.task.status is Status.FAILED
        assert failed.value.error is not None and failed.value.error.type == "KeyError"
        assert task.id in str(failed.value) and "KeyError" in str(failed.value)

        queued = await app.add("wait:nobody")
        with pytest.raises(WaitTimeout):
            await app.wait(queued.id, timeout=0.05)
        await app.abort(queued.id, reason="no longer needed")
        with pytest.raises(TaskAborted) as aborted:
            await app.wait(queued.id, timeout=10)
        assert aborted.value.task.reason == "no longer needed"
        ended = await app.wait_task(queued.id, timeout=10)
        assert ended.status is Status.ABORTED
        with pytest.raises(TaskNotFound):
            await app.wait("01a00000-0000-7000-8000-000000000000", timeout=1)


async def test_logs_replay_then_follow_until_the_end(app: Conveyor) -> None:
    go_on = asyncio.Event()

    @app.handler("logs:follow")
    async def follow(ctx: Context[Any]) -> None:
        ctx.log.info("before")
        await go_on.wait()
        ctx.log.warning("after")

    async with app:
        task = await app.add("logs:follow")
        lines: list[str] = []
        async for line in app.logs(task.id):
            lines.append(line.message)
            if line.message == "before":
                snapshot = [x.message async for x in app.logs(task.id, follow=False)]
                assert snapshot == ["before"]
                go_on.set()
        assert lines == ["before", "after"]  # the iteration ended with the task
        assert (await app.get(task.id)).status is Status.SUCCEEDED
        infos = [x.message async for x in app.logs(task.id, max_level="error")]
        assert infos == []


async def test_events_by_pattern_by_task_and_as_callbacks(app: Conveyor) -> None:
    @app.handler("ev:run")
    async def run(ctx: Context[Any]) -> str:
        await ctx.progress(1, total=2, message="half")
        ctx.log.info("line")
        ctx.emit({"part": 1})
        return "done"

    every: list[Event] = []
    unsubscribe = app.on("task.*", every.append)
    ends: list[str] = []

    @app.on(["task.succeeded", "task.failed"])
    def on_end(event: Event) -> None:
        ends.append(event.type)

    other = await app.add("ev:other")
    sub = app.events("task.*")
    task = await app.add("ev:run")  # no worker yet: it cannot start before the next line
    mine: list[Event] = []
    async with app.events("*", task_id=task.id) as only_mine, app:  # the worker starts
        await app.wait(task.id, timeout=10)
        async for event in sub:
            if event.type == "task.ended" and event.task_id == task.id:
                break
        sub.close()
        async for event in only_mine:
            mine.append(event)
            if event.type == "task.ended":
                break
    types = [e.type for e in mine]
    assert {e.task_id for e in mine} == {task.id}
    assert types[0] == "task.started" and types[-2:] == ["task.succeeded", "task.ended"]
    assert {"task.progress", "task.log", "task.result"} <= set(types)
    by_type = {e.type: e for e in mine}
    assert by_type["task.progress"].data["progress"].message == "half"
    assert by_type["task.log"].data["log"].message == "line"
    assert by_type["task.result"].data["value"] == {"part": 1}
    assert by_type["task.succeeded"].task is not None
    assert by_type["task.succeeded"].task.result == "done"
    assert ("task.added", other.id) in [(e.type, e.task_id) for e in every]
    assert ends == ["task.succeeded"]
    unsubscribe()
    before = len(every)
    await app.add("ev:other")
    assert len(every) == before


async def test_a_subscription_that_falls_behind_overflows(app: Conveyor) -> None:
    sub = app.events("task.added", maxsize=2)
    for i in range(5):
        await app.add("ev:many", i)
    with pytest.raises(EventOverflow):
        async for _ in sub:
            pass


async def test_result_and_error_sinks(app: Conveyor) -> None:
    results: queue.Queue[ResultItem] = queue.Queue()
    async_errors: asyncio.Queue[ErrorItem] = asyncio.Queue()
    called: list[tuple[Any, bool]] = []

    async def async_sink(item: ResultItem) -> None:
        called.append((item.value, item.final))

    app.add_result_sink(results)
    app.add_result_sink(async_sink)
    app.add_error_sink(async_errors)

    @app.handler("sink:work", max_attempts=2, backoff=0.01)
    async def work(ctx: Context[Any]) -> int:
        if ctx.attempt == 1:
            raise OSError("first")
        ctx.emit("partial")
        return 42

    async with app:
        task = await app.add("sink:work")
        assert await app.wait(task.id, timeout=10) == 42
    items = [results.get_nowait() for _ in range(results.qsize())]
    assert [(i.value, i.final, i.task.id) for i in items] == [
        ("partial", False, task.id), (42, True, task.id)]
    assert called == [("partial", False), (42, True)]
    error = async_errors.get_nowait()
    assert (error.error.type, error.error.message, error.final) == ("OSError", "first", False)
    assert async_errors.empty()


# --- typed payloads and the synchronous face ---------------------------------------


class Download(BaseModel):
    url: str
    retries: int = 0


class Done(BaseModel):
    size: int


async def test_typed_payloads_are_checked_at_add(app: Conveyor) -> None:
    received: list[Any] = []

    @app.handler("typed:download")
    async def download(ctx: Context[Download]) -> Done:
        received.append(ctx.payload)
        return Done(size=len(ctx.payload.url))

    with pytest.raises(ValidationError, match="url"):
        await app.add("typed:download", {"url": 5})
    with pytest.raises(ValidationError, match="url"):
        await app.add("typed:download", {"link": "x"})
    assert await app.count() == 0
    async with app:
        task = await app.add("typed:download", {"url": "abcd"})
        assert task.payload == {"url": "abcd", "retries": 0}
        assert await app.wait(task.id, timeout=10) == {"size": 4}
    assert isinstance(received[0], Download) and received[0].url == "abcd"


def test_the_synchronous_face(tmp_path: Path) -> None:
    with SyncConveyor(f"sqlite:///{tmp_path / 's.db'}", lease=5.0) as app:
        @app.handler("sync:double")
        def double(ctx: Context[Any]) -> int:
            ctx.log.info("doubling %s", ctx.payload)
            return int(ctx.payload) * 2

        events = app.events("task.ended")
        app.start()
        task = app.add("sync:double", 21)
        assert app.wait(task.id, timeout=10) == 42
        assert [line.message for line in app.logs(task.id)] == ["doubling 21"]
        assert app.get(task.id).status is Status.SUCCEEDED
        assert app.count({"status": "succeeded"}) == 1
        for event in events:
            assert event.task_id == task.id
            break
        events.close()
        first, created = app.add_checked("sync:nobody", 1, unique_key="k")
        again, created_again = app.add_checked("sync:nobody", 2, unique_key="k")
        assert (created, created_again) == (True, False) and again.id == first.id
        app.stop()


def test_the_synchronous_face_wraps_an_app() -> None:
    inner = Conveyor("memory://")
    app = SyncConveyor(inner)
    try:
        assert app.app is inner
        added: list[str] = []
        app.on("task.added", lambda e: added.append(e.task_id or ""))
        task = app.add("sync:nobody", {"n": 1}, priority=2)
        assert added == [task.id]
        assert app.find({"action": "sync:nobody"})[0].id == task.id
        assert app.stats() == {"sync:nobody": {"queued": 1}}
        assert list(app.logs(task.id, follow=False)) == []
        assert app.prioritize(task.id, 5).priority == 5
        assert app.abort(task.id).status is Status.ABORTED
        assert app.retry(task.id).status is Status.QUEUED
        with pytest.raises(WaitTimeout):
            app.wait(task.id, timeout=0.05)
    finally:
        app.close()


# --- storage URLs and SQLite --------------------------------------------------------


async def test_sqlite_options_and_bad_urls(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'n.db'}?synchronous=normal&busy_timeout=5")
    try:
        await app.add("x:y")
        assert await app.count() == 1
    finally:
        await app.close()
    for bad in (f"sqlite:///{tmp_path / 'n.db'}?synchronous=sometimes",
                f"sqlite:///{tmp_path / 'n.db'}?nope=1", "nope://x"):
        with pytest.raises(ConfigurationError):
            Conveyor(bad)


async def test_a_database_that_cannot_be_opened(tmp_path: Path) -> None:
    missing = Conveyor(f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}")
    with pytest.raises(StorageError, match="does not exist"):
        await missing.add("x:y")
    await missing.close()
    assert not (tmp_path / "no").exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    broken = Conveyor(f"sqlite:///{junk}")
    with pytest.raises(StorageError):
        await broken.open()
    await broken.close()


async def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    app = Conveyor(f"sqlite:///{path}")
    await app.add("x:y")
    await app.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 999")
    newer = Conveyor(f"sqlite:///{path}")
    with pytest.raises(SchemaError, match="999"):
        await newer.add("x:z")
    await newer.close()
    result = cli("ls", "--db", f"sqlite:///{path}")
    assert_error(result, 1, "999")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM conveyor_tasks").fetchone() == (1,)


async def test_a_task_added_by_another_process_starts_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    app = Conveyor(url, idle_poll=30.0)  # only the change feed can wake it in time
    started = asyncio.Event()

    @app.handler("xproc:run")
    async def run(ctx: Context[Any]) -> None:
        started.set()

    async with app:
        added = await asyncio.to_thread(cli, "add", "xproc:run", "--db", url)
        assert added.code == 0, added
        await asyncio.wait_for(started.wait(), timeout=5)
        task = await app.get(added.out.strip())
        assert task.started_at is not None
        assert task.started_at - task.created_at < 1.0


# --- the command line ---------------------------------------------------------------


def test_python_dash_m_conveyor_is_the_cli(tmp_path: Path) -> None:
    version = subprocess.run([sys.executable, "-m", "conveyor", "--version"], capture_output=True,
                             text=True, env=clean_env(), timeout=60, check=False)
    assert version.returncode == 0 and conveyor.__version__ in version.stdout
    missing = subprocess.run([sys.executable, "-m", "conveyor", "ls", "--db",
                              f"sqlite:///{tmp_path / 'none.db'}"], capture_output=True,
                             text=True, env=clean_env(), timeout=60, check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")
    assert not (tmp_path / "none.db").exists()


def test_the_database_comes_from_conveyor_db_by_default(tmp_path: Path) -> None:
    added = cli("add", "env:db", cwd=tmp_path)
    assert added.code == 0, added
    assert (tmp_path / "conveyor.db").exists()
    elsewhere = tmp_path / "other.db"
    added = cli("add", "env:db", cwd=tmp_path,
                env=clean_env(CONVEYOR_DB=f"sqlite:///{elsewhere}"))
    assert added.code == 0, added
    listed = cli("ls", "--json", cwd=tmp_path, env=clean_env(CONVEYOR_DB=f"sqlite:///{elsewhere}"))
    assert [t["id"] for t in json.loads(listed.out)] == [added.out.strip()]


def _ran(url: str, action: str, handler: Any, *payloads: Any) -> list[str]:
    """Run one task per payload with ``handler`` in this process, to their ends."""

    async def go() -> list[str]:
        app = Conveyor(url, lease=5.0)
        app.register(action, handler)
        try:
            async with app:
                ids = [(await app.add(action, p)).id for p in payloads]
                for task_id in ids:
                    await app.wait_task(task_id, timeout=10)
                return ids
        finally:
            await app.close()

    return asyncio.run(go())


def _logs_then_maybe_fail(ctx: Context[Any]) -> int:
    ctx.log.debug("debug line")
    ctx.log.info("info line", data={"k": 1})
    if ctx.payload == "fail":
        raise ValueError("it broke")
    return 7


def test_cli_show_and_tail_of_ended_tasks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    ok, bad = _ran(url, "cli:ended", _logs_then_maybe_fail, "ok", "fail")

    shown = cli("show", ok, "--json", "--logs", "--db", url)
    assert shown.code == 0, shown
    data = json.loads(shown.out)
    assert data["id"] == ok and data["status"] == "succeeded" and data["result"] == 7
    assert [line["message"] for line in data["logs"]] == ["debug line", "info line"]
    info = json.loads(cli("show", ok, "--json", "--logs", "--level", "info", "--db", url).out)
    assert [line["message"] for line in info["logs"]] == ["info line"]
    plain = cli("show", bad, "--logs", "--db", url)
    assert plain.code == 0 and "ValueError" in plain.out and "it broke" in plain.out

    tail_ok = cli("tail", ok, "--db", url, timeout=30)
    assert tail_ok.code == 0, tail_ok
    assert "debug line" in tail_ok.out and "info line" in tail_ok.out
    tail_bad = cli("tail", bad, "--db", url, timeout=30)
    assert tail_bad.code == 1, tail_bad
    assert "Traceback" not in tail_bad.err
    assert any(line.startswith("error: ") and "it broke" in line
               for line in tail_bad.err.splitlines())


def test_cli_exit_codes_of_the_control_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    (done,) = _ran(url, "cli:done", _logs_then_maybe_fail, "ok")
    queued = cli("add", "cli:queued", "--db", url).out.strip()
    unknown = "01a00000-0000-7000-8000-000000000000"

    assert_error(cli("abort", done, "--db", url), 1, done)
    assert_error(cli("retry", queued, "--db", url), 1, queued)
    assert_error(cli("prioritize", done, "3", "--db", url), 1, done)
    assert_error(cli("delete", queued, "--db", url), 1, queued)
    for command in (["abort", unknown], ["retry", unknown], ["prioritize", unknown, "1"],
                    ["show", unknown], ["tail", unknown], ["delete", unknown]):
        assert_error(cli(*command, "--db", url), 2, unknown)
    assert_error(cli("prioritize", queued, "-1", "--db", url), 2)
    assert_error(cli("prioritize", queued, "high", "--db", url), 2)
    assert_error(cli("add", "cli:x", "--priority", "nan", "--db", url), 2)
    assert_error(cli("ls", "--db", "nope://x"), 2)

    prioritized = cli("prioritize", queued, "2.5", "--json", "--db", url)
    assert prioritized.code == 0 and json.loads(prioritized.out)["priority"] == 2.5
    aborted = cli("abort", queued, "--reason", "not today", "--json", "--db", url)
    assert aborted.code == 0, aborted
    assert json.loads(aborted.out)["status"] == "aborted"
    assert json.loads(aborted.out)["reason"] == "not today"
    retried = cli("retry", queued, "--json", "--db", url)
    assert retried.code == 0 and json.loads(retried.out)["status"] == "queued"
    stats = cli("stats", "--json", "--db", url)
    assert json.loads(stats.out) == {"cli:done": {"succeeded": 1}, "cli:queued": {"queued": 1}}
    deleted = cli("delete", done, "--db", url)
    assert deleted.code == 0, deleted
    assert json.loads(cli("stats", "--json", "--db", url).out) == {"cli:queued": {"queued": 1}}


def test_cli_ls_combines_filter_status_and_action(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    ids = [cli("add", action, payload, "--db", url).out.strip()
           for action, payload in [("ls:a", '{"user": "ann"}'), ("ls:a", '{"user": "bob"}'),
                                   ("ls:b", '{"user": "ann"}')]]
    assert cli("abort", ids[0], "--db", url).code == 0

    def listed(*args: str) -> list[str]:
        result = cli("ls", *args, "--json", "--db", url)
        assert result.code == 0, result
        return [t["id"] for t in json.loads(result.out)]

    assert listed() == ids[::-1]  # newest first
    assert listed('{"payload.user": "ann"}') == [ids[2], ids[0]]
    assert listed('{"payload.user": "ann"}', "--status", "queued") == [ids[2]]
    assert listed("--status", "queued", "--status", "aborted", "--action", "ls:a") == [
        ids[1], ids[0]]
    assert listed("--sort", "created_at", "--limit", "1", "--skip", "1") == [ids[1]]
    assert_error(cli("ls", '{"$or": [{"priority": 1}, {"priority": {"$gt": []}}]}',
                     "--db", url), 2, "filter.$or[1].priority.$gt")
    assert_error(cli("ls", "--status", "done", "--db", url), 2)


# --- the app's options ----------------------------------------------------------------


async def test_retention_deletes_finished_tasks_soon(url: str) -> None:
    app = Conveyor(url, retention=0.5, lease=5.0)

    @app.handler("keep:short")
    async def short(ctx: Context[Any]) -> int:
        return 1

    try:
        async with app.events("task.deleted") as deleted:
            queued = await app.add("keep:nobody")
            async with app:
                for _ in range(2):  # a task before the worker's first prune, and one after
                    task = await app.add("keep:short")
                    await app.wait(task.id, timeout=10)
                    t0 = time.monotonic()
                    event = await deleted.get(timeout=10)  # not the 60 s of a long retention
                    assert event is not None and event.task_id == task.id
                    assert time.monotonic() - t0 < 5
                    assert not await app.exists(task.id)
                assert await app.exists(queued.id)  # unfinished tasks are never pruned
    finally:
        await app.close()


async def test_the_app_name_is_shown_with_the_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    app = Conveyor(url, name="billing-worker", concurrency=3)

    @app.handler("named:run")
    async def run(ctx: Context[Any]) -> None: ...

    async with app:
        (info,) = await app.workers()
        assert info.info.get("name") == "billing-worker"
        assert info.actions == ("named:run",) and info.concurrency == 3
        shown = await asyncio.to_thread(cli, "workers", "--db", url)
        listed = await asyncio.to_thread(cli, "workers", "--json", "--db", url)
    assert shown.code == 0 and "billing-worker" in shown.out, shown
    (data,) = json.loads(listed.out)
    assert data["alive"] is True and data["info"]["name"] == "billing-worker"
    assert await app.workers() == []
    await app.close()


@pytest.mark.parametrize(("library", "module", "check", "name"), [
    ("gevent", "gevent.monkey", "is_module_patched", "threading"),
    ("eventlet", "eventlet.patcher", "is_monkey_patched", "thread")])
async def test_a_worker_refuses_green_threads(app: Conveyor, monkeypatch: pytest.MonkeyPatch,
                                              library: str, module: str, check: str,
                                              name: str) -> None:
    """Under gevent's monkey-patching (gunicorn -k gevent) the lease keeper was a
    greenlet of the loop's own thread: it could not run its event loop, leases were
    never renewed, and a long task ran twice at once. Starting a worker there is
    refused; adding tasks still works. (The library itself is not installed here:
    a module with its check stands in for it.)"""
    import types

    patched = types.ModuleType(module)
    setattr(patched, check, lambda what: what == name)
    monkeypatch.setitem(sys.modules, module, patched)

    @app.handler("green:job")
    async def job(ctx: Context[Any]) -> None: ...

    task = await app.add("green:job")
    with pytest.raises(ConfigurationError, match=f"{library} has monkey-patched"):
        await app.start()
    assert app.worker is None
    assert (await app.get(task.id)).status is Status.QUEUED
    monkeypatch.delitem(sys.modules, module)
    await app.start()  # not patched: it starts
    assert app.worker is not None
