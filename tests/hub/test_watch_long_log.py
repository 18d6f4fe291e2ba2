"""A watch replays a log longer than the connection's send queue (``max_pending``):
the replay is paced by the reader, so it is not cut off (4008) however fast it reads
(the whole log was queued at once: a task with more than 10,000 lines, the default
bound, could not be watched, and the dashboard reconnected in a loop)."""

from __future__ import annotations

from pathlib import Path

from conveyor import Context, Conveyor

from ._ws_helpers import Raw, make_hub
from .conftest import hub_db_url

LINES = 2_500
MAX_PENDING = 200  # the queue's bound: the log is 12x longer


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
