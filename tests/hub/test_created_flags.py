"""Whether an add made a new task, on every entry point of the hub.

REST answers 201 when the task is new and 200 when a live task held its
``unique_key`` (a batch: 201 if any is new, with a ``created`` flag per task);
the WebSocket ``published`` reply carries ``created``; HTTPClient and HubClient
have ``add_checked`` and ``add_many_checked``. The flag comes from the insert,
so of racing publishers of one key exactly one is told it created the task.
"""

from __future__ import annotations

import asyncio

from conveyor.client import HTTPClient, HubClient

from ._rest_helpers import client
from ._ws_helpers import Raw
from .conftest import RunningHub


async def test_rest_status_and_batch_flags(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["a:*"])
    async with client(hub, key) as http:
        first = await http.post("/api/v1/tasks", json={"action": "a:x", "unique_key": "k",
                                                       "delay": 600})
        again = await http.post("/api/v1/tasks", json={"action": "a:x", "unique_key": "k"})
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json()["id"] == first.json()["id"]
        batch = await http.post("/api/v1/tasks/batch", json={"tasks": [
            {"action": "a:x", "unique_key": "k"},
            {"action": "a:x", "unique_key": "j", "delay": 600},
            {"action": "a:x", "unique_key": "j"},
        ]})
        assert batch.status_code == 201
        body = batch.json()
        assert body["created"] == [False, True, False]
        ids = [t["id"] for t in body["tasks"]]
        assert ids[0] == first.json()["id"] and ids[1] == ids[2]
        none_new = await http.post("/api/v1/tasks/batch", json={"tasks": [
            {"action": "a:x", "unique_key": "k"}, {"action": "a:x", "unique_key": "j"}]})
        assert none_new.status_code == 200 and none_new.json()["created"] == [False, False]


async def test_racing_rest_publishers_get_one_201(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["a:*"])
    async with client(hub, key) as http:
        answers = await asyncio.gather(*[
            http.post("/api/v1/tasks", json={"action": "a:x", "payload": n, "unique_key": "r",
                                             "delay": 600}) for n in range(12)])
    assert sorted(a.status_code for a in answers) == [200] * 11 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert await hub.app.count({"action": "a:x"}) == 1


async def test_http_client_checked_adds(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["a:*"])
    async with HTTPClient(hub.url, key) as http:
        task, created = await http.add_checked("a:x", unique_key="k", delay=600)
        flags = await http.add_many_checked([("a:x", None, {"unique_key": "k"}),
                                             ("a:x", 2, {"delay": 600})])
        assert created and [c for _, c in flags] == [False, True]
        assert flags[0][0].id == task.id
        assert [t.id for t in await http.add_many([("a:x", None, {"unique_key": "k"})])] == [
            task.id]


async def test_websocket_published_reply_and_hub_client(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["a:*"])
    raw = await Raw.open(hub.url, key)
    try:
        one = await raw.request({"type": "publish", "action": "a:x", "updates": False,
                                 "options": {"unique_key": "w", "delay": 600}}, "published")
        two = await raw.request({"type": "publish", "tasks": [
            {"action": "a:x", "options": {"unique_key": "w"}},
            {"action": "a:x", "options": {"delay": 600}}], "updates": False}, "published")
    finally:
        await raw.close()
    assert one["created"] is True
    assert two["created"] == [False, True] and two["tasks"][0]["id"] == one["task"]["id"]

    async with HubClient(hub.url, key) as ws:
        task, created = await ws.add_checked("a:x", unique_key="w")
        assert not created and task.id == one["task"]["id"]
        flags = await ws.add_many_checked([("a:x", None, {"unique_key": "v", "delay": 600}),
                                           ("a:x", None, {"unique_key": "v"})])
        assert [c for _, c in flags] == [True, False]
        assert (await ws.add("a:x", unique_key="v")).id == flags[0][0].id


async def test_an_option_beside_options_is_refused_not_ignored(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["a:*"])
    raw = await Raw.open(hub.url, key)
    try:
        for message, where, names in [
            ({"action": "a:x", "priority": 3}, "publish", "'priority'"),
            ({"action": "a:x", "unique_key": "k", "delay": 5}, "publish", "'delay', 'unique_key'"),
            ({"tasks": [{"action": "a:x"}, {"action": "a:x", "timeout": 5}]}, "tasks[1]",
             "'timeout'"),
        ]:
            reply = await raw.request({"type": "publish", "updates": False, **message})
            assert reply["type"] == "error" and reply["code"] == "bad_message", reply
            assert reply["message"] == f"{where}: put {names} inside 'options' (the options of add)"
        assert await hub.app.count() == 0
        # "timeout" beside "options" is the wait's own timeout: still accepted
        ok = await raw.request({"type": "publish", "action": "a:x", "timeout": 0.01,
                                "options": {"delay": 600}, "updates": False}, "published")
        assert ok["created"] is True
    finally:
        await raw.close()
