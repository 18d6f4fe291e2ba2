"""memory:// keeps JSON copies, as SQLite and PostgreSQL keep JSON.

Every JSON value that goes in (payload, tags, backoff, conditions, result,
progress, errors, log data, worker info) is stored as it reads back from a
JSON column (tuples become lists, non-text keys become text, ...), and every
read returns objects of its own: mutating what went in or what came out
never changes what is stored. The storage tests run on memory and SQLite and
compare the two; the app tests run a worker on both.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor
from conveyor.errors import InvalidTransition
from conveyor.model import (
    Backoff,
    Condition,
    ErrorInfo,
    LogLevel,
    Progress,
    Status,
    Task,
    Transition,
)
from conveyor.query import parse_query
from conveyor.storage import Completion, Lease, NewLog, Storage, WorkerInfo
from conveyor.storage.memory import MemoryStorage
from conveyor.storage.sqlite import SQLiteStorage
from conveyor.testing.contract import make_spec

from ..conftest import backend_url

KINDS = ["memory", "sqlite"]

# values that are valid JSON input but not what a JSON column gives back
SHAPES: list[Any] = [
    {1: "x", "t": (1, 2)},
    {"nested": {"a": [(1, (2, 3)), {"b": ()}]}, 2.5: True, None: 0, False: 1},
    {1: "int key first", "1": "text key last"},
    {"big": 2**70, "neg": -(2**64), "float": 1e300, "tiny": 5e-324, "zero": -0.0,
     "two": 2.0, "text": "é\u2028\x00😀"},
    (1, [2, (3,)], {"k": (4,)}),
    [],
    {},
    "plain",
    7,
    None,
]


def _open(kind: str, tmp_path: Path) -> Storage:
    if kind == "memory":
        return MemoryStorage()
    return SQLiteStorage(tmp_path / f"{kind}.db")


@pytest.fixture(params=KINDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    s = _open(request.param, tmp_path)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def both(tmp_path: Path) -> AsyncIterator[tuple[Storage, Storage]]:
    """A memory storage and a SQLite one, to compare."""
    memory, sqlite = _open("memory", tmp_path), _open("sqlite", tmp_path)
    await memory.open()
    await sqlite.open()
    yield memory, sqlite
    await memory.close()
    await sqlite.close()


@pytest.fixture(params=KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Overrides the shared fixture (used by its ``app``): memory and SQLite only."""
    return backend_url(request.param, tmp_path)


def _json_parts(task: Task) -> str:
    """The task's JSON-bearing fields, as exact text: repr tells a tuple from a list,
    1 from 1.0 and True, and shows the order of keys."""
    return repr((task.payload, task.tags, task.result, task.progress, task.error, task.errors,
                 task.backoff, task.concurrency))


async def _claim(storage: Storage, action: str = "test:a") -> Task:
    [task] = await storage.claim("w1", [action], 1, 30.0)
    return task


# -- the stored shapes equal SQLite's --------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=range(len(SHAPES)))
async def test_values_read_back_as_from_sqlite(both: tuple[Storage, Storage], shape: Any) -> None:
    memory = both[0]
    spec = make_spec(payload=shape, tags={"t": shape, 3: "three"},
                     backoff=Backoff(base=1, factor=2, maximum=60, jitter=0),
                     concurrency=(Condition({"payload.k": {"$in": (1, 2)}}, 5),))
    error = ErrorInfo("ValueError", "bad", traceback="tb", attempt=1, at=1.5)
    seen: list[str] = []
    for storage in both:
        [added] = await storage.add([spec])
        task = await _claim(storage)
        lease = Lease(task.id, task.token or "")
        assert await storage.update_progress([(lease, Progress(1, 2, "m", {"d": shape}))]) == []
        running = await storage.get(spec.id)
        assert running is not None
        done = Transition(Status.QUEUED, run_at=time.time(), result=shape, error=error,
                          reason="error")
        assert await storage.finish("w1", [Completion(task.id, task.token or "", done,
                                                      Progress(2, 2, "end", {"d": shape}))]) == []
        final = await storage.get(spec.id)
        assert final is not None
        [found] = await storage.find(parse_query({"id": spec.id}))
        seen.append("\n".join(_json_parts(t) for t in (task, running, final, found)))
        if storage is memory:  # memory's add also returns the stored form
            assert repr((added.task.payload, added.task.tags)) == repr((final.payload,
                                                                        final.tags))
    assert seen[0] == seen[1]


async def test_add_stores_the_json_form(both: tuple[Storage, Storage]) -> None:
    """The example of the audit: int keys become text, tuples become lists."""
    for storage in both:
        spec = make_spec(payload={1: "x", "t": (1, 2)})
        await storage.add([spec])
        got = await storage.get(spec.id)
        assert got is not None
        assert repr(got.payload) == repr({"1": "x", "t": [1, 2]}), type(storage).__name__


