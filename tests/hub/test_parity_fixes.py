"""Fixes from the parity audit (the same operation through every entry point), each
against a real hub:

- ``HTTPClient.find``/``count`` of a filter that is not a mapping (``[]``) is the
  library's ``QueryError``, not "every task";
- ``HTTPClient.find`` in pages lists no task twice when adds move rows between pages;
- a route's path with a trailing slash is a 404 with the JSON body, no redirect;
- REST takes one status as ``unique_scope`` and one condition as ``concurrency``,
  as ``Conveyor.add`` and WebSocket ``publish`` do;
- WebSocket ``wait``/``publish`` timeouts are held to 100 years as every duration;
- the abort reason is held to 1,000 characters everywhere;
- a retry refused for a held unique key is ``DuplicateTask`` through ``HTTPClient``.
"""

from __future__ import annotations

import asyncio

import pytest

from conveyor import Conveyor, DuplicateTask, Event, QueryError, Status, ValidationError
from conveyor.client import HTTPClient

from ._rest_helpers import API, client, error_of
from ._ws_helpers import Raw
from .conftest import RunningHub


@pytest.mark.parametrize("bad", [[], "", 0, (), [("status", "queued")]])
async def test_http_client_refuses_a_filter_that_is_not_a_mapping(hub: RunningHub,
                                                                   bad: object) -> None:
    await hub.app.add("a")
    async with HTTPClient(hub.url, hub.key("ops", admin=True)) as http:
        for call in (http.find, http.count):
            with pytest.raises(QueryError, match="a filter must be an object"):
                await call(bad)  # type: ignore[arg-type]
        with pytest.raises(QueryError, match="a filter must be an object"):
            await hub.app.find(bad)  # type: ignore[arg-type]
        assert await http.count({}) == await http.count(None) == 1


async def test_http_client_pages_list_no_task_twice(hub: RunningHub) -> None:
    app: Conveyor = hub.app
    await app.add_many([("page", i) for i in range(2500)])
    adding = True

    async def keep_adding() -> None:
        n = 0
        while adding:
            await app.add("page", -n)  # each new task shifts the newest-first pages
            n += 1
            await asyncio.sleep(0)

    async with HTTPClient(hub.url, hub.key("ops", admin=True)) as http:
        adder = asyncio.create_task(keep_adding())
        try:
            listed = await http.find(sort=[["created_at", -1], ["id", -1]])
        finally:
            adding = False
            await adder
    ids = [t.id for t in listed]
    assert len(ids) == len(set(ids)) >= 2500


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"{API}/tasks/"), ("POST", f"{API}/tasks/"), ("GET", f"{API}/stats/"),
    ("DELETE", f"{API}/tasks/")])
async def test_a_trailing_slash_is_a_404_not_a_redirect(hub: RunningHub, method: str,
                                                        path: str) -> None:
    for key in (None, hub.key("ops", admin=True)):
        async with client(hub, key) as http:
            response = await http.request(method, path, headers={"Host": "evil.example"})
        error_of(response, 404, "not_found")
        assert "location" not in response.headers
    assert await hub.app.count() == 0


async def test_rest_takes_one_unique_scope_status_and_one_condition(hub: RunningHub) -> None:
    key = hub.key("ops", admin=True)
    condition = {"query": {"action": "x"}, "limit": 2}
    async with client(hub, key) as http:
        scoped = await http.post(f"{API}/tasks", json={
            "action": "x", "unique_key": "k1", "unique_scope": "queued"})
        assert scoped.status_code == 201, scoped.text
        limited = await http.post(f"{API}/tasks", json={"action": "x",
                                                         "concurrency": condition})
        assert limited.status_code == 201, limited.text
        batch = await http.post(f"{API}/tasks/batch", json={"tasks": [
            {"action": "x", "concurrency": condition}, {"action": "x", "unique_scope": "nope",
                                                         "unique_key": "k2"}]})
        error_of(batch, 422, "invalid")
    by_api = await hub.app.add("x", unique_key="k3", unique_scope="queued",
                               concurrency=condition)
    stored = await hub.app.get(scoped.json()["id"])
    assert stored is not None and stored.unique_scope == (Status.QUEUED,)
    assert stored.unique_scope == by_api.unique_scope
    conditioned = await hub.app.get(limited.json()["id"])
    assert conditioned is not None and conditioned.concurrency == by_api.concurrency
    assert await hub.app.count() == 3  # the refused batch added nothing


async def test_websocket_timeouts_are_held_to_100_years(hub: RunningHub) -> None:
    key = hub.key("ops", admin=True)
    task = await hub.app.add("a")
    async with Raw.opened(hub.url, key) as ws:
        for message in ({"type": "wait", "task_id": task.id, "timeout": 1e300},
                        {"type": "publish", "action": "a", "timeout": 1e300}):
            error = await ws.request(message, "error")
            assert error["code"] == "bad_message" and "'timeout' must be <=" in error["message"]
        ok = await ws.request({"type": "wait", "task_id": task.id, "timeout": 0.01}, "error")
        assert ok["code"] == "wait_timeout"
    assert await hub.app.count() == 1  # the refused publish added nothing


