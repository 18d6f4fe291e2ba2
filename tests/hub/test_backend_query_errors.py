"""A filter a backend cannot run (on PostgreSQL: a ``$regex`` it cannot express with
Python's meaning) is the caller's mistake: REST answers ``invalid_query`` and a live
query ``bad_filter``, both with the path into the caller's own filter, also when the
hub added the credential's read scope to it. On SQLite the same pattern runs (the
documented difference), which the same test checks there."""

from __future__ import annotations

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
