"""A publish says which of its actions no live worker runs (issue 2: "the hub must
say when nothing can run it"): REST answers with the ``X-Conveyor-Unserved``
header, the WebSocket ``published`` reply with ``unserved``. The tasks are stored
all the same. The Python clients log it."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.client import HTTPClient, HubClient
from conveyor.storage.base import WorkerInfo

from ._rest_helpers import client
from ._ws_helpers import Raw, eventually, make_hub, ws_state
from .conftest import RunningHub

HEADER = "X-Conveyor-Unserved"


async def test_rest_names_unserved_actions_until_a_service_subscribes(hub: RunningHub) -> None:
    pub_key = hub.key("shop", publish=["mail:*", "sms:*"])
    async with client(hub, pub_key) as http:
        one = await http.post("/api/v1/tasks", json={"action": "mail:send"})
        batch = await http.post("/api/v1/tasks/batch", json={"tasks": [
            {"action": "sms:send"}, {"action": "mail:send"}, {"action": "sms:send"}]})
        assert (one.status_code, one.headers.get(HEADER)) == (201, "mail:send")
        assert (batch.status_code, batch.headers.get(HEADER)) == (201, "mail:send, sms:send")

        service = await Raw.open(hub.url, hub.key("mailer", subscribe=["mail:*"]))
        try:
            await service.request({"type": "subscribe", "id": "s", "service": "mailer",
                                   "actions": ["mail:send"], "capacity": 1}, "subscribed")
            served = await http.post("/api/v1/tasks", json={"action": "mail:send"})
            mixed = await http.post("/api/v1/tasks/batch", json={"tasks": [
                {"action": "mail:send"}, {"action": "sms:send"}]})
        finally:
            await service.close()
    assert served.status_code == 201 and HEADER not in served.headers
    assert mixed.headers.get(HEADER) == "sms:send"
    assert await hub.app.count({}) == 7  # unserved or not, every task is stored


async def test_websocket_published_reply_carries_unserved(hub: RunningHub) -> None:
    publisher = await Raw.open(hub.url, hub.key("shop", publish=["mail:*", "sms:*"]))
    service = await Raw.open(hub.url, hub.key("mailer", subscribe=["mail:*"]))
    try:
        alone = await publisher.request({"type": "publish", "action": "mail:send",
                                         "updates": False}, "published")
        await service.request({"type": "subscribe", "id": "s", "service": "mailer",
                               "actions": ["mail:send"], "capacity": 1}, "subscribed")
        served = await publisher.request({"type": "publish", "action": "mail:send",
                                          "updates": False}, "published")
        several = await publisher.request({"type": "publish", "updates": False, "tasks": [
            {"action": "sms:send"}, {"action": "mail:send"}]}, "published")
    finally:
        await publisher.close()
        await service.close()
    assert alone["unserved"] == ["mail:send"] and alone["task"]["status"] == "queued"
    assert served["unserved"] == []
    assert several["unserved"] == ["sms:send"]


async def test_a_worker_without_heartbeat_for_90_s_does_not_count(hub: RunningHub) -> None:
    storage = hub.app.storage
    await storage.register_worker(WorkerInfo(
        id="old", host="elsewhere", pid=1, actions=("mail:*",), concurrency=1,
        started_at=0.0, last_seen=0.0))
    async with client(hub, hub.key("shop", publish=["mail:*"])) as http:
        answer = await http.post("/api/v1/tasks", json={"action": "mail:send"})
    assert answer.headers.get(HEADER) == "mail:send"


def test_worker_info_runs_names_and_patterns() -> None:
    worker = WorkerInfo(id="w", host="h", pid=1, actions=("mail:*", "sms:send"),
                        concurrency=1, started_at=0.0, last_seen=0.0)
    assert worker.runs("mail:send") and worker.runs("sms:send")
    assert not worker.runs("sms:bulk") and not worker.runs("mail")


async def test_python_clients_log_the_unserved_actions(
        hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    key = hub.key("shop", publish=["mail:*"])
    caplog.set_level(logging.WARNING, logger="conveyor.client")
    async with HTTPClient(hub.url, key) as http:
        await http.add("mail:send")
        await http.add_many([("mail:bulk", None), ("mail:send", None)])
    async with HubClient(hub.url, key) as ws:
        await ws.add("mail:ws")
    said = [r.getMessage() for r in caplog.records if r.name == "conveyor.client"]
    assert said == [f"no running worker handles {a!r}; the task waits until one does"
                    for a in ("mail:send", "mail:bulk", "mail:send", "mail:ws")]


async def test_a_failed_read_of_the_workers_does_not_fail_the_publish(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "broken.db"
    async with make_hub(tmp_path, insecure=True, app=Conveyor(f"sqlite:///{path}")) as hub:
        with sqlite3.connect(path) as db:  # the workers table goes away under the hub
            db.execute("ALTER TABLE conveyor_workers RENAME TO gone")
        caplog.set_level(logging.WARNING, logger="conveyor.hub")
        async with client(hub, None) as http:
            answer = await http.post("/api/v1/tasks", json={"action": "mail:send"})
        assert answer.status_code == 201 and HEADER not in answer.headers
        assert await hub.app.count({"action": "mail:send"}) == 1
    assert any("could not read the workers" in r.getMessage() for r in caplog.records)


async def test_a_service_that_subscribes_again_at_once_stays_listed(hub: RunningHub) -> None:
    """A connection's services are unregistered by the hub's writer after the
    connection closes; a service subscribing again at once (a client reconnecting)
    is registered under the same worker id. The queued removal used to run after
    the new registration and delete it: the service was missing from the workers
    and its action named unserved until the next heartbeat (7 of 20 reconnects)."""
    key = hub.key("mailer", subscribe=["mail:*"])
    shop = hub.key("shop", publish=["mail:*"])
    remote = ws_state(hub).remote
    missing = 0
    for _ in range(20):
        first = await Raw.open(hub.url, key)
        await first.request({"type": "subscribe", "id": "a", "service": "mailer",
                             "actions": ["mail:big"]}, "subscribed")
        await first.request({"type": "subscribe", "id": "b", "service": "solo",
                             "actions": ["mail:solo"]}, "subscribed")
        await first.close()
        again = await Raw.open(hub.url, key)
        try:
            ok = await again.request({"type": "subscribe", "id": "b", "service": "solo",
                                      "actions": ["mail:solo"]}, "subscribed")
            await remote.writer.drain()  # the removals queued by the close are done
            ids = [w.id for w in await hub.app.workers()]
            async with client(hub, shop) as http:
                added = await http.post("/api/v1/tasks", json={"action": "mail:solo"})
            if ok["worker"] not in ids or HEADER in added.headers:
                missing += 1
        finally:
            await again.close()
        await eventually(lambda: not remote.services)  # both services retired
    assert missing == 0