async def test_the_abort_reason_has_one_bound_everywhere(hub: RunningHub) -> None:
    key = hub.key("ops", admin=True)
    app = hub.app
    tasks = [await app.add("a") for _ in range(6)]
    long, longest = "r" * 1001, "r" * 1000
    with pytest.raises(ValidationError, match="longer than 1000 characters"):
        await app.abort(tasks[0].id, long)
    with pytest.raises(ValidationError, match="not only spaces"):
        await app.abort(tasks[0].id, "   ")
    async with HTTPClient(hub.url, key) as http:
        with pytest.raises(ValidationError):
            await http.abort(tasks[0].id, long)
        with pytest.raises(ValidationError):
            await http.abort(tasks[0].id, "   ")
        assert (await http.abort(tasks[1].id, longest)).reason == longest
    async with Raw.opened(hub.url, key) as ws:
        error = await ws.request({"type": "abort", "task_id": tasks[0].id, "reason": long},
                                 "error")
        assert error["code"] == "invalid" and "1000" in error["message"]  # as over REST
        done = await ws.request({"type": "abort", "task_id": tasks[2].id,
                                 "reason": longest}, "task")
        assert done["task"]["reason"] == longest
    assert (await app.abort(tasks[3].id, longest)).reason == longest
    first = await app.get(tasks[0].id)
    assert first is not None and first.status is Status.QUEUED  # every refusal: nothing


async def test_a_retry_refused_for_a_held_key_is_duplicate_task(hub: RunningHub) -> None:
    app = hub.app
    old = await app.add("a", unique_key="only-one")
    await app.abort(old.id)
    await app.add("a", unique_key="only-one")  # the key, taken by a live task
    with pytest.raises(DuplicateTask):
        await app.retry(old.id)
    async with HTTPClient(hub.url, hub.key("ops", admin=True)) as http:
        with pytest.raises(DuplicateTask, match="only-one"):
            await http.retry(old.id)
    async with client(hub, hub.key("ops2", admin=True)) as raw:
        response = await raw.post(f"{API}/tasks/{old.id}/retry", json={})
    error_of(response, 409, "invalid_transition")
    assert response.json()["error"]["duplicate"] is True


async def test_an_empty_action_name_is_invalid_in_publish_as_in_subscribe(hub: RunningHub) -> None:
    """protocol.md: a malformed action name is ``invalid`` (an empty one in
    ``publish`` was ``bad_message``, in ``subscribe`` and over REST ``invalid``)."""
    key = hub.key("ops", admin=True)
    async with Raw.opened(hub.url, key) as ws:
        for message in ({"type": "publish", "action": ""},
                        {"type": "publish", "tasks": [{"action": "a"}, {"action": ""}]},
                        {"type": "subscribe", "service": "s", "actions": [""]}):
            error = await ws.request(message, "error")
            assert error["code"] == "invalid", (message, error)
        for shape in ({"type": "publish"}, {"type": "publish", "action": 7}):
            error = await ws.request(shape, "error")
            assert error["code"] == "bad_message" and "must be a string" in error["message"]
    assert await hub.app.count() == 0


async def test_a_task_deleted_before_the_hub_read_its_end_says_how_it_ended(
        hub: RunningHub) -> None:
    """Another process ends a task and deletes it at once: the hub's change relay
    reads neither (the row is gone) and emits the end without the task, then the
    deletion. A publisher waiting on it gets the error ``deleted`` with the status
    the task ended with (it got the bare error, the outcome unsaid)."""
    key = hub.key("ops", admin=True)
    async with Raw.opened(hub.url, key) as ws:
        published = await ws.request({"type": "publish", "id": "p", "action": "a",
                                       "updates": True, "wait": True}, "published")
        task_id = published["task"]["id"]
        watch = await Raw.open(hub.url, key)
        await watch.request({"type": "watch", "id": "w", "task_id": task_id}, "watching")
        data = {"version": 3, "status": "succeeded"}
        for event in (Event("task.succeeded", task_id, None, data),
                      Event("task.ended", task_id, None, data),
                      Event("task.deleted", task_id)):
            hub.app.bus.emit(event)  # as the relay emits them for a task it cannot read
        for conn in (ws, watch):
            error = await conn.expect("error")
            assert error["code"] == "deleted" and error["status"] == "succeeded"
            assert "ended succeeded" in error["message"]
        await watch.close()


async def test_watch_does_not_repeat_an_abort_request_its_task_showed(hub: RunningHub) -> None:
    """The ``watching`` message's task carries an abort request already; the
    ``task.abort_requested`` of that same version, relayed a moment later, was sent
    again as an ``abort_requested`` message (eventlog audit, 1 stream of 210)."""
    key = hub.key("ops", admin=True)
    task = await hub.app.add("a")
    [_claimed] = await hub.app.storage.claim("ghost", ["a"], 1, 30.0)
    asked = await hub.app.abort(task.id, "stop")
    assert asked.abort_requested == "stop"
    async with Raw.opened(hub.url, key) as ws:
        watching = await ws.request({"type": "watch", "id": "w", "task_id": task.id},
                                    "watching")
        assert watching["task"]["abort_requested"] == "stop"
        data = {"version": asked.version, "status": "running"}
        hub.app.bus.emit(Event("task.abort_requested", task.id, asked, data))  # late
        hub.app.bus.emit(Event("task.result", task.id, asked, {"value": 1}))
        following = await ws.expect(None, "w")
        assert following["type"] == "emit", following
