"""REST: adding, reading, finding, counting, waiting, logs, stats and workers (happy paths)."""

from __future__ import annotations

import asyncio
import json
import time

from ._rest_helpers import API, client, error_of, eventually, make_keys, worker_hub
from .conftest import RunningHub

__all__ = ["worker_hub"]


async def test_add_one_task_and_read_it_back(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["mail:*"])
    async with client(hub, key) as http:
        r = await http.post(f"{API}/tasks", json={
            "action": "mail:send", "payload": {"to": "ann@example.com"}, "priority": -2,
            "tags": {"user": "ann"}, "max_attempts": 3, "timeout": 5, "delay": 60,
            "backoff": {"base": 2}, "unique_key": "mail-1",
            "concurrency": [{"query": {"payload.to": "ann@example.com"}, "limit": 1}]})
        assert r.status_code == 201, r.text
        task = r.json()
        assert task["action"] == "mail:send"
        assert task["payload"] == {"to": "ann@example.com"}
        assert task["status"] == "queued"
        assert task["priority"] == -2
        assert task["tags"] == {"user": "ann"}
        assert task["max_attempts"] == 3 and task["run_timeout"] == 5
        assert task["run_at"] > time.time() + 50
        assert task["backoff"]["base"] == 2
        assert task["concurrency"][0]["limit"] == 1
        assert task["public_url"] == hub.hub.task_url(task["id"])
        assert task["public_url"].startswith("ws://127.0.0.1:")
        assert "token" not in task
        got = await http.get(f"{API}/tasks/{task['id']}")
        assert got.status_code == 200
        assert got.json() == task
        stored = await hub.app.get(task["id"])
        assert stored.to_json() | {"public_url": task["public_url"]} == task

        # the same unique key: that task again, 200, nothing added
        again = await http.post(f"{API}/tasks", json={"action": "mail:send",
                                                       "unique_key": "mail-1"})
        assert again.status_code == 200
        assert again.json()["id"] == task["id"]
        assert await hub.app.count() == 1

        # an id with a space around it is quoted in the error: it would read as this one
        spaced = await http.get(f"{API}/tasks/%20{task['id']}")
        assert error_of(spaced, 404, "not_found") == f"no task with id ' {task['id']}'"


async def test_add_many_is_one_transaction(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["mail:*", "geo:*"])
    async with client(hub, key) as http:
        r = await http.post(f"{API}/tasks/batch", json={"tasks": [
            {"action": "mail:send", "payload": 1},
            {"action": "geo:code", "payload": {"q": "Paris"}, "priority": 3},
            {"action": "mail:send"},
        ]})
        assert r.status_code == 201, r.text
        tasks = r.json()["tasks"]
        assert [t["action"] for t in tasks] == ["mail:send", "geo:code", "mail:send"]
        assert [t["payload"] for t in tasks] == [1, {"q": "Paris"}, None]
        assert all(t["public_url"].endswith(t["id"]) for t in tasks)
        assert await hub.app.count() == 3
        # one bad item: nothing of the batch is written, the error names the item
        bad = await http.post(f"{API}/tasks/batch", json={"tasks": [
            {"action": "mail:send"}, {"action": "mail:send", "delay": 1, "run_at": 5}]})
        error_of(bad, 422, "invalid", "task 1", "delay or run_at")
        assert await hub.app.count() == 3


async def test_get_with_logs_up_to_a_level(worker_hub: RunningHub) -> None:
    keys = make_keys(worker_hub)
    async with client(worker_hub, keys.admin) as http:
        task = (await http.post(f"{API}/tasks", json={"action": "mail:send",
                                                       "payload": {"to": "bob"}})).json()
        done = await http.get(f"{API}/tasks/{task['id']}/wait", params={"timeout": 10})
        assert done.status_code == 200 and done.json()["status"] == "succeeded"
        assert "logs" not in done.json()
        full = (await http.get(f"{API}/tasks/{task['id']}", params={"logs": "true"})).json()
        assert [r["level"] for r in full["logs"]] == ["debug", "info", "warning"]
        assert full["logs"][1]["message"] == "sending to bob"
        info = (await http.get(f"{API}/tasks/{task['id']}",
                               params={"logs": "true", "max_level": "info"})).json()
        assert [r["level"] for r in info["logs"]] == ["info", "warning"]
        assert all(r["task_id"] == task["id"] for r in info["logs"])


