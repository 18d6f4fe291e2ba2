"""The documented usages type-check under ``mypy --strict`` in a user's program
(packaging audit): a bare ``Context``, ``timedelta`` durations and ``@app.on(...)``
as a decorator were rejected."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

PROGRAM = textwrap.dedent('''
    import asyncio
    from datetime import timedelta

    from conveyor import Context, Conveyor, Event

    app = Conveyor("sqlite:///tasks.db", lease=timedelta(seconds=30),
                   stop_timeout=timedelta(seconds=5), retention=timedelta(days=7))


    @app.handler("files:download", environment={"chunk": 1024}, max_attempts=3)
    async def download(ctx: Context) -> dict[str, int]:
        await ctx.progress(1, total=1)
        return {"bytes": ctx.env["chunk"]}


    @app.on("task.succeeded")
    def announce(event: Event) -> None:
        print(event.type, event.task_id)


    stop_listening = app.on("task.failed", lambda event: None)


    async def main() -> None:
        async with app:
            task = await app.add("files:download", {"url": "..."})
            await app.wait(task.id, timeout=timedelta(seconds=60))
            await app.retry(task.id, delay=timedelta(seconds=1))
            await app.prune(timedelta(days=7))
            await app.drain(timeout=timedelta(seconds=10))
            await app.stop(timedelta(seconds=3))
        stop_listening()


    asyncio.run(main())
''')

# the sync faces: each call's result is typed (it was Any), and a wrong argument
# type is an error (checked by SYNC_ERRORS below)
SYNC_PROGRAM = textwrap.dedent('''
    from conveyor import Event, LogRecord, SyncConveyor, Task
    from conveyor.client import LiveChange, SyncHubClient

    app = SyncConveyor("sqlite:///tasks.db")
    task: Task = app.add("mail:send", {"to": "ann@example.com"})
    again: list[Task] = app.find({"status": "queued"}, limit=10)
    tally: dict[str, int] = app.drain(timeout=5)
    lines: list[LogRecord] = list(app.logs(task.id, follow=False))
    event: Event | None = app.events("task.*").get(0.1)
    app.stop()
    app.close()

    hub = SyncHubClient("http://127.0.0.1:8765", "key")
    published: Task = hub.add("mail:send", {"to": "ann@example.com"})
    for change in hub.live({"status": "running"}):
        seen: LiveChange = change
    hub.close()
''')
SYNC_ERRORS = textwrap.dedent('''
    from conveyor import SyncConveyor

    app = SyncConveyor("sqlite:///tasks.db")
    count: str = app.count()
    app.add(42)
''')


def _mypy(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    program = tmp_path / "user_app.py"
    program.write_text(text, encoding="utf-8")
    src = Path(__file__).resolve().parents[1] / "src"
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                           str(program)], capture_output=True, text=True, timeout=300,
                          check=False, env={"MYPYPATH": str(src), "PATH": "/usr/bin:/bin"},
                          cwd=tmp_path)


def _errors(tmp_path: Path, text: str) -> dict[int, str]:
    """mypy --strict's errors on ``text`` as a user's module: line -> its messages
    (joined by newlines; notes left out)."""
    done = _mypy(tmp_path, text)
    found: dict[int, str] = {}
    for line in done.stdout.splitlines():
        match = re.match(r"user_app\.py:(\d+): error: (.*)", line)
        if match:
            n = int(match.group(1))
            found[n] = (found[n] + "\n" if n in found else "") + match.group(2)
    assert found or done.returncode == 0, done.stdout + done.stderr
    return found


def _marked(text: str) -> dict[int, str]:
    """The lines of ``text`` marked ``# error: <part of the message>``: line -> part."""
    return {n: line.split("# error: ", 1)[1].strip()
            for n, line in enumerate(text.splitlines(), start=1) if "# error: " in line}


def _check_marked(tmp_path: Path, text: str) -> None:
    """mypy --strict reports an error on each marked line (its message containing the
    mark's text) and on no other line."""
    found = _errors(tmp_path, text)
    expected = _marked(text)
    assert sorted(found) == sorted(expected), (found, expected)
    for n, part in expected.items():
        assert part in found[n], (n, part, found[n])


@pytest.mark.serial  # mypy: a few seconds of CPU
def test_documented_usages_pass_mypy_strict(tmp_path: Path) -> None:
    done = _mypy(tmp_path, PROGRAM)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.serial
