"""Unique keys are shared by all actions; a publish must not hand a task (or its
updates) to a credential that may not read its action (issue 5: "no event of an
action leaks to a subscriber without permission for it"). Such a publish is
refused with ``unique_key_held`` and adds nothing."""

from __future__ import annotations

from conveyor.model import Status

from ._rest_helpers import client
from ._ws_helpers import Raw
from .conftest import RunningHub


async def _secret(hub: RunningHub, key: str) -> str:
    task = await hub.app.add("geo:secret", {"card": "4111"}, unique_key=key)
    return task.id


async def test_rest_refuses_a_key_held_by_an_unreadable_task(hub: RunningHub) -> None:
    secret_id = await _secret(hub, "k1")
    shop = hub.key("shop", publish=["mail:*"])
    async with client(hub, shop) as http:
        one = await http.post("/api/v1/tasks", json={"action": "mail:send", "unique_key": "k1"})
        assert one.status_code == 409, one.text
        assert one.json()["error"]["code"] == "unique_key_held"
        assert "4111" not in one.text and secret_id not in one.text and "geo" not in one.text
        batch = await http.post("/api/v1/tasks/batch", json={"tasks": [
            {"action": "mail:send", "unique_key": "fresh"},
            {"action": "mail:send", "unique_key": "k1"}]})
        assert batch.status_code == 409, batch.text
        assert batch.json()["error"]["message"].startswith("task 1: unique key 'k1'")
        assert "4111" not in batch.text and secret_id not in batch.text
    # nothing was added: all or none
    assert await hub.app.count({"action": "mail:send"}) == 0
    # a key held by a finished task outside both scopes does not count: added
    await hub.app.abort(secret_id)
    async with client(hub, shop) as http:
        added = await http.post("/api/v1/tasks", json={"action": "mail:send", "unique_key": "k1"})
        assert added.status_code == 201 and added.json()["action"] == "mail:send"
        # and a batch meeting its own action's holder dedupes as before
        again = await http.post("/api/v1/tasks/batch", json={"tasks": [
            {"action": "mail:send", "unique_key": "k1"}, {"action": "mail:send"}]})
        assert again.status_code == 201 and again.json()["created"] == [False, True]
        assert again.json()["tasks"][0]["id"] == added.json()["id"]


async def test_readers_and_admins_get_the_holder(hub: RunningHub) -> None:
    secret_id = await _secret(hub, "k2")
    for name, rights in (("ops", {"admin": True}),
                         ("both", {"publish": ["mail:*"], "read": ["geo:*"]})):
        async with client(hub, hub.key(name, **rights)) as http:
            got = await http.post("/api/v1/tasks",
                                  json={"action": "mail:send", "unique_key": "k2"})
            assert got.status_code == 200 and got.json()["id"] == secret_id, (name, got.text)


async def test_ws_publish_refuses_and_streams_nothing_of_the_holder(hub: RunningHub) -> None:
    secret_id = await _secret(hub, "k3")
    async with Raw.opened(hub.url, hub.key("shop", publish=["mail:*"])) as ws:
        err = await ws.request({"type": "publish", "id": "p", "action": "mail:send",
                                "options": {"unique_key": "k3"}, "wait": True})
        assert err["type"] == "error" and err["code"] == "unique_key_held", err
        batch = await ws.request({"type": "publish", "id": "b", "tasks": [
            {"action": "mail:send"}, {"action": "mail:send", "options": {"unique_key": "k3"}}]})
        assert batch["code"] == "unique_key_held" and "task 1" in batch["message"]
        # the holder runs and ends: nothing of it reaches this connection
        await hub.app.abort(secret_id, "done")
        assert (await hub.app.get(secret_id)).status is Status.ABORTED
        check = await ws.request({"type": "get", "id": "g", "task_id": secret_id})
        assert check["code"] == "forbidden"
        assert all(m.get("task_id") != secret_id or m is check for m in ws.seen), ws.seen
        assert not any(isinstance(m.get("task"), dict) and m["task"].get("action") == "geo:secret"
                       for m in ws.seen)
    assert await hub.app.count({"action": "mail:send"}) == 0


async def test_a_bad_action_name_is_invalid_not_forbidden(hub: RunningHub) -> None:
    async with Raw.opened(hub.url, hub.key("shop", publish=["mail:*"])) as ws:
        err = await ws.request({"type": "publish", "id": 1, "action": "bad action!"})
        assert err["code"] == "invalid" and "invalid action name" in err["message"], err
        err = await ws.request({"type": "publish", "id": 2, "action": "geo:x"})
        assert err["code"] == "forbidden", err
