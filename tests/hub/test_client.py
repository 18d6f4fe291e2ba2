"""The Python client of the WebSocket protocol: HubClient and SyncHubClient."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import Context, Conveyor, Reschedule, Retry
from conveyor.client import BlockingLiveQuery, HubClient, HubError, SyncHubClient
from conveyor.errors import TaskAborted, TaskFailed, TaskNotFound, ValidationError, WaitTimeout
from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore
from conveyor.model import Status

from ._working import working
from ._ws_helpers import eventually, make_hub, read_line, reap, spawn
from .conftest import RunningHub, free_port, hub_db_url, running_hub

ROOT = Path(__file__).resolve().parents[2]


class Order(BaseModel):
    item: str
    qty: int


class Receipt(BaseModel):
    total: int


def worker_client(hub: RunningHub, key: str) -> HubClient:
    client = HubClient(hub.url, key)

    @client.handler("math:double")
    async def double(ctx: Context) -> int:
        return int(ctx.payload) * 2

    @client.handler("math:boom", retry_on=KeyError)
    async def boom(ctx: Context) -> None:
        raise ValueError(f"no {ctx.payload}")

    @client.handler("math:slow")
    def slow(ctx: Context) -> str:
        ctx.wait_aborted(30)
        return "never"

    @client.handler("shop:order")
    async def order(ctx: Context[Order]) -> Receipt:
        assert isinstance(ctx.payload, Order)
        return Receipt(total=ctx.payload.qty * 3)

    @client.handler("report:make")
    async def make(ctx: Context) -> Any:
        if ctx.attempt == 1:
            return Retry(after=0)
        for i in range(3):
            await ctx.progress(i + 1, total=3, message=f"step {i + 1}")
            ctx.log.info("step %s", i + 1)
        await ctx.emit({"partial": 1})
        if ctx.task.result is None:
            return Reschedule(after=0, result={"round": 1})
        return {"rounds": ctx.task.result["round"] + 1, "attempt": ctx.attempt}

    @client.handler("sync:sum", mode="thread")
    def add_up(ctx: Context) -> int:
        ctx.progress(1, total=1)
        ctx.log.warning("summing")
        return sum(ctx.payload)

    return client


async def test_publish_and_await_with_the_client(hub: RunningHub) -> None:
    worker = worker_client(hub, hub.key("svc", subscribe=["*"]))
    async with working(worker, "calc"), HubClient(hub.url, hub.key(
            "pub", publish=["math:*", "shop:*", "report:*", "sync:*"])) as pub:
        task = await pub.add("math:double", 21, priority=-1)
        assert task.status is Status.QUEUED and task.priority == -1
        assert await pub.wait(task.id, timeout=10) == 42
        assert await pub.run("math:double", 5, timeout=10) == 10
        tasks = await pub.add_many([("math:double", 1), {"action": "math:double",
                                                         "payload": 2, "priority": 3}])
        assert [await pub.wait(t.id, timeout=10) for t in tasks] == [2, 4]

        failing = await pub.add("math:boom", "luck")
        with pytest.raises(TaskFailed) as failed:
            await pub.wait(failing.id, timeout=10)
        assert failed.value.task.error is not None
        assert failed.value.task.error.type == "ValueError"
        assert await pub.wait(failing.id, timeout=10, default="fallback") == "fallback"
        assert await pub.run("math:boom", "x", timeout=10, default=None) is None
        ended = await pub.wait_task(failing.id, timeout=5)
        assert ended.status is Status.FAILED

        slow = await pub.add("math:slow", None)
        with pytest.raises(WaitTimeout):
            await pub.wait(slow.id, timeout=0.3)
        assert await pub.wait(slow.id, timeout=0.3, default="late") == "late"
        assert await pub.run("math:slow", None, timeout=0.2, default=0) == 0
        with pytest.raises(HubError) as refused:  # control actions need the admin right
            await pub.abort(slow.id, "no more")
        assert refused.value.code == "forbidden" and "admin" in str(refused.value)
        assert (await pub.get(slow.id)).abort_requested is None
        async with HubClient(hub.url, hub.key("ops", admin=True)) as ops:
            aborted = await ops.abort(slow.id, "no more")
        assert aborted.abort_requested == "no more"
        with pytest.raises(TaskAborted):
            await pub.wait(slow.id, timeout=10)

        assert await pub.run("shop:order", {"item": "pen", "qty": 4}, timeout=10) == {
            "total": 12}
        assert await pub.run("sync:sum", [1, 2, 3], timeout=10) == 6

        with pytest.raises(TaskNotFound):
            await pub.wait("01234567-0000-7000-8000-000000000000", timeout=1)
        with pytest.raises(HubError) as forbidden:
            await pub.add("secret:thing", None)
        assert forbidden.value.code == "forbidden" and forbidden.value.status == 403
        with pytest.raises(ValidationError):
            await pub.add("math:double", 1, bogus_option=True)
        fetched = await pub.get(task.id, logs=True)
        assert fetched.result == 42 and fetched.logs == ()


async def test_a_cancelled_work_takes_no_more_tasks(hub: RunningHub) -> None:
    """Cancelling ``work()`` (as ``stop()`` does) ends the connection's worker: the
    subscription goes, and the tasks published afterwards go to the other service."""
    runs: dict[str, int] = {"cancelled": 0, "other": 0}

    def counting(name: str) -> HubClient:
        client = HubClient(hub.url, hub.key(name, subscribe=["count:*"]))

        @client.handler("count:it")
        async def count(ctx: Context) -> str:
            runs[name] += 1
            return name

        return client

    first = counting("cancelled")
    job = asyncio.create_task(first.work("first", concurrency=4))
    await first.wait_working(10)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    other = counting("other")
    async with working(other, "other"), HubClient(hub.url, hub.key(
            "pub", publish=["count:*"])) as pub:
        results = [await pub.run("count:it", i, timeout=20) for i in range(10)]
    assert results == ["other"] * 10 and runs == {"cancelled": 0, "other": 10}
    await first.close()


async def test_handlers_keep_the_in_process_style(hub: RunningHub) -> None:
    worker = worker_client(hub, hub.key("svc", subscribe=["*"]))
    async with working(worker, "reports"), HubClient(hub.url, hub.key(
            "pub", publish=["report:*"])) as pub:
        task = await pub.add("report:make", None, max_attempts=3)
        updates = [u async for u in pub.follow(task.id)]
        kinds = [u.type for u in updates]
        assert kinds[0] == "watching" and kinds[-1] == "end"
        assert "start" in kinds and "pickup" in kinds and "queued" in kinds
        assert kinds.count("emit") == 2 and "success" in kinds
        progress = [u.progress for u in updates if u.type == "update"]
        assert progress and progress[-1] is not None and progress[-1].current == 3
        logs = [u.log for u in updates if u.type == "log"]
        assert [r.message for r in logs if r is not None] == ["step 1", "step 2", "step 3"] * 2
        final = updates[-1].task
        assert final is not None and final.status is Status.SUCCEEDED
        assert final.result == {"rounds": 2, "attempt": 2}
        assert final.attempts == 2 and [e.type for e in final.errors] == ["Retry"]
        # following a finished task replays it
        again = [u async for u in pub.follow(task.id, max_level="warning")]
        assert [u.type for u in again] == ["watching", "end"]


async def test_a_follow_left_at_its_end_sends_no_unwatch(
        hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    """A caller that stops iterating at ``end`` (a break) made the client send an
    unwatch for the stream the hub had closed, and log the hub's not_found as a
    warning (89 of 90 follows in an outside audit)."""
    key = hub.key("pub", publish=["mail:*"])
    async with HubClient(hub.url, key) as pub:
        for _ in range(5):
            task = await pub.add("mail:send", 1)
            await hub.app.abort(task.id, "done")  # ended: the stream is end alone
            async for update in pub.follow(task.id):
                if update.type == "end":
                    break
        await pub.add("mail:send", 2)  # a round trip after: any answer is in by now
    warned = [r.getMessage() for r in caplog.records if "hub error" in r.getMessage()]
    assert warned == []


async def test_a_remote_handlers_retry_options_apply_to_tasks_without_their_own(
        hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    """The README's handler options move to a remote handler unchanged: its
    ``max_attempts`` and ``backoff`` go to the hub, which applies them to the tasks
    added without them (as an in-process worker does); a task's own still win. The
    hub logs the remote runs' outcomes as a worker logs its own; the service logs
    each outcome it sends."""
    caplog.set_level(logging.INFO, logger="conveyor.hub")
    caplog.set_level(logging.DEBUG, logger="conveyor.client.worker")
    worker = HubClient(hub.url, hub.key("svc", subscribe=["flaky:*"]))

    @worker.handler("flaky:twice", environment={"chunk": 2}, max_attempts=3,
                    backoff={"base": 0.01, "jitter": 0}, timeout=60)
    async def twice(ctx: Context) -> int:
        assert ctx.task.max_attempts == (1 if ctx.task.tags.get("own") else 3)
        if ctx.attempt < 3:
            raise ValueError(f"attempt {ctx.attempt}")
        return int(ctx.env["chunk"]) * ctx.attempt

    async with working(worker, "flaky"), HubClient(hub.url, hub.key(
            "pub", publish=["flaky:*"])) as pub:
        assert await pub.run("flaky:twice", None, timeout=20) == 6
        own = await pub.add("flaky:twice", None, max_attempts=1, tags={"own": True})
        with pytest.raises(TaskFailed) as failed:
            await pub.wait(own.id, timeout=20)
        assert failed.value.task.attempts == 1
        assert failed.value.task.error is not None
        assert failed.value.task.error.message == "attempt 1"
    lines = [(r.levelno, r.getMessage()) for r in caplog.records
             if r.name == "conveyor.hub.remote" and " (flaky:twice) " in r.getMessage()]
    assert [level for level, _ in lines] == [logging.INFO, logging.INFO, logging.ERROR], lines
    assert lines[2][1] == (f"task {own.id} (flaky:twice) failed after 1 attempt(s): "
                           "ValueError: attempt 1")
    sent = [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name == "conveyor.client.worker" and " (flaky:twice) " in r.getMessage()]
    assert [level for level, _ in sent] == [logging.WARNING] * 2 + [
        logging.DEBUG, logging.WARNING], sent
    assert sent[1][1].endswith(") attempt 2 failed: ValueError: attempt 2 (sent to the "
                               "hub, which retries it while attempts remain)"), sent
    assert sent[2][1].endswith(") succeeded") and sent[3][1].startswith(f"task {own.id} ")


async def test_a_remote_reschedule_with_a_result_that_is_not_json_fails_its_task(
        hub: RunningHub) -> None:
    """As in-process: ``Reschedule(result=...)`` must be JSON, or the run fails (reason
    ``error``, not retried). The client sent nothing and the task stayed ``running``
    for good (its lease renewed by the live connection)."""
    worker = HubClient(hub.url, hub.key("svc", subscribe=["poll:*"]))

    @worker.handler("poll:bad", max_attempts=3)
    async def bad(ctx: Context) -> Reschedule:
        return Reschedule(after=0.1, result={"nan": float("nan")} if ctx.payload
                          else {"when": object()})

    async with working(worker, "poll"), HubClient(hub.url, hub.key(
            "pub", publish=["poll:*"])) as pub:
        for payload in (0, 1):
            task = await pub.add("poll:bad", payload)
            with pytest.raises(TaskFailed) as failed:
                await pub.wait(task.id, timeout=20)
            ended = failed.value.task
            assert (ended.reason, ended.attempts) == ("error", 1)
            assert ended.error is not None
            assert ended.error.message.startswith(
                "Reschedule(result=...) is not JSON-serialisable"), ended.error.message


def test_the_sync_client(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials.json")
    _, key = store.add("all", publish=["*"], subscribe=["*"])
    box: dict[str, Any] = {}
    started = threading.Event()
    stop = threading.Event()

    async def serve() -> None:
        app = Conveyor(hub_db_url(tmp_path))
        config = HubConfig(port=0, credentials_path=str(store.path))
        async with running_hub(app, config, store) as hub:
            box["url"] = hub.url
            started.set()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    url = box["url"]
    worker = SyncHubClient(url, key)

    @worker.handler("text:upper")
    def upper(ctx: Context) -> str:
        ctx.log.info("upper-casing")
        return str(ctx.payload).upper()

    runner = threading.Thread(target=worker.work, args=("texts",), kwargs={"concurrency": 2})
    runner.start()
    try:
        with SyncHubClient(url, key) as pub:
            task = pub.add("text:upper", "abc")
            assert pub.wait(task.id, timeout=10) == "ABC"
            assert pub.run("text:upper", "x", timeout=10) == "X"
            kinds = [u.type for u in pub.follow(task.id)]
            assert kinds == ["watching", "log", "end"]
            live = pub.live({"action": "text:upper"}, fields=["status"])
            first = next(live)
            assert first.type == "snapshot" and len(first.tasks) == 2
            assert set(first.tasks[0]) == {"id", "version", "status"}
            pub.add("text:upper", "y")
            first_change = next(live)
            assert first_change.type == "added"
            # then changes up to its end (an intermediate state may be skipped when
            # the task it was read with had already moved on: states never go back)
            statuses = [first_change.task["status"]] if first_change.task else []
            while statuses[-1:] != ["succeeded"]:
                change = next(live)
                assert change.type == "changed" and change.task is not None, change
                statuses.append(change.task["status"])
            assert statuses[0] in ("queued", "running") and len(statuses) >= 2
            # the sync live query keeps the result as the async one does (it had
            # neither tasks nor resyncs)
            assert isinstance(live, BlockingLiveQuery)
            assert len(live.tasks) == 3 and first_change.task is not None
            assert live.tasks[first_change.task["id"]]["status"] == "succeeded"
            assert live.resyncs == 0
            live.close()
            assert len(live.tasks) == 3  # read after the close, as it was
    finally:
        worker.stop()
        runner.join(20)
        worker.close()
        stop.set()
        thread.join(20)
    assert not runner.is_alive()


def test_a_failed_sync_with_ends_its_loop_thread() -> None:
    """No ``__exit__`` follows a failed ``__enter__``: a hub that cannot be reached
    must not leave the client's background loop thread running."""
    def loops() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "conveyor-sync-loop"]

    before = loops()
    unreachable = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(HubError, match="cannot reach the hub"), SyncHubClient(unreachable, "key"):
        pass  # pragma: no cover - the connect fails
    assert [t for t in loops() if t not in before and t.is_alive()] == []