def test_the_sync_faces_are_typed(tmp_path: Path) -> None:
    done = _mypy(tmp_path, SYNC_PROGRAM)
    assert done.returncode == 0, done.stdout + done.stderr
    wrong = _mypy(tmp_path, SYNC_ERRORS)
    assert "user_app.py:5: error: Incompatible types in assignment" in wrong.stdout, wrong.stdout
    assert "user_app.py:6: error: Argument 1 to \"add\"" in wrong.stdout, wrong.stdout
    assert "Found 2 errors" in wrong.stdout, wrong.stdout


# The user's mistakes a checker must see as the run time does, and the documented
# calls it must accept (typing audit): a line marked ``# error: ...`` must be an
# error, every other line must be clean.

TASK_FAILED_ERROR = textwrap.dedent('''
    from conveyor import ErrorInfo, TaskFailed


    def show(exc: TaskFailed) -> str:
        info: ErrorInfo | None = exc.error
        if exc.error is not None:
            return exc.error.message + (info.type if info else "")
        return exc.error.message  # error: "None" has no attribute "message"


    def misspelt(exc: TaskFailed) -> None:
        if exc.error:
            print(exc.error.mesage)  # error: "ErrorInfo" has no attribute "mesage"
''')


@pytest.mark.serial
def test_task_failed_error_is_error_info_or_none(tmp_path: Path) -> None:
    _check_marked(tmp_path, TASK_FAILED_ERROR)


EXISTS_FILTER = textwrap.dedent('''
    from conveyor import Conveyor, SyncConveyor
    from conveyor.query import parse_filter


    async def look(app: Conveyor, sync: SyncConveyor) -> bool:
        where = parse_filter({"status": "queued"})
        found = await app.exists(where) or await app.exists({"status": "queued"})
        return found or sync.exists(where) or sync.exists("task-id")


    async def wrong(app: Conveyor) -> bool:
        return await app.exists(42)  # error: Argument 1 to "exists" of "Conveyor"
''')


@pytest.mark.serial
def test_exists_takes_a_parsed_filter(tmp_path: Path) -> None:
    _check_marked(tmp_path, EXISTS_FILTER)


DURATIONS_AND_STATUSES = textwrap.dedent('''
    from datetime import timedelta

    from conveyor import Backoff, Reschedule, Retry, Status, Transition
    from conveyor.client import HTTPClient

    retry = Retry(after=timedelta(seconds=5))
    resched = Reschedule(after=timedelta(minutes=1), result={"page": 2})
    backoff = Backoff(base=timedelta(seconds=2), maximum=timedelta(minutes=5), factor=3)
    queued = Transition("queued", run_at=1e9, refund_attempt=True)
    failed = Transition(Status.FAILED, reason="error")
    after: float | None = retry.after
    seconds: float = resched.after + backoff.base + backoff.maximum
    status: Status = queued.status
    wrong: str = retry.after  # error: Incompatible types in assignment
    Transition("running")  # error: Argument 1 to "Transition" has incompatible type
    Retry(after="5 seconds")  # error: Argument "after" to "Retry" has incompatible type


    async def poll(hub: HTTPClient, task_id: str) -> None:
        await hub.wait(task_id, timeout=timedelta(seconds=30))
        await hub.wait_task(task_id, timedelta(seconds=30))
''')


@pytest.mark.serial
def test_durations_take_a_timedelta_and_read_back_as_seconds(tmp_path: Path) -> None:
    _check_marked(tmp_path, DURATIONS_AND_STATUSES)


RETRYING_HANDLER = textwrap.dedent('''
    from pydantic import BaseModel

    from conveyor import Context, Conveyor, Reschedule, Retry

    app = Conveyor("memory://")


    class Done(BaseModel):
        size: int


    @app.handler("files:download")
    async def download(ctx: Context) -> Done | Retry:
        if ctx.attempt == 1:
            return Retry(after=5)
        return Done(size=1)


    @app.handler("files:poll")
    async def poll(ctx: Context) -> Reschedule | Done:
        return Reschedule(after=60) if ctx.task.result is None else Done(size=2)


    @app.handler("files:plain")
    async def plain(ctx: Context) -> Done:
        return Retry(after=5)  # error: Incompatible return value type (got "Retry"
''')


