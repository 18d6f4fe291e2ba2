"""Claims of docs/http.md and docs/protocol.md that no other test checks, checked
from the outside: a real hub on 127.0.0.1, httpx, raw WebSocket clients and the
Python clients, as a client written from the documents would see them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conveyor import Context
from conveyor.client import HubClient
from conveyor.storage import WorkerInfo

from ._rest_helpers import API, client, error_of, eventually, worker_hub
from ._ws_helpers import Raw
from .conftest import RunningHub

__all__ = ["worker_hub"]

T = f"{API}/tasks"
BAD_KEY = "cvk_000000000000_" + "x" * 43

# protocol.md, "Tasks on the wire": every field of a task's wire form
WIRE_FIELDS = {
    "id", "action", "payload", "status", "priority", "run_at", "created_at", "updated_at",
    "started_at", "finished_at", "attempts", "max_attempts", "rescues", "run_timeout",
    "pickup_timeout", "pickup_deadline", "backoff", "worker", "lease_until",
    "abort_requested", "progress", "result", "error", "errors", "reason", "unique_key",
    "unique_scope", "concurrency", "tags", "parent_id", "public_url", "version",
}

# protocol.md, "Message index": what a client may send
CLIENT_TYPES = ("hello", "ping", "publish", "wait", "get", "abort", "watch", "unwatch", "live",
                "unlive", "subscribe", "unsubscribe", "pickup", "refuse", "fetch", "update",
                "log", "emit", "return", "drop", "fail", "retry", "reschedule", "heartbeat")


# -- REST ------------------------------------------------------------------------------


async def test_a_task_has_exactly_the_documented_fields(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with client(hub, admin) as http:
        added = (await http.post(T, json={"action": "a"})).json()
        got = (await http.get(f"{T}/{added['id']}")).json()
        with_logs = (await http.get(f"{T}/{added['id']}", params={"logs": "true"})).json()
    assert set(added) == WIRE_FIELDS and set(got) == WIRE_FIELDS
    assert added["payload"] is None  # payload: default null
    assert set(with_logs) == WIRE_FIELDS | {"logs"} and with_logs["logs"] == []
    async with Raw.opened(hub.url, admin) as raw:
        published = await raw.request({"type": "publish", "action": "a", "updates": False},
                                      "published")
        assert set(published["task"]) == WIRE_FIELDS
        read = await raw.request({"type": "get", "task_id": added["id"]}, "task")
        assert set(read["task"]) == WIRE_FIELDS


async def test_ties_are_broken_by_id_and_stats_hold_non_zero_counts(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with client(hub, admin) as http:
        r = await http.post(f"{T}/batch", json={"tasks": [
            {"action": "a", "priority": p} for p in (1, 2, 1, 2, 1)]})
        ids = [t["id"] for t in r.json()["tasks"]]
        ones = sorted(ids[i] for i in (0, 2, 4))
        twos = sorted(ids[i] for i in (1, 3))
        for sort, want in (("priority", ones + twos), ("-priority", twos + ones),
                           ('[["priority", -1]]', twos + ones)):
            found = (await http.get(T, params={"sort": sort})).json()["tasks"]
            assert [t["id"] for t in found] == want, sort
        page = (await http.post(f"{T}/search", json={"sort": "-priority", "limit": 2,
                                                     "skip": 1})).json()["tasks"]
        assert [t["id"] for t in page] == (twos + ones)[1:3]
        await http.post(f"{T}/{ids[0]}/abort")
        assert (await http.post(T, json={"action": "b"})).status_code == 201
        stats = (await http.get(f"{API}/stats")).json()
        assert stats == {"stats": {"a": {"queued": 4, "aborted": 1}, "b": {"queued": 1}}}


async def test_five_failed_logins_in_a_row_lock_out(hub: RunningHub) -> None:
    good = {"Authorization": f"Bearer {hub.key('good', admin=True)}"}
    bad = {"Authorization": f"Bearer {BAD_KEY}"}
    async with client(hub) as http:
        for _ in range(7):  # no key at all is not a failed login
            error_of(await http.get(f"{API}/stats"), 401, "unauthorized")
        for _ in range(4):
            error_of(await http.get(f"{API}/stats", headers=bad), 401, "unauthorized")
        # a good key clears the count: four more failures do not lock the address out
        assert (await http.get(f"{API}/stats", headers=good)).status_code == 200
        for _ in range(4):
            error_of(await http.get(f"{API}/stats", headers=bad), 401, "unauthorized")
        assert (await http.get(f"{API}/stats", headers=good)).status_code == 200
        for _ in range(5):
            error_of(await http.get(f"{API}/stats", headers=bad), 401, "unauthorized")
        error_of(await http.get(f"{API}/stats", headers=good), 429, "rate_limited")
        error_of(await http.get("/healthz", headers=good), 429, "rate_limited")


async def test_routes_heads_probes_and_the_paths_of_errors(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with client(hub, admin) as http:
        task = (await http.post(T, json={"action": "a"})).json()
        # HEAD works wherever GET does
        for path in ("/readyz", "/metrics", "/openapi.json", T, f"{T}/count",
                     f"{T}/{task['id']}", f"{T}/{task['id']}/logs", f"{API}/workers"):
            r = await http.head(path)
            assert r.status_code == 200 and r.content == b"", path
        # a method the literal routes do not take
        r = await http.delete(f"{T}/count")
        error_of(r, 405, "method_not_allowed")
        assert {"GET", "POST"} <= {m.strip() for m in r.headers["allow"].split(",")}
        # probes may add parameters of their own
        assert (await http.get("/healthz", params={"probe": "1"})).json() == {"status": "ok"}
        assert (await http.get("/readyz", params={"probe": "1"})).json() == {"status": "ready"}
        # options that must not be combined name the first
        r = await http.post(f"{T}/delete", json={"ids": [task["id"]], "filter": {}})
        error_of(r, 422, "invalid", "not both")
        assert r.json()["error"]["path"] == "ids"
        # a task id that cannot be one
        r = await http.delete(f"{T}/{'x' * 101}")
        error_of(r, 422, "invalid")
        assert r.json()["error"]["path"] == "task_id"
        assert (await http.get(f"{T}/count")).json() == {"count": 1}


async def test_a_worker_silent_for_90_seconds_is_not_alive(hub: RunningHub) -> None:
    now = time.time()
    for worker_id, seen in (("old@h:1", now - 95), ("new@h:2", now - 60)):
        await hub.app.storage.register_worker(WorkerInfo(
            id=worker_id, host="h", pid=1, actions=("a",), concurrency=1,
            started_at=now - 300, last_seen=seen))
    async with client(hub, hub.key("admin", admin=True)) as http:
        workers = (await http.get(f"{API}/workers")).json()["workers"]
    assert {w["id"]: w["alive"] for w in workers} == {"old@h:1": False, "new@h:2": True}


async def test_retry_adds_an_attempt_and_keeps_the_history(worker_hub: RunningHub) -> None:
    admin = worker_hub.key("admin", admin=True)
    async with client(worker_hub, admin) as http:
        task = (await http.post(T, json={"action": "job:fail"})).json()
        r = await http.get(f"{T}/{task['id']}/wait", params={"timeout": 30})
        failed = r.json()
        assert r.status_code == 200 and failed["status"] == "failed"
        assert failed["attempts"] == 1 and len(failed["errors"]) == 1
        again = (await http.post(f"{T}/{task['id']}/retry")).json()
        assert again["id"] == task["id"] and again["status"] == "queued"
        assert again["errors"] == failed["errors"]
        r = await http.get(f"{T}/{task['id']}/wait", params={"timeout": 30})
        done = r.json()
        assert r.status_code == 200 and done["id"] == task["id"]
        assert done["status"] == "failed" and done["attempts"] == 2
        assert [e["message"] for e in done["errors"]] == ["boom", "boom"]
        # prioritize of a running task is a conflict
        slow = (await http.post(T, json={"action": "job:slow"})).json()

        async def running() -> bool:
            now = (await http.get(f"{T}/{slow['id']}")).json()
            return bool(now["status"] == "running")

        await eventually(running)
        r = await http.post(f"{T}/{slow['id']}/prioritize", json={"priority": -1})
        error_of(r, 409, "invalid_transition")
        await http.post(f"{T}/{slow['id']}/abort")


# -- WebSocket -------------------------------------------------------------------------


async def test_a_publishs_updates_outlive_its_wait(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as raw:
        reply = await raw.request({"type": "publish", "id": "p", "action": "a",
                                   "timeout": 0.1}, "published")
        task_id = reply["task"]["id"]
        timed_out = await raw.expect("error", "p")
        assert timed_out["code"] == "wait_timeout" and timed_out["task_id"] == task_id
        await raw.request({"type": "abort", "task_id": task_id}, "task")
        fail = await raw.expect("fail", "p")
        assert fail["status"] == "aborted" and fail["task"]["status"] == "aborted"
        assert (await raw.expect("end", "p"))["status"] == "aborted"
        assert [m["type"] for m in raw.seen if m.get("id") == "p"] == [
            "published", "error", "fail", "end"]
        # a default alone implies the wait
        reply = await raw.request({"type": "publish", "id": "d", "action": "a",
                                   "default": 5, "updates": False}, "published")
        await raw.request({"type": "abort", "task_id": reply["task"]["id"]}, "task")
        result = await raw.expect("result", "d")
        assert result["value"] == 5 and result["default"] is True
        assert result["status"] == "aborted" and result["task_id"] == reply["task"]["id"]


async def test_message_types_ids_and_unknown_fields(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as raw:
        # every type of the message index is known (each gets exactly its one reply)
        for kind in CLIENT_TYPES:
            reply = await raw.request({"type": kind, "id": f"m-{kind}", "ack": True})
            assert reply.get("code") != "unknown_type", (kind, reply)
        # unknown fields are ignored
        pong = await raw.request({"type": "ping", "id": "x", "colour": "red"})
        assert pong["type"] == "pong"
        published = await raw.request({"type": "publish", "action": "a", "colour": "red",
                                       "updates": False})
        assert published["type"] == "published" and published["created"] is True
        got = await raw.request({"type": "get", "task_id": published["task"]["id"],
                                 "colour": "red"})
        assert got["type"] == "task"
        # integer ids up to 2^53 either way
        for good in (2**53, -(2**53)):
            assert (await raw.request({"type": "ping", "id": good}))["type"] == "pong"
        await raw.send({"type": "ping", "id": 2**53 + 1})
        err = await raw.expect("error")
        assert err["code"] == "bad_message" and err["id"] is None
        # not_found names the task
        for kind in ("get", "abort", "watch", "wait"):
            err = await raw.request({"type": kind, "id": f"nf-{kind}", "task_id": "nope"})
            assert err["type"] == "error" and err["code"] == "not_found", (kind, err)
            assert err["task_id"] == "nope", (kind, err)


async def test_an_offer_is_picked_up_by_any_report_and_an_ended_task_gets_end_alone(
        hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as svc:
        await svc.request({"type": "subscribe", "id": "s", "service": "svc",
                           "actions": ["a"]}, "subscribed")
        task_id = (await svc.request({"type": "publish", "id": "p", "action": "a"},
                                     "published"))["task"]["id"]
        await svc.expect("offer", "s")
        await svc.send([{"type": "log", "task_id": task_id, "level": "debug", "message": "d"},
                        {"type": "log", "task_id": task_id, "level": "info", "message": "i"},
                        {"type": "return", "task_id": task_id, "result": 1}])
        pickup = await svc.expect("pickup", "p")  # the first report picked the offer up
        assert pickup["service"] == "svc" and pickup["task_id"] == task_id
        lines = [await svc.expect("log", "p"), await svc.expect("log", "p")]
        assert [x["log"]["message"] for x in lines] == ["d", "i"]
        assert (await svc.expect("end", "p"))["status"] == "succeeded"
        got = await svc.request({"type": "get", "task_id": task_id, "logs": True,
                                 "max_level": "info"}, "task")
        assert [x["message"] for x in got["task"]["logs"]] == ["i"]
        # a stream opened on an ended task: end alone
        await svc.request({"type": "watch", "id": "w", "task_id": task_id, "logs": False},
                          "watching")
        assert (await svc.expect("end", "w"))["status"] == "succeeded"
        await svc.request({"type": "ping"}, "pong")
        assert [m["type"] for m in svc.seen if m.get("id") == "w"] == ["watching", "end"]
        # the task stream with a max_level that is no level
        stream = await Raw.open(hub.url, admin, path=f"/ws/tasks/{task_id}?max_level=loud")
        err = await stream.expect("error")
        assert err["code"] == "bad_message"
        assert await stream.closed() == 1008


async def test_work_subscribes_with_concurrency_plus_prefetch(hub: RunningHub) -> None:
    key = hub.key("svc", subscribe=["cap:*"])

    async def run(ctx: Context[Any]) -> Any:
        return None

    for service, options, capacity in (("two", {"concurrency": 2}, 4),
                                       ("many", {"concurrency": 150}, 250),
                                       ("none", {"concurrency": 3, "prefetch": 0}, 3)):
        worker = HubClient(hub.url, key)
        worker.register("cap:x", run)
        work = asyncio.create_task(worker.work(service, **options))
        try:
            await worker.wait_working(10)
            async with client(hub, key) as http:
                workers = (await http.get(f"{API}/workers")).json()["workers"]
            [mine] = [w for w in workers if w["id"].startswith(f"{service}@")]
            assert mine["concurrency"] == capacity, (service, mine)
        finally:
            worker.stop()
            await asyncio.wait_for(work, 20)
            await worker.close()