async def test_a_worker_reconnects_when_the_hub_comes_back(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials.json")
    _, key = store.add("all", publish=["*"], subscribe=["*"])
    config = HubConfig(port=free_port(), credentials_path=str(store.path))
    url = hub_db_url(tmp_path)
    worker = HubClient(f"http://127.0.0.1:{config.port}", key)
    gate = asyncio.Event()

    @worker.handler("job:gated")
    async def gated(ctx: Context) -> str:
        await gate.wait()
        return "done"

    async with running_hub(Conveyor(url), config, store) as hub:
        work = asyncio.create_task(worker.work("gated", concurrency=4, max_backoff=0.3))
        await worker.wait_working(10)
        first = await hub.app.add("job:gated", 1)
        await eventually(lambda: _status(hub.app, first.id, Status.RUNNING))
    # the hub stopped (it handed the running task back); the worker retries meanwhile
    async with Conveyor(url) as reader:
        assert (await reader.get(first.id)).status is Status.QUEUED
    async with running_hub(Conveyor(url), config, store) as hub:
        gate.set()
        assert await hub.app.wait(first.id, timeout=20) == "done"
        second = await hub.app.add("job:gated", 2)
        assert await hub.app.wait(second.id, timeout=20) == "done"
        assert worker.connects >= 2
        worker.stop()
        await asyncio.wait_for(work, 20)
        await worker.close()


async def _status(app: Conveyor, task_id: str, status: Status) -> bool:
    return (await app.get(task_id)).status is status


async def test_live_queries_with_the_client(hub: RunningHub) -> None:
    key = hub.key("all", publish=["*"], subscribe=["*"], admin=True)  # admin: aborts
    async with HubClient(hub.url, key) as client:
        old = await client.add("a:x", 1)
        live = client.live({"action": "a:x", "status": "queued"}, sort="created_at")
        snapshot = await live.__anext__()
        assert snapshot.type == "snapshot" and [t["id"] for t in snapshot.tasks] == [old.id]
        new = await client.add("a:x", 2)
        added = await live.__anext__()
        assert added.type == "added" and added.task_id == new.id and added.seq == 2
        await client.abort(old.id)
        removed = await live.__anext__()
        assert removed.type == "removed" and removed.task_id == old.id
        # the version of the change that took it out: the abort's
        assert removed.version == (await client.get(old.id)).version
        assert set(live.tasks) == {new.id}
        await live.aclose()
        with pytest.raises(ValidationError) as bad:
            await client.live({"priority": {"$gt": "x", "$bogus": 1}}).__anext__()
        assert "filter.priority" in str(bad.value)


async def test_a_remote_worker_killed_mid_task_loses_nothing(tmp_path: Path) -> None:
    async with make_hub(tmp_path) as hub:
        key = hub.key("crashy", publish=["job:*"], subscribe=["job:*"])
        proc = spawn("tests.hub._remote_worker", hub.url, key, "crashy", "4",
                     log=tmp_path / "worker.log")
        try:
            assert (await read_line(proc)).strip() == "ready"
            tasks = await hub.app.add_many([("job:sleep", {"n": i, "sleep": 30})
                                            for i in range(4)])
            tasks += await hub.app.add_many([("job:noop", {"n": i}) for i in range(20)])
            running = await eventually(lambda: _running_on(hub.app, "crashy"), timeout=20)
            assert len(running) == 4
            # the handlers have started (their first log line is stored)
            await eventually(lambda: _logged(hub.app, [t.id for t in tasks[:4]]), timeout=20)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            reap(proc)
        # a second worker takes over at once: the hub released what the dead one held
        rescuer = HubClient(hub.url, key)

        @rescuer.handler("job:sleep")
        async def quick(ctx: Context) -> Any:
            return ctx.payload["n"]

        @rescuer.handler("job:noop")
        async def noop(ctx: Context) -> Any:
            return ctx.payload

        async with working(rescuer, "rescuer"):
            for task in tasks:
                done = await hub.app.wait_task(task.id, timeout=30)
                assert done.status is Status.SUCCEEDED, done
            assert time.monotonic() - t0 < 20
        for task in tasks[:4]:
            final = await hub.app.get(task.id, logs=True)
            assert final.result == task.payload["n"] and final.attempts == 1
            assert final.rescues == 1  # the killed service's run counts as lost
            assert any("let go of this task" in r.message for r in final.logs or ()), \
                final.logs


async def test_sigterm_to_a_remote_worker_hands_its_tasks_back(tmp_path: Path) -> None:
    """A deploy stops a service with SIGTERM: ``work()`` stops gracefully (its
    running tasks handed back, their attempt refunded) and returns. The process died
    at once, its connection's close counted as lost runs (a rescue each)."""
    async with make_hub(tmp_path) as hub:
        key = hub.key("deployed", publish=["job:*"], subscribe=["job:*"])
        proc = spawn("tests.hub._remote_worker", hub.url, key, "deployed", "2", "0.2",
                     log=tmp_path / "worker.log")
        try:
            assert (await read_line(proc)).strip() == "ready"
            tasks = await hub.app.add_many([("job:sleep", {"n": i, "sleep": 60})
                                            for i in range(2)])
            await eventually(lambda: _logged(hub.app, [t.id for t in tasks]), timeout=20)
            proc.send_signal(signal.SIGTERM)
            assert (await read_line(proc)).strip() == "stopped"
            assert proc.wait(30) == 0
        finally:
            reap(proc)
        for task in tasks:
            back = await hub.app.get(task.id)
            assert back.status is Status.QUEUED, back
            assert (back.attempts, back.rescues) == (0, 0)


async def _logged(app: Conveyor, ids: list[str]) -> bool:
    for task_id in ids:
        if not await app.storage.read_logs(task_id):
            return False
    return True


async def _running_on(app: Conveyor, prefix: str) -> list[Any]:
    tasks = await app.find({"status": "running", "action": "job:sleep"})
    return [t for t in tasks if (t.worker or "").startswith(prefix + "@")] if len(tasks) == 4 \
        else []





async def test_a_live_query_resyncs_when_the_hub_comes_back(tmp_path: Path) -> None:
    config = HubConfig(port=free_port(), insecure=True)
    url = hub_db_url(tmp_path)
    client = HubClient(f"http://127.0.0.1:{config.port}")
    async with running_hub(Conveyor(url), config, None) as hub:
        first = await hub.app.add("r:x", 1)
        live = client.live({"action": "r:x"}, fields=["status"])
        snapshot = await live.__anext__()
        assert [t["id"] for t in snapshot.tasks] == [first.id]
    other = Conveyor(url)
    second = await other.add("r:x", 2)  # while the hub is away
    await other.close()
    async with running_hub(Conveyor(url), config, None):
        again = await asyncio.wait_for(live.__anext__(), 20)
        assert again.type == "snapshot" and again.resync is True
        assert {t["id"] for t in again.tasks} == {first.id, second.id}
        assert set(live.tasks) == {first.id, second.id} and live.resyncs == 1
        await live.aclose()
    await client.close()


async def test_a_follow_resumes_across_a_hub_restart(tmp_path: Path) -> None:
    """``follow`` waits for a restarting hub, as ``work()`` does (it raised
    "cannot reach the hub" when the reconnect found the port closed)."""
    config = HubConfig(port=free_port(), insecure=True)
    url = hub_db_url(tmp_path)
    client = HubClient(f"http://127.0.0.1:{config.port}")
    async with running_hub(Conveyor(url), config, None) as hub:
        task = await hub.app.add("f:x", 1)
        follow = client.follow(task.id)
        first = await follow.__anext__()
        assert first.type == "watching" and first.data["task"]["status"] == "queued"
    other = Conveyor(url)
    await other.abort(task.id, "while the hub was away")
    await other.close()
    refused = 0
    retried = asyncio.Event()
    connect = client._connect

    async def counting_connect() -> Any:
        nonlocal refused
        try:
            return await connect()
        except HubError:
            refused += 1
            if refused >= 2:  # found the port closed, and tried again
                retried.set()
            raise

    client._connect = counting_connect  # type: ignore[method-assign]
    pending = asyncio.ensure_future(follow.__anext__())
    await asyncio.wait_for(retried.wait(), 10)  # the client finds the port closed, retries
    assert not pending.done()
    async with running_hub(Conveyor(url), config, None):
        again = await asyncio.wait_for(pending, 20)
        assert again.type == "watching" and again.data["task"]["status"] == "aborted"
        rest = [u.type async for u in follow]
        assert rest[-1] == "end", rest
    await client.close()


async def test_a_wait_resumes_across_a_hub_restart(tmp_path: Path) -> None:
    """``wait`` (and ``run``, which waits) waits for a restarting hub as ``follow``
    does: it raised ``HubError('unreachable')`` at once when the reconnect found
    the port closed. With a timeout that passes while the hub is away, the
    ``default`` comes back."""
    config = HubConfig(port=free_port(), insecure=True)
    url = hub_db_url(tmp_path)
    client = HubClient(f"http://127.0.0.1:{config.port}")
    async with running_hub(Conveyor(url), config, None) as hub:
        task = await hub.app.add("f:x", 1)
        other = await hub.app.add("f:x", 2)
        waiting = asyncio.ensure_future(client.wait(task.id, timeout=60))
        short = asyncio.ensure_future(client.wait(other.id, timeout=0.5, default="gone"))
        running = asyncio.ensure_future(client.run("f:x", 3, timeout=60))
        await client.get(task.id)  # one connection, in order: the waits reached the hub
    # the hub is away: the short wait's timeout passes meanwhile
    assert await asyncio.wait_for(short, 10) == "gone"
    app = Conveyor(url)
    await app.abort(task.id, "while the hub was away")
    await app.close()
    # the short wait came back from the same retries: these found the port closed too
    assert not waiting.done() and not running.done()
    async with running_hub(Conveyor(url), config, None) as hub:
        with pytest.raises(TaskAborted, match="while the hub was away"):
            await asyncio.wait_for(waiting, 20)
        [published] = await hub.app.find({"payload": 3})
        await hub.app.abort(published.id, "after the restart")
        with pytest.raises(TaskAborted, match="after the restart"):
            await asyncio.wait_for(running, 20)
    await client.close()


async def test_a_closed_client_can_work_again(insecure_hub: RunningHub) -> None:
    client = HubClient(insecure_hub.url)

    @client.handler("again:x")
    async def again(ctx: Context) -> int:
        return 1

    await client.add("again:x", None)
    await client.close()
    async with working(client, "again"):
        task = await client.add("again:x", None)
        assert await client.wait(task.id, timeout=10) == 1


@pytest.mark.parametrize("how", ["stop", "close"])
async def test_a_stopping_service_finishes_or_hands_back_its_runs(hub: RunningHub,
                                                                  how: str) -> None:
    """A graceful stop of ``work()``: a run that ends within ``stop_timeout`` reports
    its result; one still running then goes back to the queue with its attempt
    refunded and ``rescues`` unchanged. Both were taken from the service at once and
    counted as lost runs (``rescues + 1``: four redeploys failed a long task). The
    task is back once ``work()`` (or ``close()``) returns: the hub answered the
    unsubscribe before it had stored the hand-back."""
    client = HubClient(hub.url, hub.key("svc", subscribe=["stop:*"]))
    started: dict[str, asyncio.Event] = {"short": asyncio.Event(), "long": asyncio.Event()}

    @client.handler("stop:short")
    async def short(ctx: Context) -> str:
        started["short"].set()
        await asyncio.sleep(0.5)
        return "done"

    @client.handler("stop:long")
    async def long(ctx: Context) -> str:
        started["long"].set()
        await asyncio.sleep(30)
        return "never"

    work = asyncio.create_task(client.work("stopper", concurrency=2, stop_timeout=2.0))
    try:
        await client.wait_working(10)
        quick = await hub.app.add("stop:short")
        slow = await hub.app.add("stop:long")
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())), 10)
        if how == "stop":
            client.stop()
            await asyncio.wait_for(work, 20)
        else:
            await asyncio.wait_for(client.close(), 20)
            assert work.done()
        back = await hub.app.get(slow.id)
    finally:
        client.stop()
        await client.close()
    assert (back.status, back.attempts, back.rescues) == (Status.QUEUED, 0, 0), back
    assert await hub.app.wait(quick.id, timeout=5) == "done"