@pytest.mark.serial
def test_a_handler_that_retries_keeps_its_result_model(tmp_path: Path) -> None:
    """``-> Done | Retry``, the annotation a checker wants of a handler that may
    return ``Retry``, keeps ``Done`` as the result model (it silently had none)."""
    _check_marked(tmp_path, RETRYING_HANDLER)
    namespace: dict[str, Any] = {"__name__": "user_app"}
    exec(compile(RETRYING_HANDLER, "user_app.py", "exec"), namespace)
    app = namespace["app"]
    for action in ("files:download", "files:poll", "files:plain"):
        assert app.registry.get(action).result_model is namespace["Done"], action


SINKS = textwrap.dedent('''
    import asyncio
    import queue

    from conveyor import Conveyor, ErrorItem, ResultItem

    app = Conveyor("memory://")


    def alert(error: object) -> None:
        print(error)


    async def on_result(item: ResultItem) -> None:
        print(item.value, item.final)


    def wrong_sink(item: ErrorItem, extra: int) -> None:
        print(item, extra)


    results: asyncio.Queue[ResultItem] = asyncio.Queue()
    app.add_error_sink(lambda item: alert(item.error.message))
    app.add_result_sink(queue.Queue())
    app.add_result_sink(results)
    app.add_result_sink(on_result)
    app.add_error_sink(lambda item: alert(item.eror))  # error: "ErrorItem" has no attribute "eror"
    app.add_error_sink(wrong_sink)  # error: Argument 1 to "add_error_sink" of "Conveyor"
    app.add_result_sink(42)  # error: Argument 1 to "add_result_sink" of "Conveyor"
    app.add_result_sink(lambda item: item.error)  # error: "ResultItem" has no attribute "error"
''')


@pytest.mark.serial
def test_sinks_are_typed(tmp_path: Path) -> None:
    """A sink is a callable taking the item or an object with ``put(item)``: the
    documented lambda gets the item's type (a misspelt field is an error), a sink
    that needs more arguments or is no sink at all is refused (sinks took Any)."""
    _check_marked(tmp_path, SINKS)


SYNC_FACES = textwrap.dedent('''
    from datetime import timedelta

    from conveyor import Conveyor, SyncConveyor
    from conveyor._registry import Registry
    from conveyor.client import HubClient, SyncHubClient
    from conveyor.storage import Storage

    app = SyncConveyor("sqlite:///tasks.db", concurrency=4, lease=timedelta(seconds=30))
    again = SyncConveyor(Conveyor("memory://"))
    storage: Storage = app.storage
    running: int = app.concurrency
    registry: Registry = app.registry
    lease: float = app.lease
    hub = SyncHubClient("http://127.0.0.1:8765", "key", open_timeout=5)
    same = SyncHubClient(HubClient("http://127.0.0.1:8765"))
    url: str = hub.url
    SyncConveyor("memory://", concurency=4)  # error: Unexpected keyword argument "concurency"
    app.ad("mail:send")  # error: "SyncConveyor" has no attribute "ad"
    wrong: str = app.concurrency  # error: Incompatible types in assignment
    app.concurrency = 8  # error: Property "concurrency" defined in "BlockingConveyor" is read-only
    SyncHubClient("http://127.0.0.1:8765", "key", open_timout=5)  # error: Unexpected keyword
    hub.wiat("task-id")  # error: "SyncHubClient" has no attribute "wiat"
''')


@pytest.mark.serial
def test_the_sync_faces_check_names_and_attributes(tmp_path: Path) -> None:
    """A misspelt method or option of a sync face is an error, and its public
    attributes have their types (``__getattr__ -> Any`` took every name)."""
    _check_marked(tmp_path, SYNC_FACES)


# the documents' examples that are whole modules, as a user pastes them (typing audit:
# bare ``-> dict``, an untyped policy)
WHOLE_EXAMPLES = ('environment={"chunk": 1024}, max_attempts=3',
                  '{"url": "https://example.com/f"}', "def poll_until_done(",
                  "async def test_signup_sends_mail(", "class Download(BaseModel)")


@pytest.mark.serial
def test_the_documents_examples_pass_mypy_strict(tmp_path: Path) -> None:
    from ._docs import find_block

    for key in WHOLE_EXAMPLES:
        block = find_block(key)
        prelude = "from conveyor import Context, Conveyor\napp = Conveyor()\n" * (
            "app = " not in block.code)
        found = _errors(tmp_path, prelude + block.code)
        assert found == {}, (str(block), found)
