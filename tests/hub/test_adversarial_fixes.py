"""What an adversarial audit of the hub found: a publisher's concurrency conditions
read tasks it may not read; action names ending in a newline; a key revoked during
a REST long poll; clients that hang up mid-request logged as internal errors."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from conveyor import Status
from conveyor.hub._credentials import matches_pattern

from ._rest_helpers import client
from ._ws_helpers import Raw
from .conftest import RunningHub


async def test_a_publishers_conditions_count_only_tasks_it_may_read(hub: RunningHub) -> None:
    """A condition counting hidden tasks would tell the publisher, by whether its own
    task is claimed, whether a query of its choosing matches them (a payload read out
    one character at a time)."""
    await hub.app.add("geo:vault", {"pin": "4711"})  # queued, not readable by "spy"
    condition = {"query": {"payload.pin": {"$regex": "^4"}}, "scope": ["queued"], "limit": 1}
    async with client(hub, hub.key("spy", publish=["spy:*"])) as http:
        added = await http.post("/api/v1/tasks", json={"action": "spy:probe",
                                                       "concurrency": [condition]})
        assert added.status_code == 201, added.text
        [stored] = added.json()["concurrency"]
    # stored narrowed to the credential's actions
    assert stored["query"] == {"$and": [{"action": {"$regex": "^spy:.*$"}},
                                        condition["query"]]}
    # and so claimable: the hidden task that matches the query does not count
    claimed = await hub.app.storage.claim("probe-worker", ["spy:probe"], 1, 30.0)
    assert [t.id for t in claimed] == [added.json()["id"]]

    # over the WebSocket too; an admin's condition is kept as given
    async with Raw.opened(hub.url, hub.key("spy2", publish=["spy:*"])) as ws:
        reply = await ws.request({"type": "publish", "id": "p", "action": "spy:probe",
                                  "options": {"concurrency": condition}, "updates": False})
        assert reply["type"] == "published", reply
    [by_ws] = await hub.app.find({"action": "spy:probe", "status": "queued"})
    assert by_ws.concurrency[0].query == stored["query"]
    admin_task = await hub.app.add("spy:probe", None, concurrency=[condition])
    assert dict(admin_task.concurrency[0].query) == condition["query"]
    async with client(hub, hub.key("ops", admin=True)) as http:
        as_admin = await http.post("/api/v1/tasks", json={"action": "spy:probe",
                                                          "concurrency": [condition]})
        assert as_admin.json()["concurrency"][0]["query"] == condition["query"]
    # the admins' tasks count the hidden one: not claimable (limit 1, one match)
    claimed = await hub.app.storage.claim("probe-worker", ["spy:probe"], 5, 30.0)
    assert [t.id for t in claimed] == [by_ws.id]


async def test_too_many_conditions_are_refused_and_nothing_is_added(hub: RunningHub) -> None:
    many = [{"query": {"payload.n": i}} for i in range(17)]
    big = [{"query": {"payload.n": {"$in": list(range(60))}}},
           {"query": {"payload.m": {"$in": list(range(41))}}}]
    async with client(hub, hub.key("pub", publish=["mail:*"])) as http:
        for conditions in (many, big):
            got = await http.post("/api/v1/tasks/batch", json={"tasks": [
                {"action": "mail:send"}, {"action": "mail:send", "concurrency": conditions}]})
            assert got.status_code == 422, got.text
        assert "16" in (await http.post("/api/v1/tasks", json={
            "action": "mail:send", "concurrency": many})).json()["error"]["message"]
    async with Raw.opened(hub.url, hub.key("pub2", publish=["mail:*"])) as ws:
        reply = await ws.request({"type": "publish", "id": "p", "action": "mail:send",
                                  "options": {"concurrency": big}})
        assert reply["type"] == "error" and reply["code"] == "invalid", reply
        assert "100 comparisons" in reply["message"]
    assert await hub.app.count({}) == 0


@pytest.mark.parametrize("name", ["mail:zz\n", "abc\n"])
async def test_an_action_name_with_a_final_newline_is_invalid(hub: RunningHub,
                                                              name: str) -> None:
    async with Raw.opened(hub.url, hub.key("pub", publish=["mail:*", "a?c"],
                                           subscribe=["mail:*"])) as ws:
        reply = await ws.request({"type": "publish", "id": "p", "action": name})
        assert reply["type"] == "error" and reply["code"] == "invalid", reply
        sub = await ws.request({"type": "subscribe", "id": "s", "service": "svc",
                                "actions": [name]})
        assert sub["type"] == "error" and sub["code"] == "invalid", sub
    assert await hub.app.count({}) == 0
    assert not matches_pattern(name, ["a?c", "mail:*"])


async def test_a_key_revoked_during_a_long_poll_gets_no_answer_but_401(
        hub: RunningHub) -> None:
    task = await hub.app.add("mail:send", {"to": "x"})  # no worker: it stays queued
    key = hub.key("reader", read=["mail:*"])
    assert hub.credentials is not None
    async with client(hub, key) as http:
        poll = asyncio.create_task(http.get(f"/api/v1/tasks/{task.id}/wait",
                                            params={"timeout": 1.5}))
        # revoked once the poll waits on the task (the hub's wait is registered)
        deadline = time.monotonic() + 10
        while task.id not in hub.app.bus._signals:  # its wait listens for the task
            assert time.monotonic() < deadline, "the long poll never started waiting"
            await asyncio.sleep(0.01)
        assert hub.credentials.revoke("reader") == 1
        answer = await poll
    assert answer.status_code == 401, answer.text
    assert "mail:send" not in answer.text and task.id not in answer.text
    assert (await hub.app.get(task.id)).status is Status.QUEUED


async def test_a_client_gone_mid_body_is_not_logged_as_an_internal_error(
        hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="conveyor.hub")
    key = hub.key("pub", publish=["mail:*"])
    host, port = hub.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"POST /api/v1/tasks HTTP/1.1\r\nHost: {host}\r\n"
                  f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                  "Content-Length: 1000\r\n\r\n{\"action\": ").encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    deadline = time.monotonic() + 10
    while not any("client left" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        await asyncio.sleep(0.02)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert await hub.app.count({}) == 0
    async with client(hub, key) as http:  # the hub still answers
        assert (await http.get("/healthz")).status_code == 200


async def test_a_remote_progress_past_a_float_is_a_bad_message(hub: RunningHub) -> None:
    """An integer too large for a float (a browser reads it as Infinity, which broke the
    dashboard's table) was an internal error (OverflowError); now bad_message."""
    service = await Raw.open(hub.url, hub.key("svc", subscribe=["job:*"]))
    await service.request({"type": "subscribe", "id": "sub", "service": "svc",
                           "actions": ["job:x"]}, "subscribed")
    task = await hub.app.add("job:x")
    assert (await service.expect("offer", "sub"))["task_id"] == task.id
    await service.send({"type": "pickup", "id": 1, "task_id": task.id})
    for field in ("current", "total"):
        err = await service.request({"type": "update", "id": f"u-{field}", "task_id": task.id,
                                     field: 10**400})
        assert err["type"] == "error" and err["code"] == "bad_message", err
        assert f"'{field}' must be a finite number" in err["message"]
    ok = await service.request({"type": "update", "id": "u", "task_id": task.id, "current": 1,
                                "total": 2, "ack": True})
    assert ok["type"] == "ok", ok
    await service.close()
