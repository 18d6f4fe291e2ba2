"""Use an app, fork, use it in the child and again in the parent (test_fork.py).

Usage: python -m tests.integration.fork_main sync|async STORAGE_URL
       python -m tests.integration.fork_main hub HUB_URL (a hub without credentials)
       python -m tests.integration.fork_main stress sqlite:///PATH
Prints one JSON line: what the child and the parent saw. Exits 1 on any error; a
child that hangs (the parent's loop thread does not exist in it) is killed by the
test's timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import threading
import time
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


def stress(url: str, forks: int = 40) -> dict[str, Any]:
    """Fork many times while the app's SQLite threads are busy (the database thread
    reading, the change watcher following a writer); each child opens SQLite at once.
    A child that inherited a lock SQLite held in a parent thread hangs: counted."""
    app = SyncConveyor(url)
    app.on("task.added", lambda event: None)  # the change watcher runs
    app.add("fork:busy", 0)  # the database exists before the first fork
    stop = threading.Event()

    errors: list[str] = []
    progressed = threading.Event()  # set by the busy threads after each call

    def busy(work: Any) -> None:
        try:
            while not stop.is_set():
                work()
                progressed.set()
        except Exception as exc:  # the parent's app must go on working across the forks
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=busy, args=(work,), daemon=True) for work in (
        lambda: app.count({}), lambda: app.add("fork:busy", 1))]
    for thread in threads:
        thread.start()
    path = url.split("///", 1)[1]
    seen = {"ok": 0, "failed": 0, "hung": 0}
    for _ in range(forks):
        progressed.clear()  # the app's threads get on between two forks
        progressed.wait(10)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sqlite3.connect(path).execute("SELECT count(*) FROM conveyor_tasks").fetchone()
                code = 0
            except BaseException as exc:
                print(f"child: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            finally:
                os._exit(code)
        deadline = time.monotonic() + 5
        while (status := os.waitpid(pid, os.WNOHANG)) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                seen["hung"] += 1
                break
            time.sleep(0.001)
        else:
            seen["ok" if os.waitstatus_to_exitcode(status[1]) == 0 else "failed"] += 1
    stop.set()
    for thread in threads:
        thread.join()
    app.close()
    return {**seen, "parent_errors": errors}


def main(mode: str, url: str) -> int:
    if mode == "stress":
        print(json.dumps(stress(url)), flush=True)
        return 0
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
