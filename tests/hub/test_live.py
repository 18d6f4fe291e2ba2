"""Live queries: a snapshot, then added / changed / removed, in order and without gaps."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor, Task
from conveyor.errors import QueryError
from conveyor.events import Event
from conveyor.hub import _live
from conveyor.model import Progress
from conveyor.storage import Lease

from ._ws_helpers import Raw, eventually, make_hub, read_line, reap, spawn, ws_state
from .conftest import RunningHub, hub_db_url

ROOT = Path(__file__).resolve().parents[2]


# the same query with the action as a $regex: a group whose client filter holds one
# matches tasks on the hub's threads (its changes through an inbox), not on the loop
by_regex = pytest.mark.parametrize("as_regex", [False, True], ids=["plain", "regex"])


def action(name: str, as_regex: bool) -> Any:
    """The condition on ``action`` that takes exactly ``name``: plain or a ``$regex``."""
    return {"$regex": "^" + name + "$"} if as_regex else name


async def live(ws: Raw, live_id: Any = "q", **query: Any) -> dict[str, Any]:
    return await ws.request({"type": "live", "id": live_id, **query}, "snapshot")


async def next_change(ws: Raw, live_id: Any = "q") -> dict[str, Any]:
    return await ws.expect(None, live_id, timeout=10)


@by_regex
async def test_snapshot_then_changes_in_order(insecure_hub: RunningHub, as_regex: bool) -> None:
    app = insecure_hub.app
    early = await app.add("feed:a", 1)
    await app.add("feed:other", 2)
    ws = await Raw.open(insecure_hub.url)
    where = {"action": action("feed:a", as_regex), "status": {"$in": ["queued", "running"]}}
    snap = await live(ws, filter=where)
    groups = ws_state(insecure_hub).live.groups.values()
    assert [group.offloaded for group in groups] == [as_regex]
    assert snap["seq"] == 1 and snap["count"] == 1 and snap["more"] is False
    assert [t["id"] for t in snap["tasks"]] == [early.id]
    later = await app.add("feed:a", 3)
    added = await next_change(ws)
    assert added == {**added, "type": "added", "seq": 2}
    assert added["task"]["id"] == later.id and added["task"]["status"] == "queued"
    await app.prioritize(later.id, 5)
    changed = await next_change(ws)
    assert changed["type"] == "changed" and changed["seq"] == 3
    assert changed["task"]["priority"] == 5
    await app.abort(early.id)
    removed = await next_change(ws)
    assert removed == {"type": "removed", "id": "q", "seq": 4, "task_id": early.id,
                       "version": 2}
    # a second subscription of the same query gets the group's current state
    snap2 = await live(ws, "q2", filter=where)
    assert [t["id"] for t in snap2["tasks"]] == [later.id]
    assert (await ws.request({"type": "unlive", "live": "q"}, "ok"))["type"] == "ok"
    await app.abort(later.id)
    gone = await next_change(ws, "q2")
    assert gone["type"] == "removed" and gone["seq"] == 2
    assert not [m for m in ws.inbox if m.get("id") == "q"]
    await ws.close()


async def test_fields_sort_and_validation(insecure_hub: RunningHub) -> None:
    app = insecure_hub.app
    for i in range(3):
        await app.add("v:x", {"n": i}, priority=-i)
    ws = await Raw.open(insecure_hub.url)
    snap = await live(ws, filter={"action": "v:x"}, sort="priority",
                      fields=["status", "payload"])
    assert [t["payload"]["n"] for t in snap["tasks"]] == [2, 1, 0]
    assert set(snap["tasks"][0]) == {"id", "version", "status", "payload"}
    bad = [
        ({"filter": {"priority": {"$gt": "a", "$nope": 1}}}, "bad_filter"),
        ({"filter": {"status": "sleeping"}}, "bad_filter"),
        ({"filter": [1]}, "bad_filter"),
        ({"filter": {}, "sort": "-nonsense"}, "bad_filter"),
        ({"filter": {}, "limit": -1}, "bad_filter"),
        ({"filter": {}, "fields": ["status", "secret"]}, "bad_message"),
        ({"filter": {}, "sort": "priority", "limit": 2, "skip": 1}, "bad_message"),  # ignored
    ]
    for i, (query, code) in enumerate(bad):
        error = await ws.request({"type": "live", "id": f"bad{i}", **query}, "error")
        assert error["code"] == code, (query, error)
        assert error["message"]
    error = await ws.request({"type": "live", "id": "p", "filter": {"$or": [{"a": 1}]}},
                             "error")
    assert error["path"] == "filter.$or[0].a" and "unknown field" in error["message"]
    await ws.close()


@by_regex
async def test_a_limited_window_follows_its_boundary(insecure_hub: RunningHub,
                                                     as_regex: bool) -> None:
    app = insecure_hub.app
    tasks = [await app.add("w:x", i, priority=i) for i in range(5)]
    ws = await Raw.open(insecure_hub.url)
    snap = await live(ws, filter={"action": action("w:x", as_regex), "status": "queued"},
                      sort="priority", limit=3)
    assert [t["payload"] for t in snap["tasks"]] == [0, 1, 2]
    await app.prioritize(tasks[4].id, -1)          # jumps into the window
    changes = [await next_change(ws), await next_change(ws)]
    assert {(c["type"], c.get("task_id") or c["task"]["id"]) for c in changes} == {
        ("removed", tasks[2].id), ("added", tasks[4].id)}
    # pushed out: `removed` carries the version it left at, its own (1)
    assert [c["version"] for c in changes if c["type"] == "removed"] == [1]
    await app.abort(tasks[0].id)                    # leaves: the next one moves in
    changes = [await next_change(ws), await next_change(ws)]
    assert {(c["type"], c.get("task_id") or c["task"]["id"]) for c in changes} == {
        ("removed", tasks[0].id), ("added", tasks[2].id)}
    # left by a change: the version of that change, as without a limit
    assert [c["version"] for c in changes if c["type"] == "removed"] == [2]
    seqs = [m["seq"] for m in ws.seen if m.get("id") == "q"]
    assert seqs == list(range(1, len(seqs) + 1))
    await ws.close()


@by_regex
async def test_changes_of_other_processes_and_full_rate_progress(tmp_path: Path,
                                                                 as_regex: bool) -> None:
    async with make_hub(tmp_path, insecure=True) as hub:
        ws = await Raw.open(hub.url)
        await live(ws, filter={"action": {"$regex": "^x:(other|remote)$"} if as_regex
                               else {"$in": ["x:other", "x:remote"]}})
        # another storage object on the same file: its changes arrive through the feed
        other = Conveyor(hub_db_url(tmp_path))
        task = await other.add("x:other", 1)
        added = await next_change(ws)
        assert added["type"] == "added" and added["task"]["id"] == task.id
        await other.abort(task.id)
        changed = await next_change(ws)
        assert changed["type"] == "changed" and changed["task"]["status"] == "aborted"
        await other.close()
        # a remote worker's progress: every update, not only the stored snapshots
        service = await Raw.open(hub.url)
        await service.request({"type": "subscribe", "id": "s", "service": "svc",
                               "actions": ["x:remote"]}, "subscribed")
        task = await hub.app.add("x:remote", None)
        await service.expect("offer")
        await service.send([{"type": "pickup", "task_id": task.id}] + [
            {"type": "update", "task_id": task.id, "current": i, "total": 50}
            for i in range(1, 51)])
        progress: list[Any] = []
        while len(progress) < 50 or progress[-1] != 50:
            msg = await next_change(ws)
            current = (msg.get("task") or {}).get("progress")
            if current is not None and (not progress or progress[-1] != current["current"]):
                progress.append(current["current"])
        assert progress == sorted(progress) and progress[-1] == 50
        await service.send({"type": "return", "task_id": task.id, "result": 1})
        done = await ws.expect("changed", "q", where=lambda m: m["task"]["status"] == "succeeded")
        assert done["task"]["result"] == 1
        await service.close()
        await ws.close()


async def test_two_hundred_subscribers_while_five_thousand_tasks_run(tmp_path: Path) -> None:
    """Every subscriber gets a gap-free, ordered stream that ends equal to a fresh query."""
    n_tasks, n_subs = 5000, 200
    db = hub_db_url(tmp_path)
    async with make_hub(tmp_path, max_pending=1_000_000, max_rate=100_000) as hub:
        key = hub.key("watcher", publish=["live:*"])
        query = {"$or": [{"status": {"$in": ["queued", "running"]}},
                         {"payload.n": {"$lt": 500}}]}
        subscribers = spawn("tests.hub._live_subscribers", hub.url, key, str(n_subs),
                            json.dumps(query), json.dumps(["status"]), stdin=True,
                            log=tmp_path / "subscribers.log")
        worker = spawn("conveyor.cli", "worker", "tests.hub._live_app:app", "--db",
                       db, "--concurrency", "50", stdout=False,
                       log=tmp_path / "worker.log")
        try:
            assert subscribers.stdin is not None
            assert (await read_line(subscribers, 120)).strip() == "ready"
            state = ws_state(hub)
            assert len(state.live.groups) == 1
            t0 = time.monotonic()
            for start in range(0, n_tasks, 500):
                await hub.app.add_many([("live:job", {"n": i})
                                        for i in range(start, start + 500)])
            await eventually(lambda: _all_done(hub.app, n_tasks), timeout=120, interval=0.2)
            ran = time.monotonic() - t0
            expected = {t.id: [t.status.value, t.version]
                        for t in await hub.app.find(query)}
            assert len(expected) == 500
            path = tmp_path / "expected.json"
            path.write_text(json.dumps(expected))
            subscribers.stdin.write(f"check {path}\n")
            subscribers.stdin.flush()
            result = json.loads(await read_line(subscribers, 120))
            print(f"\n{n_tasks} tasks ran in {ran:.1f} s; {n_subs} subscribers got "
                  f"{result['messages']} messages")
            assert result["gaps"] == 0 and result["backwards"] == 0
            assert result["ok"], result
            assert result["messages"] >= n_subs * n_tasks
        finally:
            reap(subscribers, worker)


async def _all_done(app: Conveyor, n: int) -> bool:
    return await app.count({"status": "succeeded"}) == n


@by_regex
async def test_deleted_tasks_leave_the_result(insecure_hub: RunningHub, as_regex: bool) -> None:
    app = insecure_hub.app
    task = await app.add("d:x", 1)
    await app.abort(task.id)
    ws = await Raw.open(insecure_hub.url)
    snap = await live(ws, filter={"action": action("d:x", as_regex)})
    assert [t["id"] for t in snap["tasks"]] == [task.id]
    windowed = await live(ws, "w", filter={"action": action("d:x", as_regex)}, limit=10)
    assert [t["id"] for t in windowed["tasks"]] == [task.id]
    await app.delete(task.id)
    # `version` is null for a deletion, with a limit (the window read again) or not
    for live_id in ("q", "w"):
        gone = await next_change(ws, live_id)
        assert gone == {"type": "removed", "id": live_id, "seq": 2, "task_id": task.id,
                        "version": None}
    assert await app.count({"action": "d:x"}) == 0
    await ws.close()


@by_regex
async def test_a_running_task_enters_by_its_progress(insecure_hub: RunningHub,
                                                     as_regex: bool) -> None:
    """A query on progress takes a running task as soon as its progress matches, with
    and without a limit (it came in only at the task's end: progress was applied to
    tasks already in the result)."""
    app = insecure_hub.app
    release = asyncio.Event()

    @app.handler("p:run")
    async def run(ctx: Context) -> str:
        ctx.progress(10, 100)
        ctx.progress(60, 100)
        await release.wait()
        return "ok"

    ws = await Raw.open(insecure_hub.url)
    try:
        where = {"progress.current": {"$gte": 50}, "status": "running",
                 "action": action("p:run", as_regex)}
        assert (await live(ws, "all", filter=where))["tasks"] == []
        assert (await live(ws, "top", filter=where, sort="-created_at", limit=5))["tasks"] == []
        await app.start()
        task = await app.add("p:run")
        for live_id in ("all", "top"):
            added = await next_change(ws, live_id)
            assert added["type"] == "added" and added["task"]["id"] == task.id
            assert added["task"]["status"] == "running"
            assert added["task"]["progress"]["current"] == 60
        release.set()
        assert await app.wait(task.id, timeout=10) == "ok"
        for live_id in ("all", "top"):
            removed = await next_change(ws, live_id)
            assert removed["type"] == "removed" and removed["task_id"] == task.id
    finally:
        release.set()
        await ws.close()


async def test_sort_objects_in_another_key_order_are_other_queries(
        insecure_hub: RunningHub) -> None:
    """A sort object's key order is its precedence: two live queries that differ only
    in it must not share one window (they did: the group key sorted the keys)."""
    app = insecure_hub.app
    a = await app.add("s:x", {"n": 2}, priority=1)
    b = await app.add("s:x", {"n": 1}, priority=2)
    ws = await Raw.open(insecure_hub.url)
    try:
        by_priority = await live(ws, "p", filter={"action": "s:x"},
                                 sort={"priority": 1, "payload.n": 1}, limit=1)
        by_n = await live(ws, "n", filter={"action": "s:x"},
                          sort={"payload.n": 1, "priority": 1}, limit=1)
        assert [t["id"] for t in by_priority["tasks"]] == [a.id]
        assert [t["id"] for t in by_n["tasks"]] == [b.id]
        assert [t.id for t in await app.find(sort={"payload.n": 1, "priority": 1},
                                             limit=1)] == [b.id]
    finally:
        await ws.close()


async def test_a_regex_query_takes_a_burst_in_order_or_ends_when_it_cannot_keep_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live query with a ``$regex`` matches off the event loop: a burst of changes
    (an add of many tasks) is matched in one trip to a match thread and sent in
    order; one that falls more than ``MAX_BEHIND`` changes behind ends with
    ``bad_filter`` instead of holding them all (every change of the hub comes to it)."""
    monkeypatch.setattr(_live, "MAX_BEHIND", 100)
    async with make_hub(tmp_path, insecure=True) as hub:
        app = hub.app
        ws = await Raw.open(hub.url)
        try:
            await live(ws, "all", filter={"action": action("b:x", True)})
            added = await app.add_many([("b:x", i) for i in range(50)])
            got = [await next_change(ws, "all") for _ in added]
            assert [(m["type"], m["task"]["id"]) for m in got] == [
                ("added", t.id) for t in added]
            assert [m["seq"] for m in got] == list(range(2, 52))

            await live(ws, "slow", filter={"action": action("c:x", True)})
            await app.add_many([("c:x", i) for i in range(101)])
            for live_id in ("all", "slow"):  # 101 changes of c:x came at once for both
                ended = await ws.expect("error", live_id)
                assert ended["code"] == "bad_filter" and "keep up" in ended["message"]
            assert not ws_state(hub).live.groups
        finally:
            await ws.close()


