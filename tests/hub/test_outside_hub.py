"""Black-box tests of the hub written from the issue text and the docs (docs/http.md,
docs/protocol.md, docs/dashboard.md, docs/cli.md): a real hub on 127.0.0.1, spoken to
with httpx and raw WebSocket clients as an outside client would."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from conveyor import Context, Conveyor
from conveyor.client import HTTPClient, HubClient, HubError
from conveyor.errors import InvalidTransition, QueryError, TaskNotFound
from conveyor.hub import CredentialStore, HubConfig, serve

from ._rest_helpers import API, client, error_of, worker_hub
from ._ws_helpers import ROOT, Raw, eventually, make_hub
from .conftest import RunningHub, free_port, hub_db_url

__all__ = ["worker_hub"]

# -- REST: conventions ----------------------------------------------------------------


async def test_x_conveyor_key_header_is_accepted_like_bearer(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["mail:*"])
    async with httpx.AsyncClient(base_url=hub.url, headers={"X-Conveyor-Key": key}) as http:
        r = await http.post(f"{API}/tasks", json={"action": "mail:send", "payload": 1})
        assert r.status_code == 201, r.text
        assert r.json()["action"] == "mail:send"
    async with httpx.AsyncClient(base_url=hub.url,
                                 headers={"X-Conveyor-Key": "cvk_nope_nope"}) as http:
        error_of(await http.get(f"{API}/tasks"), 401, "unauthorized")


async def test_unknown_route_is_404_and_wrong_method_is_405_with_allow(hub: RunningHub) -> None:
    key = hub.key("admin", admin=True)
    async with client(hub, key) as http:
        error_of(await http.get(f"{API}/nothing-here"), 404, "not_found")
        r = await http.put(f"{API}/tasks", json={})
        error_of(r, 405, "method_not_allowed")
        allow = {m.strip() for m in r.headers["allow"].split(",")}
        assert {"GET", "POST"} <= allow
        r = await http.post(f"{API}/stats", json={})
        error_of(r, 405, "method_not_allowed")
        assert "GET" in r.headers["allow"]
    async with httpx.AsyncClient(base_url=hub.url) as keyless:  # as documented: the same
        error_of(await keyless.get(f"{API}/nothing-here"), 404, "not_found")
        error_of(await keyless.put(f"{API}/tasks", json={}), 405, "method_not_allowed")
        error_of(await keyless.get(f"{API}/tasks"), 401, "unauthorized")


async def test_unknown_and_repeated_query_parameters_are_422(hub: RunningHub) -> None:
    key = hub.key("admin", admin=True)
    async with client(hub, key) as http:
        r = await http.get(f"{API}/tasks", params={"colour": "red"})
        error_of(r, 422, "invalid")
        assert r.json()["error"]["path"] == "colour"
        r = await http.get(f"{API}/tasks?limit=1&limit=2")
        error_of(r, 422, "invalid")
        assert r.json()["error"]["path"] == "limit"


async def test_limit_bounds_and_default(hub: RunningHub) -> None:
    key = hub.key("admin", admin=True)
    async with client(hub, key) as http:
        r = await http.post(f"{API}/tasks/batch",
                            json={"tasks": [{"action": "a"} for _ in range(105)]})
        assert r.status_code == 201, r.text
        r = await http.get(f"{API}/tasks")
        assert r.status_code == 200
        body = r.json()
        assert body["limit"] == 100 and body["skip"] == 0
        assert len(body["tasks"]) == 100
        r = await http.get(f"{API}/tasks", params={"limit": 1001})
        error_of(r, 422, "invalid")
        assert r.json()["error"]["path"] == "limit"
        r = await http.get(f"{API}/tasks", params={"limit": 0})
        assert r.status_code == 200 and r.json()["tasks"] == []
        r = await http.get(f"{API}/tasks", params={"limit": 1000, "skip": 100})
        assert len(r.json()["tasks"]) == 5


async def test_number_parameters_take_plain_ascii_numbers_only(hub: RunningHub) -> None:
    """Strict parameters: what int() and float() would also take (spaces, '_',
    other scripts' digits, 'inf') is refused, naming the parameter."""
    key = hub.key("admin", admin=True)
    async with client(hub, key) as http:
        r = await http.post(f"{API}/tasks", json={"action": "a"})
        task_id = r.json()["id"]
        for value in [" 5", "5 ", "1_0", "\uff15", "\u0663", "5.0", ""]:
            r = await http.get(f"{API}/tasks", params={"limit": value})
            error_of(r, 422, "invalid")
            assert r.json()["error"]["path"] == "limit", value
        for value in ["0_0", " 0", "\uff10", "inf", "nan", "1e", "."]:
            r = await http.get(f"{API}/tasks/{task_id}/wait", params={"timeout": value})
            error_of(r, 422, "invalid")
            assert r.json()["error"]["path"] == "timeout", value
        assert (await http.get(f"{API}/tasks", params={"limit": "+5"})).json()["limit"] == 5
        for value in ["0", "0.5", ".5", "1e-1"]:
            r = await http.get(f"{API}/tasks/{task_id}/wait", params={"timeout": value})
            assert r.status_code == 202, (value, r.text)


async def test_bad_json_body_and_bad_filter_param_are_400(hub: RunningHub) -> None:
    key = hub.key("admin", admin=True)
    async with client(hub, key) as http:
        r = await http.post(f"{API}/tasks", content=b"{not json",
                            headers={"Content-Type": "application/json"})
        error_of(r, 400, "invalid_json")
        r = await http.get(f"{API}/tasks", params={"filter": "{nope"})
        error_of(r, 400)
        assert r.json()["error"]["code"] in ("invalid_json", "bad_request")
        r = await http.post(f"{API}/tasks", json={"action": "a", "colour": 1})
        msg = error_of(r, 422, "invalid", "colour")
        assert "unknown field" in msg
        assert r.json()["error"]["path"] == "colour"
        r = await http.post(f"{API}/tasks", json={"action": "a", "priority": "1"})
        error_of(r, 422, "invalid")
        assert r.json()["error"]["path"] == "priority"
        r = await http.post(f"{API}/tasks", json=[1, 2])
        error_of(r, 422, "invalid")
        assert r.json()["error"]["path"] == "body"
        assert (await http.get(f"{API}/tasks/count")).json() == {"count": 0}


async def test_public_url_points_to_the_task_stream(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["*"])
    async with client(hub, key) as http:
        r = await http.post(f"{API}/tasks", json={"action": "a"})
        task = r.json()
        assert task["public_url"] == f"{hub.ws_url}/ws/tasks/{task['id']}"
        got = (await http.get(f"{API}/tasks/{task['id']}")).json()
        assert got["public_url"] == task["public_url"]


async def test_public_url_follows_the_configured_base(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True,
                        public_url="https://hub.example.com/base") as running, \
            httpx.AsyncClient(base_url=running.url) as http:
        task = (await http.post(f"{API}/tasks", json={"action": "a"})).json()
        assert task["public_url"] == f"wss://hub.example.com/base/ws/tasks/{task['id']}"


# -- REST: routes ----------------------------------------------------------------------


async def test_add_with_unique_key_answers_200_with_the_live_task(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["*"])
    async with client(hub, key) as http:
        first = await http.post(f"{API}/tasks", json={"action": "a", "unique_key": "k"})
        assert first.status_code == 201
        again = await http.post(f"{API}/tasks", json={"action": "a", "unique_key": "k",
                                                      "payload": 2})
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        assert (await http.get(f"{API}/tasks/count")).json() == {"count": 1}
        r = await http.post(f"{API}/tasks", json={"action": "a", "delay": 1, "run_at": 5})
        error_of(r, 422, "invalid", "delay or run_at")


async def test_batch_bounds_order_and_created_flags(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["mail:*"])
    async with client(hub, key) as http:
        error_of(await http.post(f"{API}/tasks/batch", json={"tasks": []}), 422, "invalid")
        r = await http.post(f"{API}/tasks/batch",
                            json={"tasks": [{"action": "mail:x"} for _ in range(1001)]})
        error_of(r, 422, "invalid")
        r = await http.post(f"{API}/tasks/batch", json={"tasks": [
            {"action": "mail:a", "unique_key": "u"}, {"action": "mail:b"}]})
        assert r.status_code == 201
        first = r.json()
        assert [t["action"] for t in first["tasks"]] == ["mail:a", "mail:b"]
        assert first["created"] == [True, True]
        r = await http.post(f"{API}/tasks/batch", json={"tasks": [
            {"action": "mail:a", "unique_key": "u"}]})
        assert r.status_code == 200
        assert r.json()["created"] == [False]
        assert r.json()["tasks"][0]["id"] == first["tasks"][0]["id"]
        # one item the credential may not publish: nothing is added
        r = await http.post(f"{API}/tasks/batch", json={"tasks": [
            {"action": "mail:c"}, {"action": "geo:x"}]})
        error_of(r, 403, "forbidden")
        r = await http.post(f"{API}/tasks/batch", json={"tasks": [
            {"action": "mail:c"}, {"action": "mail:d", "priority": "x"}]})
        error_of(r, 422, "invalid")
        assert r.json()["error"]["path"] == "tasks[1].priority"
        assert (await http.get(f"{API}/tasks/count")).json() == {"count": 2}


async def test_find_sort_forms_and_search_body(hub: RunningHub) -> None:
    key = hub.key("admin", admin=True)
    async with client(hub, key) as http:
        for p in (3, 1, 2):
            await http.post(f"{API}/tasks", json={"action": "a", "priority": p,
                                                  "payload": {"size": p * 10}})

        async def prios(**params: Any) -> list[float]:
            r = await http.get(f"{API}/tasks", params=params)
            assert r.status_code == 200, r.text
            return [t["priority"] for t in r.json()["tasks"]]

        assert await prios(sort="-priority,created_at") == [3, 2, 1]
        assert await prios(sort="priority") == [1, 2, 3]
        assert await prios(sort='[["priority", 1]]') == [1, 2, 3]
        assert await prios(sort='{"payload.size": -1}') == [3, 2, 1]
        assert await prios(filter='{"priority": {"$gt": 1}}', sort="priority") == [2, 3]
        r = await http.get(f"{API}/tasks", params={"sort": "priority,,id"})
        error_of(r, 422, "invalid_query")
        assert r.json()["error"]["path"] == "sort"
        r = await http.get(f"{API}/tasks", params={"filter": '{"priority": {"$gt": "x"}}'})
        error_of(r, 422, "invalid_query")
        assert r.json()["error"]["path"] == "filter.priority.$gt"
        r = await http.post(f"{API}/tasks/search", json={"filter": {"priority": {"$lt": 3}},
                                                         "sort": "-priority", "limit": 1,
                                                         "skip": 1})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [t["priority"] for t in body["tasks"]] == [1]
        assert body["limit"] == 1 and body["skip"] == 1
        r = await http.post(f"{API}/tasks/search", json={})
        assert len(r.json()["tasks"]) == 3
        r = await http.post(f"{API}/tasks/count", json={"filter": {"priority": 2}})
        assert r.json() == {"count": 1}
        r = await http.get(f"{API}/tasks/count", params={"filter": '{"priority": {"$gte": 2}}'})
        assert r.json() == {"count": 2}


async def test_wait_timeout_zero_and_bounds(hub: RunningHub) -> None:
    key = hub.key("admin", admin=True)
    async with client(hub, key) as http:
        task = (await http.post(f"{API}/tasks", json={"action": "a"})).json()
        r = await http.get(f"{API}/tasks/{task['id']}/wait", params={"timeout": 0})
        assert r.status_code == 202
        assert r.headers["retry-after"] == "0"
        assert r.json()["status"] == "queued"
        r = await http.get(f"{API}/tasks/{task['id']}/wait", params={"timeout": 61})
        error_of(r, 422, "invalid")
        assert r.json()["error"]["path"] == "timeout"
        r = await http.get(f"{API}/tasks/{task['id']}/wait", params={"timeout": -1})
        error_of(r, 422, "invalid")
        error_of(await http.get(f"{API}/tasks/nope/wait", params={"timeout": 0}), 404,
                 "not_found")
        # an ended task is answered at once with 200, whatever its status
        aborted = (await http.post(f"{API}/tasks/{task['id']}/abort", json={})).json()
        assert aborted["status"] == "aborted" and aborted["reason"] == "aborted"
        r = await http.get(f"{API}/tasks/{task['id']}/wait", params={"timeout": 0})
        assert r.status_code == 200 and r.json()["status"] == "aborted"


async def test_logs_route_pages_with_next_seq(worker_hub: RunningHub) -> None:
    key = worker_hub.key("admin", admin=True)
    async with client(worker_hub, key) as http:
        task = (await http.post(f"{API}/tasks", json={"action": "mail:send",
                                                      "payload": {"to": "ann"}})).json()
        assert (await http.get(f"{API}/tasks/{task['id']}/wait")).status_code == 200
        r = await http.get(f"{API}/tasks/{task['id']}/logs", params={"limit": 1})
        page = r.json()
        assert set(page) == {"task_id", "status", "logs", "next_seq"}
        assert page["task_id"] == task["id"] and page["status"] == "succeeded"
        assert len(page["logs"]) == 1 and page["logs"][0]["level"] == "debug"
        assert set(page["logs"][0]) == {"task_id", "seq", "ts", "level", "message", "data"}
        rest = (await http.get(f"{API}/tasks/{task['id']}/logs",
                               params={"after_seq": page["next_seq"]})).json()
        assert [x["level"] for x in rest["logs"]] == ["info", "warning"]
        assert rest["next_seq"] == rest["logs"][-1]["seq"]
        info = (await http.get(f"{API}/tasks/{task['id']}/logs",
                               params={"max_level": "info"})).json()
        assert [x["level"] for x in info["logs"]] == ["info", "warning"]
        for bad in ({"limit": 0}, {"limit": 10001}, {"max_level": "loud"}):
            error_of(await http.get(f"{API}/tasks/{task['id']}/logs", params=bad), 422,
                     "invalid")
        got = (await http.get(f"{API}/tasks/{task['id']}",
                              params={"logs": "true", "max_level": "warning"})).json()
        assert [x["level"] for x in got["logs"]] == ["warning"]


async def test_control_routes_and_their_conflicts(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with client(hub, admin) as http:
        task = (await http.post(f"{API}/tasks", json={"action": "a", "priority": 1})).json()
        tid = task["id"]
        r = await http.post(f"{API}/tasks/{tid}/prioritize", json={"priority": -5})
        assert r.status_code == 200 and r.json()["priority"] == -5
        error_of(await http.post(f"{API}/tasks/{tid}/retry", json={}), 409,
                 "invalid_transition")
        error_of(await http.delete(f"{API}/tasks/{tid}"), 409, "invalid_transition")
        r = await http.post(f"{API}/tasks/{tid}/abort", json={"reason": "not needed"})
        assert r.json()["status"] == "aborted" and r.json()["reason"] == "not needed"
        error_of(await http.post(f"{API}/tasks/{tid}/abort"), 409, "invalid_transition")
        error_of(await http.post(f"{API}/tasks/{tid}/prioritize", json={"priority": 1}), 409,
                 "invalid_transition")
        r = await http.post(f"{API}/tasks/{tid}/retry", json={"delay": 60})
        assert r.status_code == 200
        again = r.json()
        assert again["id"] == tid and again["status"] == "queued"
        assert again["run_at"] >= task["created_at"] + 59
        await http.post(f"{API}/tasks/{tid}/abort")
        assert (await http.delete(f"{API}/tasks/{tid}")).json() == {"deleted": [tid]}
        error_of(await http.delete(f"{API}/tasks/{tid}"), 404, "not_found")
        error_of(await http.post(f"{API}/tasks/delete", json={"ids": ["x"], "filter": {}}),
                 422, "invalid")
        error_of(await http.post(f"{API}/tasks/delete", json={"ids": []}), 422, "invalid")
        keep = (await http.post(f"{API}/tasks", json={"action": "a"})).json()
        gone = (await http.post(f"{API}/tasks", json={"action": "b"})).json()
        await http.post(f"{API}/tasks/{gone['id']}/abort")
        r = await http.post(f"{API}/tasks/delete",
                            json={"ids": [keep["id"], gone["id"], "unknown"]})
        assert r.json() == {"deleted": [gone["id"]]}
        r = await http.post(f"{API}/tasks/delete", json={"filter": {}})
        assert r.json() == {"deleted": []}
        assert (await http.get(f"{API}/tasks/{keep['id']}")).status_code == 200


async def test_a_task_the_credential_may_not_read_is_404_everywhere(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    other = hub.key("other", publish=["mail:*"], read=["log:*"])
    async with client(hub, admin) as http:
        hidden = (await http.post(f"{API}/tasks", json={"action": "geo:x"})).json()
    async with client(hub, other) as http:
        for path in (f"/tasks/{hidden['id']}", f"/tasks/{hidden['id']}/logs",
                     f"/tasks/{hidden['id']}/wait?timeout=0"):
            error_of(await http.get(API + path), 404, "not_found")
        for path in ("abort", "retry", "prioritize"):
            error_of(await http.post(f"{API}/tasks/{hidden['id']}/{path}",
                                     json={"priority": 1} if path == "prioritize" else {}),
                     403, "forbidden")


async def test_a_read_only_credential_reads_but_changes_nothing(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    monitor = hub.key("monitor", read=["mail:*"])
    async with client(hub, admin) as http:
        mine = (await http.post(f"{API}/tasks", json={"action": "mail:send"})).json()
        await http.post(f"{API}/tasks", json={"action": "geo:x"})
    async with client(hub, monitor) as http:
        assert (await http.get(f"{API}/tasks/{mine['id']}")).status_code == 200
        assert (await http.get(f"{API}/tasks/count")).json() == {"count": 1}
        assert set((await http.get(f"{API}/stats")).json()["stats"]) == {"mail:send"}
        error_of(await http.post(f"{API}/tasks", json={"action": "mail:send"}), 403,
                 "forbidden")
        error_of(await http.post(f"{API}/tasks/{mine['id']}/abort"), 403, "forbidden")
        metrics = (await http.get("/metrics")).text
        assert 'action="mail:send"' in metrics and "geo:x" not in metrics


async def test_readyz_answers_503_when_the_storage_does_not_answer_in_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reader thread of the hub's SQLite storage is busy with a long read:
    /readyz says 503 after its limit (5 s; 0.5 s here) instead of waiting, and
    'ready' once a reader is free. Another process holding the file locked holds
    up writes only: /readyz answers 'ready' meanwhile (it waited behind the
    write on the one database thread there was)."""
    import sqlite3

    import conveyor.hub

    from .._sqlite_held import sqlite_reads_held
    from .conftest import running_hub

    monkeypatch.setattr(conveyor.hub, "_READY_TIMEOUT", 0.5)
    db = tmp_path / "locked.db"
    app = Conveyor(f"sqlite:///{db}?busy_timeout=2")
    async with running_hub(app, HubConfig(port=0, insecure=True), None) as hub, \
            httpx.AsyncClient(base_url=hub.url) as http:
        assert (await http.get("/readyz")).status_code == 200
        async with sqlite_reads_held(app.storage):
            r = await http.get("/readyz", timeout=10)
            assert r.status_code == 503, r.text
            assert r.json() == {"status": "storage unavailable",
                                "detail": "the storage did not answer within 0.5s"}
        assert (await http.get("/readyz")).json() == {"status": "ready"}
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            adding = asyncio.create_task(http.post(f"{API}/tasks", json={"action": "a"},
                                                   timeout=60))
            # the add waits for the lock for its busy timeout (2 s), then fails; /readyz
            # answers 'ready' all that time, each within its own 0.5 s
            answers = 0
            while not adding.done():
                r = await http.get("/readyz", timeout=10)
                assert r.json() == {"status": "ready"}, r.text
                answers += 1
            assert answers >= 2
            refused = await adding
            assert refused.status_code == 503 and \
                refused.json()["error"]["code"] == "storage_unavailable", refused.text
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert (await http.post(f"{API}/tasks", json={"action": "a"})).status_code == 201


async def test_health_readiness_and_metrics_shapes(hub: RunningHub) -> None:
    key = hub.key("admin", admin=True)
    async with client(hub, key) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        r = await http.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready"}
        assert (await http.head("/healthz")).status_code == 200
        assert (await http.head(f"{API}/stats")).status_code == 200
        await http.post(f"{API}/tasks", json={"action": "m:a"})
        r = await http.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        text = r.text
        for name in ("conveyor_tasks_added_total", "conveyor_queue_depth",
                     "conveyor_tasks", "conveyor_hub_connections",
                     "conveyor_hub_uptime_seconds", "conveyor_tasks_started_total",
                     "conveyor_tasks_finished_total", "conveyor_task_run_seconds"):
            assert f"# TYPE {name} " in text, name
        assert 'conveyor_tasks_added_total{action="m:a"} 1.0' in text
        assert 'conveyor_queue_depth{action="m:a"} 1.0' in text
    async with client(hub) as http:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", f"{API}/stats"):
            r = error_of(await http.get(path), 401, "unauthorized")
            del r


async def test_401_carries_www_authenticate(hub: RunningHub) -> None:
    async with client(hub) as http:
        r = await http.get(f"{API}/tasks")
        error_of(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].lower().startswith("bearer")


async def test_workers_route_lists_a_remote_service(hub: RunningHub) -> None:
    key = hub.key("svc", subscribe=["mail:*"])
    async with Raw.opened(hub.url, key) as raw:
        reply = await raw.request({"type": "subscribe", "service": "mailer",
                                   "actions": ["mail:send"], "capacity": 3}, "subscribed")
        async with client(hub, key) as http:
            workers = (await http.get(f"{API}/workers")).json()["workers"]
        [worker] = [w for w in workers if w["id"] == reply["worker"]]
        assert {"id", "host", "pid", "actions", "concurrency", "started_at", "last_seen",
                "running", "info", "alive"} <= set(worker)
        assert worker["info"]["remote"] is True
        assert worker["pid"] == 0 and worker["host"] == "127.0.0.1"
        assert worker["actions"] == ["mail:send"] and worker["alive"] is True


# -- the dashboard ------------------------------------------------------------------------


async def test_dashboard_is_public_static_and_locked_down(hub: RunningHub) -> None:
    async with client(hub) as http:
        for path, media in (("/", "text/html"),
                            ("/dashboard/static/dashboard.js", "text/javascript"),
                            ("/dashboard/static/dashboard.css", "text/css")):
            r = await http.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"].startswith(media)
            csp = r.headers["content-security-policy"]
            for part in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                         "connect-src 'self'"):
                assert part in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["referrer-policy"] == "no-referrer"
        assert "<script>" not in (await http.get("/")).text
        error_of(await http.get("/dashboard/static/nothing.js"), 404, "not_found")
    key = hub.key("admin", admin=True)
    async with client(hub, key) as http:
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert "/" not in paths and not any(p.startswith("/dashboard") for p in paths)


async def test_insecure_hub_treats_everyone_as_admin(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True) as running, \
            httpx.AsyncClient(base_url=running.url) as http:
        task = (await http.post(f"{API}/tasks", json={"action": "a"})).json()
        r = await http.post(f"{API}/tasks/{task['id']}/abort")
        assert r.status_code == 200 and r.json()["status"] == "aborted"
        assert (await http.get("/readyz")).json() == {"status": "ready"}


def test_default_hub_config_binds_loopback_and_needs_credentials() -> None:
    config = HubConfig()
    assert config.host == "127.0.0.1" and config.port == 8765
    assert config.insecure is False


# -- WebSocket: connecting, ids, errors ------------------------------------------------


async def test_welcome_carries_the_credential_and_limits(hub: RunningHub) -> None:
    key = hub.key("mailer", publish=["mail:*"], subscribe=["mail:*"], read=["log:*"])
    async with Raw.opened(hub.url, key, welcome=False) as raw:
        welcome = await raw.recv()
        assert welcome["type"] == "welcome" and welcome["id"] is None
        assert welcome["protocol"] == 1 and welcome["credential"] == "mailer"
        assert welcome["admin"] is False
        assert welcome["publish"] == ["mail:*"] and welcome["subscribe"] == ["mail:*"]
        assert welcome["read"] == ["log:*"]
        assert welcome["limits"] == {"max_frame": 1048576, "max_pending": 10000,
                                     "max_pending_bytes": 16 << 20, "max_rate": 1000.0,
                                     "inline_payload": 65536,
                                     "service_lease": 30.0, "offer_timeout": 30.0}
        pong = await raw.request({"type": "ping", "id": "p"}, "pong")
        assert isinstance(pong["ts"], float)


async def test_x_conveyor_key_in_the_handshake(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["*"])

    async with connect(f"{hub.ws_url}/ws", additional_headers={"X-Conveyor-Key": key}) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert welcome["type"] == "welcome" and welcome["credential"] == "pub"


async def test_messages_before_hello_are_unauthorized(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["*"])
    async with Raw.opened(hub.url, welcome=False) as raw:
        err = await raw.request({"type": "ping", "id": 1}, "error")
        assert err["code"] == "unauthorized"
        welcome = await raw.request({"type": "hello", "id": "h", "key": key})
        assert welcome["type"] == "welcome" and welcome["credential"] == "pub"
        assert (await raw.request({"type": "ping", "id": 2}))["type"] == "pong"
        err = await raw.request({"type": "hello", "id": 3, "key": key})
        assert err["type"] == "error" and err["code"] == "bad_message"


async def test_hello_with_a_bad_key_is_closed_4001(hub: RunningHub) -> None:
    raw = await Raw.open(hub.url, welcome=False)
    err = await raw.request({"type": "hello", "id": 5, "key": "cvk_bad_bad"})
    assert err["type"] == "error" and err["code"] == "unauthorized" and err["id"] == 5
    assert await raw.closed() == 4001


async def test_ids_types_and_error_shapes(hub: RunningHub) -> None:
    key = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, key) as raw:
        assert (await raw.request({"type": "ping", "id": "x" * 100}))["type"] == "pong"
        assert (await raw.request({"type": "ping", "id": -7}))["type"] == "pong"
        for bad_id in ("x" * 101, 1.5, True, None, [1], {"a": 1}):
            await raw.send({"type": "ping", "id": bad_id})
            err = await raw.expect("error")
            assert err["code"] == "bad_message" and err["id"] is None, (bad_id, err)
        await raw.send_text('{"type": "ping"}')
        err = await raw.expect("error")
        assert err["code"] == "bad_message" and err["id"] is None
        err = await raw.request({"type": "nope", "id": "u"})
        assert err == {"type": "error", "id": "u", "code": "unknown_type",
                       "message": err["message"]}
        err = await raw.request({"id": "t"})
        assert err["type"] == "error" and err["code"] == "bad_message" and err["id"] == "t"
        await raw.send_text("{nope")
        err = await raw.expect("error")
        assert err["code"] == "bad_json" and err["id"] is None
        await raw.send_text(b"binary")
        err = await raw.expect("error")
        assert err["code"] == "binary_frame"
        await raw.send_text("[]")
        assert (await raw.expect("error"))["code"] == "bad_message"
        await raw.send_text("[1]")
        assert (await raw.expect("error"))["code"] == "bad_message"
        # several messages in one frame are handled in order
        await raw.send([{"type": "ping", "id": "a"}, {"type": "nope", "id": "b"},
                        {"type": "ping", "id": "c"}])
        got = [await raw.expect(id=i) for i in ("a", "b", "c")]
        assert [m["type"] for m in got] == ["pong", "error", "pong"]
        assert (await raw.request({"type": "ping", "id": "alive"}))["type"] == "pong"


async def test_ack_and_heartbeat(hub: RunningHub) -> None:
    key = hub.key("svc", subscribe=["a"])
    async with Raw.opened(hub.url, key) as raw:
        await raw.request({"type": "subscribe", "id": "s", "service": "svc", "actions": ["a"]},
                          "subscribed")
        assert await raw.request({"type": "heartbeat", "id": 1, "ack": True}) == \
            {"type": "ok", "id": 1}
        await raw.send({"type": "heartbeat", "id": 2})
        pong = await raw.request({"type": "ping", "id": 3})
        assert pong["type"] == "pong"
        assert not [m for m in raw.seen if m.get("id") == 2]
        err = await raw.request({"type": "update", "id": 4, "task_id": "nope", "current": 1})
        assert err["type"] == "error" and err["code"] == "not_held"


# -- WebSocket: publish, wait, get, abort ------------------------------------------------


async def test_publish_reply_list_form_and_delivery_tag(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["mail:*"])
    async with Raw.opened(hub.url, key) as raw:
        reply = await raw.request({"type": "publish", "action": "mail:send", "payload": {"to": 1},
                                   "options": {"priority": -1, "tags": {"u": "ann"}},
                                   "delivery": "all", "updates": False})
        assert reply["type"] == "published" and reply["created"] is True
        task = reply["task"]
        assert task["priority"] == -1 and task["tags"] == {"u": "ann", "delivery": "all"}
        assert task["public_url"].endswith(f"/ws/tasks/{task['id']}")
        reply = await raw.request({"type": "publish", "updates": False, "tasks": [
            {"action": "mail:a", "options": {"unique_key": "k"}}, {"action": "mail:b"}]})
        assert [t["action"] for t in reply["tasks"]] == ["mail:a", "mail:b"]
        assert reply["created"] == [True, True]
        again = await raw.request({"type": "publish", "updates": False, "action": "mail:a",
                                   "options": {"unique_key": "k"}})
        assert again["created"] is False and again["task"]["id"] == reply["tasks"][0]["id"]
        err = await raw.request({"type": "publish", "updates": False, "tasks": [
            {"action": "mail:c"}, {"action": "geo:c"}]})
        assert err["type"] == "error" and err["code"] == "forbidden"
        err = await raw.request({"type": "publish", "action": "mail:c",
                                 "options": {"delay": 1, "run_at": 5}})
        assert err["type"] == "error" and err["code"] == "invalid"
        err = await raw.request({"type": "publish", "action": "mail:c", "priority": 1})
        assert err["type"] == "error" and err["code"] == "bad_message"
        assert "priority" in err["message"]
        err = await raw.request({"type": "publish", "action": "mail:c", "delivery": "some"})
        assert err["code"] == "bad_message"
    async with client(hub, hub.key("admin", admin=True)) as http:
        assert (await http.get(f"{API}/tasks/count")).json() == {"count": 3}


async def test_publish_with_a_default_gets_it_on_timeout(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["*"])
    async with Raw.opened(hub.url, key) as raw:
        reply = await raw.request({"type": "publish", "id": "p", "action": "a",
                                   "updates": False, "timeout": 0.2, "default": 42})
        assert reply["type"] == "published"
        result = await raw.expect("result", "p")
        assert result["value"] == 42 and result["default"] is True
        assert result["timed_out"] is True and result["status"] is None
        assert result["task_id"] == reply["task"]["id"]
        err = await raw.request({"type": "wait", "id": "w", "task_id": reply["task"]["id"],
                                 "timeout": 0.1})
        assert err["type"] == "error" and err["code"] == "wait_timeout"
        err = await raw.request({"type": "wait", "id": "w2", "task_id": "nope", "timeout": 1})
        assert err["type"] == "error" and err["code"] == "not_found"


async def test_wait_failed_aborted_and_with_task(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["*"], admin=True)
    async with Raw.opened(hub.url, key) as raw:
        task = (await raw.request({"type": "publish", "action": "a", "updates": False}))["task"]
        aborted = await raw.request({"type": "abort", "id": "ab", "task_id": task["id"],
                                     "reason": "no longer needed"})
        assert aborted["type"] == "task" and aborted["task"]["status"] == "aborted"
        assert aborted["task"]["reason"] == "no longer needed"
        err = await raw.request({"type": "wait", "id": 1, "task_id": task["id"], "timeout": 5})
        assert err["type"] == "error" and err["code"] == "task_aborted"
        assert err["task"]["id"] == task["id"]
        res = await raw.request({"type": "wait", "id": 2, "task_id": task["id"],
                                 "default": "d", "task": True})
        assert res["type"] == "result" and res["value"] == "d" and res["default"] is True
        assert res["status"] == "aborted" and res["task"]["status"] == "aborted"
        err = await raw.request({"type": "abort", "id": 3, "task_id": task["id"]})
        assert err["type"] == "error" and err["code"] == "invalid_transition"
        err = await raw.request({"type": "abort", "id": 4, "task_id": "nope"})
        assert err["type"] == "error" and err["code"] == "not_found"


async def test_a_wait_of_timeout_0_answers_from_the_task_as_it_is(hub: RunningHub) -> None:
    """A ``wait`` with ``timeout: 0`` timed out before the task was read: an ended task
    got ``wait_timeout`` instead of its result, an unknown or unreadable one
    ``wait_timeout`` instead of ``not_found`` / ``forbidden`` (security audit)."""
    admin = hub.key("admin", admin=True)
    stranger = hub.key("stranger", publish=["b"])
    done = await hub.app.add("a", 1)
    await hub.app.abort(done.id, reason="enough")
    queued = await hub.app.add("a", 2)
    async with Raw.opened(hub.url, admin) as raw:
        for _ in range(3):
            err = await raw.request({"type": "wait", "task_id": done.id, "timeout": 0})
            assert (err["type"], err["code"]) == ("error", "task_aborted")
            res = await raw.request({"type": "wait", "task_id": done.id, "timeout": 0,
                                     "default": "d"})
            assert (res["status"], res["value"], res.get("timed_out")) == ("aborted", "d", None)
            err = await raw.request({"type": "wait", "task_id": queued.id, "timeout": 0})
            assert (err["type"], err["code"]) == ("error", "wait_timeout")
            res = await raw.request({"type": "wait", "task_id": queued.id, "timeout": 0,
                                     "default": "d"})
            assert (res["value"], res["timed_out"], res["status"]) == ("d", True, None)
            err = await raw.request({"type": "wait", "task_id": "nope", "timeout": 0})
            assert err["code"] == "not_found"
    async with Raw.opened(hub.url, stranger) as raw:
        err = await raw.request({"type": "wait", "task_id": done.id, "timeout": 0})
        assert err["code"] == "forbidden"


async def test_get_abort_and_wait_need_the_right_rights(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    reader = hub.key("reader", read=["a"])
    worker = hub.key("worker", subscribe=["a"])
    publisher = hub.key("publisher", publish=["a"])
    stranger = hub.key("stranger", publish=["b"])
    raw = await Raw.open(hub.url, admin)
    task = (await raw.request({"type": "publish", "action": "a", "payload": 1,
                               "updates": False}))["task"]
    await raw.request({"type": "log", "id": 0, "task_id": task["id"]})  # not held: error
    await raw.close()
    for key in (reader, worker, publisher):  # abort is a control action: admin only
        async with Raw.opened(hub.url, key) as conn:
            got = await conn.request({"type": "get", "id": 1, "task_id": task["id"]})
            assert got["type"] == "task" and got["task"]["payload"] == 1
            err = await conn.request({"type": "abort", "id": 2, "task_id": task["id"]})
            assert err["type"] == "error" and err["code"] == "forbidden"
            assert "admin" in err["message"]
            res = await conn.request({"type": "wait", "id": 3, "task_id": task["id"],
                                      "timeout": 0.05, "default": None})
            assert res["type"] == "result" and res["timed_out"] is True
    async with Raw.opened(hub.url, stranger) as conn:
        for msg in ({"type": "get", "task_id": task["id"]},
                    {"type": "abort", "task_id": task["id"]},
                    {"type": "wait", "task_id": task["id"], "timeout": 1},
                    {"type": "watch", "task_id": task["id"]}):
            err = await conn.request(msg)
            assert err["type"] == "error" and err["code"] == "forbidden", (msg, err)
            assert "'a'" not in err["message"], err  # the task's action is not told
    async with Raw.opened(hub.url, admin) as conn:
        assert (await conn.request({"type": "get", "task_id": task["id"]})
                )["task"]["abort_requested"] is None


# -- WebSocket: watching and the task stream endpoint -------------------------------------


async def test_watch_replays_logs_and_ends(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    svc = await Raw.open(hub.url, admin)
    watcher = await Raw.open(hub.url, admin)
    try:
        await svc.request({"type": "subscribe", "id": "s", "service": "svc", "actions": ["a"]},
                          "subscribed")
        task = (await svc.request({"type": "publish", "action": "a", "updates": False}))["task"]
        offer = await svc.expect("offer", "s")
        assert offer["task_id"] == task["id"] and offer["delivery"] == "one"
        assert offer["task"]["status"] == "running"
        await svc.send([{"type": "pickup", "task_id": task["id"]},
                        {"type": "log", "task_id": task["id"], "level": "debug",
                         "message": "one"},
                        {"type": "log", "task_id": task["id"], "level": "info",
                         "message": "two"}])
        assert (await svc.request({"type": "ping"}))["type"] == "pong"

        async def logs_stored() -> bool:
            got = await watcher.request({"type": "get", "task_id": task["id"], "logs": True})
            return len(got["task"]["logs"]) == 2

        await eventually(logs_stored)
        watching = await watcher.request({"type": "watch", "id": "w", "task_id": task["id"],
                                          "max_level": "info"})
        assert watching["type"] == "watching" and watching["task_id"] == task["id"]
        assert watching["task"]["status"] == "running"
        line = await watcher.expect("log", "w")
        assert line["log"]["message"] == "two" and line["task_id"] == task["id"]
        err = await watcher.request({"type": "watch", "id": "w", "task_id": task["id"]})
        assert err["type"] == "error" and err["code"] == "duplicate_id"
        await svc.send({"type": "update", "task_id": task["id"], "current": 1, "total": 2,
                        "message": "half"})
        update = await watcher.expect("update", "w")
        assert update["progress"]["current"] == 1 and update["progress"]["total"] == 2
        await svc.send({"type": "emit", "task_id": task["id"], "value": {"partial": 1}})
        emit = await watcher.expect("emit", "w")
        assert emit["value"] == {"partial": 1}
        await svc.send({"type": "return", "task_id": task["id"], "result": [1]})
        success = await watcher.expect("success", "w")
        assert success["result"] == [1] and success["task"]["status"] == "succeeded"
        end = await watcher.expect("end", "w")
        assert end["status"] == "succeeded" and end["task"]["result"] == [1]
        # a finished task: replay and end at once
        await watcher.send({"type": "watch", "id": "w2", "task_id": task["id"]})
        assert (await watcher.expect(id="w2"))["type"] == "watching"
        lines = [await watcher.expect("log", "w2"), await watcher.expect("log", "w2")]
        assert [x["log"]["message"] for x in lines] == ["one", "two"]
        assert (await watcher.expect("end", "w2"))["status"] == "succeeded"
        err = await watcher.request({"type": "unwatch", "id": 9, "stream": "nope"})
        assert err["type"] == "error" and err["code"] == "not_found"
        err = await watcher.request({"type": "watch", "id": "w3", "task_id": "nope"})
        assert err["type"] == "error" and err["code"] == "not_found"
    finally:
        await svc.close()
        await watcher.close()


async def test_unwatch_stops_a_publishs_updates(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as raw:
        task = (await raw.request({"type": "publish", "id": "p", "action": "a"}))["task"]
        assert await raw.request({"type": "unwatch", "id": 2, "stream": "p"}) == \
            {"type": "ok", "id": 2}
        await raw.request({"type": "abort", "task_id": task["id"]}, "task")
        assert (await raw.request({"type": "ping"}))["type"] == "pong"
        assert not [m for m in raw.seen if m.get("id") == "p" and m["type"] != "published"]


async def test_task_stream_endpoint(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    stranger = hub.key("stranger", publish=["b"])
    raw = await Raw.open(hub.url, admin)
    task = (await raw.request({"type": "publish", "action": "a", "updates": False}))["task"]
    await raw.request({"type": "abort", "task_id": task["id"]}, "task")
    await raw.close()
    path = f"/ws/tasks/{task['id']}"
    stream = await Raw.open(hub.url, admin, path=path, welcome=False)
    assert (await stream.recv())["type"] == "welcome"
    watching = await stream.recv()
    assert watching["type"] == "watching" and watching["id"] is None
    end = await stream.expect("end")
    assert end["id"] is None and end["status"] == "aborted"
    assert await stream.closed() == 1000
    # hello instead of a header
    stream = await Raw.open(hub.url, path=path, welcome=False)
    await stream.send({"type": "hello", "id": 1, "key": admin})
    assert (await stream.expect("welcome"))["id"] == 1
    await stream.expect("end")
    assert await stream.closed() == 1000
    stream = await Raw.open(hub.url, stranger, path=path, welcome=False)
    err = await stream.expect("error")
    assert err["code"] == "forbidden"
    assert await stream.closed() == 4003
    stream = await Raw.open(hub.url, admin, path="/ws/tasks/nope", welcome=False)
    err = await stream.expect("error")
    assert err["code"] == "not_found"
    assert await stream.closed() == 1000
    stream = await Raw.open(hub.url, "cvk_bad_key", path=path, welcome=False)
    assert await stream.closed() == 4001


async def test_the_task_stream_follows_the_public_url(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as raw:
        await raw.request({"type": "subscribe", "id": "s", "service": "svc", "actions": ["a"]},
                          "subscribed")
        task = (await raw.request({"type": "publish", "action": "a", "updates": False}))["task"]
        await raw.expect("offer", "s")
        await raw.send({"type": "pickup", "task_id": task["id"], "ack": True})
        stream = await Raw.open(task["public_url"] + "?max_level=info", admin, path="")
        assert (await stream.expect("watching"))["task"]["status"] == "running"
        await raw.send([{"type": "log", "task_id": task["id"], "level": "debug", "message": "d"},
                        {"type": "log", "task_id": task["id"], "level": "info", "message": "i"},
                        {"type": "return", "task_id": task["id"], "result": 7}])
        line = await stream.expect("log")
        assert line["log"]["message"] == "i"
        assert (await stream.expect("success"))["result"] == 7
        assert (await stream.expect("end"))["status"] == "succeeded"
        assert await stream.closed() == 1000
        assert not [m for m in stream.seen if m["type"] == "log" and m["log"]["level"] == "debug"]


# -- WebSocket: remote workers -------------------------------------------------------------


async def test_subscribe_validation_and_reply(hub: RunningHub) -> None:
    key = hub.key("svc", subscribe=["mail:*"])
    async with Raw.opened(hub.url, key) as raw:
        for bad in ({"service": "bad name!", "actions": ["mail:a"]},
                    {"service": "x" * 101, "actions": ["mail:a"]},
                    {"service": "svc", "actions": []},
                    {"service": "svc", "actions": "mail:a"},
                    {"service": "svc", "actions": ["mail:a"], "capacity": 0},
                    {"service": "svc", "actions": ["mail:a"], "capacity": 10_001},
                    {"service": "svc", "actions": ["mail:a"], "capacity": 1.5},
                    {"service": "svc", "actions": ["mail:a"], "defaults": []},
                    {"service": "svc", "actions": ["mail:a"],
                     "defaults": {"mail:b": {"max_attempts": 2}}},
                    {"service": "svc", "actions": ["mail:a"],
                     "defaults": {"mail:a": {"pickup_timeout": 2}}}):
            err = await raw.request({"type": "subscribe", **bad})
            assert err["type"] == "error" and err["code"] == "bad_message", (bad, err)
        for bad in ({"max_attempts": 0}, {"max_attempts": True}, {"backoff": -1},
                    {"backoff": {"factor": 0.5}}):
            err = await raw.request({"type": "subscribe", "service": "svc",
                                     "actions": ["mail:a"], "defaults": {"mail:a": bad}})
            assert err["type"] == "error" and err["code"] == "invalid", (bad, err)
            assert "defaults of 'mail:a'" in err["message"]
        err = await raw.request({"type": "subscribe", "service": "svc", "actions": ["geo:a"]})
        assert err["type"] == "error" and err["code"] == "forbidden"
        reply = await raw.request({"type": "subscribe", "id": "s",
                                   "service": "mail.svc_1:a@b/c-d",
                                   "actions": ["mail:send", "mail:bounce"], "capacity": 16})
        assert reply["type"] == "subscribed" and reply["service"] == "mail.svc_1:a@b/c-d"
        assert reply["actions"] == ["mail:bounce", "mail:send"] and reply["capacity"] == 16
        assert reply["lease"] == 30.0 and reply["heartbeat"] == 10.0
        assert reply["offer_timeout"] == 30.0 and reply["inline_payload"] == 65536
        assert reply["worker"].startswith("mail.svc_1:a@b/c-d@")
        err = await raw.request({"type": "subscribe", "id": "s", "service": "svc",
                                 "actions": ["mail:send"]})
        assert err["type"] == "error" and err["code"] == "duplicate_id"
        assert await raw.request({"type": "unsubscribe", "id": 1, "subscription": "s"}) == \
            {"type": "ok", "id": 1}
        err = await raw.request({"type": "unsubscribe", "id": 2, "subscription": "s"})
        assert err["type"] == "error" and err["code"] == "not_found"


async def test_refuse_fetch_and_not_offered(tmp_path: Path) -> None:
    async with make_hub(tmp_path, inline_payload=10) as running:
        key = running.key("admin", admin=True)
        async with Raw.opened(running.url, key) as svc:
            await svc.request({"type": "subscribe", "id": "s", "service": "svc",
                               "actions": ["a"]}, "subscribed")
            big = {"text": "y" * 100}
            task = (await svc.request({"type": "publish", "id": "p", "action": "a",
                                       "payload": big}))["task"]
            offer = await svc.expect("offer", "s")
            assert offer["payload_inline"] is False and offer["task"]["payload"] is None
            assert offer["payload_size"] == len(json.dumps(big, separators=(",", ":")))
            fetched = await svc.request({"type": "fetch", "id": "f", "task_id": task["id"]})
            assert fetched == {"type": "payload", "id": "f", "task_id": task["id"],
                               "payload": big}
            # refuse: back to the queue, attempt refunded, offered again (only us here)
            await svc.send({"type": "refuse", "task_id": task["id"], "ack": True})
            again = await svc.expect("offer", "s", timeout=15)
            assert again["task_id"] == task["id"] and again["task"]["attempts"] == 1
            # the publisher saw the claim, the release and the new claim
            assert (await svc.expect("start", "p"))["attempt"] == 1
            released = await svc.expect("queued", "p")
            assert released["event"] == "released" and released["task"]["attempts"] == 0
            assert (await svc.expect("start", "p"))["attempt"] == 1
            await svc.send({"type": "pickup", "task_id": task["id"]})
            err = await svc.request({"type": "refuse", "task_id": task["id"]})
            assert err["type"] == "error" and err["code"] == "not_offered"
            await svc.send({"type": "drop", "task_id": task["id"], "reason": "nothing to do"})
            done = await svc.request({"type": "wait", "task_id": task["id"], "timeout": 10,
                                      "task": True}, "result")
            assert done["status"] == "succeeded" and done["value"] is None
            assert done["task"]["reason"] == "dropped"
            err = await svc.request({"type": "return", "task_id": task["id"], "result": 1})
            assert err["type"] == "error" and err["code"] == "not_held"


async def test_publisher_sees_start_pickup_progress_log_success_end(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    svc = await Raw.open(hub.url, admin)
    pub = await Raw.open(hub.url, admin)
    try:
        sub = await svc.request({"type": "subscribe", "id": "s", "service": "mailer",
                                 "actions": ["a"]}, "subscribed")
        published = await pub.request({"type": "publish", "id": 1, "action": "a",
                                       "wait": True})
        tid = published["task"]["id"]
        await svc.expect("offer", "s")
        await svc.send([{"type": "pickup", "task_id": tid},
                        {"type": "update", "task_id": tid, "current": 1, "total": 2,
                         "message": "m", "data": {"k": 1}}])
        start = await pub.expect("start", 1)
        assert start["task_id"] == tid and start["attempt"] == 1
        assert start["worker"] == sub["worker"] and start["task"]["status"] == "running"
        pickup = await pub.expect("pickup", 1)
        assert pickup["service"] == "mailer" and pickup["worker"] == sub["worker"]
        update = await pub.expect("update", 1)
        assert update["progress"] == {"current": 1, "total": 2, "message": "m",
                                      "data": {"k": 1}}
        await svc.send([{"type": "log", "task_id": tid, "level": "warning", "message": "w",
                         "data": {"x": 1}},
                        {"type": "return", "task_id": tid, "result": {"sent": True}}])
        line = await pub.expect("log", 1)
        assert line["log"]["level"] == "warning" and line["log"]["data"] == {"x": 1}
        assert line["log"]["seq"] == 1 and line["log"]["task_id"] == tid
        success = await pub.expect("success", 1)
        assert success["result"] == {"sent": True}
        end = await pub.expect("end", 1)
        assert end["status"] == "succeeded"
        result = await pub.expect("result", 1)
        assert result == {"type": "result", "id": 1, "task_id": tid, "status": "succeeded",
                          "value": {"sent": True}, "default": False}
        kinds = [m["type"] for m in pub.seen if m.get("id") == 1]
        assert kinds.index("success") < kinds.index("end") < kinds.index("result")
    finally:
        await svc.close()
        await pub.close()


async def test_fail_retry_and_reschedule_reports(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as svc:
        await svc.request({"type": "subscribe", "id": "s", "service": "svc", "actions": ["a"],
                           "capacity": 5}, "subscribed")
        published = await svc.request({"type": "publish", "id": "p", "tasks": [
            {"action": "a", "options": {"max_attempts": 1}},
            {"action": "a", "options": {"max_attempts": 3}},
            {"action": "a"}]})
        failing, retried, polled = (t["id"] for t in published["tasks"])
        for _ in range(3):
            await svc.expect("offer", "s")
        await svc.send({"type": "fail", "task_id": failing, "error": "it broke"})
        fail = await svc.expect("fail", "p", where=lambda m: m["task_id"] == failing)
        assert fail["status"] == "failed" and fail["error"]["message"] == "it broke"
        await svc.send({"type": "retry", "task_id": retried, "after": 60, "reason": "later"})
        queued = await svc.expect("queued", "p", where=lambda m: m["task_id"] == retried)
        assert queued["event"] == "retrying" and queued["task"]["status"] == "queued"
        assert queued["task"]["run_at"] > published["tasks"][1]["created_at"] + 50
        await svc.send({"type": "reschedule", "task_id": polled, "after": 60,
                        "result": {"step": 1}})
        queued = await svc.expect("queued", "p", where=lambda m: m["task_id"] == polled)
        assert queued["event"] == "rescheduled" and queued["task"]["attempts"] == 0
        await svc.send({"type": "fail", "task_id": polled, "error": {"type": "X"}})
        err = await svc.expect("error")
        assert err["code"] == "not_held"


async def test_abort_of_a_running_task_reaches_the_service(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as svc:
        await svc.request({"type": "subscribe", "id": "s", "service": "svc", "actions": ["a"]},
                          "subscribed")
        tid = (await svc.request({"type": "publish", "id": "p", "action": "a"}))["task"]["id"]
        await svc.expect("offer", "s")
        await svc.send({"type": "pickup", "task_id": tid, "ack": True})
        await svc.expect("ok")
        reply = await svc.request({"type": "abort", "task_id": tid, "reason": "stop it"},
                                  "task")
        assert reply["task"]["status"] == "running"
        assert reply["task"]["abort_requested"] == "stop it"
        abort = await svc.expect("abort", "s")
        assert abort["task_id"] == tid and abort["reason"] == "stop it"
        asked = await svc.expect("abort_requested", "p")
        assert asked["reason"] == "stop it"
        await svc.send({"type": "fail", "task_id": tid, "error": "stopped"})
        fail = await svc.expect("fail", "p")
        assert fail["status"] == "aborted" and fail["reason"] == "stop it"
        assert (await svc.expect("end", "p"))["status"] == "aborted"


async def test_an_expired_offer_is_cancelled(tmp_path: Path) -> None:
    async with make_hub(tmp_path, offer_timeout=0.3) as running:
        key = running.key("admin", admin=True)
        async with Raw.opened(running.url, key) as svc:
            await svc.request({"type": "subscribe", "id": "s", "service": "svc",
                               "actions": ["a"]}, "subscribed")
            tid = (await svc.request({"type": "publish", "action": "a",
                                      "updates": False}))["task"]["id"]
            offer = await svc.expect("offer", "s")
            assert offer["expires_in"] == 0.3
            cancel = await svc.expect("cancel", "s")
            assert cancel["task_id"] == tid and cancel["reason"] == "offer expired"
            err = await svc.request({"type": "pickup", "task_id": tid})
            assert err["type"] == "error" and err["code"] == "not_held"


async def test_delivery_all_tells_the_others_completed(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    one = await Raw.open(hub.url, admin)
    two = await Raw.open(hub.url, admin)
    pub = await Raw.open(hub.url, admin)
    try:
        for raw, name in ((one, "one"), (two, "two")):
            await raw.request({"type": "subscribe", "id": "s", "service": name,
                               "actions": ["c"]}, "subscribed")
        tid = (await pub.request({"type": "publish", "id": "p", "action": "c",
                                  "delivery": "all", "wait": True}))["task"]["id"]
        assert (await one.expect("offer", "s"))["delivery"] == "all"
        assert (await two.expect("offer", "s"))["delivery"] == "all"
        await two.request({"type": "pickup", "task_id": tid, "ack": True}, "ok")
        await one.send({"type": "return", "task_id": tid, "result": "first"})
        completed = await two.expect("completed", "s")
        assert completed["task_id"] == tid and completed["by"] == "one"
        success = await pub.expect("success", "p")
        assert success["service"] == "one" and success["final"] is False
        result = await pub.expect("result", "p")
        assert result["value"] == "first"
        assert not [m for m in pub.seen if m["type"] == "end"]
        await two.send({"type": "drop", "task_id": tid})
        end = await pub.expect("end", "p")
        assert end["status"] == "succeeded" and end["task"]["result"] == "first"
    finally:
        for raw in (one, two, pub):
            await raw.close()


# -- WebSocket: live queries ---------------------------------------------------------------


async def test_live_query_messages_and_errors(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    nobody = hub.key("nobody")
    async with Raw.opened(hub.url, admin) as raw:
        first = (await raw.request({"type": "publish", "action": "a", "priority": 1,
                                    "updates": False}))
        assert first["type"] == "error"  # priority beside options
        first = (await raw.request({"type": "publish", "action": "a", "updates": False,
                                    "options": {"priority": 1}}))["task"]
        snap = await raw.request({"type": "live", "id": "q", "filter": {"status": "queued"},
                                  "sort": "-priority", "fields": ["action"]})
        assert snap["type"] == "snapshot" and snap["seq"] == 1 and snap["count"] == 1
        assert snap["more"] is False
        assert snap["tasks"] == [{"id": first["id"], "version": first["version"],
                                  "action": "a"}]
        second = (await raw.request({"type": "publish", "action": "b",
                                     "updates": False}))["task"]
        added = await raw.expect("added", "q")
        assert added["seq"] == 2 and added["task"]["id"] == second["id"]
        assert set(added["task"]) == {"id", "version", "action"}
        await raw.request({"type": "abort", "task_id": second["id"]}, "task")
        removed = await raw.expect("removed", "q")
        assert removed["seq"] == 3 and removed["task_id"] == second["id"]
        assert removed["version"] > second["version"]
        err = await raw.request({"type": "live", "id": "q"})
        assert err["type"] == "error" and err["code"] == "duplicate_id"
        err = await raw.request({"type": "live", "id": "bad",
                                 "filter": {"$or": [{}, {"priority": {"$gt": "x"}}]}})
        assert err["type"] == "error" and err["code"] == "bad_filter"
        assert err["path"] == "filter.$or[1].priority.$gt"
        assert await raw.request({"type": "unlive", "id": 7, "live": "q"}) == \
            {"type": "ok", "id": 7}
        err = await raw.request({"type": "unlive", "id": 8, "live": "q"})
        assert err["type"] == "error" and err["code"] == "not_found"
        for i in range(100):
            await raw.send({"type": "live", "id": f"l{i}", "filter": {"id": "none"}})
        for i in range(100):
            assert (await raw.expect(id=f"l{i}"))["type"] == "snapshot"
        err = await raw.request({"type": "live", "id": "one-too-many"})
        assert err["type"] == "error" and err["code"] == "too_many"
    async with Raw.opened(hub.url, nobody) as raw:
        err = await raw.request({"type": "live", "id": "q"})
        assert err["type"] == "error" and err["code"] == "forbidden"


async def test_live_deleted_task_is_removed_with_null_version(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as raw:
        task = (await raw.request({"type": "publish", "action": "a", "updates": False}))["task"]
        await raw.request({"type": "abort", "task_id": task["id"]}, "task")
        snap = await raw.request({"type": "live", "id": "q"})
        assert [t["id"] for t in snap["tasks"]] == [task["id"]]
        async with client(hub, admin) as http:
            assert (await http.delete(f"{API}/tasks/{task['id']}")).status_code == 200
        removed = await raw.expect("removed", "q")
        assert removed == {"type": "removed", "id": "q", "seq": 2, "task_id": task["id"],
                           "version": None}


async def test_live_results_hold_only_readable_actions(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    reader = hub.key("reader", read=["mail:*"])
    pub = await Raw.open(hub.url, admin)
    raw = await Raw.open(hub.url, reader)
    try:
        await pub.request({"type": "publish", "action": "geo:x", "updates": False})
        mine = (await pub.request({"type": "publish", "action": "mail:x",
                                   "updates": False}))["task"]
        snap = await raw.request({"type": "live", "id": "q", "filter": {}})
        assert [t["id"] for t in snap["tasks"]] == [mine["id"]] and snap["count"] == 1
        await pub.request({"type": "publish", "action": "geo:y", "updates": False})
        last = (await pub.request({"type": "publish", "action": "mail:y",
                                   "updates": False}))["task"]
        added = await raw.expect("added", "q")
        assert added["task"]["id"] == last["id"] and added["seq"] == 2
    finally:
        await pub.close()
        await raw.close()


# -- the Python clients --------------------------------------------------------------------

MISSING_ID = "01a00000-0000-7000-8000-000000000000"


async def test_hub_client_maps_errors_to_the_librarys(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with HubClient(hub.url, admin) as client_:
        with pytest.raises(TaskNotFound) as nf:
            await client_.get(MISSING_ID)
        assert nf.value.task_id == MISSING_ID
        with pytest.raises(TaskNotFound):
            await client_.abort(MISSING_ID)
        with pytest.raises(TaskNotFound):
            async for _ in client_.follow(MISSING_ID):
                pass
        task = await client_.add("a")
        await client_.abort(task.id)
        with pytest.raises(InvalidTransition):
            await client_.abort(task.id)
        with pytest.raises(QueryError) as bad:
            async for _ in client_.live({"priority": {"$gt": "x"}}):
                pass
        assert bad.value.path == "filter.priority.$gt"


async def test_hub_client_welcome_follow_and_checked_adds(hub: RunningHub) -> None:
    key = hub.key("both", publish=["calc:*"], subscribe=["calc:*"])
    worker = HubClient(hub.url, key)
    gate = asyncio.Event()

    @worker.handler("calc:step")
    async def step(ctx: Context) -> int:
        await ctx.progress(1, total=2, message="half")
        ctx.log.info("working on %s", ctx.payload)
        await ctx.emit("partial")
        await asyncio.wait_for(gate.wait(), 20)
        return int(ctx.payload) + 1

    work = asyncio.create_task(worker.work("calc", concurrency=2))
    try:
        await worker.wait_working(10)
        assert worker.welcome["credential"] == "both"
        async with HubClient(hub.url, key, hello=True) as pub:
            assert pub.welcome["publish"] == ["calc:*"]
            task, created = await pub.add_checked("calc:step", 1, unique_key="u")
            same, again = await pub.add_checked("calc:step", 2, unique_key="u")
            assert created and not again and same.id == task.id
            pairs = await pub.add_many_checked([("calc:step", 5, {"unique_key": "u"}),
                                                ("calc:step", 6)])
            assert [c for _, c in pairs] == [False, True] and pairs[0][0].id == task.id
            kinds: list[str] = []
            async for update in pub.follow(task.id):
                kinds.append(update.type)
                if update.type == "watching":
                    assert update.task is not None and update.task.id == task.id
                if update.type == "update":
                    assert update.progress is not None and update.progress.current == 1
                if update.type == "log":
                    assert update.log is not None and update.log.message == "working on 1"
                    gate.set()
            assert kinds[0] == "watching" and kinds[-1] == "end"
            assert "log" in kinds and "success" in kinds
            assert await pub.wait(task.id, timeout=10) == 2
            assert await pub.wait(pairs[1][0].id, timeout=10) == 7
    finally:
        worker.stop()
        await asyncio.wait_for(work, 20)
        await worker.close()


async def test_hub_client_bad_key_and_unreachable_hub(hub: RunningHub) -> None:
    with pytest.raises(HubError) as bad:
        async with HubClient(hub.url, "cvk_000000000000_" + "x" * 43) as client_:
            await client_.add("a")
    assert bad.value.status == 401 and bad.value.code == "unauthorized"
    with pytest.raises(HubError) as nowhere:
        await HubClient(f"http://127.0.0.1:{free_port()}", "k", open_timeout=2).connect()
    assert nowhere.value.status == 0


async def test_live_query_with_the_client_and_its_changes(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with HubClient(hub.url, admin) as pub, HubClient(hub.url, admin) as watcher:
        first = await pub.add("w:a", 1)
        query = watcher.live({"action": {"$regex": "^w:"}, "status": "queued"},
                             fields=["status"])
        changes = query.__aiter__()
        snap = await asyncio.wait_for(changes.__anext__(), 10)
        assert snap.type == "snapshot" and snap.seq == 1
        assert [t["id"] for t in snap.tasks] == [first.id]
        second = await pub.add("w:b", 2)
        added = await asyncio.wait_for(changes.__anext__(), 10)
        assert added.type == "added" and added.task_id == second.id and added.seq == 2
        assert added.task is not None and set(added.task) == {"id", "version", "status"}
        await pub.abort(first.id)
        removed = await asyncio.wait_for(changes.__anext__(), 10)
        assert removed.type == "removed" and removed.task_id == first.id
        assert list(query.tasks) == [second.id]
        await query.aclose()


# -- more edges ----------------------------------------------------------------------------


async def test_a_locked_out_address_is_refused_over_websocket_too(tmp_path: Path) -> None:
    async with make_hub(tmp_path, login_failures=2) as running:
        good = running.key("admin", admin=True)
        async with client(running, "cvk_000000000000_" + "x" * 43) as http:
            for _ in range(2):
                error_of(await http.get(f"{API}/stats"), 401, "unauthorized")
        raw = await Raw.open(running.url, good, welcome=False)
        err = await raw.recv()
        assert err["type"] == "error" and err["code"] == "rate_limited"
        assert await raw.closed() == 4029
        async with client(running, good) as http:
            error_of(await http.get(f"{API}/stats"), 429, "rate_limited")


async def test_delivery_all_withdraws_open_offers_once_completed(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    one = await Raw.open(hub.url, admin)
    two = await Raw.open(hub.url, admin)
    try:
        for raw, name in ((one, "one"), (two, "two")):
            await raw.request({"type": "subscribe", "id": "s", "service": name,
                               "actions": ["c"]}, "subscribed")
        tid = (await one.request({"type": "publish", "id": "p", "action": "c",
                                  "delivery": "all", "wait": True}))["task"]["id"]
        await one.expect("offer", "s")
        await two.expect("offer", "s")
        await one.send({"type": "return", "task_id": tid, "result": 1})
        cancel = await two.expect("cancel", "s")
        assert cancel["task_id"] == tid and cancel["reason"] == "completed"
        end = await one.expect("end", "p")
        assert end["status"] == "succeeded" and end["task"]["result"] == 1
    finally:
        await one.close()
        await two.close()


async def test_live_snapshot_comes_in_parts_and_bad_options_are_named(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with client(hub, admin) as http:
        for _ in range(2):
            r = await http.post(f"{API}/tasks/batch",
                                json={"tasks": [{"action": "a"} for _ in range(1000)]})
            assert r.status_code == 201
    async with Raw.opened(hub.url, admin) as raw:
        first = await raw.request({"type": "live", "id": "q", "fields": ["status"]})
        assert first["type"] == "snapshot" and first["more"] is True
        assert first["count"] == 2000 and len(first["tasks"]) == 1000
        second = await raw.expect("snapshot", "q")
        assert second["seq"] == 2 and second["more"] is False and len(second["tasks"]) == 1000
        window = await raw.request({"type": "live", "id": "w", "sort": "-created_at",
                                    "limit": 3})
        assert window["count"] == 3 and len(window["tasks"]) == 3
        for bad in ({"limit": -1}, {"limit": "x"}, {"sort": "nope-field"},
                    {"filter": {"$bad": 1}}):
            err = await raw.request({"type": "live", **bad})
            assert err["type"] == "error" and err["code"] == "bad_filter", (bad, err)
            assert err.get("path"), (bad, err)
        err = await raw.request({"type": "live", "fields": "status"})
        assert err["type"] == "error" and err["code"] == "bad_message"


async def test_metrics_created_gauges_and_connection_gauge(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as raw:
        await raw.request({"type": "publish", "action": "m:a", "updates": False})
        async with client(hub, admin) as http:
            text = (await http.get("/metrics")).text
        assert 'conveyor_tasks_added_created{action="m:a"}' in text
        assert "conveyor_hub_connections 1.0" in text
        assert 'conveyor_tasks{action="m:a",status="queued"} 1.0' in text


async def test_publish_batch_limits(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as raw:
        err = await raw.request({"type": "publish", "tasks": []})
        assert err["type"] == "error" and err["code"] == "bad_message"
        err = await raw.request({"type": "publish", "tasks": [{"action": "a"}] * 10_001})
        assert err["type"] == "error" and err["code"] == "bad_message"
        err = await raw.request({"type": "publish", "tasks": [{"action": "a"}, 5]})
        assert err["type"] == "error" and err["code"] == "bad_message"
        for beside in ({"action": "a"}, {"payload": 1}, {"options": {}}, {"delivery": "all"}):
            err = await raw.request({"type": "publish", "tasks": [{"action": "a"}], **beside})
            assert err["type"] == "error" and err["code"] == "bad_message", beside
            assert f"'tasks' comes instead of {next(iter(beside))!r}" in err["message"]
        reply = await raw.request({"type": "publish", "updates": False,
                                   "tasks": [{"action": "a"}] * 10_000})
        assert reply["type"] == "published" and len(reply["tasks"]) == 10_000


async def test_a_frame_with_one_bad_part_handles_none_of_it(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as raw:
        await raw.send_text('[{"type": "ping", "id": "a"}, NaN]')
        err = await raw.expect("error")
        assert err["code"] == "bad_json" and err["id"] is None
        assert (await raw.request({"type": "ping", "id": "b"}))["type"] == "pong"
        assert not [m for m in raw.seen if m.get("id") == "a"]


async def test_every_message_of_an_array_counts_against_the_rate(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, max_rate=10) as running:
        raw = await Raw.open(running.url)
        welcome = await raw.request({"type": "hello", "id": "h"})
        assert welcome["limits"]["max_rate"] == 10.0
        # a burst of twice the rate passes
        await raw.send([{"type": "ping", "id": i} for i in range(15)])
        for i in range(15):
            assert (await raw.expect("pong", i))["id"] == i
        await raw.send([{"type": "ping", "id": i} for i in range(40)])
        assert await raw.closed() == 4029


async def test_abort_of_an_offer_cancels_it(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as svc:
        await svc.request({"type": "subscribe", "id": "s", "service": "svc", "actions": ["a"]},
                          "subscribed")
        tid = (await svc.request({"type": "publish", "id": "p", "action": "a"}))["task"]["id"]
        await svc.expect("offer", "s")
        await svc.request({"type": "abort", "task_id": tid, "reason": "changed my mind"},
                          "task")
        cancel = await svc.expect("cancel", "s")
        assert cancel["task_id"] == tid
        end = await svc.expect("end", "p")
        assert end["status"] == "aborted" and end["task"]["reason"] == "changed my mind"
        err = await svc.request({"type": "pickup", "task_id": tid})
        assert err["type"] == "error" and err["code"] == "not_held"


async def test_an_unanswered_abort_ends_the_task_after_the_grace(tmp_path: Path) -> None:
    async with make_hub(tmp_path, abort_grace=0.3) as running:
        admin = running.key("admin", admin=True)
        async with Raw.opened(running.url, admin) as svc:
            await svc.request({"type": "subscribe", "id": "s", "service": "svc",
                               "actions": ["a"]}, "subscribed")
            tid = (await svc.request({"type": "publish", "id": "p",
                                      "action": "a"}))["task"]["id"]
            await svc.expect("offer", "s")
            await svc.request({"type": "pickup", "task_id": tid, "ack": True}, "ok")
            await svc.request({"type": "abort", "task_id": tid}, "task")
            assert (await svc.expect("abort", "s"))["reason"] == "aborted"
            cancel = await svc.expect("cancel", "s")
            assert cancel["task_id"] == tid
            end = await svc.expect("end", "p")
            assert end["status"] == "aborted"
            err = await svc.request({"type": "return", "task_id": tid, "result": 1})
            assert err["type"] == "error" and err["code"] == "not_held"


async def test_fail_not_retryable_ends_at_once(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as svc:
        await svc.request({"type": "subscribe", "id": "s", "service": "svc", "actions": ["a"]},
                          "subscribed")
        tid = (await svc.request({"type": "publish", "id": "p", "action": "a",
                                  "options": {"max_attempts": 5}}))["task"]["id"]
        await svc.expect("offer", "s")
        await svc.send({"type": "fail", "task_id": tid, "retryable": False,
                        "error": {"type": "KeyError", "message": "k", "traceback": "tb"}})
        fail = await svc.expect("fail", "p")
        assert fail["status"] == "failed" and fail["reason"] == "error"
        assert fail["error"]["type"] == "KeyError" and fail["error"]["traceback"] == "tb"
        assert fail["task"]["attempts"] == 1
        assert (await svc.expect("end", "p"))["status"] == "failed"


async def test_watch_without_logs(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as svc:
        await svc.request({"type": "subscribe", "id": "s", "service": "svc", "actions": ["a"]},
                          "subscribed")
        tid = (await svc.request({"type": "publish", "action": "a",
                                  "updates": False}))["task"]["id"]
        await svc.expect("offer", "s")
        await svc.send([{"type": "log", "task_id": tid, "message": "before"},
                        {"type": "ping", "id": "flushed"}])
        await svc.expect("pong", "flushed")
        async def stored() -> Any:
            got = await svc.request({"type": "get", "task_id": tid, "logs": True}, "task")
            return got["task"]["logs"]

        logs = await eventually(stored)
        assert logs[0]["level"] == "info"  # the default level
        reply = await svc.request({"type": "watch", "id": "w", "task_id": tid, "logs": False})
        assert reply["type"] == "watching"
        await svc.send([{"type": "log", "task_id": tid, "message": "after"},
                        {"type": "return", "task_id": tid, "result": None}])
        await svc.expect("end", "w")
        assert not [m for m in svc.seen if m.get("id") == "w" and m["type"] == "log"]


async def test_connections_of_one_service_are_one_worker(hub: RunningHub) -> None:
    key = hub.key("svc", subscribe=["a", "b"])
    one = await Raw.open(hub.url, key)
    two = await Raw.open(hub.url, key)
    try:
        first = await one.request({"type": "subscribe", "id": "s", "service": "svc",
                                   "actions": ["a"], "capacity": 2}, "subscribed")
        second = await two.request({"type": "subscribe", "id": "s", "service": "svc",
                                    "actions": ["a", "b"], "capacity": 3}, "subscribed")
        assert first["worker"] == second["worker"]

        async def listed() -> Any:
            async with client(hub, key) as http:
                workers = (await http.get(f"{API}/workers")).json()["workers"]
            mine = [w for w in workers if w["id"] == first["worker"]]
            return mine if mine and mine[0]["concurrency"] == 5 else None

        found = await eventually(listed)
        assert found[0]["actions"] == ["a", "b"]
    finally:
        await one.close()
        await two.close()


async def test_ws_frames_nest_as_deep_as_rest_bodies(hub: RunningHub) -> None:
    """A frame, like a REST body, nests at most 64 levels (itself the first): a payload
    of 63 levels in a publish (frame, payload) is refused, 62 are stored."""
    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = [value]
        return value

    async with Raw.opened(hub.url, hub.key("admin", admin=True)) as ws:
        await ws.send({"type": "publish", "id": 1, "action": "a", "payload": nested(64),
                       "updates": False})
        err = await ws.expect("error")  # the frame was not read: its id is not known
        assert err["code"] == "bad_json" and err["id"] is None, err
        assert "more than 64 levels" in err["message"]
        ok = await ws.request({"type": "publish", "id": 2, "action": "a",
                               "payload": nested(63), "updates": False})
        assert ok["type"] == "published", ok
    assert await hub.app.count() == 1


async def test_rest_json_limits(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    async with client(hub, admin) as http:
        deep: Any = 1
        for _ in range(65):
            deep = [deep]
        r = await http.post(f"{API}/tasks", json={"action": "a", "payload": deep})
        error_of(r, 400, "invalid_json")
        ok: Any = 1
        for _ in range(60):
            ok = [ok]
        assert (await http.post(f"{API}/tasks", json={"action": "a", "payload": ok})
                ).status_code == 201
        r = await http.post(f"{API}/tasks", content=b'{"action": "a", "payload": NaN}',
                            headers={"Content-Type": "application/json"})
        error_of(r, 400, "invalid_json")
        r = await http.post(f"{API}/tasks", json={"action": "a", "delay": 1, "run_at": 5})
        assert r.json()["error"]["path"] == "delay"
        r = await http.post(f"{API}/tasks/delete", json={"ids": ["x"] * 1001})
        error_of(r, 422, "invalid")
        assert (await http.get(f"{API}/tasks/count")).json() == {"count": 1}


async def test_abort_of_a_running_task_over_rest(worker_hub: RunningHub) -> None:
    admin = worker_hub.key("admin", admin=True)
    async with client(worker_hub, admin) as http:
        task = (await http.post(f"{API}/tasks", json={"action": "job:slow"})).json()
        async def running() -> bool:
            now = (await http.get(f"{API}/tasks/{task['id']}")).json()
            return bool(now["status"] == "running")

        await eventually(running)
        r = await http.post(f"{API}/tasks/{task['id']}/abort", json={"reason": "enough"})
        assert r.status_code == 200
        assert r.json()["status"] == "running" and r.json()["abort_requested"] == "enough"
        done = (await http.get(f"{API}/tasks/{task['id']}/wait", params={"timeout": 30})).json()
        assert done["status"] == "aborted" and done["reason"] == "enough"
        again = (await http.post(f"{API}/tasks/{task['id']}/retry")).json()
        assert again["status"] == "queued" and again["attempts"] == 1


async def test_hub_client_takes_a_ws_url_and_keys_are_never_logged(
        hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = hub.key("pub", publish=["*"])
    bad = "cvk_000000000000_" + "s" * 43
    async with HubClient(hub.ws_url, key) as pub:
        task = await pub.add("a", 1)
        assert task.action == "a"
    async with HubClient(hub.url + "/ws", key, hello=True) as pub:
        assert (await pub.get(task.id)).id == task.id
    with pytest.raises(HubError):
        await HubClient(hub.url, bad).connect()
    async with client(hub, bad) as http:
        await http.get(f"{API}/stats")

    async with HTTPClient(hub.url, key) as http_client:
        assert (await http_client.get(task.id)).id == task.id
    async with HTTPClient(hub.url, bad) as http_client:
        with pytest.raises(HubError):
            await http_client.stats()
    text = caplog.text
    assert key not in text and bad not in text
    secret = key.split("_", 2)[2]  # cvk_<id>_<secret>; the secret may hold "_" too
    assert len(secret) > 20 and secret not in text


async def test_work_without_the_subscribe_right_or_with_a_bad_key_raises(
        hub: RunningHub) -> None:
    for key, status in ((hub.key("pub", publish=["job:*"]), 403),
                        ("cvk_000000000000_" + "z" * 43, 401)):
        worker = HubClient(hub.url, key)

        @worker.handler("job:x")
        async def run(ctx: Context) -> None:
            return None

        with pytest.raises(HubError) as refused:
            await asyncio.wait_for(worker.work("svc"), 20)
        assert refused.value.status == status
        await worker.close()


async def test_every_task_the_hub_sends_has_its_public_url(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)

    def url_of(task_id: str) -> str:
        return f"{hub.ws_url}/ws/tasks/{task_id}"

    async with client(hub, admin) as http:
        batch = (await http.post(f"{API}/tasks/batch", json={"tasks": [{"action": "a"}]}))
        task = batch.json()["tasks"][0]
        assert task["public_url"] == url_of(task["id"])
        found = (await http.get(f"{API}/tasks")).json()["tasks"]
        assert found[0]["public_url"] == url_of(task["id"])
        searched = (await http.post(f"{API}/tasks/search", json={})).json()["tasks"]
        assert searched[0]["public_url"] == url_of(task["id"])
        waited = (await http.get(f"{API}/tasks/{task['id']}/wait?timeout=0")).json()
        assert waited["public_url"] == url_of(task["id"])
    async with Raw.opened(hub.url, admin) as raw:
        snap = await raw.request({"type": "live", "id": "q"})
        assert snap["tasks"][0]["public_url"] == url_of(task["id"])
        got = await raw.request({"type": "get", "task_id": task["id"]})
        assert got["task"]["public_url"] == url_of(task["id"])
        watching = await raw.request({"type": "watch", "id": "w", "task_id": task["id"]})
        assert watching["task"]["public_url"] == url_of(task["id"])


async def test_workers_show_only_readable_actions(hub: RunningHub) -> None:
    svc_key = hub.key("svc", subscribe=["a", "b"])
    reader = hub.key("reader", read=["a"])
    other = hub.key("other", read=["zzz"])
    async with Raw.opened(hub.url, svc_key) as raw:
        reply = await raw.request({"type": "subscribe", "service": "svc",
                                   "actions": ["a", "b"]}, "subscribed")
        async with client(hub, reader) as http:
            workers = (await http.get(f"{API}/workers")).json()["workers"]
        [mine] = [w for w in workers if w["id"] == reply["worker"]]
        assert mine["actions"] == ["a"]
        async with client(hub, other) as http:
            workers = (await http.get(f"{API}/workers")).json()["workers"]
        assert not [w for w in workers if w["id"] == reply["worker"]]


async def test_a_refused_task_goes_to_another_connection_first(hub: RunningHub) -> None:
    key = hub.key("svc", subscribe=["a"], publish=["a"])
    one = await Raw.open(hub.url, key)
    two = await Raw.open(hub.url, key)
    try:
        for raw in (one, two):
            await raw.request({"type": "subscribe", "id": "s", "service": "svc",
                               "actions": ["a"]}, "subscribed")
        tid = (await one.request({"type": "publish", "action": "a",
                                  "updates": False}))["task"]["id"]
        # whichever connection got it refuses; the other one gets it next
        waits = {asyncio.ensure_future(raw.expect("offer", "s")): raw for raw in (one, two)}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for fut in pending:
            fut.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        winner = done.pop()
        first = waits[winner]
        second = two if first is one else one
        offer = winner.result()
        assert offer["task_id"] == tid
        await first.send({"type": "refuse", "task_id": tid})
        again = await second.expect("offer", "s")
        assert again["task_id"] == tid
    finally:
        await one.close()
        await two.close()


async def test_cancelling_serve_stops_the_hub_gracefully(tmp_path: Path) -> None:
    port = free_port()
    app = Conveyor(hub_db_url(tmp_path))
    running = asyncio.create_task(serve(app, HubConfig(port=port, insecure=True)))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as http:
        async def ready() -> bool:
            assert not running.done()
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready)
        raw = await Raw.open(url)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, 30)
        assert await raw.closed() == 1001
        with pytest.raises(httpx.TransportError):
            await http.get("/healthz")
    # the app was closed: its storage can be opened and used again from here
    again = Conveyor(hub_db_url(tmp_path))
    async with again:
        assert await again.count() == 0


async def test_a_publisher_follows_a_task_run_by_another_process(hub: RunningHub,
                                                                 tmp_path: Path) -> None:
    gate = asyncio.Event()
    other = Conveyor(hub_db_url(tmp_path), stop_timeout=1.0)  # the hub's storage

    @other.handler("far:job")
    async def job(ctx: Context) -> str:
        await ctx.progress(1, total=2)
        ctx.log.info("far away")
        await asyncio.wait_for(gate.wait(), 20)
        return "done"

    admin = hub.key("admin", admin=True)
    async with Raw.opened(hub.url, admin) as pub, other:
        tid = (await pub.request({"type": "publish", "id": "p", "action": "far:job",
                                  "wait": True}))["task"]["id"]
        start = await pub.expect("start", "p", timeout=20)
        assert start["task_id"] == tid and start["attempt"] == 1
        line = await pub.expect("log", "p", timeout=20)
        assert line["log"]["message"] == "far away"
        gate.set()
        assert (await pub.expect("success", "p", timeout=20))["result"] == "done"
        assert (await pub.expect("end", "p", timeout=20))["status"] == "succeeded"
        result = await pub.expect("result", "p", timeout=20)
        assert result["value"] == "done" and result["default"] is False


async def test_conveyor_serve_options_reach_the_hub(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CONVEYOR_CREDENTIALS", None)
    creds = tmp_path / "creds.json"
    _, key = CredentialStore(creds).add("ops", admin=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conveyor", "serve", "--db", f"sqlite:///{tmp_path}/s.db",
        "--port", "0", "--credentials", str(creds), "--public-url", "https://hub.example",
        "--delivery", "cache:*=all", "--service-lease", "4.5",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        while not any("hub ready on" in line for line in lines):
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "".join(lines)
            lines.append(line)
        found = re.search(r"hub on http://127\.0\.0\.1:(\d+)", "".join(lines))
        assert found is not None, lines  # bound to loopback by default
        url = f"http://127.0.0.1:{found.group(1)}"
        async with httpx.AsyncClient(base_url=url) as http:  # credentials are required
            error_of(await http.get(f"{API}/stats"), 401, "unauthorized")
        async with Raw.opened(url, key) as raw:
            welcome = raw.seen[0]
            assert welcome["limits"]["service_lease"] == 4.5
            one = await raw.request({"type": "subscribe", "id": "s", "service": "a",
                                     "actions": ["cache:x"]}, "subscribed")
            assert one["lease"] == 4.5
            task = (await raw.request({"type": "publish", "action": "cache:x",
                                       "updates": False}))["task"]
            assert task["public_url"] == f"wss://hub.example/ws/tasks/{task['id']}"
            offer = await raw.expect("offer", "s")
            assert offer["delivery"] == "all"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_delivery_all_with_client_workers(hub: RunningHub) -> None:
    key = hub.key("svc", subscribe=["cache:*"], publish=["cache:*"])
    ran: dict[str, list[Any]] = {"east": [], "west": []}
    workers = []
    for name in ran:
        worker = HubClient(hub.url, key)

        def make(name: str) -> Any:
            async def flush(ctx: Context) -> str:
                ran[name].append(ctx.payload)
                return name

            return flush

        worker.register("cache:flush", make(name))
        workers.append((worker, asyncio.create_task(worker.work(name, concurrency=2))))
    try:
        for worker, _ in workers:
            await worker.wait_working(10)
        async with HubClient(hub.url, key) as pub:
            task = await pub.add("cache:flush", "k1", delivery="all")
            assert task.tags == {"delivery": "all"}
            ended = await pub.wait_task(task.id, timeout=20)
            assert ended.status.value == "succeeded" and ended.result in ("east", "west")
        assert ran == {"east": ["k1"], "west": ["k1"]}
    finally:
        for worker, _ in workers:
            worker.stop()
        for worker, work in workers:
            await asyncio.wait_for(work, 20)
            await worker.close()


async def test_abort_cancels_a_remote_async_handler_and_a_sync_one_sees_it(
        hub: RunningHub) -> None:
    key = hub.key("both", publish=["slow:*"], subscribe=["slow:*"])
    worker = HubClient(hub.url, key)
    started: dict[str, asyncio.Event] = {"async": asyncio.Event(), "sync": asyncio.Event()}
    loop = asyncio.get_running_loop()
    cancelled = asyncio.Event()

    @worker.handler("slow:async")
    async def slow_async(ctx: Context) -> str:
        started["async"].set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    @worker.handler("slow:sync", mode="thread")
    def slow_sync(ctx: Context) -> str:
        loop.call_soon_threadsafe(started["sync"].set)
        return "stopped" if ctx.wait_aborted(60) else "late"

    work = asyncio.create_task(worker.work("slow", concurrency=2))
    try:
        await worker.wait_working(10)
        async with HubClient(hub.url, hub.key("ops", publish=["slow:*"], admin=True)) as pub:
            for kind in ("async", "sync"):
                task = await pub.add(f"slow:{kind}")
                await asyncio.wait_for(started[kind].wait(), 10)
                await pub.abort(task.id, "stop")
                ended = await pub.wait_task(task.id, timeout=4)  # before the 5 s grace
                assert ended.status.value == "aborted" and ended.reason == "stop", kind
            assert cancelled.is_set()
    finally:
        worker.stop()
        await asyncio.wait_for(work, 20)
        await worker.close()
