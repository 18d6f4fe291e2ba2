"""A filter a backend cannot run (on PostgreSQL: a ``$regex`` it cannot express with
Python's meaning) is the caller's mistake: REST answers ``invalid_query`` and a live
query ``bad_filter``, both with the path into the caller's own filter, also when the
hub added the credential's read scope to it. On SQLite the same pattern runs (the
documented difference), which the same test checks there."""

from __future__ import annotations

import asyncio

from conveyor import Status

from ._rest_helpers import API, client
from ._ws_helpers import Raw
from .conftest import RunningHub

POSSESSIVE = {"payload.s": {"$regex": "a++"}}
PATH = "filter.payload.s.$regex"


async def test_a_pattern_the_backend_refuses_points_into_the_callers_filter(
        hub: RunningHub, hub_backend: str) -> None:
    await hub.app.add("x:one", {"s": "aaa"})
    refused = hub_backend == "postgres"
    for key in (hub.key("reader", read=["x:*"]), hub.key("admin", admin=True)):
        async with client(hub, key) as http:
            for path in ("search", "count"):
                r = await http.post(f"{API}/tasks/{path}", json={"filter": POSSESSIVE})
                if refused:
                    assert r.status_code == 422, r.text
                    error = r.json()["error"]
                    assert error["code"] == "invalid_query" and error["path"] == PATH, error
                else:
                    assert r.status_code == 200, r.text
        ws = await Raw.open(hub.url, key)
        try:
            for limit in (None, 5):
                query = {"type": "live", "filter": POSSESSIVE, "limit": limit}
                if refused:
                    error = await ws.request(query, "error")
                    assert error["code"] == "bad_filter" and error["path"] == PATH, error
                else:
                    snap = await ws.request(query, "snapshot")
                    assert snap["count"] == 1
        finally:
            await ws.close()
    assert [t.status for t in await hub.app.find()] == [Status.QUEUED]


HOSTILE = {"payload.s": {"$regex": "^(a|aa)+$"}}  # exponential on 'aaa...a!'


async def test_a_catastrophic_regex_fails_its_query_and_the_hub_goes_on(
        hub: RunningHub, hub_backend: str) -> None:
    """A ``$regex`` that backtracks catastrophically on a stored value (SQLite runs
    Python's patterns in the hub's process) fails after about a second: REST
    ``invalid_query``, a live query ``bad_filter`` (also one that was fine until
    such a value came); the hub answers other requests meanwhile and other live
    queries go on. (PostgreSQL's engine does not backtrack on this pattern: there
    the queries simply answer.)"""
    key = hub.key("admin", admin=True)
    ws = await Raw.open(hub.url, key)
    try:
        calm = await ws.request({"type": "live", "filter": {"action": "x:calm"}}, "snapshot")
        watched = await ws.request({"type": "live", "filter": HOSTILE}, "snapshot")
        assert watched["count"] == calm["count"] == 0
        await hub.app.add("x:one", {"s": "a" * 80 + "!"})
        async with client(hub, key) as http:
            search = asyncio.create_task(
                http.post(f"{API}/tasks/search", json={"filter": HOSTILE}))
            answered = 0  # /healthz answers while the search runs (about a second)
            while not search.done():
                assert (await http.get("/healthz")).status_code == 200
                answered += 0 if search.done() else 1
            r = await search
        if hub_backend == "postgres":
            assert r.status_code == 200 and r.json()["tasks"] == [], r.text
            return
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_query" and "ran longer than" in error["message"]
        # many while it ran (with the match holding the GIL, none until it ended)
        assert answered >= 5, answered
        ended = await ws.expect("error", watched["id"], timeout=15)
        assert ended["code"] == "bad_filter" and "ran longer than" in ended["message"]
        # the other live query still follows its tasks
        await hub.app.add("x:calm", {"s": "ok"})
        added = await ws.expect("added", calm["id"])
        assert added["task"]["action"] == "x:calm"
    finally:
        await ws.close()


async def test_a_live_querys_regex_is_matched_off_the_event_loop(
        hub: RunningHub, hub_backend: str) -> None:
    """A live query whose filter holds a ``$regex`` matches each change on one of the
    hub's threads: a pattern stuck on a new value (its second, then ``bad_filter``)
    no longer holds the hub's event loop, and so every other client, meanwhile."""
    key = hub.key("admin", admin=True)
    ws = await Raw.open(hub.url, key)
    try:
        calm = await ws.request({"type": "live", "filter": {"action": "x:calm"}}, "snapshot")
        watched = await ws.request({"type": "live", "filter": HOSTILE}, "snapshot")
        async with client(hub, key) as http:
            ended = asyncio.create_task(ws.expect("error", watched["id"], timeout=15))
            await hub.app.add("x:one", {"s": "a" * 80 + "!"})
            answered = 0  # /healthz answers while the match runs (about a second)
            while not ended.done():
                assert (await http.get("/healthz")).status_code == 200
                answered += 0 if ended.done() else 1
            error = await ended
        assert error["code"] == "bad_filter" and "ran longer than" in error["message"]
        # many while it ran (matched on the event loop, none until it ended)
        assert answered >= 5, answered
        await hub.app.add("x:calm", {"s": "ok"})
        added = await ws.expect("added", calm["id"])
        assert added["task"]["action"] == "x:calm"
    finally:
        await ws.close()
