"""Unique keys are shared by all actions; a publish must not hand a task (or its
updates) to a credential that may not read its action (issue 5: "no event of an
action leaks to a subscriber without permission for it"). Such a publish is
refused with ``unique_key_held`` and adds nothing."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Any

import psycopg

from conveyor.model import Status

from ..conftest import PG_ENV
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


async def _ended_copies(hub: RunningHub, key: str, n: int) -> None:
    """``n`` ended tasks carrying ``key`` (a key reused each time its task ended):
    copies of one, written in the hub's database by hand for speed."""
    task = await hub.app.add("mail:old", unique_key=key)
    await hub.app.abort(task.id)
    storage: Any = hub.app.storage
    if hasattr(storage, "schema"):  # PostgreSQL
        async with await psycopg.AsyncConnection.connect(os.environ[PG_ENV]) as conn:
            tasks = f'"{storage.schema}".tasks'
            await conn.execute(f"CREATE TEMP TABLE copies AS SELECT t.* FROM {tasks} AS t "
                               "CROSS JOIN generate_series(1, %s) WHERE t.id = %s", (n, task.id))
            await conn.execute("UPDATE copies SET id = gen_random_uuid()::text")
            await conn.execute(f"INSERT INTO {tasks} SELECT * FROM copies")
        return
    with contextlib.closing(sqlite3.connect(storage.path)) as db, db:
        row = db.execute("SELECT * FROM conveyor_tasks WHERE id = ?", (task.id,)).fetchone()
        names = [r[1] for r in db.execute("PRAGMA table_info(conveyor_tasks)")]
        at = names.index("id")
        db.executemany(f"INSERT INTO conveyor_tasks VALUES ({', '.join('?' * len(names))})",
                       [(*row[:at], f"{task.id}-{i}", *row[at + 1:]) for i in range(n)])


async def test_a_batch_is_refused_before_adding_whatever_the_keys_history(
        hub: RunningHub) -> None:
    """The look before a batch read the 10,000 newest tasks carrying its keys: with
    more on one key, an older hidden holder of another key was missed, the batch
    was added and then answered 409 (``the call's other tasks were added``). It asks
    the storage for the task each item's key would get, a few rows per key."""
    secret_id = await _secret(hub, "k9")
    await _ended_copies(hub, "daily", 10_001)
    shop = hub.key("shop", publish=["mail:*"])
    async with client(hub, shop) as http:
        batch = await http.post("/api/v1/tasks/batch", json={"tasks": [
            {"action": "mail:send", "unique_key": "daily"},
            {"action": "mail:send", "unique_key": "k9"}]})
        assert batch.status_code == 409, batch.text
        message = batch.json()["error"]["message"]
        assert message.startswith("task 1: unique key 'k9'") and "nothing was added" in message
        assert secret_id not in batch.text
    assert await hub.app.count({"action": "mail:send"}) == 0


async def test_a_batch_whose_unique_fields_key_is_held_elsewhere_adds_nothing(
        hub: RunningHub) -> None:
    """A key built from ``unique_fields`` starts with its action, but another
    action's task may have been given that very string as its ``unique_key``: the
    look before a batch skipped such items, so the batch's other tasks were added
    before the 409 (a publisher retrying it added them again each time)."""
    key = 'mail:send:{"to":"T"}'
    secret_id = await _secret(hub, key)
    shop = hub.key("shop", publish=["mail:*"])
    tasks = [{"action": "mail:send", "unique_key": "fresh"},
             {"action": "mail:send", "payload": {"to": "T"}, "unique_fields": ["to"]}]
    async with client(hub, shop) as http:
        for _ in range(2):
            batch = await http.post("/api/v1/tasks/batch", json={"tasks": tasks})
            assert batch.status_code == 409, batch.text
            message = batch.json()["error"]["message"]
            assert message.startswith("task 1: unique key") and "nothing was added" in message
            assert secret_id not in batch.text
        # a bad item among them is refused in the add's own words, naming it
        bad = await http.post("/api/v1/tasks/batch", json={"tasks": [
            *tasks, {"action": "mail:send", "payload": {}, "unique_fields": ["to"]}]})
        assert bad.status_code == 422 and "task 2" in bad.text, bad.text
    async with Raw.opened(hub.url, shop) as ws:
        err = await ws.request({"type": "publish", "id": "b", "tasks": [
            {"action": "mail:send", "options": {"unique_key": "fresh"}},
            {"action": "mail:send", "payload": {"to": "T"},
             "options": {"unique_fields": ["to"]}}]})
        assert err["code"] == "unique_key_held" and "nothing was added" in err["message"], err
    assert await hub.app.count({"action": "mail:send"}) == 0