async def test_a_thread_handler_ignoring_an_abort_is_abandoned_after_its_grace(
        hub: RunningHub) -> None:
    """``abort_grace`` of a remote thread handler, as in process: one that ignores
    the abort is abandoned after its grace and the task ends ``aborted`` (the client
    waited for the handler, and the hub ended the task after its own 5 s)."""
    client = HubClient(hub.url, hub.key("svc", subscribe=["stubborn:*"]))
    release = threading.Event()
    started = threading.Event()

    @client.handler("stubborn:loop", mode="thread", abort_grace=0.3)
    def loop(ctx: Context) -> str:
        started.set()
        release.wait(20)  # ignores ctx.aborted
        return "late"

    async with working(client, "stubborn"):
        try:
            task = await hub.app.add("stubborn:loop")
            assert await asyncio.to_thread(started.wait, 10)
            async with HubClient(hub.url, hub.key("ops", admin=True)) as ops:
                t0 = time.monotonic()
                await ops.abort(task.id, "enough")
                ended = await hub.app.wait_task(task.id, timeout=10)
                took = time.monotonic() - t0
        finally:
            release.set()
    assert (ended.status, ended.reason, ended.result) == (Status.ABORTED, "enough", None)
    assert took < 3.0, took  # the handler's grace (0.3 s), not the hub's (5 s)