async def test_a_regex_query_past_its_cpu_budget_ends(
        insecure_hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``$regex`` that takes more than ``MATCH_CPU`` seconds of CPU on one task ends
    its live query (``bad_filter``) after that task, so that a slow pattern holds a
    match thread once, not on every change; a query without one goes on."""
    monkeypatch.setattr(_live, "MATCH_CPU", 0.0)  # every match is over it
    ws = await Raw.open(insecure_hub.url)
    try:
        await live(ws, "slow", filter={"action": action("m:x", True)})
        await live(ws, "plain", filter={"action": "m:x"})
        task = await insecure_hub.app.add("m:x", 1)
        ended = await ws.expect("error", "slow")
        assert ended["code"] == "bad_filter" and "ms of CPU on one task" in ended["message"]
        added = await next_change(ws, "plain")
        assert added["type"] == "added" and added["task"]["id"] == task.id
    finally:
        await ws.close()


async def test_a_regex_query_keeps_the_changes_made_while_its_snapshot_is_read(
        insecure_hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changes that come while a ``$regex`` query reads its snapshot are kept as for any
    query, with their verdicts from a match thread: neither one added during the last
    round's matching (it was dropped), nor an older progress shown after the snapshot's
    newer one (changes taken late, after the snapshot)."""
    app = insecure_hub.app
    state = ws_state(insecure_hub)
    await app.add("x:run", 1)
    (running,) = await app.storage.claim("w1", ["x:run"], 1, 60)
    lease = Lease(running.id, running.token or "")
    one, two = Progress(1, 10, "one"), Progress(2, 10, "two")
    monkeypatch.setattr(_live, "SYNC_ROUNDS", 1)  # the first round of the sync is its last
    find, judge = app.storage.find, state.live.judge
    late: list[Task] = []

    async def find_while_it_runs(query: Any) -> Any:
        app.storage.find = find  # type: ignore[method-assign]
        # the runner reports 1 then 2 at full rate; 2 is stored, then read
        app.bus.emit(Event("task.progress", running.id, running, {"progress": one}))
        app.bus.emit(Event("task.progress", running.id, running, {"progress": two}))
        await app.storage.update_progress([(lease, two)])
        await app.add("x:early", 2)
        return await find(query)

    async def slow_judge(where: Any, tasks: Any) -> Any:
        if not late:  # a task added while the last round's verdicts are worked out
            late.append(await app.add("x:late", 3))
        await asyncio.sleep(0.2)  # the match threads are busy (another client's pattern)
        return await judge(where, tasks)

    app.storage.find = find_while_it_runs  # type: ignore[method-assign]
    state.live.judge = slow_judge  # type: ignore[method-assign]
    ws = await Raw.open(insecure_hub.url)
    try:
        snap = await live(ws, filter={"action": {"$regex": "^x:"}})
        assert {t["payload"] for t in snap["tasks"]} == {1, 2}
        assert [t["progress"] for t in snap["tasks"] if t["payload"] == 1] == [
            two.to_json()]
        added = await next_change(ws)
        assert added["type"] == "added" and added["task"]["id"] == late[0].id
        await app.abort(running.id)  # asked of a running task: a change, still running
        changed = await next_change(ws)
        assert changed["type"] == "changed" and changed["task"]["id"] == running.id
        assert changed["task"]["progress"] == two.to_json()
        # nothing between: no older progress after the snapshot
        assert [m["seq"] for m in ws.seen if m.get("id") == "q"] == [1, 2, 3]
    finally:
        await ws.close()


@by_regex
async def test_a_window_keeps_the_changes_made_while_it_is_read(
        insecure_hub: RunningHub, as_regex: bool) -> None:
    """A live query with a ``limit`` (the dashboard's table) reads its window again when
    a task changed while it was read: the change was kept back and then dropped, and
    the row showed the old state until some other change came."""
    app = insecure_hub.app
    task = await app.add("lim:x", 1)
    find = app.storage.find

    async def find_then_abort(query: Any) -> Any:
        app.storage.find = find  # type: ignore[method-assign]
        read = await find(query)
        await app.abort(task.id)  # after the read, before the snapshot is sent
        return read

    app.storage.find = find_then_abort  # type: ignore[method-assign]
    ws = await Raw.open(insecure_hub.url)
    try:
        snap = await live(ws, filter={"action": action("lim:x", as_regex)},
                          sort="-created_at", limit=10)
        assert [(t["id"], t["status"]) for t in snap["tasks"]] == [(task.id, "queued")]
        changed = await next_change(ws)
        assert changed["type"] == "changed" and changed["task"]["status"] == "aborted"
    finally:
        await ws.close()


@by_regex
async def test_a_member_that_leaves_while_the_window_is_read_is_removed_as_it_left(
        insecure_hub: RunningHub, as_regex: bool) -> None:
    """``removed`` of a window's member that left while the window was read says how it
    left, as for a change after the snapshot: the version of the change that took it
    out, null when it was deleted (it said the snapshot's version)."""
    app = insecure_hub.app
    gone = await app.add("lim:d", 1)
    await app.abort(gone.id)  # ended: it may be deleted
    out = await app.add("lim:d", 2)
    find = app.storage.find
    aborted: list[Task] = []

    async def find_then_change(query: Any) -> Any:
        app.storage.find = find  # type: ignore[method-assign]
        read = await find(query)
        await app.delete(gone.id)  # after the read, before the snapshot is sent
        aborted.append(await app.abort(out.id))
        return read

    app.storage.find = find_then_change  # type: ignore[method-assign]
    ws = await Raw.open(insecure_hub.url)
    try:
        # `gone` is in as payload 1, `out` as queued: its abort takes it out
        snap = await live(ws, filter={"action": action("lim:d", as_regex),
                                      "$or": [{"status": "queued"}, {"payload": 1}]},
                          sort="-created_at", limit=10)
        assert {t["id"] for t in snap["tasks"]} == {gone.id, out.id}
        removed = {m["task_id"]: m["version"] for m in [await next_change(ws) for _ in "ab"]
                   if m["type"] == "removed"}
        assert removed == {gone.id: None, out.id: aborted[0].version}
    finally:
        await ws.close()


async def test_a_match_measured_again_that_runs_out_of_time_ends_the_query(
        insecure_hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A match over the CPU budget is measured again; when that second match runs past
    the ``$regex`` time limit the live query ends with that error (it escaped the
    match thread and stopped the query's changes, with no message)."""
    monkeypatch.setattr(_live, "MATCH_CPU", 0.0)  # every match is over it
    real = _live.matches
    calls: list[str] = []

    def second_runs_out(where: Any, task: Task) -> bool:
        if threading.current_thread().name.startswith("conveyor-live-match"):
            calls.append(task.id)
            if len(calls) == 2:
                raise QueryError("$regex ran longer than 1s on one value", "filter")
        return real(where, task)

    monkeypatch.setattr(_live, "matches", second_runs_out)
    ws = await Raw.open(insecure_hub.url)
    try:
        await live(ws, "slow", filter={"action": action("t:x", True)})
        task = await insecure_hub.app.add("t:x", 1)
        ended = await ws.expect("error", "slow")
        assert ended["code"] == "bad_filter" and "ran longer than" in ended["message"]
        assert calls == [task.id, task.id]
    finally:
        await ws.close()


async def test_progress_stored_by_another_process_comes_with_its_version(
        insecure_hub: RunningHub, tmp_path: Path) -> None:
    """A worker outside the hub stores its progress snapshots, each a new version;
    the live query sent them with the version the run started with (a client that
    keeps only newer states dropped every one)."""
    other = Conveyor(hub_db_url(tmp_path), progress_interval=0.01)  # the hub's database
    shown: dict[int, asyncio.Event] = {n: asyncio.Event() for n in (1, 2, 3)}

    @other.handler("p:job")
    async def job(ctx: Context) -> str:
        for n in (1, 2, 3):
            await ctx.progress(n, total=3)
            await asyncio.wait_for(shown[n].wait(), 10)  # the live query has it
        return "done"

    ws = await Raw.open(insecure_hub.url)
    try:
        await live(ws, filter={"action": "p:job"}, fields=["status", "progress"])
        await other.start()
        await other.add("p:job")
        states: list[tuple[int, str, Any]] = []
        while not states or states[-1][1] != "succeeded":
            change = await next_change(ws)
            task = change["task"]
            current = (task.get("progress") or {}).get("current")
            states.append((task["version"], task["status"], current))
            if isinstance(current, int) and current in shown:
                shown[current].set()
    finally:
        await ws.close()
        await other.close()
    versions = [v for v, _, _ in states]
    assert versions == sorted(versions), states
    progressed = [(v, c) for v, s, c in states if s == "running" and c is not None]
    assert [c for _, c in progressed] == [1, 2, 3], states
    assert len({v for v, _ in progressed}) == 3, states  # each stored snapshot's own version


async def test_progress_of_another_process_that_takes_a_task_out_says_its_version(
        insecure_hub: RunningHub, tmp_path: Path) -> None:
    """A progress stored by a worker outside the hub took the task out of the query:
    the removal carried the version before it (that of the change that took it
    out is documented), and the tasks changed meanwhile kept the run's first
    ``updated_at`` beside a later version (a state never stored)."""
    other = Conveyor(hub_db_url(tmp_path), progress_interval=0.01)  # the hub's database
    shown: dict[int, asyncio.Event] = {n: asyncio.Event() for n in (1, 2, 4)}

    @other.handler("p:out")
    async def job(ctx: Context) -> str:
        for n in (1, 2, 4):
            await ctx.progress(n, total=4)
            await asyncio.wait_for(shown[n].wait(), 10)  # the live query has it
        return "done"

    ws = await Raw.open(insecure_hub.url)
    try:
        await live(ws, filter={"action": "p:out", "progress.current": {"$lt": 3}},
                   fields=["status", "progress", "updated_at"])
        await other.start()
        task = await other.add("p:out")
        changes: list[dict[str, Any]] = []
        while not changes or changes[-1]["type"] != "removed":
            change = await next_change(ws)
            changes.append(change)
            current = ((change.get("task") or {}).get("progress") or {}).get("current")
            if current in shown:
                shown[current].set()
        shown[4].set()
        done = await other.wait_task(task.id, timeout=10)
    finally:
        await ws.close()
        await other.close()
    running = [c["task"] for c in changes if c["type"] in ("added", "changed")]
    assert [t["progress"]["current"] for t in running][-1] == 2, changes
    two = running[-1]
    # the state sent is one that was stored: its time moved on with its version
    assert two["version"] > running[0]["version"] and two["updated_at"] > running[0]["updated_at"]
    removed = changes[-1]
    assert removed["version"] > two["version"], changes  # the change that took it out
    assert done.version > removed["version"]
