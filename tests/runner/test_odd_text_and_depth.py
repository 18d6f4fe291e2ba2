"""Odd input from a black-box audit: text that is not valid Unicode (a lone
surrogate, as undecodable command-line bytes become), payloads nested hundreds of
levels deep, and arguments of the wrong type. Each gets a clear error or is
stored as it can be; none half-writes or stops a worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor
from conveyor.errors import ConfigurationError, ValidationError
from conveyor.model import MAX_DEPTH, Status


async def test_a_log_line_with_a_lone_surrogate_is_escaped_and_the_worker_goes_on(
        app: Conveyor) -> None:
    @app.handler("odd:log")
    async def odd(ctx: Context[Any]) -> int:
        ctx.log.info("bytes \udcff here %s", "\ud800")
        return 1

    @app.handler("odd:ok")
    async def ok(ctx: Context[Any]) -> int:
        return 2

    async with app:
        first = await app.add("odd:log")
        assert await app.wait(first.id, timeout=10) == 1
        after = await app.add("odd:ok")
        assert await app.wait(after.id, timeout=10) == 2
    lines = [r.message async for r in app.logs(first.id)]
    assert lines == ["bytes \\udcff here \\ud800"]


async def test_lone_surrogates_in_keys_reasons_and_ids_are_validation_errors(
        app: Conveyor) -> None:
    with pytest.raises(ValidationError, match=r"unique_key.*not valid Unicode"):
        await app.add("odd:x", unique_key="k\udcff")
    task = await app.add("odd:x")
    with pytest.raises(ValidationError, match=r"abort reason.*not valid Unicode"):
        await app.abort(task.id, "why\ud800")
    with pytest.raises(ValidationError, match=r"task id.*not valid Unicode"):
        await app.get("id\udcff")
    assert (await app.get(task.id)).status is Status.QUEUED
    assert await app.count() == 1


def _deep(depth: int) -> Any:
    """Lists nested ``depth`` levels deep (built without recursion)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [400, MAX_DEPTH])
async def test_deep_payloads_are_stored_and_read_back(app: Conveyor, depth: int) -> None:
    payload = _deep(depth)
    task = await app.add("odd:deep", payload)
    assert (await app.get(task.id)).payload == payload
    assert [t.id for t in await app.find()] == [task.id]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 980, 5000])
async def test_deeper_payloads_are_refused_alike_on_every_backend(
        app: Conveyor, depth: int) -> None:
    deep = f"nested more than {MAX_DEPTH} levels deep"
    with pytest.raises(ValidationError, match=f"payload is {deep}"):
        await app.add("odd:deep", _deep(depth))
    with pytest.raises(ValidationError, match=f"payload is {deep}"):
        await app.add_many([("odd:deep", None), ("odd:deep", {"a": _deep(depth)})])
    with pytest.raises(ValidationError, match=f"tags is {deep}"):
        await app.add("odd:deep", None, tags={"t": _deep(depth)})
    assert await app.count() == 0


async def test_deep_outcomes_fail_their_task_and_the_worker_goes_on(app: Conveyor) -> None:
    """A result, log data or progress data nested about 980 deep passed the worker's
    check and jammed its writer on PostgreSQL (a RecursionError retried for ever): that
    task and every later one stayed running."""
    too_deep = _deep(980)

    @app.handler("odd:result")
    async def result(ctx: Context[Any]) -> Any:
        return {"tree": too_deep}

    @app.handler("odd:data")
    async def data(ctx: Context[Any]) -> str:
        kind = ctx.payload
        try:
            if kind == "log":
                ctx.log.info("deep", data={"tree": too_deep})
            else:
                ctx.progress(1, total=2, data={"tree": too_deep})
        except ValidationError as exc:
            return str(exc)
        return "stored"

    @app.handler("odd:ok")
    async def ok(ctx: Context[Any]) -> int:
        return 2

    async with app:
        deep = await app.add("odd:result")
        log = await app.add("odd:data", "log")
        progress = await app.add("odd:data", "progress")
        after = await app.add("odd:ok")
        assert await app.wait(after.id, timeout=10) == 2
        ended = await app.wait_task(deep.id, timeout=10)
        assert ended.status is Status.FAILED and ended.attempts == 1
        assert ended.error is not None and "nested more than" in ended.error.message
        for task in (log, progress):
            assert f"nested more than {MAX_DEPTH} levels deep" in await app.wait(
                task.id, timeout=10)