async def test_a_hub_shutting_down_hands_remote_runs_back(tmp_path: Path) -> None:
    """A hub stopped gracefully (``conveyor serve`` on SIGTERM: a deploy) hands the
    runs of its remote workers back as a stopping worker does: the task is queued
    again, its attempt refunded, ``rescues`` 0. It counted them as lost runs
    (rescues + 1, "let go of this task"), so a long task failed ``worker_lost``
    after ``max_rescues`` restarts of the hub."""
    from conveyor.hub._serve import run_hub

    db = hub_db_url(tmp_path)
    config = HubConfig(port=free_port(), insecure=True)
    stop = asyncio.Event()
    app = Conveyor(db)
    serving = asyncio.ensure_future(run_hub(app, config, stop=stop))
    client = HubClient(f"http://127.0.0.1:{config.port}")
    started = asyncio.Event()

    @client.handler("leave:long")
    async def long(ctx: Context) -> str:
        started.set()
        await asyncio.sleep(30)
        return "never"

    work = asyncio.create_task(client.work("leaver", concurrency=1))
    try:
        await client.wait_working(20)
        task = await app.add("leave:long")
        await asyncio.wait_for(started.wait(), 10)
        stop.set()
        await asyncio.wait_for(serving, 30)
    finally:
        client.stop()
        await asyncio.wait_for(work, 20)
        await client.close()
    async with Conveyor(db) as reader:
        back = await reader.get(task.id, logs=True)
    assert (back.status, back.attempts, back.rescues) == (Status.QUEUED, 0, 0), back
    assert not any("let go of this task" in r.message for r in back.logs or ())