async def test_log_data_and_worker_info_read_back_as_from_sqlite(
        both: tuple[Storage, Storage]) -> None:
    seen: list[str] = []
    for storage in both:
        spec = make_spec()
        await storage.add([spec])
        await storage.append_logs([
            NewLog(spec.id, LogLevel.INFO, "a", 1.0, {"t": (1, 2), 5: {"u": ()}}),
            NewLog(spec.id, LogLevel.INFO, "b", 2.0, None)])
        records = await storage.read_logs(spec.id)
        await storage.register_worker(WorkerInfo("w1", "h", 1, ("test:a",), 2, 1.0, 1.0,
                                                 info={"lease": 30, "t": (1,), 2: "x"}))
        [worker] = await storage.list_workers()
        seen.append(repr(([r.data for r in records], worker.actions, worker.info)))
    assert seen[0] == seen[1]
    assert "(1, 2)" not in seen[0]


# -- what went in is not kept -----------------------------------------------------------


async def test_caller_objects_are_copied_on_the_way_in(storage: Storage) -> None:
    payload: dict[str, Any] = {"list": [1]}
    tags: dict[str, Any] = {"user": {"name": "ann"}}
    query: dict[str, Any] = {"payload.list": {"$in": [1]}}
    spec = make_spec(payload=payload, tags=tags, concurrency=(Condition(query, 3),))
    await storage.add([spec])
    payload["list"].append(2)
    payload["new"] = True
    tags["user"]["name"] = "bob"
    query["payload.list"]["$in"].append(2)

    task = await _claim(storage)
    data: dict[str, Any] = {"step": [1]}
    await storage.update_progress([(Lease(task.id, task.token or ""),
                                    Progress(1, 2, "m", data))])
    data["step"].append(2)
    got = await storage.get(task.id)
    assert got is not None and got.progress is not None and got.progress.data == {"step": [1]}

    result: dict[str, Any] = {"rows": [1]}
    end = Progress(2, 2, "end", {"step": [2]})
    await storage.finish("w1", [Completion(task.id, task.token or "",
                                           Transition(Status.SUCCEEDED, result=result), end)])
    result["rows"].append(2)
    assert end.data is not None
    end.data["step"].append(3)

    log_data: dict[str, Any] = {"n": [1]}
    await storage.append_logs([NewLog(task.id, LogLevel.INFO, "line", 1.0, log_data)])
    log_data["n"].append(2)
    info: dict[str, Any] = {"lease": 30, "tags": ["a"]}
    await storage.register_worker(WorkerInfo("w1", "h", 1, ("test:a",), 2, 1.0, 1.0, info=info))
    info["tags"].append("b")

    got = await storage.get(task.id)
    assert got is not None
    assert got.payload == {"list": [1]}
    assert got.tags == {"user": {"name": "ann"}}
    assert got.concurrency[0].query == {"payload.list": {"$in": [1]}}
    assert got.result == {"rows": [1]}
    assert got.progress is not None and got.progress.data == {"step": [2]}
    [record] = await storage.read_logs(task.id)
    assert record.data == {"n": [1]}
    [worker] = await storage.list_workers()
    assert worker.info == {"lease": 30, "tags": ["a"]}


# -- what comes out is the reader's own --------------------------------------------------


async def test_reads_are_the_readers_own(storage: Storage) -> None:
    spec = make_spec(payload={"list": [1]}, tags={"user": {"name": "ann"}},
                     concurrency=(Condition({"payload.list": {"$in": [1]}}, 3),))
    await storage.add([spec])
    task = await _claim(storage)
    await storage.finish("w1", [Completion(
        task.id, task.token or "", Transition(Status.SUCCEEDED, result={"rows": [1]}),
        Progress(1, 1, "done", {"step": [1]}))])
    await storage.append_logs([NewLog(task.id, LogLevel.INFO, "line", 1.0, {"n": [1]})])
    await storage.register_worker(WorkerInfo("w1", "h", 1, ("test:a",), 2, 1.0, 1.0,
                                             info={"tags": ["a"]}))

    def spoil(t: Task) -> None:
        t.payload["list"].append(2)
        t.tags["user"]["name"] = "bob"
        t.result["rows"].append(2)
        assert t.progress is not None and t.progress.data is not None
        t.progress.data["step"].append(2)
        query: Any = t.concurrency[0].query
        query["payload.list"]["$in"].append(2)

    got = await storage.get(task.id)
    assert got is not None
    spoil(got)
    [many] = await storage.get_many([task.id])
    spoil(many)
    [found] = await storage.find(parse_query({"id": task.id}))
    spoil(found)
    [record] = await storage.read_logs(task.id)
    assert record.data is not None
    record.data["n"].append(2)
    [worker] = await storage.list_workers()
    worker.info["tags"].append("b")  # type: ignore[attr-defined]

    again = await storage.get(task.id)
    assert again is not None
    assert again.payload == {"list": [1]}
    assert again.tags == {"user": {"name": "ann"}}
    assert again.result == {"rows": [1]}
    assert again.progress is not None and again.progress.data == {"step": [1]}
    assert again.concurrency[0].query == {"payload.list": {"$in": [1]}}
    [record] = await storage.read_logs(task.id)
    assert record.data == {"n": [1]}
    [worker] = await storage.list_workers()
    assert worker.info == {"tags": ["a"]}


