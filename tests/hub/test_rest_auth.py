"""REST: who may do what. Keys, rights per action, no leaks, revocation, rate limits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore

from ._rest_helpers import API, client, error_of
from ._ws_helpers import eventually
from .conftest import RunningHub, hub_db_url, running_hub

T = f"{API}/tasks"
ID = "01a00000-0000-7000-8000-000000000000"


@pytest.fixture
async def lenient_hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    """A hub with credentials that never locks a client out."""
    store = CredentialStore(tmp_path / "credentials.json")
    app = Conveyor(hub_db_url(tmp_path))
    config = HubConfig(port=0, credentials_path=str(store.path), login_failures=10**6)
    async with running_hub(app, config, store) as running:
        yield running


def every_route(task_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", "/healthz", {}), ("GET", "/readyz", {}), ("GET", "/metrics", {}),
        ("GET", "/openapi.json", {}),
        ("POST", T, {"json": {"action": "mail:send"}}),
        ("POST", f"{T}/batch", {"json": {"tasks": [{"action": "mail:send"}]}}),
        ("GET", T, {}), ("POST", f"{T}/search", {"json": {}}),
        ("GET", f"{T}/count", {}), ("POST", f"{T}/count", {"json": {}}),
        ("GET", f"{T}/{task_id}", {}), ("GET", f"{T}/{task_id}/wait", {"params": {"timeout": 0}}),
        ("GET", f"{T}/{task_id}/logs", {}),
        ("POST", f"{T}/{task_id}/abort", {}), ("POST", f"{T}/{task_id}/retry", {}),
        ("POST", f"{T}/{task_id}/prioritize", {"json": {"priority": 1}}),
        ("DELETE", f"{T}/{task_id}", {}), ("POST", f"{T}/delete", {"json": {"ids": [task_id]}}),
        ("GET", f"{API}/stats", {}), ("GET", f"{API}/workers", {}),
    ]


async def test_every_route_needs_a_valid_key(lenient_hub: RunningHub) -> None:
    hub = lenient_hub
    task = await hub.app.add("mail:send")
    admin = hub.key("admin", admin=True)
    revoked = hub.key("gone", admin=True)
    assert hub.credentials is not None
    hub.credentials.revoke("gone")
    for headers in [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {revoked}"},
                    {"X-Conveyor-Key": admin[:-2] + "xx"}, {"Authorization": "Basic abc"}]:
        async with client(hub) as http:
            for method, path, kwargs in every_route(task.id):
                r = await http.request(method, path, headers=headers, **kwargs)
                error_of(r, 401, "unauthorized")
                assert r.headers["www-authenticate"] == "Bearer"
    assert await hub.app.count() == 1
    assert (await hub.app.get(task.id)).status.value == "queued"
    # the same key works in either header
    async with client(hub) as http:
        assert (await http.get("/healthz", headers={"X-Conveyor-Key": admin})).status_code == 200
        assert (await http.get("/metrics", headers={"Authorization": f"bearer {admin}"})
                ).status_code == 200


async def test_permission_matrix(lenient_hub: RunningHub) -> None:
    hub = lenient_hub
    mail = await hub.app.add("mail:send", {"to": "a"})
    geo = await hub.app.add("geo:code", {"q": "b"})
    keys = {"admin": hub.key("admin", admin=True),
            "publisher": hub.key("publisher", publish=["mail:*"]),
            "subscriber": hub.key("subscriber", subscribe=["geo:*"]),
            "reader": hub.key("reader", read=["geo:*"])}
    # who may publish what
    publish = {("admin", "mail:x"): 201, ("admin", "geo:x"): 201,
               ("publisher", "mail:x"): 201, ("publisher", "geo:x"): 403,
               ("subscriber", "mail:x"): 403, ("subscriber", "geo:x"): 403,
               ("reader", "mail:x"): 403, ("reader", "geo:x"): 403}
    for (who, action), status in publish.items():
        async with client(hub, keys[who]) as http:
            before = await hub.app.count()
            r = await http.post(T, json={"action": action})
            assert r.status_code == status, (who, action, r.text)
            if status == 403:
                error_of(r, 403, "forbidden", who, action)
                assert await hub.app.count() == before
    # a batch with one forbidden task adds nothing
    async with client(hub, keys["publisher"]) as http:
        before = await hub.app.count()
        r = await http.post(f"{T}/batch", json={"tasks": [{"action": "mail:a"},
                                                          {"action": "geo:b"}]})
        error_of(r, 403, "forbidden", "task 1", "geo:b")
        assert await hub.app.count() == before
    # who may read which task: the others are 404, exactly like a missing task
    read = {("admin", mail.id): 200, ("admin", geo.id): 200,
            ("publisher", mail.id): 200, ("publisher", geo.id): 404,
            ("subscriber", mail.id): 404, ("subscriber", geo.id): 200,
            ("reader", mail.id): 404, ("reader", geo.id): 200}
    for (who, task_id), status in read.items():
        async with client(hub, keys[who]) as http:
            for suffix, params in [("", {}), ("", {"logs": "true"}), ("/wait", {"timeout": 0}),
                                   ("/logs", {})]:
                r = await http.get(f"{T}/{task_id}{suffix}", params=params)
                if status == 200:
                    assert r.status_code in (200, 202), (who, suffix, r.text)
                else:
                    assert error_of(r, 404, "not_found") == f"no task with id {task_id}"
    # control needs the admin right, whatever the task (and before looking it up)
    for who in ("publisher", "subscriber", "reader"):
        async with client(hub, keys[who]) as http:
            for task_id in (mail.id, geo.id, ID):
                for method, path, body in [
                        ("POST", f"{T}/{task_id}/abort", None),
                        ("POST", f"{T}/{task_id}/retry", None),
                        ("POST", f"{T}/{task_id}/prioritize", {"priority": 5}),
                        ("DELETE", f"{T}/{task_id}", None),
                        ("POST", f"{T}/delete", {"ids": [task_id]}),
                        ("POST", f"{T}/delete", {"filter": {}})]:
                    r = await http.request(method, path, json=body)
                    error_of(r, 403, "forbidden", "admin")
    assert (await hub.app.get(mail.id)).status.value == "queued"
    assert (await hub.app.get(geo.id)).priority == 0
    async with client(hub, keys["admin"]) as http:
        r = await http.post(f"{T}/{geo.id}/prioritize", json={"priority": 5})
        assert r.status_code == 200 and r.json()["priority"] == 5


async def test_find_count_and_stats_never_leak_other_actions(lenient_hub: RunningHub) -> None:
    hub = lenient_hub
    actions = ["secret:x", "mail:send", "geo:code", "mailbox", "mail:bulk", "xmail:send",
               "secret:y", "mail:send", "geo:zone", "MAIL:send"]
    await hub.app.add_many([(a, {"i": i}) for i, a in enumerate(actions)])
    publisher = hub.key("publisher", publish=["mail:*"])
    both = hub.key("both", publish=["mail:send"], subscribe=["geo:?one"])
    nothing = hub.key("nothing")
    async with client(hub, publisher) as http:
        async def find(**params: Any) -> list[Any]:
            r = await http.get(T, params=params)
            assert r.status_code == 200, r.text
            return [(t["action"], t["payload"]["i"]) for t in r.json()["tasks"]]

        mine = [("mail:send", 1), ("mail:bulk", 4), ("mail:send", 7)]
        assert await find(sort="created_at") == mine
        # limit and skip apply to the readable tasks only: never a short page
        assert await find(sort="created_at", limit=2) == mine[:2]
        assert await find(sort="created_at", limit=2, skip=2) == mine[2:]
        assert await find(sort="created_at", skip=1) == mine[1:]
        # filters that try to reach further still see only mail:*
        for attempt in [{"action": {"$regex": ".*"}}, {"action": "secret:x"},
                        {"$or": [{"action": "secret:x"}, {"action": "mail:bulk"}]},
                        {"$not": {"action": "mail:send"}},
                        {"action": {"$in": ["secret:y", "geo:code", "mail:send"]}}]:
            found = await find(filter=json.dumps(attempt), sort="created_at")
            assert all(a.startswith("mail:") for a, _ in found), (attempt, found)
            count = (await http.get(f"{T}/count", params={"filter": json.dumps(attempt)})
                     ).json()["count"]
            assert count == len(found), attempt
        post = await http.post(f"{T}/search", json={"filter": {"$not": {"action": "mail:send"}},
                                                    "limit": 10})
        assert [t["action"] for t in post.json()["tasks"]] == ["mail:bulk"]
        assert (await http.get(f"{T}/count")).json() == {"count": 3}
        assert (await http.post(f"{T}/count", json={})).json() == {"count": 3}
        stats = (await http.get(f"{API}/stats")).json()["stats"]
        assert stats == {"mail:send": {"queued": 2}, "mail:bulk": {"queued": 1}}
    async with client(hub, both) as http:
        r = await http.get(T, params={"sort": "created_at"})
        assert [t["action"] for t in r.json()["tasks"]] == ["mail:send", "mail:send",
                                                            "geo:zone"]
        assert set((await http.get(f"{API}/stats")).json()["stats"]) == {"mail:send",
                                                                       "geo:zone"}
    reader = hub.key("reader", read=["geo:*", "secret:y"])
    async with client(hub, reader) as http:
        r = await http.get(T, params={"sort": "created_at", "filter": json.dumps(
            {"action": {"$regex": ".*"}})})
        assert [t["action"] for t in r.json()["tasks"]] == ["geo:code", "secret:y", "geo:zone"]
        assert (await http.get(f"{T}/count")).json() == {"count": 3}
        assert set((await http.get(f"{API}/stats")).json()["stats"]) == {
            "geo:code", "secret:y", "geo:zone"}
    async with client(hub, nothing) as http:
        assert (await http.get(T)).json()["tasks"] == []
        assert (await http.get(f"{T}/count")).json() == {"count": 0}
        assert (await http.get(f"{API}/stats")).json() == {"stats": {}}


async def test_a_revoked_key_stops_working_within_a_second(hub: RunningHub) -> None:
    key = hub.key("temp", publish=["mail:*"])
    assert hub.credentials is not None
    async with client(hub, key) as http:
        assert (await http.get(f"{API}/stats")).status_code == 200
        # revoked by another process (as `conveyor credentials revoke` does): the file changes
        CredentialStore(hub.credentials.path).revoke("temp")
        revoked_at = time.monotonic()
        while True:
            r = await http.get(f"{API}/stats")
            if r.status_code == 401:
                break
            assert time.monotonic() - revoked_at < 1.0, "the revoked key still works"
            await asyncio.sleep(0.02)
        error_of(r, 401, "unauthorized", "revoked")
        error_of(await http.post(T, json={"action": "mail:send"}), 401)
    assert await hub.app.count() == 0


async def test_repeated_failed_logins_are_rate_limited(hub: RunningHub) -> None:
    good = hub.key("good", admin=True)
    async with client(hub) as http:
        for _ in range(5):
            error_of(await http.get(f"{API}/stats", headers={"Authorization": "Bearer bad"}),
                     401)
        r = await http.get(f"{API}/stats", headers={"Authorization": f"Bearer {good}"})
        error_of(r, 429, "rate_limited", "too many failed logins")
        # the lockout lasts 60 s: Retry-After says how much of it is left
        assert 1 <= int(r.headers["Retry-After"]) <= 60, r.headers
        error_of(await http.post(T, headers={"Authorization": f"Bearer {good}"},
                                 json={"action": "a"}), 429)
    assert await hub.app.count() == 0


async def test_an_insecure_hub_needs_no_key(insecure_hub: RunningHub) -> None:
    async with client(insecure_hub) as http:
        r = await http.post(T, json={"action": "any:thing"})
        assert r.status_code == 201
        task_id = r.json()["id"]
        assert (await http.post(f"{T}/{task_id}/abort")).json()["status"] == "aborted"
        assert (await http.get("/metrics")).status_code == 200
        document = (await http.get("/openapi.json")).json()
        assert document["security"] == []


async def test_a_broken_credentials_file_keeps_the_keys_read_before(
        hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    """A credentials file that cannot be read (a half-finished edit by hand) leaves the
    credentials read before in use, is logged once (not every quarter second), and is
    read again once it is whole."""
    good = hub.key("good", admin=True)
    assert hub.credentials is not None
    path = Path(hub.credentials.path)
    whole = await asyncio.to_thread(path.read_text)
    caplog.set_level("WARNING", logger="conveyor.hub")
    store = hub.credentials
    reload, failed_reads = store.reload, []

    def counted_reload() -> bool:  # the hub's watcher reads the file through this
        try:
            return reload()
        except Exception:
            failed_reads.append(1)
            raise

    store.reload = counted_reload  # type: ignore[method-assign]
    await asyncio.to_thread(path.write_text, '{"version": 1, "credentials": [')

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "credentials" in r.getMessage()]

    await eventually(warnings, timeout=5)  # the broken file is reported
    async with client(hub) as http:
        r = await http.get(f"{API}/stats", headers={"Authorization": f"Bearer {good}"})
        assert r.status_code == 200, r.text
        seen = len(failed_reads)
        await eventually(lambda: len(failed_reads) >= seen + 4)  # four more failed reads
        assert len(warnings()) == 1, warnings()
        assert "stay in use" in warnings()[0]
        await asyncio.to_thread(path.write_text, whole)
        other = hub.key("other", admin=True)  # written by the store: the file is whole again

        async def other_works() -> bool:
            r = await http.get(f"{API}/stats", headers={"Authorization": f"Bearer {other}"})
            return r.status_code == 200

        await eventually(other_works, timeout=5)  # the repaired file is read
