"""conveyor.client.HTTPClient: the library's methods and errors, over a real hub."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conveyor import LogLevel, Status, Task
from conveyor.client import HTTPClient, HubError
from conveyor.client import _http as client_module
from conveyor.errors import (
    InvalidTransition,
    QueryError,
    TaskAborted,
    TaskFailed,
    TaskNotFound,
    ValidationError,
    WaitTimeout,
)

from ._rest_helpers import make_keys, worker_hub
from .conftest import RunningHub, free_port

__all__ = ["worker_hub"]


async def test_add_read_and_wait(worker_hub: RunningHub) -> None:
    keys = make_keys(worker_hub)
    async with HTTPClient(worker_hub.url, keys.admin) as hub:
        task = await hub.add("mail:send", {"to": "ann"}, priority=2, tags={"u": 1})
        assert isinstance(task, Task) and task.status in (Status.QUEUED, Status.RUNNING)
        assert task.public_url == worker_hub.hub.task_url(task.id)
        assert await hub.wait(task.id, timeout=10) == {"sent": "ann"}
        done = await hub.get(task.id, logs=True, max_level="info")
        assert done.status is Status.SUCCEEDED and done.priority == 2 and done.tags == {"u": 1}
        assert done.logs is not None
        assert [r.level for r in done.logs] == [LogLevel.INFO, LogLevel.WARNING]
        stored = await worker_hub.app.get(task.id, logs=True, max_level="info")
        assert done.to_json() == stored.to_json() | {"public_url": done.public_url}
        page = await hub.logs(task.id, max_level=LogLevel.DEBUG)
        assert page.complete and page.records[0].message == "connecting"
        assert [r.message async for r in hub.follow_logs(task.id, max_level="warning")] == [
            "slow server"]

        failing = await hub.add("job:fail")
        with pytest.raises(TaskFailed) as failed:
            await hub.wait(failing.id, timeout=10)
        assert failed.value.task.error is not None
        assert failed.value.task.error.message == "boom"

        slow = await hub.add("job:slow", delay=600)
        with pytest.raises(WaitTimeout):
            await hub.wait(slow.id, timeout=0.3)
        with pytest.raises(WaitTimeout):  # a duration may be a timedelta, as elsewhere
            await hub.wait_task(slow.id, timeout=timedelta(seconds=0.2))
        aborted = await hub.abort(slow.id, "enough")
        assert aborted.status is Status.ABORTED
        with pytest.raises(TaskAborted):
            await hub.wait(slow.id, timeout=5)

        second, created = await hub.add_checked("mail:send", unique_key="k", delay=600)
        again, created_again = await hub.add_checked("mail:send", unique_key="k")
        assert created and not created_again and again.id == second.id


async def test_find_count_stats_workers_and_control(worker_hub: RunningHub,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    keys = make_keys(worker_hub)
    monkeypatch.setattr(client_module, "PAGE", 2)  # read in pages of two
    async with HTTPClient(worker_hub.url, keys.admin) as hub:
        tasks = await hub.add_many([("mail:send", {"n": i}, {"delay": 600}) for i in range(5)])
        assert len(tasks) == 5
        found = await hub.find({"action": "mail:send"}, sort="-payload.n")
        assert [t.payload["n"] for t in found] == [4, 3, 2, 1, 0]
        assert [t.payload["n"] for t in await hub.find(sort="payload.n", limit=3, skip=1)] == [
            1, 2, 3]
        assert await hub.find(limit=0) == []
        first = await hub.find_one({"payload.n": 2})
        assert first is not None and first.id == tasks[2].id
        assert await hub.count({"payload.n": {"$gte": 3}}) == 2
        assert (await hub.stats())["mail:send"] == {"queued": 5}
        workers = await hub.workers()
        assert workers and "mail:send" in workers[0].actions

        assert (await hub.prioritize(tasks[0].id, -1)).priority == -1
        for t in tasks[:3]:
            await hub.abort(t.id)
        retried = await hub.retry(tasks[2].id, delay=600)
        assert retried.status is Status.QUEUED
        assert await hub.delete(tasks[0].id) == [tasks[0].id]
        assert await hub.delete([tasks[1].id, tasks[3].id]) == [tasks[1].id]
        await hub.abort(tasks[4].id)
        assert await hub.delete({"payload.n": {"$gte": 4}}) == [tasks[4].id]
        assert await hub.count() == 2


async def test_errors_are_the_librarys(worker_hub: RunningHub) -> None:
    keys = make_keys(worker_hub)
    missing = "01a00000-0000-7000-8000-000000000000"
    async with HTTPClient(worker_hub.url, keys.admin) as hub:
        with pytest.raises(TaskNotFound) as nf:
            await hub.get(missing)
        assert nf.value.task_id == missing
        with pytest.raises(QueryError) as bad_filter:
            await hub.find({"priority": {"$gt": "x"}})
        assert bad_filter.value.path == "filter.priority.$gt"
        assert "filter.priority.$gt" in str(bad_filter.value)
        for bad in (None, -1, True, "2"):
            with pytest.raises(QueryError, match="skip must be an integer") as bad_skip:
                await hub.find(skip=bad)  # type: ignore[arg-type]
            assert bad_skip.value.path == "skip"
        with pytest.raises(ValidationError, match="priority"):
            await hub.add("mail:send", priority="high")
        with pytest.raises(ValidationError, match="delay or run_at"):
            await hub.add("mail:send", delay=1, run_at=5)
        with pytest.raises(ValidationError):
            await hub.add("mail:send", {"x": float("nan")})
        with pytest.raises(ValidationError, match=r"tasks\[1\]\.action: invalid action name"):
            await hub.add_many([("mail:send", 1), ("bad name", 2)])
        task = await hub.add("mail:send", delay=600)
        with pytest.raises(InvalidTransition):
            await hub.retry(task.id)
        with pytest.raises(TaskNotFound):
            await hub.wait(missing, timeout=1)
    async with HTTPClient(worker_hub.url, keys.publisher) as publisher:
        with pytest.raises(HubError) as forbidden:
            await publisher.add("geo:code")
        assert forbidden.value.status == 403 and forbidden.value.code == "forbidden"
        with pytest.raises(HubError, match="admin"):
            await publisher.abort(task.id)
        with pytest.raises(TaskNotFound):  # geo tasks are not the publisher's to read
            await publisher.get((await worker_hub.app.add("geo:code", delay=600)).id)
    async with HTTPClient(worker_hub.url, "cvk_000000000000_" + "x" * 43) as wrong:
        with pytest.raises(HubError) as unauthorized:
            await wrong.stats()
        assert unauthorized.value.status == 401
        assert str(unauthorized.value) == "invalid or revoked key (HTTP 401)"
    async with HTTPClient(f"http://127.0.0.1:{free_port()}", keys.admin) as nowhere:
        with pytest.raises(HubError, match="cannot reach the hub") as unreachable:
            await nowhere.stats()
        assert unreachable.value.status == 0
