"""What a ``mode="process"`` handler hands its context or raises crosses the pipe to
the worker and ends as it does in-process (data-edges audit, findings 3, 4 and 9):
each test runs the same function in a thread and in a child process (real ones) and
compares. A lone surrogate (undecodable bytes read as text, such as a file name) in
an error's message killed the child as it wrote it, so each attempt's error became
"the handler's process died"; ``ctx.emit`` of NaN raised a bare ValueError, of a lone
surrogate (and ``ctx.progress``, ``Retry(reason=...)`` with one) a UnicodeEncodeError."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor import Conveyor, Status, Task

from . import process_values_app, process_values_unimportable

ESCAPED = "/data/caf\\udce9.txt"  # UNDECODABLE as in-process stores it


@pytest.fixture
async def app(url: str) -> AsyncIterator[Conveyor]:
    # not the module's app: the child checks emitted values against this worker's
    # max_payload, not the 1 MiB of the app it imports
    app = Conveyor(url, max_payload=1000, concurrency=4)
    process_values_app.register(app)
    async with app:
        yield app


async def _ended(app: Conveyor, action: str) -> Task:
    return await app.wait_task((await app.add(action)).id, timeout=60)


def _outcome(task: Task) -> dict[str, Any]:
    return {"status": task.status, "attempts": task.attempts, "result": task.result,
            "reason": task.reason, "errors": [(e.type, e.message) for e in task.errors],
            "progress": task.progress and task.progress.to_json()}


async def _both(app: Conveyor, name: str) -> tuple[dict[str, Any], Task]:
    """The outcome of handler ``name``, the same in a thread and in a process, and the
    task the process ran."""
    in_thread = await _ended(app, f"pv:thread:{name}")
    in_process = await _ended(app, f"pv:process:{name}")
    assert _outcome(in_process) == _outcome(in_thread)
    return _outcome(in_process), in_process


@pytest.mark.parametrize(("name", "error", "attempts"), [
    ("raise_undecodable", ("RuntimeError", f"missing input file {ESCAPED}"), 2),
    ("raise_badstr", ("BadStr", "<BadStr: str() failed>"), 2),
    # not an Exception: not retried (the default retry_on), in-process or not
    ("raise_base", ("Fatal", f"gave up on {ESCAPED}"), 1),
])
async def test_an_error_the_child_cannot_write_as_it_is_is_kept_as_in_process(
        app: Conveyor, name: str, error: tuple[str, str], attempts: int) -> None:
    """The message escaped as in-process (``storable_text``), a failing ``__str__``
    named, a BaseException that is not an Exception taken as the run's error: the real
    error, retried or not as in-process, no child death."""
    ended, task = await _both(app, name)
    assert ended["status"] is Status.FAILED and ended["attempts"] == attempts
    assert ended["errors"] == [error] * attempts
    assert task.error is not None and task.error.traceback is not None
    assert error[0] in task.error.traceback


async def test_emit_checks_the_value_in_the_child_as_in_process(app: Conveyor) -> None:
    """The handler gets the ValidationError in-process gives (not a bare ValueError or
    UnicodeEncodeError), a value over the worker's max_payload included (it was
    dropped with a warning, the handler none the wiser); the good value is emitted."""
    emitted: list[Any] = []
    app.on("task.result", lambda event: emitted.append(event.data["value"]))
    ended, _ = await _both(app, "emit_values")
    assert ended["status"] is Status.SUCCEEDED
    assert ended["result"] == [
        "ValidationError: emitted result is not JSON-serialisable: Out of range float "
        "values are not JSON compliant",
        "ValidationError: emitted result contains text that is not valid Unicode",
        "ValidationError: emitted result is not JSON-serialisable: Object of type set is "
        "not JSON serializable",
        "ValidationError: emitted result is 2002 bytes, over the limit of 1000 bytes",
        "emitted",
    ]
    assert emitted.count("fine") == 2 and len(emitted) == 2


async def test_an_uncaught_emit_error_fails_the_attempt_as_in_process(app: Conveyor) -> None:
    ended, _ = await _both(app, "emit_nan")
    assert ended["status"] is Status.FAILED and ended["attempts"] == 2
    assert {error[0] for error in ended["errors"]} == {"ValidationError"}


@pytest.mark.parametrize("name", ["progress_undecodable", "retry_undecodable"])
async def test_a_lone_surrogate_in_progress_or_a_retry_reason_ends_as_in_process(
        app: Conveyor, name: str) -> None:
    """Whatever in-process makes of it (that is context.py's and the worker's to
    decide), the child hands the worker the same value: it raised UnicodeEncodeError
    in the handler (progress) or failed the attempt with it (Retry)."""
    ended, _ = await _both(app, name)
    assert all(error[0] != "UnicodeEncodeError" for error in ended["errors"])


async def test_an_import_error_with_a_lone_surrogate_is_the_runs_error() -> None:
    """The child could not write why it cannot have its handler: the run failed with
    "could not start a handler process: the child process exited"."""
    app = process_values_unimportable.app
    async with app:
        task = await app.wait_task((await app.add("pv:unimportable")).id, timeout=60)
    assert task.status is Status.FAILED and task.attempts == 1
    assert task.error is not None
    assert (task.error.type, task.error.message) == (
        "RuntimeError", "the handler's process cannot run it: cannot read /etc/caf\\udce9.cfg")