async def test_find_with_filter_sort_limit_skip(hub: RunningHub) -> None:
    await hub.app.add_many([("a:x", {"n": i}, {"priority": i % 3}) for i in range(10)])
    key = hub.key("ops", admin=True)
    async with client(hub, key) as http:
        r = await http.get(f"{API}/tasks", params={
            "filter": json.dumps({"payload.n": {"$gte": 2}}), "sort": "-priority,created_at",
            "limit": 4, "skip": 1})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["limit"] == 4 and body["skip"] == 1
        expected = await hub.app.find({"payload.n": {"$gte": 2}},
                                      sort=["-priority", "created_at"], limit=4, skip=1)
        assert [t["id"] for t in body["tasks"]] == [t.id for t in expected]
        assert all("public_url" in t for t in body["tasks"])
        # the POST variant takes the same query in its body
        post = await http.post(f"{API}/tasks/search", json={
            "filter": {"payload.n": {"$gte": 2}}, "sort": ["-priority", "created_at"],
            "limit": 4, "skip": 1})
        assert post.status_code == 200
        assert post.json() == body
        # a JSON sort in the query string, no filter, the default limit
        r = await http.get(f"{API}/tasks", params={"sort": '{"payload.n": -1}'})
        assert [t["payload"]["n"] for t in r.json()["tasks"]] == list(range(9, -1, -1))
        assert r.json()["limit"] == 100
        assert (await http.get(f"{API}/tasks", params={"limit": 0})).json()["tasks"] == []


async def test_count_and_stats(hub: RunningHub) -> None:
    await hub.app.add_many([("a:x", i) for i in range(3)] + [("b:y", i) for i in range(2)])
    key = hub.key("ops", admin=True)
    async with client(hub, key) as http:
        assert (await http.get(f"{API}/tasks/count")).json() == {"count": 5}
        r = await http.get(f"{API}/tasks/count", params={"filter": '{"action": "b:y"}'})
        assert r.json() == {"count": 2}
        r = await http.post(f"{API}/tasks/count", json={"filter": {"payload": {"$lt": 1}}})
        assert r.json() == {"count": 2}
        assert (await http.post(f"{API}/tasks/count")).json() == {"count": 5}
        stats = (await http.get(f"{API}/stats")).json()
        assert stats == {"stats": {"a:x": {"queued": 3}, "b:y": {"queued": 2}}}


async def test_wait_long_polls_until_the_task_ends(worker_hub: RunningHub) -> None:
    keys = make_keys(worker_hub)
    async with client(worker_hub, keys.admin) as http:
        task = (await http.post(f"{API}/tasks", json={"action": "mail:send",
                                                       "payload": {"sleep": 0.6}})).json()
        started = time.monotonic()
        r = await http.get(f"{API}/tasks/{task['id']}/wait", params={"timeout": 20})
        took = time.monotonic() - started
        assert r.status_code == 200
        assert r.json()["status"] == "succeeded" and r.json()["result"] == {"sent": None}
        assert took < 5
        # an ended task answers at once, whatever the timeout
        r = await http.get(f"{API}/tasks/{task['id']}/wait", params={"timeout": 0})
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        # failed and aborted tasks are answered 200 too: the body says how it ended
        failed = (await http.post(f"{API}/tasks", json={"action": "job:fail"})).json()
        r = await http.get(f"{API}/tasks/{failed['id']}/wait", params={"timeout": 20})
        assert r.status_code == 200 and r.json()["status"] == "failed"
        assert r.json()["error"]["message"] == "boom"


async def test_wait_timeout_answers_202_with_the_task_as_it_is(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["mail:*"])
    async with client(hub, key) as http:
        task = (await http.post(f"{API}/tasks", json={"action": "mail:send"})).json()
        started = time.monotonic()
        r = await http.get(f"{API}/tasks/{task['id']}/wait", params={"timeout": 0.3})
        took = time.monotonic() - started
        assert r.status_code == 202
        assert r.headers["retry-after"] == "0"
        assert r.json()["id"] == task["id"] and r.json()["status"] == "queued"
        assert 0.25 < took < 3
        r = await http.get(f"{API}/tasks/{task['id']}/wait", params={"timeout": "0"})
        assert r.status_code == 202
        # the wait ends as soon as the task does, from another writer too
        waiting = asyncio.ensure_future(
            http.get(f"{API}/tasks/{task['id']}/wait", params={"timeout": 30}))
        async def hub_waits() -> bool:  # its wait listens for the task's changes
            return task["id"] in hub.app.bus._signals

        await eventually(hub_waits)
        assert not waiting.done()
        await hub.app.abort(task["id"], "changed my mind")
        r = await asyncio.wait_for(waiting, 5)
        assert r.status_code == 200 and r.json()["status"] == "aborted"
        assert r.json()["reason"] == "changed my mind"


