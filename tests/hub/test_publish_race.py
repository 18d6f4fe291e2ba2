"""A published task that a service runs, and ends, before the hub's add returns.

Under load the add's last step (its connection given back, the commit's reply)
can come after a service already took the task (the change feed's NOTIFY, or the
hub's poll, woke the claim): the run's events came out while the add let the new
task's events go, before the publish's stream listened, and a ``run`` (publish with
``wait``) waited for an end it had missed, to its timeout. The stream now listens
before the add lets the events out, and the bus makes a new task's events while
its add holds them, even if nobody listened yet."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor.client import HubClient
from conveyor.errors import TaskAborted
from conveyor.model import Status

from ._ws_helpers import Raw, eventually
from .conftest import RunningHub
from .test_client import worker_client, working


@contextlib.asynccontextmanager
async def adds_returning_late(hub: RunningHub) -> AsyncIterator[None]:
    """The hub's adds return only once the task they added has ended (as an add
    whose last step is slow under load, while a service runs the task at once)."""
    storage = hub.app.storage
    original = storage.add

    async def add_then_wait(specs: Any, *args: Any, **kwargs: Any) -> Any:
        results = await original(specs, *args, **kwargs)

        async def ended() -> bool:
            task = await storage.get(results[-1].task.id)
            return task is not None and task.terminal

        await eventually(ended, timeout=20)
        return results

    storage.add = add_then_wait  # type: ignore[method-assign]
    try:
        yield
    finally:
        storage.add = original  # type: ignore[method-assign]


def kinds(ws: Raw, msg_id: Any) -> list[str]:
    return [m["type"] for m in ws.seen if m.get("id") == msg_id]


async def test_a_run_ended_before_its_add_returned_is_answered(hub: RunningHub) -> None:
    worker = worker_client(hub, hub.key("svc", subscribe=["*"]))
    key = hub.key("pub", publish=["math:*"])
    async with working(worker, "calc"), HubClient(hub.url, key) as pub:
        assert await pub.run("math:double", 5, timeout=10) == 10
        async with adds_returning_late(hub):
            assert await pub.run("math:double", 6, timeout=15) == 12
            tasks = await pub.add_many([("math:double", 7), ("math:double", 8)])
        assert [await pub.wait(t.id, timeout=10) for t in tasks] == [14, 16]

        # what a publisher with updates is told is the same, in the same order
        async with Raw.opened(hub.url, key) as ws:
            publish = {"type": "publish", "action": "math:double", "wait": True,
                       "timeout": 15}
            on_time = await ws.send({**publish, "payload": 1})
            assert (await ws.expect("result", on_time, timeout=15))["value"] == 2
            async with adds_returning_late(hub):
                late = await ws.send({**publish, "payload": 2})
                assert (await ws.expect("result", late, timeout=15))["value"] == 4
            assert kinds(ws, on_time)[0] == "published"
            assert kinds(ws, late) == kinds(ws, on_time)


async def test_a_deduplicated_publish_sees_the_existing_task_end_meanwhile(
        hub: RunningHub) -> None:
    """A publish whose ``unique_key`` matched a live task follows that task: when it
    ends after the add read it and before the stream listened, the stream reads it
    again and answers the wait (it waited for its timeout)."""
    key = hub.key("admin", admin=True)
    first = await hub.app.add("x:job", 1, unique_key="k")
    storage = hub.app.storage
    original = storage.add

    async def add_then_end(specs: Any, *args: Any, **kwargs: Any) -> Any:
        results = await original(specs, *args, **kwargs)
        if not results[0].created:  # the task it matched ends meanwhile
            await hub.app.abort(results[0].task.id, "ended elsewhere")
        return results

    storage.add = add_then_end  # type: ignore[method-assign]
    try:
        async with Raw.opened(hub.url, key) as ws:
            sent = await ws.send({"type": "publish", "action": "x:job", "payload": 2,
                                  "options": {"unique_key": "k"}, "wait": True,
                                  "timeout": 15})
            published = await ws.expect("published", sent)
            assert published["created"] is False and published["task"]["id"] == first.id
            answer = await ws.expect("error", sent, timeout=15)
            assert answer["code"] == "task_aborted", answer
            assert kinds(ws, sent) == ["published", "end", "error"]
    finally:
        storage.add = original  # type: ignore[method-assign]


async def test_an_abort_asked_while_the_hubs_claim_returns_reaches_the_service(
        hub: RunningHub) -> None:
    """An abort asked after the hub's claim of a task committed, before the claim
    returned here: the event found no run to stop, and the service ran the task until
    the next heartbeat (lease / 3, 10 s). The hub looks again once the claim returns."""
    worker = worker_client(hub, hub.key("svc", subscribe=["*"]))
    storage = hub.app.storage
    claim = storage.claim
    asked: list[str] = []

    async def claim_then_abort(*args: Any, **kwargs: Any) -> Any:
        tasks = await claim(*args, **kwargs)
        for task in tasks:
            if task.action == "math:slow" and not asked:
                asked.append(task.id)
                await hub.app.abort(task.id, "asked early")
        return tasks

    storage.claim = claim_then_abort  # type: ignore[method-assign]
    try:
        async with working(worker, "calc"), HubClient(hub.url, hub.key(
                "pub", publish=["math:*"])) as pub:
            slow = await pub.add("math:slow", None)
            with pytest.raises(TaskAborted):  # the handler saw it (no wait for a heartbeat)
                await pub.wait(slow.id, timeout=5)
            assert asked == [slow.id]
            ended = await pub.get(slow.id)
            assert ended.status is Status.ABORTED and ended.reason == "asked early"
    finally:
        storage.claim = claim  # type: ignore[method-assign]


async def test_a_deduplicated_publish_is_told_the_start_it_reads_again_around(
        hub: RunningHub) -> None:
    """The task a publish's ``unique_key`` matched starts while its stream reads it
    again: the publisher with updates is told that start (the read's version no
    longer hides the changes held since the add)."""
    key = hub.key("admin", admin=True)
    first = await hub.app.add("x:job", 1, unique_key="k")
    storage = hub.app.storage
    get = storage.get
    started: list[str] = []

    async def get_after_a_start(task_id: str, *args: Any, **kwargs: Any) -> Any:
        if task_id == first.id and not started:
            started.append(task_id)  # a worker takes the task while the stream reads it
            (claimed,) = await storage.claim("w1", ["x:job"], 1, 60)
            hub.app.bus.task_event("task.started", claimed)
        return await get(task_id, *args, **kwargs)

    storage.get = get_after_a_start  # type: ignore[method-assign]
    try:
        async with Raw.opened(hub.url, key) as ws:
            sent = await ws.send({"type": "publish", "action": "x:job", "payload": 2,
                                  "options": {"unique_key": "k"}})
            assert (await ws.expect("published", sent))["created"] is False
            start = await ws.expect("start", sent)
            assert start["task_id"] == first.id and start["attempt"] == 1
            assert started == [first.id] and kinds(ws, sent) == ["published", "start"]
    finally:
        storage.get = get  # type: ignore[method-assign]
