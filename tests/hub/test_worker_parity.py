"""The same outcome wherever a handler runs (worker parity audit): a remote
``Reschedule(result=...)`` over the hub app's ``max_payload`` fails its run as
in-process (the task stayed ``running`` for good)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conveyor import Context, Conveyor, PermanentFailure, Reschedule, Status
from conveyor.client import HubClient
from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore

from .conftest import RunningHub, hub_db_url, running_hub
from .test_client_timeouts_refusals import working


async def test_a_remote_reschedule_result_over_max_payload_fails_its_run(
        tmp_path: Path) -> None:
    app = Conveyor(hub_db_url(tmp_path), max_payload=1000)
    store = CredentialStore(tmp_path / "credentials.json")
    async with running_hub(app, HubConfig(port=0, credentials_path=str(store.path)),
                           store) as hub:
        worker = HubClient(hub.url, hub.key("svc", subscribe=["*"]))

        @worker.handler("poll")
        async def poll(ctx: Context) -> Reschedule:
            return Reschedule(after=0, result={"blob": "x" * 2000})

        async with working(worker, "svc"):
            task = await app.add("poll")
            ended = await app.wait_task(task.id, timeout=30)  # it never ended before
    assert ended.status is Status.FAILED and ended.attempts == 1
    assert ended.error is not None and ended.error.type == "ValidationError"
    assert "1000" in ended.error.message


async def test_a_remote_run_timeout_follows_the_handlers_retry_on(tmp_path: Path) -> None:
    app = Conveyor(hub_db_url(tmp_path))
    store = CredentialStore(tmp_path / "credentials.json")
    async with running_hub(app, HubConfig(port=0, credentials_path=str(store.path)),
                           store) as hub:
        worker = HubClient(hub.url, hub.key("svc", subscribe=["*"]))

        @worker.handler("narrow", retry_on=ValueError, max_attempts=3)
        async def narrow(ctx: Context) -> None:
            await asyncio.Event().wait()  # until the hub's run timeout ends it

        @worker.handler("wide", max_attempts=2, backoff=0)
        async def wide(ctx: Context) -> None:
            await asyncio.Event().wait()

        async with working(worker, "svc"):
            narrowed = await app.add("narrow", timeout=0.5)
            widened = await app.add("wide", timeout=0.5)
            first = await app.wait_task(narrowed.id, timeout=60)
            second = await app.wait_task(widened.id, timeout=60)
    # as in-process: not retried when retry_on leaves TimeoutError out; else retried
    assert (first.status, first.reason, first.attempts) == (Status.ABORTED, "timeout", 1)
    assert (second.status, second.reason, second.attempts) == (Status.ABORTED, "timeout", 2)


async def test_remote_progress_keeps_whole_numbers(hub: RunningHub) -> None:
    worker = HubClient(hub.url, hub.key("svc", subscribe=["*"]))

    @worker.handler("steps")
    async def steps(ctx: Context) -> None:
        await ctx.progress(1, total=2, message="half")

    async with working(worker, "svc"):
        task = await hub.app.add("steps")
        ended = await hub.app.wait_task(task.id, timeout=30)
    assert ended.progress is not None
    assert (ended.progress.current, ended.progress.total) == (1, 2)
    assert isinstance(ended.progress.current, int) and isinstance(ended.progress.total, int)


async def test_a_remote_permanent_failure_is_not_retried(tmp_path: Path) -> None:
    app = Conveyor(hub_db_url(tmp_path))
    store = CredentialStore(tmp_path / "credentials.json")
    async with running_hub(app, HubConfig(port=0, credentials_path=str(store.path)),
                           store) as hub:
        worker = HubClient(hub.url, hub.key("svc", subscribe=["*"]))

        @worker.handler("perm", max_attempts=5, backoff=0)
        async def perm(ctx: Context) -> None:
            raise PermanentFailure("no such user")

        async with working(worker, "svc"):
            task = await app.add("perm")
            ended = await app.wait_task(task.id, timeout=60)
    assert (ended.status, ended.attempts) == (Status.FAILED, 1)
    assert ended.error is not None
    assert (ended.error.type, ended.error.message) == ("PermanentFailure", "no such user")


async def test_an_app_handlers_limit_holds_for_remote_services_too(tmp_path: Path) -> None:
    """``limit=N`` caps an action's running tasks across all workers: the hub's
    claims for remote services of that action count it too (they ignored it: the
    in-process worker ran one while the service ran three more)."""
    app = Conveyor(hub_db_url(tmp_path))
    running: list[str] = []
    most: list[int] = [0]

    async def hold(ctx: Context, where: str) -> str:
        running.append(ctx.task.id)
        most[0] = max(most[0], len(running))
        try:
            await asyncio.sleep(0.2)  # the run itself: long enough for others to overlap
        finally:
            running.remove(ctx.task.id)
        return where

    @app.handler("capped", limit=1)
    async def here(ctx: Context) -> str:
        return await hold(ctx, "here")

    store = CredentialStore(tmp_path / "credentials.json")
    async with running_hub(app, HubConfig(port=0, credentials_path=str(store.path)),
                           store) as hub:
        worker = HubClient(hub.url, hub.key("svc", subscribe=["*"]))

        @worker.handler("capped")
        async def there(ctx: Context) -> str:
            return await hold(ctx, "there")

        async with working(worker, "svc"):
            tasks = await app.add_many([("capped", {"n": n}) for n in range(6)])
            ended = [await app.wait_task(t.id, timeout=60) for t in tasks]
    assert [t.status for t in ended] == [Status.SUCCEEDED] * 6
    assert most[0] == 1


async def test_a_remote_stop_tells_handlers_the_worker_is_stopping(tmp_path: Path) -> None:
    """A service's graceful stop asks the handlers still running to end with the
    reason a worker process's stop gives, ``worker stopping`` (they saw
    ``connection lost``), and hands their tasks back."""
    import threading

    app = Conveyor(hub_db_url(tmp_path))
    store = CredentialStore(tmp_path / "credentials.json")
    async with running_hub(app, HubConfig(port=0, credentials_path=str(store.path)),
                           store) as hub:
        worker = HubClient(hub.url, hub.key("svc", subscribe=["*"]))
        started = threading.Event()
        reasons: list[str | None] = []

        @worker.handler("slow", mode="thread")
        def slow(ctx: Context) -> None:
            started.set()
            ctx.wait_aborted(60)
            reasons.append(ctx.abort_reason)
            raise RuntimeError("stopped")

        work = asyncio.create_task(worker.work("svc", concurrency=1, stop_timeout=0.2))
        await worker.wait_working(10)
        task = await app.add("slow")
        assert await asyncio.to_thread(started.wait, 30)
        worker.stop()
        await asyncio.wait_for(work, 30)
        await worker.close()
        back = await app.get(task.id)
    assert reasons == ["worker stopping"]
    assert back.status is Status.QUEUED and back.attempts == 0


async def test_a_stop_between_two_works_applies_to_the_next(hub: RunningHub) -> None:
    """``stop()`` while no ``work()`` runs applies to the next one, also after a
    ``work()`` whose event loop has ended (it was sent to that dead loop and lost: a
    supervisor's ``while ...: asyncio.run(hub.work())`` never stopped)."""
    import threading

    worker = HubClient(hub.url, hub.key("svc", subscribe=["*"]))

    @worker.handler("t:x")
    async def x(ctx: Context) -> int:
        return 1

    working = threading.Event()

    async def work_then_close() -> None:
        async def tell() -> None:
            await worker.wait_working(20)
            working.set()

        told = asyncio.create_task(tell())
        try:
            await worker.work("svc", stop_timeout=0.5)
        finally:
            told.cancel()
            await worker.close()  # in its own loop, which then ends

    def work_in_a_thread() -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(work_then_close()), daemon=True)
        thread.start()
        return thread

    first = work_in_a_thread()
    assert await asyncio.to_thread(working.wait, 20)
    worker.stop()
    await asyncio.to_thread(first.join, 20)
    assert not first.is_alive()
    worker.stop()  # none runs now
    working.clear()
    second = work_in_a_thread()
    await asyncio.to_thread(second.join, 20)
    assert not second.is_alive()  # it returned at once: the stop applied to it
    assert not working.is_set()


async def test_close_from_another_loop_is_a_graceful_stop(hub: RunningHub) -> None:
    """``close()`` while ``work()`` runs in another loop (a thread's): it returned at
    once and the handler was cancelled, its task counted as a lost run (rescues 1)
    instead of getting ``stop_timeout`` to finish."""
    import threading

    worker = HubClient(hub.url, hub.key("svc", subscribe=["*"]))
    began = threading.Event()
    ends: list[str] = []

    @worker.handler("t:slow")
    async def slow(ctx: Context) -> str:
        began.set()
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            ends.append("cancelled")
            raise
        ends.append("finished")
        return "ok"

    thread = threading.Thread(
        target=lambda: asyncio.run(worker.work("svc", stop_timeout=10)), daemon=True)
    thread.start()
    task = await hub.app.add("t:slow")
    assert await asyncio.to_thread(began.wait, 30)
    await worker.close()  # here, not in work()'s loop
    await asyncio.to_thread(thread.join, 30)
    assert not thread.is_alive() and ends == ["finished"]
    done = await hub.app.wait_task(task.id, timeout=30)
    assert done.status is Status.SUCCEEDED and done.rescues == 0