async def test_a_waiter_that_leaves_frees_the_server(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["mail:*"])
    task = await hub.app.add("mail:send")
    bus = hub.app.bus
    async with client(hub, key) as http:
        waiting = asyncio.ensure_future(
            http.get(f"{API}/tasks/{task.id}/wait", params={"timeout": 60}))

        async def signalled() -> bool:
            return task.id in bus._signals

        await eventually(signalled)
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            pass

    async def released() -> bool:
        return task.id not in bus._signals

    await eventually(released, timeout=5)


async def test_logs_after_seq_and_level(worker_hub: RunningHub) -> None:
    keys = make_keys(worker_hub)
    async with client(worker_hub, keys.admin) as http:
        task = (await http.post(f"{API}/tasks", json={"action": "mail:send",
                                                       "payload": {"to": "x"}})).json()
        await http.get(f"{API}/tasks/{task['id']}/wait", params={"timeout": 10})
        page = (await http.get(f"{API}/tasks/{task['id']}/logs")).json()
        assert page["task_id"] == task["id"] and page["status"] == "succeeded"
        assert [r["message"] for r in page["logs"]] == ["connecting", "sending to x",
                                                        "slow server"]
        seqs = [r["seq"] for r in page["logs"]]
        assert page["next_seq"] == seqs[-1]
        after = (await http.get(f"{API}/tasks/{task['id']}/logs",
                                params={"after_seq": seqs[0]})).json()
        assert [r["seq"] for r in after["logs"]] == seqs[1:]
        warn = (await http.get(f"{API}/tasks/{task['id']}/logs",
                               params={"max_level": "warning", "limit": 5})).json()
        assert [r["message"] for r in warn["logs"]] == ["slow server"]
        one = (await http.get(f"{API}/tasks/{task['id']}/logs", params={"limit": 1})).json()
        assert len(one["logs"]) == 1 and one["next_seq"] == seqs[0]
        empty = (await http.get(f"{API}/tasks/{task['id']}/logs",
                                params={"after_seq": seqs[-1]})).json()
        assert empty["logs"] == [] and empty["next_seq"] == seqs[-1]


async def test_workers_and_their_heartbeats(worker_hub: RunningHub) -> None:
    keys = make_keys(worker_hub)
    async with client(worker_hub, keys.admin) as http:
        async def listed() -> list[dict[str, object]]:
            return list((await http.get(f"{API}/workers")).json()["workers"])

        workers = await eventually(listed)
        (worker,) = workers
        assert set(worker["actions"]) == {"mail:send", "geo:code", "job:fail", "job:slow"}
        assert worker["alive"] is True
        assert worker["last_seen"] <= time.time() + 1
        assert {"id", "host", "pid", "concurrency", "started_at", "running", "info"} <= set(worker)
        # a subscriber of geo:* sees the worker with only the actions it may read
        async with client(worker_hub, keys.subscriber) as sub:
            (seen,) = (await sub.get(f"{API}/workers")).json()["workers"]
            assert seen["actions"] == ["geo:code"]
        async with client(worker_hub, keys.nobody) as nobody:
            assert (await nobody.get(f"{API}/workers")).json() == {"workers": []}


async def test_head_and_health_routes(hub: RunningHub) -> None:
    key = hub.key("ops", admin=True)
    async with client(hub, key) as http:
        assert (await http.head(f"{API}/stats")).status_code == 200
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).json() == {"status": "ready"}
        error_of(await http.get("/nowhere"), 404, "not_found", "/nowhere")
        r = await http.put(f"{API}/tasks")
        error_of(r, 405, "method_not_allowed")
        assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
        r = await http.get(f"{API}/tasks/batch")
        error_of(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "POST"
