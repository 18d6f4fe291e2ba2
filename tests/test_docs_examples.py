"""The Python examples of README.md and the docs run, and do what they say.

Each example is found by a distinctive substring (``EXAMPLES`` here and in
tests/hub/test_docs_examples.py and tests/postgres/test_docs_examples.py map
it to the test that runs it); :func:`test_every_example_is_covered` makes sure
that every ```python block of the documents is claimed by exactly one of them,
so a new example must be given a test. The names an example takes for granted
(``app``, ``task_id``, ``smtp_client``, ...) come from the namespace it runs in.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import (
    Backoff,
    Condition,
    Context,
    Conveyor,
    ErrorInfo,
    ResultItem,
    Status,
    Task,
    ValidationError,
)
from conveyor.query import register_sqlite_functions
from conveyor.storage.base import WorkerInfo
from conveyor.storage.memory import MemoryStorage
from conveyor.testing import StorageContract

from ._docs import VALUES, all_blocks, exec_module, find_block, run_fragment
from .hub import test_docs_examples as hub_examples
from .postgres import test_docs_examples as postgres_examples

EXAMPLES = {
    'environment={"chunk": 1024}, max_attempts=3': "test_readme_quickstart",
    '{"url": "https://example.com/f"}': "test_guide_quickstart_script",
    "environment=smtp_client": "test_guide_handler_options",
    "await app.add_many([": "test_guide_add_and_add_many",
    "task, created = await app.add_checked(": "test_guide_add_checked",
    "await app.find_one(": "test_guide_reading_tasks",
    "app.add_error_sink(": "test_guide_sinks",
    "def poll_until_done(": "test_guide_transition_policy",
    'app.schedule("cleanup"': "test_guide_schedules",
    '"schedule removed"': "test_guide_schedule_removed",
    '"renamed to mail:send"': "test_guide_action_renamed",
    'concurrency=[{"scope": "running"': "test_guide_concurrency_condition",
    "class Download(BaseModel)": "test_guide_typed_payloads",
    "class TestMyStorage(StorageContract)": "test_guide_storage_contract",
    "async def test_signup_sends_mail(": "test_guide_drain_in_a_test",
    '"payload.user.id": 42': "test_query_find",
    "compile_sqlite(q.filter)": "test_query_compile_sqlite",
}


def test_every_example_is_covered() -> None:
    modules = [sys.modules[__name__], hub_examples, postgres_examples]
    blocks = all_blocks()
    assert len(blocks) >= 19
    for block in blocks:
        claims = [(m.__name__, key) for m in modules for key in m.EXAMPLES if key in block.code]
        assert len(claims) == 1, (
            f"{block}: the example must be claimed by exactly one EXAMPLES key; got {claims}")
    for module in modules:
        for key, test in module.EXAMPLES.items():
            assert sum(key in b.code for b in blocks) == 1, f"{module.__name__}: {key!r}"
            assert callable(getattr(module, test, None)), f"{module.__name__}.{test} is missing"


@pytest.fixture
async def app() -> AsyncIterator[Conveyor]:
    """An opened in-memory app (no worker until a test starts one)."""
    app = Conveyor("memory://", stop_timeout=2.0)
    await app.open()
    yield app
    await app.close()


# -- README.md -------------------------------------------------------------------------


async def test_readme_quickstart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the example's sqlite:///tasks.db is relative
    block = find_block('environment={"chunk": 1024}, max_attempts=3')
    assert 'if __name__ == "__main__":' in block.code  # run as a script, not on import
    ns = exec_module(block, {})
    await ns["main"]()  # the task is added with delay=5: this takes five seconds
    reader = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}")
    try:
        [task] = await reader.find({"action": "files:download"})
        assert task.status is Status.SUCCEEDED and task.result == {"bytes": 10240}
        assert task.priority == -1 and task.tags == {"user": "ann"}
        assert task.run_at == pytest.approx(task.created_at + 5, abs=1)  # delay=5
        assert task.started_at is not None and task.started_at >= task.run_at
        done = await reader.get(task.id, logs=True)
        assert done.logs is not None
        assert [r.message for r in done.logs] == [f"chunk {i}" for i in range(10)]
        assert done.progress is not None and (done.progress.current, done.progress.total) == (
            10, 10)
    finally:
        await reader.close()


# -- docs/guide.md ---------------------------------------------------------------------


def test_guide_quickstart_script(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(find_block('{"url": "https://example.com/f"}').code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "{'bytes': 5120}\n"
    assert (tmp_path / "tasks.db").exists()


async def test_guide_handler_options(app: Conveyor) -> None:
    smtp_client = object()
    exec_module(find_block("environment=smtp_client"),
                {"app": app, "Context": Context, "smtp_client": smtp_client})
    handler = app.registry.get("mail:send")
    assert handler is not None and handler.is_async
    assert handler.environment is smtp_client
    assert handler.run_timeout == 30 and handler.max_attempts == 5
    assert handler.backoff == Backoff(base=2, factor=2, maximum=300)
    assert handler.retry_on == (OSError,)


async def test_guide_add_and_add_many(app: Conveyor) -> None:
    before = time.time()
    out = await run_fragment(find_block("await app.add_many(["), {"app": app})
    after = time.time()
    task, tasks = out["task"], out["tasks"]
    assert isinstance(task, Task) and task.status is Status.QUEUED
    assert (task.action, task.payload, task.priority, task.tags) == (
        "files:download", {"url": "..."}, -1, {"user": "ann"})
    assert before + 5 <= task.run_at <= after + 5
    assert [(t.action, t.payload, t.priority) for t in tasks] == [
        ("a", 1, 0), ("b", 2, 3), ("c", None, 0)]
    assert before + 10 <= tasks[2].run_at <= after + 10
    for added in [task, *tasks]:
        stored = await app.get(added.id)
        assert stored.priority == added.priority and stored.status is Status.QUEUED


async def test_guide_add_checked(app: Conveyor, capsys: pytest.CaptureFixture[str]) -> None:
    block = find_block("task, created = await app.add_checked(")
    first = await run_fragment(block, {"app": app})
    assert first["created"] is True and capsys.readouterr().out == ""
    again = await run_fragment(block, {"app": app})
    assert again["created"] is False and again["task"].id == first["task"].id
    assert capsys.readouterr().out == (
        f"already queued or running: {first['task'].id} queued\n")
    assert await app.count({"unique_key": "invoice:42"}) == 1


async def test_guide_reading_tasks(app: Conveyor) -> None:
    @app.handler("mail:send")
    async def send(ctx: Context[Any]) -> dict[str, bool]:
        ctx.log.debug("connecting")
        ctx.log.info("sent to %s", ctx.payload["to"])
        return {"sent": True}

    @app.handler("files:upload")
    async def upload(ctx: Context[Any]) -> None:
        raise OSError("disk full")

    async with app:
        mails = [await app.add("mail:send", {"to": "a"}, priority=2),
                 await app.add("mail:send", {"to": "b"}, priority=1)]
        anns = await app.add("files:upload", {"size": 5000}, tags={"user": "ann"})
        bobs = await app.add("files:upload", {"size": 10}, tags={"user": "bob"})
        for added in [*mails, anns, bobs]:
            await app.wait_task(added.id, timeout=10)
        out = await run_fragment(find_block("await app.find_one("),
                                 {"app": app, "task_id": mails[0].id})

    task = out["task"]  # the second get: with the log lines up to info
    assert isinstance(task, Task) and task.id == mails[0].id
    assert task.status is Status.SUCCEEDED and task.result == {"sent": True}
    assert task.logs is not None and [r.message for r in task.logs] == ["sent to a"]
    assert [t.id for t in out["tasks"]] == [anns.id]
    assert out["first"].id == mails[1].id
    assert out["n"] == 1
    exists, stats, workers = out[VALUES]
    assert exists is True
    assert stats["mail:send"]["succeeded"] == 2 and stats["files:upload"]["failed"] == 2
    assert workers and all(isinstance(w, WorkerInfo) for w in workers)
    assert any("mail:send" in w.actions for w in workers)


async def test_guide_sinks(app: Conveyor) -> None:
    alerts: queue.Queue[Any] = queue.Queue()

    @app.handler("math:one")
    async def one(ctx: Context[Any]) -> dict[str, int]:
        return {"n": 1}

    @app.handler("math:bad")
    async def bad(ctx: Context[Any]) -> None:
        raise ValueError("no good")

    exec_module(find_block("app.add_error_sink("),
                {"app": app, "queue": queue, "alert": alerts.put})
    [results] = app.result_sinks
    assert isinstance(results, queue.Queue)
    async with app:
        good = await app.add("math:one")
        failing = await app.add("math:bad")
        await app.wait_task(good.id, timeout=10)
        await app.wait_task(failing.id, timeout=10)
        item = await asyncio.to_thread(results.get, timeout=10)
        error = await asyncio.to_thread(alerts.get, timeout=10)
    assert isinstance(item, ResultItem)
    assert (item.task.id, item.value, item.final) == (good.id, {"n": 1}, True)
    assert isinstance(error, ErrorInfo)
    assert (error.type, error.message) == ("ValueError", "no good")


async def test_guide_transition_policy() -> None:
    ns = exec_module(find_block("def poll_until_done("), {})
    app = Conveyor("memory://", policy=ns["poll_until_done"], stop_timeout=1.0)

    @app.handler("feeds:poll")
    async def poll(ctx: Context[Any]) -> None:
        raise ConnectionError("feed is down")

    @app.handler("feeds:ok")
    async def ok(ctx: Context[Any]) -> str:
        return "fine"

    requeued = asyncio.Event()
    app.on("task.rescheduled", lambda event: requeued.set())
    try:
        async with app:
            before = time.time()
            task = await app.add("feeds:poll", max_attempts=1)
            await asyncio.wait_for(requeued.wait(), 10)
            after = time.time()
            assert await app.wait(
                (await app.add("feeds:ok")).id, timeout=10) == "fine"  # default_policy
        again = await app.get(task.id)
    finally:
        await app.close()
    assert again.status is Status.QUEUED
    assert before + 60 <= again.run_at <= after + 60
    assert again.attempts == 0  # refunded: the error did not use up the only attempt
    assert again.error is not None and again.error.type == "ConnectionError"


async def test_guide_schedules(app: Conveyor) -> None:
    exec_module(find_block('app.schedule("cleanup"'), {"app": app})
    assert [(s.action, s.cron, s.every, s.tz, s.payload) for s in app.schedules] == [
        ("reports:daily", "0 3 * * *", None, "UTC", None),
        ("feeds:poll", None, 60, "UTC", None),
        ("cleanup", "*/15 * * * *", None, "Europe/Paris", {"older_than": 86400}),
    ]
    assert "reports:daily" in app.registry and "feeds:poll" in app.registry


async def test_guide_schedule_removed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'schedules.db'}"
    before = Conveyor(url, stop_timeout=2.0)

    @before.handler("feeds:poll", schedule=60)
    async def poll(ctx: Context) -> None: ...

    async with before:
        added = before.events("task.added")
        await before.start()
        queued = await asyncio.wait_for(added.__anext__(), 10)  # the next occurrence
        [occurrence] = await before.find({"tags.schedule": "feeds:poll every 60s"})
        assert occurrence.id == queued.task_id
    after = Conveyor(url, stop_timeout=2.0)  # the schedule taken out of the code
    async with after:
        await run_fragment(find_block('"schedule removed"'), {"app": after})
        assert (await after.get(occurrence.id)).status is Status.ABORTED
        assert await after.count({"status": "queued"}) == 0


async def test_guide_action_renamed(tmp_path: Path) -> None:
    app = Conveyor(f"sqlite:///{tmp_path / 'renamed.db'}")
    async with app:
        old = [await app.add("mail:send-v1", {"to": f"{n}@example.com"}, priority=n)
               for n in range(3)]
        await run_fragment(find_block('"renamed to mail:send"'), {"app": app})
        for task in old:
            assert (await app.get(task.id)).status is Status.ABORTED
        moved = await app.find({"action": "mail:send"}, sort="priority")
        assert [(t.payload, t.priority, t.status) for t in moved] == [
            (task.payload, task.priority, Status.QUEUED) for task in old]


async def test_guide_drain_in_a_test() -> None:
    ns = exec_module(find_block("async def test_signup_sends_mail("), {})
    await ns["test_signup_sends_mail"]()  # its assertions hold
    app = ns["make_app"]("memory://")
    try:
        await app.add("users:signup", {"email": "bob@example.com"})
        await app.add("users:signup", {"email": "eve@example.com"})
        assert (await app.drain(timeout=10))["succeeded"] == 4
        sent = await app.find({"action": "mail:send"}, sort=["payload.to", 1])
        assert [t.result for t in sent] == [{"sent": "bob@example.com"},
                                            {"sent": "eve@example.com"}]
    finally:
        await app.close()


async def test_guide_concurrency_condition(app: Conveyor) -> None:
    out = await run_fragment(find_block('concurrency=[{"scope": "running"'), {"app": app})
    [task] = out[VALUES]
    condition = Condition(query={"payload.book": "X"}, limit=1, scope=(Status.RUNNING,))
    assert isinstance(task, Task) and task.concurrency == (condition,)
    assert (await app.get(task.id)).concurrency == (condition,)


async def test_guide_typed_payloads(app: Conveyor) -> None:
    ns = exec_module(find_block("class Download(BaseModel)"), {"app": app, "Context": Context})
    handler = app.registry.get("files:download")
    assert handler is not None
    assert handler.payload_model is ns["Download"] and handler.result_model is ns["Done"]
    async with app:
        with pytest.raises(ValidationError, match="url"):
            await app.add("files:download", {"link": "https://example.com"})
        task = await app.add("files:download", {"url": "https://example.com/a"})
        assert await app.wait(task.id, timeout=10) == {"size": 21}


def test_guide_storage_contract() -> None:
    ns = exec_module(find_block("class TestMyStorage(StorageContract)"),
                     {"MyStorage": MemoryStorage})
    suite = ns["TestMyStorage"]
    assert issubclass(suite, StorageContract) and suite is not StorageContract
    assert "storage" in vars(suite)


# -- docs/query.md ---------------------------------------------------------------------


async def test_query_find(app: Conveyor) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @app.handler("users:hold")
    async def hold(ctx: Context[Any]) -> None:
        started.set()
        await release.wait()

    @app.handler("users:done")
    async def done(ctx: Context[Any]) -> None:
        return None

    async with app:
        finished = await app.add("users:done", {"user": {"id": 42}})
        await app.wait_task(finished.id, timeout=10)
        queued = await app.add("users:notify", {"user": {"id": 42}})  # no handler: stays queued
        await app.add("users:notify", {"user": {"id": 7}})
        running = await app.add("users:hold", {"user": {"id": 42}})
        await asyncio.wait_for(started.wait(), 10)
        try:
            out = await run_fragment(find_block('"payload.user.id": 42'), {"app": app})
        finally:
            release.set()
    [found] = out[VALUES]
    assert [(t.id, t.status) for t in found] == [(running.id, Status.RUNNING),
                                                 (queued.id, Status.QUEUED)]


async def test_query_compile_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    app = Conveyor(f"sqlite:///{db}")  # creates the file and the conveyor_tasks table
    try:
        await app.add("q:a", {"n": 0}, priority=5)
        low = await app.add("q:a", {"n": 2}, priority=1)
        high = await app.add("q:a", {"n": 3}, priority=4)
        await app.abort((await app.add("q:a", {"n": 5}, priority=9)).id)
        await app.add("q:a", {"n": "9"}, priority=8)  # a string: types are strict
    finally:
        await app.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        register_sqlite_functions(conn)  # as the docs say: once per connection
        ns = exec_module(find_block("compile_sqlite(q.filter)"), {"conn": conn})
        [cursor] = ns[VALUES]
        rows = cursor.fetchall()
    assert ns["q"].limit == 10
    assert [(r["id"], r["status"], r["priority"]) for r in rows] == [
        (high.id, "queued", 4), (low.id, "queued", 1)]
