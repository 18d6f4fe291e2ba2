"""No one acts beyond their credential: every credential x action x operation."""

from __future__ import annotations

import asyncio
from typing import Any

from ._ws_helpers import Raw
from .conftest import RunningHub

CREDENTIALS: dict[str, dict[str, Any]] = {
    "pub_a": {"publish": ["a:*"]},
    "sub_a": {"subscribe": ["a:*"]},
    "both_b": {"publish": ["b:*"], "subscribe": ["b:*"]},
    "pub_a_sub_b": {"publish": ["a:x"], "subscribe": ["b:?"]},
    "read_b": {"read": ["b:*"]},
    "admin": {"admin": True},
    "nothing": {},
}
ACTIONS = ["a:x", "b:x"]


def allowed(name: str, action: str, operation: str) -> bool:
    rights = CREDENTIALS[name]
    if rights.get("admin"):
        return True
    prefix = action.split(":")[0]
    pub = any(p.split(":")[0] == prefix for p in rights.get("publish", ()))
    sub = any(p.split(":")[0] == prefix for p in rights.get("subscribe", ()))
    read = any(p.split(":")[0] == prefix for p in rights.get("read", ()))
    return {"publish": pub, "subscribe": sub}.get(operation, pub or sub or read)


async def test_the_permission_matrix(hub: RunningHub) -> None:
    keys = {name: hub.key(name, **rights) for name, rights in CREDENTIALS.items()}
    existing = {action: await hub.app.add(action, {"for": action}) for action in ACTIONS}
    failures = []
    for name, key in keys.items():
        ws = await Raw.open(hub.url, key)
        for action in ACTIONS:
            task_id = existing[action].id
            checks = {
                "publish": ({"type": "publish", "action": action, "payload": 1}, "published"),
                "subscribe": ({"type": "subscribe", "service": f"s-{name}",
                               "actions": [action]}, "subscribed"),
                "watch": ({"type": "watch", "task_id": task_id}, "watching"),
                "get": ({"type": "get", "task_id": task_id}, "task"),
                "wait": ({"type": "wait", "task_id": task_id, "timeout": 0.05},
                         None),
            }
            for operation, (message, ok_type) in checks.items():
                message["id"] = f"{operation}-{action}"
                reply = await ws.request(message)
                granted = reply["type"] != "error" or reply["code"] == "wait_timeout"
                if reply["type"] == "error" and not granted:
                    assert reply["code"] == "forbidden", reply
                if ok_type is not None and granted:
                    assert reply["type"] == ok_type, reply
                if granted != allowed(name, action, operation):
                    failures.append((name, action, operation, reply))
                if operation == "subscribe" and granted:
                    await ws.request({"type": "unsubscribe", "subscription": message["id"]},
                                     "ok")
            # the task stream endpoint
            stream = await Raw.open(hub.url, key, path=f"/ws/tasks/{task_id}")
            first = await stream.recv()
            granted = first["type"] == "watching"
            if not granted:
                assert first["code"] == "forbidden" and await stream.closed() == 4003
            else:
                await stream.close()
            if granted != allowed(name, action, "read"):
                failures.append((name, action, "stream", first))
        # live queries: only readable actions, or refused when nothing is readable
        reply = await ws.request({"type": "live", "filter": {}})
        readable = {a for a in ACTIONS if allowed(name, a, "read")}
        if not readable:
            if reply["type"] != "error" or reply["code"] != "forbidden":
                failures.append((name, "*", "live", reply))
        else:
            got = {t["action"] for t in reply["tasks"]}
            if not got or not got <= readable:
                failures.append((name, "*", "live", sorted(got)))
        # abort, a control action: the admin right only, whatever else is granted
        for action in ACTIONS:
            target = await hub.app.add(action, {"abort": name})
            reply = await ws.request({"type": "abort", "id": f"abort-{action}",
                                      "task_id": target.id})
            granted = reply["type"] == "task"
            if not granted:
                assert reply["code"] == "forbidden", reply
            status = (await hub.app.get(target.id)).status.value
            if granted != (name == "admin") or (status == "aborted") != granted:
                failures.append((name, action, "abort", reply, status))
        await ws.close()
    assert not failures, "\n".join(map(str, failures))


async def test_no_events_of_unreadable_actions_leak(hub: RunningHub) -> None:
    worker_key = hub.key("worker", subscribe=["*"], admin=True)
    watchers = {name: await Raw.open(hub.url, hub.key(name, **CREDENTIALS[name]))
                for name in ("pub_a", "sub_a", "both_b", "pub_a_sub_b", "read_b")}
    for ws in watchers.values():
        await ws.request({"type": "live", "id": "all", "filter": {}}, "snapshot")
        await ws.request({"type": "live", "id": "running", "filter": {"status": "running"},
                          "fields": ["action", "status"]}, "snapshot")
    # a restricted service only ever gets offers of its own actions
    a_service = await Raw.open(hub.url, hub.key("a_only", subscribe=["a:*"]))
    await a_service.request({"type": "subscribe", "id": "s", "service": "a-only",
                             "actions": ["a:x"], "capacity": 10}, "subscribed")
    worker = await Raw.open(hub.url, worker_key)
    await worker.request({"type": "subscribe", "id": "s", "service": "all",
                          "actions": ["b:x"], "capacity": 10}, "subscribed")
    tasks = await hub.app.add_many([(a, {"i": i}) for i in range(10) for a in ACTIONS])

    async def serve(ws: Raw, action: str, count: int) -> None:
        for _ in range(count):
            offer = await ws.expect("offer")
            assert offer["task"]["action"] == action
            await ws.send([{"type": "pickup", "task_id": offer["task_id"]},
                           {"type": "log", "task_id": offer["task_id"], "message": "secret"},
                           {"type": "return", "task_id": offer["task_id"], "result": "r"}])

    await asyncio.wait_for(asyncio.gather(serve(a_service, "a:x", 10),
                                          serve(worker, "b:x", 10)), 30)
    for task in tasks:
        await hub.app.wait(task.id, timeout=10)
    # every watcher saw its readable tasks end; nothing of another action reached it
    for name, ws in watchers.items():
        readable = {a for a in ACTIONS if allowed(name, a, "read")}
        want = {t.id for t in tasks if t.action in readable}
        done: set[str] = set()
        while done != want:
            msg = await ws.expect("changed", "all", timeout=20)
            if msg["task"]["status"] == "succeeded":
                done.add(msg["task"]["id"])
        readable_ids = {t.id for t in tasks if t.action in readable} | {
            t["id"] for m in ws.seen if m.get("type") == "snapshot" for t in m["tasks"]}
        leaked = [m for m in ws.seen if isinstance(m.get("task"), dict)
                  and m["task"].get("action") not in readable]
        leaked += [t for m in ws.seen if m.get("type") == "snapshot" for t in m["tasks"]
                   if t["action"] not in readable]
        leaked += [m for m in ws.seen if m.get("type") == "removed"
                   and m["task_id"] not in readable_ids]
        assert not leaked, (name, leaked[:3])
    for ws in (*watchers.values(), a_service, worker):
        await ws.close()
