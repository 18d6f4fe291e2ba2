"""The Python client keeps to the hub's frame limit (``welcome.limits.max_frame``):
a report, a publish or a burst of log lines over it closed the connection (4009) and
lost every run on it, over and over. Also: a subscription the hub refuses ends
``work()``, and ``close()`` during ``work()`` is a graceful stop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from conveyor import Context, Retry, ValidationError
from conveyor.client import HubClient
from conveyor.model import Status, Task

from ._ws_helpers import eventually, make_hub

FRAME = 64 * 1024


async def test_reports_over_the_frame_limit_become_smaller_ones(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The service logs the outcome its hub got: a result over the limit is sent as a
    failure, and logged so (it was logged as succeeded)."""
    caplog.set_level(logging.DEBUG, logger="conveyor.client.worker")
    async with make_hub(tmp_path, max_frame=FRAME) as hub:
        worker = HubClient(hub.url, hub.key("svc", subscribe=["big:*"]))
        gate = asyncio.Event()

        @worker.handler("big:result")
        async def big_result(ctx: Context) -> str:
            return "x" * (2 * FRAME)

        @worker.handler("big:line")
        async def big_line(ctx: Context) -> str:
            ctx.log.info("y" * (2 * FRAME))
            return "ok"

        @worker.handler("big:burst")
        async def burst(ctx: Context) -> int:
            for i in range(200):
                ctx.log.info("%d %s", i, "z" * 1000)
            return 200

        @worker.handler("big:slow")
        async def slow(ctx: Context) -> str:
            await gate.wait()
            return "survived"

        job = asyncio.create_task(worker.work("svc", concurrency=8))
        await worker.wait_working(10)
        async with HubClient(hub.url, hub.key("pub", publish=["big:*"], read=["big:*"])) as pub:
            slow_task = await pub.add("big:slow")  # runs on the same connection throughout
            failed = await pub.wait_task((await pub.add("big:result")).id, timeout=20)
            assert failed.status is Status.FAILED and failed.error is not None
            assert "frame limit" in failed.error.message and failed.attempts == 1
            [said] = [r for r in caplog.records if r.name == "conveyor.client.worker"
                      and r.getMessage().startswith(f"task {failed.id} ")]
            assert said.levelno == logging.WARNING, said.getMessage()
            assert "failed: ValidationError: result: " in said.getMessage()
            line = await pub.wait_task((await pub.add("big:line")).id, timeout=20)
            assert line.status is Status.SUCCEEDED
            burst_task = await pub.wait_task((await pub.add("big:burst")).id, timeout=20)
            assert burst_task.status is Status.SUCCEEDED
            gate.set()
            assert await pub.wait(slow_task.id, timeout=20) == "survived"
        logs = await hub.app.get(line.id, logs=True)
        [record] = logs.logs
        assert "[cut:" in record.message and len(record.message) < FRAME
        assert len((await hub.app.get(burst_task.id, logs=True)).logs) == 200
        slow_done = await hub.app.get(slow_task.id)
        assert slow_done.rescues == 0 and worker.connects == 1  # the connection held
        worker.stop()
        await asyncio.wait_for(job, 20)
        await worker.close()


async def test_text_that_is_not_valid_unicode_is_reported_as_in_process(
        tmp_path: Path) -> None:
    """A lone surrogate (``os.fsdecode`` of a bad byte) in a remote result, log line or
    progress message: the hub refuses such text, so the result stayed unsent and the
    task running for ever. Now the log line is stored escaped (as in-process), the
    progress keeps its numbers, and the result fails the task saying why."""
    async with make_hub(tmp_path) as hub:
        worker = HubClient(hub.url, hub.key("svc", subscribe=["s:*"]))

        @worker.handler("s:odd")
        async def odd(ctx: Context) -> str:
            await ctx.progress(1, total=2, message="half \udcff")
            ctx.log.info("line \udcff")
            return "name \udcff"

        @worker.handler("s:again")
        async def again(ctx: Context) -> Retry | str:
            if ctx.attempt == 1:
                return Retry(after=0, reason="bad \udcff name")
            return "second"

        job = asyncio.create_task(worker.work("svc"))
        await worker.wait_working(10)
        task = await hub.app.add("s:odd")
        ended = await hub.app.wait_task(task.id, timeout=20)
        assert ended.status is Status.FAILED and ended.error is not None, ended
        assert "not valid Unicode" in ended.error.message and ended.attempts == 1
        [line] = (await hub.app.get(task.id, logs=True)).logs
        assert line.message == "line \\udcff"
        assert ended.progress is not None and ended.progress.current == 1
        retried = await hub.app.wait_task((await hub.app.add(
            "s:again", max_attempts=2)).id, timeout=20)
        assert retried.status is Status.SUCCEEDED and retried.attempts == 2, retried
        assert "bad" in retried.errors[0].message
        assert worker.connects == 1
        worker.stop()
        await asyncio.wait_for(job, 20)
        await worker.close()


