"""REST: abort, retry, prioritize and delete (admin only)."""

from __future__ import annotations

import json

from ._rest_helpers import API, client, error_of, eventually, make_keys, worker_hub
from .conftest import RunningHub

__all__ = ["worker_hub"]

T = f"{API}/tasks"


async def test_abort_a_queued_and_a_running_task(worker_hub: RunningHub) -> None:
    keys = make_keys(worker_hub)
    async with client(worker_hub, keys.admin) as http:
        queued = (await http.post(T, json={"action": "job:slow", "delay": 600})).json()
        r = await http.post(f"{T}/{queued['id']}/abort", json={"reason": "not needed"})
        assert r.status_code == 200
        assert r.json()["status"] == "aborted" and r.json()["reason"] == "not needed"
        assert r.json()["public_url"].endswith(queued["id"])

        running = (await http.post(T, json={"action": "job:slow"})).json()

        async def started() -> bool:
            return (await worker_hub.app.get(running["id"])).status.value == "running"

        await eventually(started)
        r = await http.post(f"{T}/{running['id']}/abort")  # no body: reason "aborted"
        assert r.status_code == 200
        assert r.json()["status"] == "running" and r.json()["abort_requested"] == "aborted"
        ended = await http.get(f"{T}/{running['id']}/wait", params={"timeout": 10})
        assert ended.status_code == 200 and ended.json()["status"] == "aborted"
        error_of(await http.post(f"{T}/{running['id']}/abort"), 409, "invalid_transition")


async def test_retry_a_failed_task(worker_hub: RunningHub) -> None:
    keys = make_keys(worker_hub)
    async with client(worker_hub, keys.admin) as http:
        task = (await http.post(T, json={"action": "job:fail"})).json()
        failed = (await http.get(f"{T}/{task['id']}/wait", params={"timeout": 10})).json()
        assert failed["status"] == "failed" and failed["attempts"] == 1
        r = await http.post(f"{T}/{task['id']}/retry", json={"delay": 0})
        assert r.status_code == 200 and r.json()["status"] == "queued"
        again = (await http.get(f"{T}/{task['id']}/wait", params={"timeout": 10})).json()
        assert again["status"] == "failed" and again["attempts"] == 2
        assert len(again["errors"]) == 2
        r = await http.post(f"{T}/{task['id']}/retry", json={"delay": 3600})
        assert r.json()["status"] == "queued" and r.json()["run_at"] > again["finished_at"] + 3000


async def test_prioritize_a_queued_task(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    task = await hub.app.add("a:x")
    async with client(hub, admin) as http:
        r = await http.post(f"{T}/{task.id}/prioritize", json={"priority": -7.5})
        assert r.status_code == 200 and r.json()["priority"] == -7.5
        assert (await hub.app.get(task.id)).priority == -7.5
        r = await http.post(f"{T}/{task.id}/prioritize", json={"priority": 3})
        assert r.json()["priority"] == 3


async def test_delete_one_by_ids_and_by_filter(hub: RunningHub) -> None:
    admin = hub.key("admin", admin=True)
    tasks = await hub.app.add_many([("a:x", i) for i in range(6)])
    for t in tasks[:5]:
        await hub.app.abort(t.id)
    ids = [t.id for t in tasks]
    async with client(hub, admin) as http:
        r = await http.delete(f"{T}/{ids[0]}")
        assert r.status_code == 200 and r.json() == {"deleted": [ids[0]]}
        error_of(await http.get(f"{T}/{ids[0]}"), 404)
        # by ids: unfinished and unknown ones are left alone
        r = await http.post(f"{T}/delete", json={"ids": [ids[1], ids[5], ids[0], ids[1]]})
        assert r.status_code == 200 and r.json() == {"deleted": [ids[1]]}
        # by filter: only finished tasks are deleted
        r = await http.post(f"{T}/delete", json={"filter": {"payload": {"$gte": 3}}})
        assert sorted(r.json()["deleted"]) == sorted(ids[3:5])
        r = await http.post(f"{T}/delete", json={"filter": {}})
        assert r.json() == {"deleted": [ids[2]]}
        left = await http.get(T, params={"filter": json.dumps({})})
        assert [t["id"] for t in left.json()["tasks"]] == [ids[5]]
    assert [t.id for t in await hub.app.find()] == [ids[5]]
