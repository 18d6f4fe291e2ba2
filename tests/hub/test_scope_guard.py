"""A narrowed credential's filter never runs on tasks outside its read scope.

A ``$regex`` that backtracks catastrophically fails after a second on the value it
is stuck on: run on the tasks of actions a key may not read, that error (or its
time) told the key whether a hidden value started with a guess, one character at
a time. The scope is looked at first, and the client's filter only within it."""

from __future__ import annotations

import pytest

from conveyor.client import HubClient
from conveyor.errors import QueryError, ValidationError
from conveyor.query._regex import compile_regex, search

from ._rest_helpers import API, client
from .conftest import RunningHub

STUCK = "^(z|zz)+$"            # exponential on "zzz...z!"
HIDDEN = "z" * 40 + "!"


def test_the_pattern_is_stuck_on_the_hidden_value() -> None:
    with pytest.raises(QueryError, match="ran longer than"):
        search(compile_regex(STUCK, 0), HIDDEN)


async def test_a_narrowed_key_cannot_probe_hidden_values_with_a_regex(
        hub: RunningHub) -> None:
    await hub.app.add("secret:keep", {"pw": HIDDEN})
    await hub.app.add("mail:send", {"pw": "short"})
    shop = hub.key("shop", publish=["mail:*"])
    where = {"payload.pw": {"$regex": STUCK}}
    async with client(hub, shop) as http:
        count = await http.post(f"{API}/tasks/count", json={"filter": where})
        assert count.status_code == 200, count.text
        assert count.json()["count"] == 0
        found = await http.post(f"{API}/tasks/search", json={"filter": where})
        assert found.status_code == 200, found.text
        assert found.json()["tasks"] == []

    async with HubClient(hub.url, shop) as ws:
        live = ws.live(where)
        snapshot = await live.__anext__()
        assert snapshot.type == "snapshot" and list(snapshot.tasks) == []
        await hub.app.add("secret:keep", {"pw": HIDDEN})  # another hidden one changes
        seen = await ws.add("mail:send", {"pw": "zz"})
        added = await live.__anext__()  # not bad_filter: the hidden task was not looked at
        assert added.type == "added" and added.task_id == seen.id
        await live.aclose()


async def test_the_hub_bounds_its_clients_patterns_not_its_own_scope(hub: RunningHub) -> None:
    """A client's patterns are bounded (1000 characters, 4000 per filter); the hub's read
    scope of a credential with many long patterns is not counted against them."""
    globs = [f"svc-{i}-" + "x" * 150 + ":*" for i in range(30)]  # a scope of ~5000 characters
    wide = hub.key("wide", publish=globs)
    await hub.app.add(globs[3].replace("*", "job"), {"n": 1})
    async with client(hub, wide) as http:
        found = await http.post(f"{API}/tasks/search", json={"filter": {"payload.n": 1}})
        assert found.status_code == 200, found.text
        assert len(found.json()["tasks"]) == 1
        long = {"payload.s": {"$regex": "a" * 1001}}
        refused = await http.post(f"{API}/tasks/count", json={"filter": long})
        assert refused.status_code == 422 and "too long" in refused.text, refused.text
        added = await http.post(f"{API}/tasks", json={
            "action": globs[0].replace("*", "x"),
            "concurrency": [{"query": {"payload.n": {"$regex": "b" * 1000}}}]})
        assert added.status_code == 201, added.text  # its scope is not counted against it
        too_long = await http.post(f"{API}/tasks", json={
            "action": globs[0].replace("*", "x"),
            "concurrency": [{"query": {"payload.n": {"$regex": "b" * 1001}}}]})
        assert too_long.status_code == 422, too_long.text
        assert "concurrency[0].query.payload.n.$regex" in too_long.text
    # the embedded API is not bounded (a stored condition is parsed again at each claim)
    assert await hub.app.count({"payload.s": {"$regex": "a" * 1001}}) == 0


@pytest.mark.parametrize("rights", [{"admin": True}, {"publish": ["*"]}])
async def test_every_credential_s_conditions_are_bounded(hub: RunningHub,
                                                         rights: dict[str, object]) -> None:
    """An admin's conditions, and those of a key that may read every action, are
    stored as given but bounded all the same (they were not: a 1001-character
    pattern was stored), over REST and WebSocket; nothing is added."""
    key = hub.key("broad", **rights)
    condition = {"query": {"payload.n": {"$regex": "b" * 1001}}}
    async with client(hub, key) as http:
        refused = await http.post(f"{API}/tasks", json={"action": "cond:x",
                                                        "concurrency": [condition]})
        assert refused.status_code == 422, refused.text
        assert "concurrency[0].query.payload.n.$regex" in refused.text
        five = {"query": {"$or": [{"payload.n": {"$regex": c * 1000}} for c in "abcde"]}}
        refused = await http.post(f"{API}/tasks", json={"action": "cond:x",
                                                        "concurrency": five})
        assert refused.status_code == 422, refused.text
    async with HubClient(hub.url, key) as ws:
        with pytest.raises(ValidationError, match=r"concurrency\[0\].query.payload.n.\$regex"):
            await ws.add("cond:x", concurrency=condition)
    assert await hub.app.count({"action": "cond:x"}) == 0
