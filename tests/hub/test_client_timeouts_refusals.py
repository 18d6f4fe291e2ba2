"""HubClient as a remote worker: run timeouts end as they do in-process, and
``accept`` sees a Task and refuses without a busy loop of offers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor import Context, Conveyor, Task
from conveyor.client import HubClient
from conveyor.model import Status

from ._working import working as _working
from ._ws_helpers import make_hub
from .conftest import RunningHub, hub_db_url


def working(client: HubClient, service: str) -> Any:
    """The service at 4 handlers at once."""
    return _working(client, service, concurrency=4)


def _slow_handlers(register: Callable[..., Any], prefix: str) -> None:
    """The same handlers, for an app (in-process) or a HubClient (remote)."""

    async def sleepy(ctx: Context) -> str:
        await asyncio.sleep(30)
        return "never"

    def blocking(ctx: Context) -> str:
        ctx.wait_aborted(30)
        return "discarded"

    async def own_timeout(ctx: Context) -> str:
        raise TimeoutError("the mail server did not answer")

    register(f"{prefix}:sleepy", sleepy, timeout=0.2)
    register(f"{prefix}:blocking", blocking, timeout=0.2, mode="thread", abort_grace=1.0)
    register(f"{prefix}:strict", sleepy, timeout=0.2, retry_on=(KeyError,))
    register(f"{prefix}:own", own_timeout, timeout=5, retry_on=(KeyError,))


def _outcome(task: Task) -> tuple[Any, ...]:
    return (task.status, task.reason, task.attempts,
            [(e.type, e.message) for e in task.errors])


_CASES = [("sleepy", {"max_attempts": 1}), ("sleepy", {"max_attempts": 2}),
          ("blocking", {"max_attempts": 1}), ("strict", {"max_attempts": 3}),
          ("own", {"max_attempts": 3})]


async def _run_cases(hub: RunningHub, prefix: str) -> list[tuple[Any, ...]]:
    tasks = [await hub.app.add(f"{prefix}:{name}", None, backoff=0, **options)
             for name, options in _CASES]
    return [_outcome(await hub.app.wait_task(t.id, timeout=20)) for t in tasks]


async def test_a_handler_timeout_is_reported_as_a_run_timeout(
        insecure_hub: RunningHub) -> None:
    """What the hub can already see: the attempt failed with the run timeout's
    TimeoutError, and is retried while attempts remain; a handler's own
    TimeoutError stays an ordinary error."""
    client = HubClient(insecure_hub.url)
    _slow_handlers(client.register, "remote")
    async with working(client, "slow"):
        retried = await insecure_hub.app.add("remote:sleepy", None, max_attempts=2, backoff=0)
        own = await insecure_hub.app.add("remote:own", None, max_attempts=3)
        ended = await insecure_hub.app.wait_task(retried.id, timeout=20)
        assert ended.attempts == 2
        assert [(e.type, e.message) for e in ended.errors] == [
            ("TimeoutError", "run timeout of 0.2s exceeded")] * 2
        failed = await insecure_hub.app.wait_task(own.id, timeout=20)
        assert _outcome(failed) == (Status.FAILED, "error", 1, [
            ("TimeoutError", "the mail server did not answer")])


async def test_a_handler_timeout_ends_as_it_does_in_process(tmp_path: Path) -> None:
    app = Conveyor(hub_db_url(tmp_path))
    _slow_handlers(app.register, "local")
    async with make_hub(tmp_path, insecure=True, app=app) as hub:
        client = HubClient(hub.url)
        _slow_handlers(client.register, "remote")
        async with working(client, "slow"):
            local = await _run_cases(hub, "local")
            remote = await _run_cases(hub, "remote")
    assert local[0] == (Status.ABORTED, "timeout", 1,
                        [("TimeoutError", "run timeout of 0.2s exceeded")])
    assert remote == local


async def test_the_tasks_run_timeout_ends_aborted(insecure_hub: RunningHub) -> None:
    """The task's own run timeout (enforced by the hub) on HubClient handlers."""
    client = HubClient(insecure_hub.url)

    @client.handler("task:sleepy")
    async def sleepy(ctx: Context) -> str:
        await asyncio.sleep(30)
        return "never"

    @client.handler("task:blocking", mode="thread")
    def blocking(ctx: Context) -> str:
        ctx.wait_aborted(30)
        return "discarded"

    async with working(client, "slow"):
        tasks = [await insecure_hub.app.add(action, None, timeout=0.2, max_attempts=1)
                 for action in ("task:sleepy", "task:blocking")]
        for task in tasks:
            ended = await insecure_hub.app.wait_task(task.id, timeout=20)
            assert _outcome(ended) == (Status.ABORTED, "timeout", 1,
                                       [("TimeoutError", "run timeout of 0.2s exceeded")])


async def test_a_refused_task_is_not_offered_in_a_busy_loop(insecure_hub: RunningHub) -> None:
    hub = insecure_hub
    offers: list[str] = []
    unlisten = hub.app.bus.on("task.started", lambda event: offers.append(event.task_id or ""))
    seen: list[tuple[float, Task]] = []
    fifth = asyncio.Event()
    loop = asyncio.get_running_loop()

    def refuse(task: Task) -> bool:
        seen.append((loop.time(), task))
        if len(seen) == 5:
            fifth.set()
        return False

    picky = HubClient(hub.url)

    @picky.handler("pick:job", accept=refuse)
    async def never(ctx: Context) -> str:
        return "picky"

    eager = HubClient(hub.url)

    @eager.handler("pick:job")
    async def run(ctx: Context) -> str:
        return f"eager ran {ctx.payload['n']}"

    try:
        async with working(picky, "pool"):
            task = await hub.app.add("pick:job", {"n": 7})
            await asyncio.wait_for(fifth.wait(), 20)
            # asked 5 times: after the first refusal the offers come back ever slower
            # (0.1 + 0.2 + 0.4 s of pauses), where they came back in a busy loop before
            elapsed = seen[4][0] - seen[0][0]
            assert elapsed >= 0.6, elapsed
            assert len([o for o in offers if o == task.id]) <= 7, len(offers)
            first = seen[0][1]
            assert isinstance(first, Task) and first.id == task.id
            assert first.action == "pick:job" and first.payload == {"n": 7}
            assert first.status is Status.RUNNING and first.attempts == 1
            # another connection of the service that accepts gets the task
            async with working(eager, "pool"):
                done = await hub.app.wait_task(task.id, timeout=20)
            assert done.status is Status.SUCCEEDED and done.result == "eager ran 7"
            assert done.attempts == 1  # refusals give the attempt back
    finally:
        unlisten()


async def test_accept_sees_the_task_before_its_payload(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, inline_payload=100) as hub:
        asked: list[Task] = []
        ran = asyncio.Event()

        def second_thoughts(task: Task) -> bool:
            asked.append(task)
            return len(asked) >= 3  # refuses twice, then takes it after all

        client = HubClient(hub.url)

        @client.handler("big:job", accept=second_thoughts)
        async def job(ctx: Context) -> int:
            ran.set()
            return len(ctx.payload["blob"])

        async with working(client, "alone"):
            task = await hub.app.add("big:job", {"blob": "x" * 1000})
            assert await hub.app.wait(task.id, timeout=20) == 1000
        assert ran.is_set() and len(asked) == 3
        assert all(isinstance(t, Task) and t.id == task.id and t.payload is None
                   for t in asked)
