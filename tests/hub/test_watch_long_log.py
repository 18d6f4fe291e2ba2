"""A watch replays a log longer than the connection's send queue (``max_pending``):
the replay is paced by the reader, so it is not cut off (4008) however fast it reads
(the whole log was queued at once: a task with more than 10,000 lines, the default
bound, could not be watched, and the dashboard reconnected in a loop)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conveyor import Context, Conveyor

from ._ws_helpers import Raw, eventually, make_hub
from .conftest import hub_db_url

LINES = 2_500
MAX_PENDING = 200  # the queue's bound: the log is 12x longer
PAD = "x" * 2000


async def test_a_log_longer_than_the_send_queue_is_replayed_whole(tmp_path: Path) -> None:
    app = Conveyor(hub_db_url(tmp_path))

    @app.handler("chatty")
    async def chatty(ctx: Context) -> int:
        for i in range(LINES):
            ctx.log.info("line %d", i)
        return LINES

    async with make_hub(tmp_path, insecure=True, app=app, max_pending=MAX_PENDING) as hub:
        task = await hub.app.add("chatty")
        assert await hub.app.wait(task.id, timeout=30) == LINES
        assert len((await hub.app.get(task.id, logs=True)).logs or ()) == LINES
        ws = await Raw.open(hub.url)
        try:
            await ws.request({"type": "watch", "task_id": task.id, "logs": True}, "watching")
            lines = []
            while True:
                msg = await ws.recv(timeout=30)
                if msg["type"] == "end":
                    break
                assert msg["type"] == "log", msg
                lines.append(msg["log"]["message"])
            assert lines == [f"line {i}" for i in range(LINES)]
            # the connection is still there and answers
            assert (await ws.request({"type": "ping"}, "pong"))["type"] == "pong"
        finally:
            await ws.close()


async def test_progress_during_a_slow_replay_is_kept_to_its_latest(tmp_path: Path) -> None:
    """Progress reported at full rate while a reader is still behind in the replay:
    what came meanwhile is sent at the reader's pace too, progress kept to its
    latest, so the reader is not cut off when the replay ends (the buffered updates
    went out all at once and filled the queue: 4008)."""
    app = Conveyor(hub_db_url(tmp_path))
    logged, reported, done = asyncio.Event(), {"n": 0}, asyncio.Event()

    @app.handler("busy")
    async def busy(ctx: Context) -> int:
        for i in range(LINES):  # 5 MB: more than the sockets' buffers take
            ctx.log.info("line %d %s", i, PAD)
        logged.set()
        while not done.is_set():
            reported["n"] += 1
            await ctx.progress(reported["n"])
            await asyncio.sleep(0.001)  # reports at full rate, ~1,000 a second
        return reported["n"]

    async with make_hub(tmp_path, insecure=True, app=app, max_pending=MAX_PENDING) as hub:
        task = await hub.app.add("busy")
        await asyncio.wait_for(logged.wait(), 30)

        async def stored() -> bool:  # every line stored: none comes as an event later
            return len(await hub.app.storage.read_logs(task.id)) == LINES

        await eventually(stored, timeout=30)
        ws = await Raw.open(hub.url, max_queue=1)
        try:
            await ws.request({"type": "watch", "task_id": task.id, "logs": True}, "watching")
            # the reader falls behind, its replay not all sent: it reads nothing while
            # the handler reports five times max_pending updates
            start = reported["n"]
            await eventually(lambda: reported["n"] - start > 5 * MAX_PENDING, timeout=30)
            lines, updates = [], 0
            while len(lines) < LINES:
                msg = await ws.recv(timeout=30)
                if msg["type"] == "log":
                    lines.append(msg["log"]["message"])
                else:
                    assert msg["type"] == "update", msg
                    updates += 1
            assert lines == [f"line {i} {PAD}" for i in range(LINES)]
            done.set()
            while (msg := await ws.recv(timeout=30))["type"] != "end":
                assert msg["type"] in ("update", "success"), msg
                updates += msg["type"] == "update"
            assert updates >= 1
        finally:
            done.set()
            await ws.close()


async def test_a_task_logging_in_another_process_is_watched_to_the_end(
        tmp_path: Path) -> None:
    """The task runs in another process (here another app on the hub's database): the
    change feed's relay, asked for its lines once the watch began, sends the task's
    whole log again at once. The replay reads the lines from storage, so those are
    not kept waiting (they were, and cut a fast reader off), and none is lost or
    sent twice."""
    url = hub_db_url(tmp_path)
    worker = Conveyor(url)  # another "process": its changes reach the hub by the feed
    logged, done = asyncio.Event(), asyncio.Event()

    @worker.handler("chatty")
    async def chatty(ctx: Context) -> int:
        for i in range(LINES):
            ctx.log.info("line %d", i)
        logged.set()
        n = 0
        while not done.is_set():
            ctx.log.info("more %d", n)
            n += 1
            await asyncio.sleep(0.02)  # a line now and then, while it is watched
        ctx.log.info("last")
        return n

    async with make_hub(tmp_path, insecure=True, app=Conveyor(url),
                        max_pending=MAX_PENDING) as hub:
        await worker.start()
        try:
            task = await hub.app.add("chatty")
            await asyncio.wait_for(logged.wait(), 30)
            ws = await Raw.open(hub.url)
            try:
                await ws.request({"type": "watch", "task_id": task.id, "logs": True},
                                 "watching")
                lines: list[str] = []
                while len(lines) < LINES + 20:
                    msg = await ws.recv(timeout=30)
                    if msg["type"] == "log":
                        lines.append(msg["log"]["message"])
                done.set()
                while (msg := await ws.recv(timeout=30))["type"] != "end":
                    if msg["type"] == "log":
                        lines.append(msg["log"]["message"])
            finally:
                done.set()
                await ws.close()
            more = int(await hub.app.wait(task.id, timeout=30))
            assert lines == ([f"line {i}" for i in range(LINES)]
                             + [f"more {n}" for n in range(more)] + ["last"])
        finally:
            await worker.close()


async def test_a_burst_of_progress_does_not_cut_a_reader_off(tmp_path: Path) -> None:
    """An async handler reporting progress thousands of times in one turn of the loop
    fills the reader's queue before it can read a message: once half of it waits,
    the stream keeps the latest progress back and sends it at the reader's pace (the
    reader was cut off with 4008 and lost every update and the end)."""
    app = Conveyor(hub_db_url(tmp_path))
    many = 10 * MAX_PENDING
    gate = asyncio.Event()

    @app.handler("burst")
    async def burst(ctx: Context) -> str:
        await gate.wait()
        for i in range(many):
            await ctx.progress(i + 1, total=many)
        return "ok"

    async with make_hub(tmp_path, insecure=True, app=app, max_pending=MAX_PENDING) as hub:
        task = await hub.app.add("burst")
        ws = await Raw.open(hub.url)
        try:
            await ws.request({"type": "watch", "task_id": task.id, "logs": True}, "watching")
            gate.set()
            seen = []
            while (msg := await ws.recv(timeout=30))["type"] != "end":
                seen.append(msg)
            updates = [m["progress"]["current"] for m in seen if m["type"] == "update"]
            assert updates and updates[-1] == many and updates == sorted(updates)
            assert [m["type"] for m in seen if m["type"] != "update"][-1] == "success"
            assert msg["status"] == "succeeded"
        finally:
            await ws.close()


async def test_a_burst_of_log_lines_does_not_cut_a_publisher_off(tmp_path: Path) -> None:
    """The stream of a task its publish added sends a burst of log lines from storage
    at the reader's pace too, as a watch does (only watches that replay did: the
    publisher, reading as fast as it could, was cut off with 4008)."""
    app = Conveyor(hub_db_url(tmp_path))
    many = 10 * MAX_PENDING
    gate = asyncio.Event()

    @app.handler("chatty")
    async def chatty(ctx: Context) -> int:
        await gate.wait()
        for i in range(many):
            ctx.log.info("line %d", i)
        return many

    async with make_hub(tmp_path, insecure=True, app=app, max_pending=MAX_PENDING) as hub:
        ws = await Raw.open(hub.url)
        try:
            await ws.request({"type": "publish", "id": "p", "action": "chatty"}, "published")
            gate.set()
            lines = []
            while (msg := await ws.recv(timeout=30))["type"] != "end":
                if msg["type"] == "log":
                    lines.append(msg["log"]["message"])
            assert lines == [f"line {i}" for i in range(many)]
            assert msg["status"] == "succeeded"
        finally:
            await ws.close()