def test_arguments_of_the_wrong_type_are_named() -> None:
    with pytest.raises(ConfigurationError, match="url must be a storage URL"):
        Conveyor(5)  # type: ignore[arg-type]
    for name in (object(), "", "a\nb", "x" * 201):
        with pytest.raises(ConfigurationError, match="name must be"):
            Conveyor("memory://", name=name)  # type: ignore[arg-type]
    app = Conveyor("memory://")
    for call in (lambda: app.events(5), lambda: app.on(5, print)):  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="event pattern is a string"):
            call()
    # a subscription that could hold no event is refused, not one that overflows at once
    for size in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValidationError, match="maxsize must be an integer >= 1"):
            app.events("*", maxsize=size)  # type: ignore[arg-type]
    assert app.events("*", maxsize=1) is not None


async def test_delete_names_the_path_of_the_filter_as_given(app: Conveyor) -> None:
    from conveyor.errors import QueryError

    with pytest.raises(QueryError) as deleting:
        await app.delete({"priority": {"$gt": "x"}})
    with pytest.raises(QueryError) as finding:
        await app.find({"priority": {"$gt": "x"}})
    assert str(deleting.value) == str(finding.value)
    assert "filter.priority.$gt" in str(deleting.value)


async def test_a_log_line_that_cannot_be_stored_does_not_block_the_writer(
        tmp_path: Path) -> None:
    """The batched writer's last guard (the senders check log data): a line whose data
    is not JSON (an infinity) is stored with a note instead of its data, and the lines
    beside it are stored; it failed the whole batch on every pass before."""
    from conveyor._batched import BatchedWrites
    from conveyor.events import EventBus
    from conveyor.model import LogLevel
    from conveyor.storage import NewLog

    app = Conveyor(f"sqlite:///{tmp_path / 'guard.db'}")
    try:
        task = await app.add("g:x")
        writes: BatchedWrites[object] = BatchedWrites(app.storage, "test")
        writes.logs = [NewLog(task.id, LogLevel.INFO, "bad", 1.0, {"x": float("inf")}),
                       NewLog(task.id, LogLevel.INFO, "good", 2.0, {"n": 1})]
        await writes.write_logs_and_progress(EventBus(), 0.0)
        assert writes.logs == []
        lines = await app.storage.read_logs(task.id)
        assert [line.message for line in lines] == ["bad", "good"]
        assert "unstorable" in (lines[0].data or {}) and lines[1].data == {"n": 1}
    finally:
        await app.close()


@pytest.mark.parametrize("mode", ["async", "thread"])
async def test_a_lone_surrogate_in_a_progress_message_or_retry_reason_is_escaped(
        app: Conveyor, mode: str) -> None:
    """They failed the run on SQLite and PostgreSQL (its result lost: "the run's
    outcome contains text that is not valid Unicode"), were dropped by a sync handler,
    and were stored raw on memory (a hub then answered 500 for the task list)."""
    from conveyor import Retry

    def body(ctx: Context[Any]) -> Any:
        if ctx.task.attempts == 1:
            ctx.progress(1, total=2, message="half \ud800")
            return Retry(after=0, reason="why \udcff")
        ctx.progress(2, total=2, message="end \ud801")
        return "done"

    if mode == "async":
        async def handler(ctx: Context[Any]) -> Any:
            return body(ctx)
    else:
        def handler(ctx: Context[Any]) -> Any:
            return body(ctx)

    app.register("odd:progress", handler, max_attempts=2, backoff={"base": 0})
    async with app:
        task = await app.add("odd:progress")
        assert await app.wait(task.id, timeout=10) == "done"
    stored = await app.get(task.id)
    assert stored.attempts == 2
    assert [e.message for e in stored.errors] == ["why \\udcff"]
    assert stored.progress is not None and stored.progress.message == "end \\ud801"


async def test_a_log_line_is_cut_at_100000_characters_as_a_remote_ones(app: Conveyor) -> None:
    @app.handler("odd:longlog")
    async def long_log(ctx: Context[Any]) -> None:
        ctx.log.info("x" * 100_000)
        ctx.log.info("y" * 100_005)

    async with app:
        task = await app.add("odd:longlog")
        await app.wait(task.id, timeout=10)
    lines = [r.message async for r in app.logs(task.id)]
    assert lines == ["x" * 100_000, "y" * 100_000 + " [cut: 5 more characters]"]
