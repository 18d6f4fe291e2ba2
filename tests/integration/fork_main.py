"""Use an app, fork, use it in the child and again in the parent (test_fork.py).

Usage: python -m tests.integration.fork_main sync|async STORAGE_URL
       python -m tests.integration.fork_main hub HUB_URL (a hub without credentials)
Prints one JSON line: what the child and the parent saw. Exits 1 on any error; a
child that hangs (the parent's loop thread does not exist in it) is killed by the
test's timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from conveyor import Conveyor, SyncConveyor
from conveyor.client import SyncHubClient

STARTED: list[str] = []  # task ids, from an on() callback registered in the parent


def double(ctx: Any) -> int:
    return int(ctx.payload) * 2


def started(event: Any) -> None:
    STARTED.append(event.task_id)


def child_sync(app: SyncConveyor, first: str) -> dict[str, Any]:
    app.start()  # the parent never ran a worker: the child works on the parent's task
    task = app.add("fork:double", 21)
    seen = {"mine": app.wait(task.id, timeout=20), "parents": app.wait(first, timeout=20),
            "started": sorted(STARTED) == sorted([task.id, first])}
    app.close()
    return seen


async def child_async(app: Conveyor, first: str) -> dict[str, Any]:
    await app.start()
    task = await app.add("fork:double", 21)
    seen = {"mine": await app.wait(task.id, timeout=20),
            "parents": await app.wait(first, timeout=20)}
    await app.close()
    return seen


def run_child(fn: Any) -> None:
    try:
        seen = fn()
        print(json.dumps({"child": seen}), flush=True)
        code = 0
    except BaseException as exc:  # report anything, then leave without the parent's atexit
        print(json.dumps({"child_error": f"{type(exc).__name__}: {exc}"}), flush=True)
        code = 1
    os._exit(code)


def main(mode: str, url: str) -> int:
    if mode == "hub":
        client = SyncHubClient(url)
        first = client.add("fork:hub", 5).id  # connected: loop thread, WebSocket
        pid = os.fork()
        if pid == 0:
            run_child(lambda: {"mine": client.get(client.add("fork:hub", 21).id).payload,
                               "parents": client.get(first).payload})
        _, status = os.waitpid(pid, 0)
        after = {"first": client.get(first).status.value}
        client.close()
    elif mode == "sync":
        sapp = SyncConveyor(url)
        sapp.register("fork:double", double)
        sapp.on("task.started", started)
        first = sapp.add("fork:double", 5).id  # opened: loop thread, connections, relay
        pid = os.fork()
        if pid == 0:
            run_child(lambda: child_sync(sapp, first))
        _, status = os.waitpid(pid, 0)
        after = {"count": sapp.count({"action": "fork:double"}),
                 "first": sapp.get(first).status.value}
        sapp.close()
    else:
        aapp = Conveyor(url)
        aapp.register("fork:double", double)
        first = asyncio.run(aapp.add("fork:double", 5)).id
        pid = os.fork()
        if pid == 0:
            run_child(lambda: asyncio.run(child_async(aapp, first)))
        _, status = os.waitpid(pid, 0)

        async def parent() -> dict[str, Any]:
            seen = {"count": await aapp.count({"action": "fork:double"}),
                    "first": (await aapp.get(first)).status.value}
            await aapp.close()
            return seen

        after = asyncio.run(parent())
    print(json.dumps({"child_exit": os.waitstatus_to_exitcode(status), "parent": after}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
