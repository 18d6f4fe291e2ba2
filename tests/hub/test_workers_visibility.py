"""``GET /api/v1/workers`` shows a credential a worker with only the actions it may
read, and, when some are left out, only the running tasks it may read and no info
(its ``running`` counted the hidden actions' tasks: how busy they were leaked)."""

from __future__ import annotations

import time

from conveyor.storage import WorkerInfo

from ._rest_helpers import client
from .conftest import RunningHub


async def test_a_narrowed_worker_counts_only_readable_running_tasks(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    mailer = hub.key("mailer", publish=["mail:*"], subscribe=["mail:*"])
    storage = hub.app.storage
    now = time.time()
    await storage.register_worker(WorkerInfo(
        id="mixed@host:1", host="host", pid=1, actions=("mail:a", "secret:w"),
        concurrency=5, started_at=now, last_seen=now, running=3,
        info={"credential": "star", "service": "mixed"}))
    await hub.app.add_many([("secret:w", 1), ("secret:w", 2), ("mail:a", 3)])
    claimed = await storage.claim("mixed@host:1", ["secret:w", "mail:a"], 3, 30.0)
    assert len(claimed) == 3
    async with client(hub, mailer) as http:
        [seen] = (await http.get("/api/v1/workers")).json()["workers"]
    assert seen["actions"] == ["mail:a"]
    assert (seen["running"], seen["info"]) == (1, {})
    async with client(hub, admin) as http:
        [whole] = (await http.get("/api/v1/workers")).json()["workers"]
    assert whole["actions"] == ["mail:a", "secret:w"] and whole["running"] == 3
    assert whole["info"] == {"credential": "star", "service": "mixed"}