async def test_memory_returns_copies_from_every_method() -> None:
    """add, claim, abort, prioritize, retry and the task of InvalidTransition: none
    of them hands out the stored objects."""
    storage = MemoryStorage()
    first, second = make_spec(payload={"list": [1]}), make_spec(payload={"list": [1]})
    added = [r.task for r in await storage.add([first, second])]
    [dup] = await storage.add([make_spec(payload={"list": [9]}, unique_key="k")])
    [again] = await storage.add([make_spec(payload={"list": [9]}, unique_key="k")])
    assert not again.created
    prioritized = await storage.prioritize(second.id, 5)
    claimed = await _claim(storage)
    assert claimed.id == first.id
    aborted = await storage.abort(second.id, "stop")
    retried = await storage.retry(second.id)
    with pytest.raises(InvalidTransition) as caught:
        await storage.retry(second.id)
    refused = caught.value.task
    assert refused is not None
    for t in [*added, dup.task, again.task, prioritized, claimed, aborted, retried, refused]:
        t.payload["list"].append(2)
        t.tags["x"] = 1
    for spec, want in [(first, [1]), (second, [1]), (dup.task, [9])]:
        got = await storage.get(spec.id)
        assert got is not None and got.payload == {"list": want} and got.tags == {}


# -- with an app and a worker ------------------------------------------------------------


async def test_caller_payload_mutated_after_add(app: Conveyor) -> None:
    payload: dict[str, Any] = {"list": [1]}
    task = await app.add("x", payload)
    payload["list"].append(2)
    assert (await app.get(task.id)).payload == {"list": [1]}


async def test_non_json_shapes_read_back_as_json(app: Conveyor) -> None:
    task = await app.add("a", {1: "x", "t": (1, 2)}, tags={"t": (1,)})
    got = await app.get(task.id)
    assert repr(got.payload) == repr({"1": "x", "t": [1, 2]})
    assert repr(got.tags) == repr({"t": [1]})


async def test_handler_mutating_its_payload_changes_nothing_stored(app: Conveyor) -> None:
    seen: list[Any] = []
    kept: dict[str, Any] = {"rows": [1]}

    @app.handler("touch", max_attempts=2, backoff=0)
    async def touch(ctx: Context[Any]) -> dict[str, Any]:
        seen.append(repr(ctx.payload))
        ctx.payload["touched"] = True
        ctx.payload["list"].append(len(seen))
        if len(seen) == 1:
            raise RuntimeError("again")  # the second attempt must see the payload as added
        return kept

    payload: dict[str, Any] = {"list": [1]}
    async with app:
        task = await app.add("touch", payload)
        assert await app.wait(task.id, timeout=10) == {"rows": [1]}
        kept["rows"].append(2)
        done = await app.get(task.id)
    assert seen == [repr({"list": [1]})] * 2
    assert payload == {"list": [1]}
    assert done.status is Status.SUCCEEDED and done.attempts == 2
    assert done.payload == {"list": [1]}
    assert done.result == {"rows": [1]}


async def test_mutating_a_read_task_changes_nothing_stored(app: Conveyor) -> None:
    @app.handler("work")
    async def work(ctx: Context[Any]) -> dict[str, Any]:
        await ctx.progress(1, total=1, step=[1])
        return {"rows": [1]}

    async with app:
        task = await app.add("work", {"list": [1]}, tags={"user": {"name": "ann"}})
        await app.wait(task.id, timeout=10)
    got = await app.get(task.id)
    got.payload["list"].append(2)
    got.result["rows"].append(2)
    got.tags["user"]["name"] = "bob"
    assert got.progress is not None and got.progress.data is not None
    got.progress.data["step"].append(2)
    [found] = await app.find({"id": task.id})
    found.payload["list"].append(3)
    again = await app.get(task.id)
    assert again.payload == {"list": [1]}
    assert again.result == {"rows": [1]}
    assert again.tags == {"user": {"name": "ann"}}
    assert again.progress is not None and again.progress.data == {"step": [1]}