async def test_a_publish_over_the_frame_limit_is_a_validation_error(tmp_path: Path) -> None:
    async with make_hub(tmp_path, max_frame=FRAME) as hub, \
            HubClient(hub.url, hub.key("pub", publish=["p:*"], read=["p:*"])) as pub:
        with pytest.raises(ValidationError, match="over the hub's frame limit"):
            await pub.add("p:big", "p" * (FRAME + 10))
        with pytest.raises(ValidationError, match="over the hub's frame limit"):
            await pub.add_many([("p:many", "q" * 300)] * 400)
        task = await pub.add("p:small", 1)  # the same connection goes on
        assert pub.connects == 1 and (await pub.get(task.id)).payload == 1
        assert await hub.app.count({}) == 1


@pytest.mark.parametrize(("service", "concurrency", "message"), [
    ("bad service!", 1, "a service name is 1-100 letters"),
    ("svc", 20_000, "'capacity' must be an integer from 1 to 10000")])
async def test_work_ends_when_the_hub_refuses_its_subscription(
        tmp_path: Path, service: str, concurrency: int, message: str) -> None:
    """It was taken for a lost connection: work() retried for ever."""
    async with make_hub(tmp_path) as hub:
        worker = HubClient(hub.url, hub.key("svc", subscribe=["w:*"]))

        @worker.handler("w:a")
        async def handle(ctx: Context) -> None:
            return None

        with pytest.raises(ValidationError, match=message):
            await asyncio.wait_for(worker.work(service, concurrency=concurrency,
                                               prefetch=0), 10)
        await worker.close()


async def test_close_during_work_is_a_graceful_stop(tmp_path: Path) -> None:
    async with make_hub(tmp_path) as hub:
        worker = HubClient(hub.url, hub.key("svc", subscribe=["c:*"]))
        started = asyncio.Event()

        @worker.handler("c:nap")
        async def nap(ctx: Context) -> str:
            started.set()
            await asyncio.sleep(0.3)  # stands for work that is under way at close()
            return "done"

        job = asyncio.create_task(worker.work("svc", concurrency=3, stop_timeout=10))
        await worker.wait_working(10)
        tasks = [await hub.app.add("c:nap") for _ in range(3)]
        await asyncio.wait_for(started.wait(), 10)
        await worker.close()
        assert job.done()  # close() waited for work() to return
        await job

        async def settled() -> list[Task] | None:  # the hub stores reports in batches
            now = [await hub.app.get(t.id) for t in tasks]
            return None if any(t.status is Status.RUNNING for t in now) else now

        ended = await eventually(settled)
        # what ran finished (no lost run, rescues 0); what had not started went back
        assert all((t.status, t.rescues) in ((Status.SUCCEEDED, 0), (Status.QUEUED, 0))
                   for t in ended), ended
        assert any(t.status is Status.SUCCEEDED for t in ended)


async def test_close_from_a_handler_is_a_graceful_stop_too(tmp_path: Path) -> None:
    """close() waits for work() to return, which waits for the running handlers: one
    called from a handler stalled for the whole stop_timeout (10 s here). It does not
    wait for itself now, and the other running handler still finishes (rescues 0)."""
    async with make_hub(tmp_path) as hub:
        worker = HubClient(hub.url, hub.key("svc", subscribe=["h:*"]))
        long_started = asyncio.Event()

        @worker.handler("h:long")
        async def long(ctx: Context) -> str:
            long_started.set()
            await asyncio.sleep(0.5)  # stands for work under way when close() comes
            return "long done"

        @worker.handler("h:close")
        async def closing(ctx: Context) -> str:
            await long_started.wait()
            await worker.close()
            return "closed"

        job = asyncio.create_task(worker.work("svc", concurrency=4, stop_timeout=10))
        await worker.wait_working(10)
        tasks = [await hub.app.add("h:long"), await hub.app.add("h:close")]
        began = asyncio.get_running_loop().time()
        await asyncio.wait_for(job, 20)
        assert asyncio.get_running_loop().time() - began < 5
        ended = [await hub.app.wait_task(t.id, timeout=20) for t in tasks]
        assert [(t.status, t.result, t.rescues) for t in ended] == [
            (Status.SUCCEEDED, "long done", 0), (Status.SUCCEEDED, "closed", 0)]