async def test_a_remote_handler_ending_oddly_fails_its_task_and_the_service_goes_on(
        hub: RunningHub) -> None:
    """``sys.exit()`` in a sync or async handler, a BaseException, a CancelledError
    leaked by the handler's own code: each is its task's error (not retried by the
    default ``retry_on``); the service stays up and runs the next task."""
    worker = HubClient(hub.url, hub.key("svc", subscribe=["odd:*"]))

    @worker.handler("odd:exit")
    async def exits(ctx: Context) -> None:
        sys.exit(3)

    @worker.handler("odd:exit-sync", mode="thread")
    def exits_sync(ctx: Context) -> None:
        sys.exit(4)

    @worker.handler("odd:leak", max_attempts=2)
    async def leaks(ctx: Context) -> None:
        inner = asyncio.get_running_loop().create_future()
        inner.cancel()
        await inner

    @worker.handler("odd:ok")
    async def ok(ctx: Context) -> str:
        return "ok"

    async with working(worker, "odd", concurrency=1), HubClient(hub.url, hub.key(
            "pub", publish=["odd:*"])) as pub:
        for action, kind, message in [("odd:exit", "SystemExit", "3"),
                                      ("odd:exit-sync", "SystemExit", "4"),
                                      ("odd:leak", "CancelledError", "")]:
            task = await pub.add(action, None)
            with pytest.raises(TaskFailed) as failed:
                await pub.wait(task.id, timeout=10)
            ended = failed.value.task
            assert ended.error is not None
            assert (ended.error.type, ended.error.message, ended.attempts, ended.rescues) == (
                kind, message, 1, 0), action
            assert await pub.run("odd:ok", None, timeout=10) == "ok"
