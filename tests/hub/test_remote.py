"""Remote workers over the WebSocket: offers, pickups, outcomes, delivery modes, timeouts."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor
from conveyor.model import Status

from ._ws_helpers import Raw, eventually, make_hub, ws_state
from .conftest import RunningHub, hub_db_url


async def subscribe(ws: Raw, service: str, actions: list[str], capacity: int = 1,
                    sub_id: Any = "sub") -> dict[str, Any]:
    return await ws.request({"type": "subscribe", "id": sub_id, "service": service,
                             "actions": actions, "capacity": capacity}, "subscribed")


async def test_publish_and_subscribe_lifecycle(hub: RunningHub) -> None:
    pub_key = hub.key("shop", publish=["mail:*"])
    svc_key = hub.key("mailer", subscribe=["mail:*"])
    service = await Raw.open(hub.url, svc_key)
    sub = await subscribe(service, "mailer", ["mail:send"], capacity=2)
    assert sub["worker"].startswith("mailer@") and sub["lease"] > 0
    workers = await hub.app.workers()
    assert [w.id for w in workers] == [sub["worker"]]
    assert workers[0].info["remote"] is True and workers[0].concurrency == 2

    publisher = await Raw.open(hub.url, pub_key)
    published = await publisher.request({"type": "publish", "id": "p1", "action": "mail:send",
                                         "payload": {"to": "ann"}, "wait": True,
                                         "options": {"priority": -1, "tags": {"k": "v"}}},
                                        "published")
    task = published["task"]
    assert task["status"] == "queued" and task["priority"] == -1
    assert task["public_url"] == hub.hub.task_url(task["id"])

    offer = await service.expect("offer", "sub")
    assert offer["task_id"] == task["id"] and offer["delivery"] == "one"
    assert offer["task"]["payload"] == {"to": "ann"} and offer["task"]["status"] == "running"
    assert offer["task"]["worker"] == sub["worker"]
    await service.send([
        {"type": "pickup", "id": 1, "task_id": task["id"]},
        {"type": "update", "id": 2, "task_id": task["id"], "current": 1, "total": 2,
         "message": "half"},
        {"type": "log", "id": 3, "task_id": task["id"], "level": "info", "message": "sent",
         "data": {"n": 1}},
        {"type": "emit", "id": 4, "task_id": task["id"], "value": {"partial": True}},
        {"type": "return", "id": 5, "task_id": task["id"], "result": {"ok": True}, "ack": True},
    ])
    assert (await service.expect("ok", 5))["type"] == "ok"

    result = await publisher.expect("result", "p1")
    assert result["value"] == {"ok": True} and result["status"] == "succeeded"
    kinds = [m["type"] for m in publisher.seen if m.get("id") == "p1"]
    # log lines are sent once stored (with their sequence number), the rest at once
    assert [k for k in kinds if k != "log"] == ["published", "start", "pickup", "update",
                                                "emit", "success", "end", "result"], kinds
    assert kinds.count("log") == 1 and kinds.index("log") < kinds.index("success")
    by_type = {m["type"]: m for m in publisher.seen if m.get("id") == "p1"}
    assert by_type["pickup"]["service"] == "mailer"
    assert by_type["update"]["progress"]["current"] == 1
    assert by_type["log"]["log"]["message"] == "sent"
    assert by_type["end"]["task"]["result"] == {"ok": True}

    stored = await hub.app.get(task["id"], logs=True)
    assert stored.status is Status.SUCCEEDED and stored.result == {"ok": True}
    assert stored.worker is None and stored.attempts == 1
    assert stored.logs is not None and [r.message for r in stored.logs] == ["sent"]
    assert stored.progress is not None and stored.progress.current == 1

    # a service may not touch a task it does not hold
    error = await service.request({"type": "return", "task_id": task["id"]}, "error")
    assert error["code"] == "not_held"
    await service.close()
    await eventually(lambda: _no_workers(hub))
    await publisher.close()


async def _no_workers(hub: RunningHub) -> bool:
    return not await hub.app.workers()


async def test_failures_retries_and_drops(hub: RunningHub) -> None:
    key = hub.key("all", publish=["*"], subscribe=["*"])
    ws = await Raw.open(hub.url, key)
    await subscribe(ws, "svc", ["job"], capacity=5)
    failing = await hub.app.add("job", 1, max_attempts=2, backoff=0)
    dropped = await hub.app.add("job", 2)
    retried = await hub.app.add("job", 3, max_attempts=3)
    rescheduled = await hub.app.add("job", 4)
    handled: Counter[str] = Counter()
    done: set[str] = set()
    while len(done) < 4:
        offer = await ws.expect("offer")
        task_id = offer["task_id"]
        handled[task_id] += 1
        await ws.send({"type": "pickup", "task_id": task_id})
        if task_id == failing.id:
            await ws.send({"type": "fail", "task_id": task_id,
                           "error": {"type": "SMTPError", "message": "down"}})
            if handled[task_id] == 2:
                done.add(task_id)
        elif task_id == dropped.id:
            await ws.send({"type": "drop", "task_id": task_id})
            done.add(task_id)
        elif task_id == retried.id:
            if handled[task_id] == 1:
                await ws.send({"type": "retry", "task_id": task_id, "after": 0})
            else:
                await ws.send({"type": "return", "task_id": task_id, "result": "second"})
                done.add(task_id)
        elif task_id == rescheduled.id:
            if handled[task_id] == 1:
                await ws.send({"type": "reschedule", "task_id": task_id, "after": 0,
                               "result": {"seen": 1}})
            else:
                await ws.send({"type": "return", "task_id": task_id, "result": "polled"})
                done.add(task_id)
    f = await hub.app.wait_task(failing.id, timeout=10)
    assert f.status is Status.FAILED and f.attempts == 2
    assert [e.type for e in f.errors] == ["SMTPError", "SMTPError"]
    d = await hub.app.wait_task(dropped.id, timeout=10)
    assert d.status is Status.SUCCEEDED and d.result is None and d.reason == "dropped"
    r = await hub.app.wait_task(retried.id, timeout=10)
    assert r.status is Status.SUCCEEDED and r.result == "second" and r.attempts == 2
    s = await hub.app.wait_task(rescheduled.id, timeout=10)
    assert s.status is Status.SUCCEEDED and s.result == "polled" and s.attempts == 1
    await ws.close()


async def fanned_out(hub: RunningHub, names: tuple[str, ...]
                     ) -> tuple[Raw, dict[str, Raw], dict[str, dict[str, Any]]]:
    """A publisher (``wait``, stream id ``b``) of a ``cache:clear`` task in delivery
    ``all`` to a service per name: the publisher, the services, their offers."""
    pub = await Raw.open(hub.url, hub.key("pub", publish=["cache:*"]))
    services = {}
    for name in names:
        ws = await Raw.open(hub.url, hub.key(name, subscribe=["cache:*"]))
        await subscribe(ws, name, ["cache:clear"])
        services[name] = ws
    await pub.request({"type": "publish", "id": "b", "action": "cache:clear", "payload": {},
                       "delivery": "all", "wait": True}, "published")
    offers = {name: await ws.expect("offer") for name, ws in services.items()}
    return pub, services, offers


async def test_delivery_all_runs_on_every_service(hub: RunningHub) -> None:
    pub, services, offers = await fanned_out(hub, ("alpha", "beta", "gamma"))
    task_id = offers["alpha"]["task_id"]
    assert {o["task_id"] for o in offers.values()} == {task_id}
    assert {o["delivery"] for o in offers.values()} == {"all"}
    for ws in services.values():
        await ws.request({"type": "pickup", "task_id": task_id, "ack": True}, "ok")
    await services["beta"].send({"type": "return", "task_id": task_id, "result": "beta won"})
    # the first return completes it: the publisher has its result, the others are told
    result = await pub.expect("result", "b")
    assert result["value"] == "beta won"
    for name in ("alpha", "gamma"):
        told = await services[name].expect("completed")
        assert told["task_id"] == task_id and told["by"] == "beta"
    task = await hub.app.get(task_id)
    assert task.status is Status.RUNNING  # it ends when every service is done
    await services["alpha"].send({"type": "drop", "task_id": task_id})
    await services["gamma"].send({"type": "return", "task_id": task_id, "result": "late"})
    end = await pub.expect("end", "b")
    assert end["status"] == "succeeded" and end["task"]["result"] == "beta won"
    # the early success of the first return, then the final state before the end (as
    # for every ending: the final success was missing in delivery all)
    success = [m for m in pub.seen if m.get("type") == "success"]
    assert len(success) == 2, success
    assert success[0]["service"] == "beta" and success[0]["final"] is False
    assert "final" not in success[1] and success[1]["result"] == "beta won"
    assert success[1]["task"]["status"] == "succeeded"
    kinds = [m["type"] for m in pub.seen if m.get("id") == "b"]
    assert kinds[-2:] == ["success", "end"], kinds
    for ws in (*services.values(), pub):
        await ws.close()


async def test_delivery_all_an_abort_after_the_first_return_keeps_its_result(
        hub: RunningHub) -> None:
    """protocol.md: the first return completes the task, publishers and waits have
    its result; an abort then stops the other shares, and the task ends succeeded
    with that result (it ended aborted without one, against what was told)."""
    pub, services, offers = await fanned_out(hub, ("alpha", "beta"))
    task_id = offers["alpha"]["task_id"]
    for ws in services.values():
        await ws.request({"type": "pickup", "task_id": task_id, "ack": True}, "ok")
    await services["beta"].send({"type": "return", "task_id": task_id, "result": "beta won"})
    assert (await pub.expect("result", "b"))["value"] == "beta won"
    await services["alpha"].expect("completed")
    aborting = await hub.app.abort(task_id, "stop it")
    assert aborting.status is Status.RUNNING  # alpha's share still runs
    told = await services["alpha"].expect("abort")
    await services["alpha"].send({"type": "fail", "task_id": task_id,
                                  "error": {"type": "Aborted", "message": told["reason"]}})
    end = await pub.expect("end", "b")
    assert end["status"] == "succeeded"
    task = await hub.app.get(task_id)
    assert (task.status, task.result) == (Status.SUCCEEDED, "beta won")
    for ws in (*services.values(), pub):
        await ws.close()


async def test_delivery_all_by_config_and_outcomes(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, delivery={"notify:*": "all"}) as hub:
        a = await Raw.open(hub.url)
        b = await Raw.open(hub.url)
        await subscribe(a, "a", ["notify:x"])
        await subscribe(b, "b", ["notify:x"])
        # every service fails: the policy decides (no attempts left: failed)
        task = await hub.app.add("notify:x", 1)
        for ws in (a, b):
            offer = await ws.expect("offer")
            assert offer["delivery"] == "all"
            await ws.send({"type": "pickup", "task_id": task.id})
            await ws.send({"type": "fail", "task_id": task.id, "error": "nope"})
        ended = await hub.app.wait_task(task.id, timeout=10)
        assert ended.status is Status.FAILED
        # one refuses, one drops: done without a result
        task = await hub.app.add("notify:x", 2)
        offer_a = await a.expect("offer")
        await b.expect("offer")
        await a.send({"type": "refuse", "task_id": offer_a["task_id"]})
        await b.send({"type": "pickup", "task_id": task.id})
        await b.send({"type": "drop", "task_id": task.id})
        ended = await hub.app.wait_task(task.id, timeout=10)
        assert ended.status is Status.SUCCEEDED and ended.reason == "dropped"
        # the task tag wins over the hub's setting
        task = await hub.app.add("notify:x", 3, tags={"delivery": "one"})
        got = await asyncio.wait_for(_first_offer(a, b), 10)
        assert got[1]["delivery"] == "one"
        await got[0].send({"type": "pickup", "task_id": task.id})
        await got[0].send({"type": "return", "task_id": task.id, "result": 1})
        assert (await hub.app.wait_task(task.id, timeout=10)).status is Status.SUCCEEDED
        await a.close()
        await b.close()


async def _first_offer(*sockets: Raw) -> tuple[Raw, dict[str, Any]]:
    while True:
        for ws in sockets:
            try:
                return ws, await ws.expect("offer", timeout=0.05)
            except TimeoutError:
                continue


async def test_round_robin_across_instances_and_the_instance_limit(hub: RunningHub) -> None:
    key = hub.key("rr", subscribe=["work"], max_instances=3)
    conns = [await Raw.open(hub.url, key) for _ in range(3)]
    for ws in conns:
        await subscribe(ws, "rr", ["work"], capacity=1)
    fourth = await Raw.open(hub.url, key, welcome=False)
    assert await fourth.closed() == 4029

    async def registered() -> Any:
        # the first subscription registers the service, later ones refresh its
        # record soon after (a background write)
        workers = await hub.app.workers()
        return workers if len(workers) == 1 and workers[0].concurrency == 3 else None

    workers = await eventually(registered)
    assert workers[0].info["connections"] == 3
    await hub.app.add_many([("work", i) for i in range(30)])
    counts: Counter[int] = Counter()

    async def serve(i: int, ws: Raw) -> None:
        while sum(counts.values()) < 30:
            try:
                offer = await ws.expect("offer", timeout=0.5)
            except TimeoutError:
                continue
            counts[i] += 1
            await ws.send({"type": "pickup", "task_id": offer["task_id"]})
            await asyncio.sleep(0.01)
            await ws.send({"type": "return", "task_id": offer["task_id"], "result": i})

    await asyncio.wait_for(asyncio.gather(*(serve(i, ws) for i, ws in enumerate(conns))), 30)
    assert sum(counts.values()) == 30
    assert all(8 <= counts[i] <= 12 for i in range(3)), counts
    for ws in conns:
        await ws.close()


class _SweepLines(logging.Handler):
    """The hub's ``sweeper:`` log lines, and an event set when ``until`` shows up (the
    sweep stores its changes, then logs them: a wait can end in between)."""

    def __init__(self, until: str) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[int, str]] = []
        self.until = until
        self.seen = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "sweeper:" in message:
            self.lines.append((record.levelno, message))
            if self.until in message:
                self.loop.call_soon_threadsafe(self.seen.set)


async def test_pickup_timeout_without_and_with_a_silent_service(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="conveyor.hub")
    lines = _SweepLines("not picked up in time")
    logging.getLogger("conveyor.hub").addHandler(lines)
    try:
        async with make_hub(tmp_path, insecure=True) as hub:
            lonely = await hub.app.add("nobody:home", 1, pickup_timeout=0.3)
            ended = await hub.app.wait_task(lonely.id, timeout=10)
            assert ended.status is Status.FAILED and ended.reason == "pickup_timeout"
            # the hub's sweep says so, naming the task (docs/guide.md, "Logging")
            await asyncio.wait_for(lines.seen.wait(), 10)
            assert (logging.ERROR, "sweeper: 1 task(s) failed, not picked up in time "
                    f"(reason pickup_timeout): {lonely.id}") in lines.lines, lines.lines
            assert (logging.INFO, "sweeper: 0 requeued, 0 failed (worker lost), 0 aborted, "
                    "1 pickup timeouts") in lines.lines, lines.lines
            await _silent_service_part(hub)
    finally:
        logging.getLogger("conveyor.hub").removeHandler(lines)


async def _silent_service_part(hub: Any) -> None:
    """A silent service: its offer expires, the publisher is told, a late pickup is
    refused."""
    silent = await Raw.open(hub.url)
    await subscribe(silent, "silent", ["ignored"])
    pub = await Raw.open(hub.url)
    reply = await pub.request({"type": "publish", "id": "p", "action": "ignored",
                               "options": {"pickup_timeout": 0.5}, "wait": True},
                              "published")
    offer = await silent.expect("offer")
    assert offer["expires_in"] <= 0.5
    cancel = await silent.expect("cancel", timeout=5)
    assert cancel["task_id"] == reply["task"]["id"]
    error = await pub.expect("error", "p")
    assert error["code"] == "task_failed" and error["task"]["reason"] == "pickup_timeout"
    # the late pickup is refused
    late = await silent.request({"type": "pickup", "task_id": offer["task_id"]}, "error")
    assert late["code"] == "not_held"
    await silent.close()
    await pub.close()


async def test_an_offer_not_picked_up_in_time_goes_elsewhere(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, offer_timeout=0.3) as hub:
        sleepy = await Raw.open(hub.url)
        await subscribe(sleepy, "svc", ["job"])
        task = await hub.app.add("job", 1)
        first = await sleepy.expect("offer")
        assert (await sleepy.expect("cancel"))["reason"] == "offer expired"
        eager = await Raw.open(hub.url)
        await subscribe(eager, "svc", ["job"])
        offer = await eager.expect("offer", timeout=5)
        assert offer["task_id"] == first["task_id"] == task.id
        await eager.send({"type": "pickup", "task_id": task.id})
        await eager.send({"type": "return", "task_id": task.id, "result": "ok"})
        done = await hub.app.wait_task(task.id, timeout=10)
        assert done.status is Status.SUCCEEDED and done.attempts == 1
        await sleepy.close()
        await eager.close()


async def test_run_timeout_starts_at_pickup_and_is_enforced(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, abort_grace=0.2) as hub:
        ws = await Raw.open(hub.url)
        await subscribe(ws, "svc", ["slow"], capacity=2)
        honest = await hub.app.add("slow", 1, timeout=0.3)
        stuck = await hub.app.add("slow", 2, timeout=0.3)
        for _ in range(2):
            offer = await ws.expect("offer")
            await ws.send({"type": "pickup", "task_id": offer["task_id"]})
        aborts = {(await ws.expect("abort"))["task_id"] for _ in range(2)}
        assert aborts == {honest.id, stuck.id}
        # one answers (its answer does not change the outcome); the other never does
        await ws.send({"type": "return", "task_id": honest.id, "result": "too late"})
        for task in (honest, stuck):
            ended = await hub.app.wait_task(task.id, timeout=10)
            assert ended.status is Status.ABORTED and ended.reason == "timeout"
            assert ended.error is not None and ended.error.type == "TimeoutError"
        assert (await ws.expect("cancel"))["task_id"] == stuck.id
        await ws.close()


async def test_abort_is_forwarded_to_the_service(hub: RunningHub) -> None:
    key = hub.key("svc", subscribe=["long"], admin=True)
    ws = await Raw.open(hub.url, key)
    await subscribe(ws, "svc", ["long"])
    task = await hub.app.add("long", 1)
    await ws.expect("offer")
    await ws.send({"type": "pickup", "task_id": task.id})
    await eventually(lambda: ws_state(hub).remote.index[task.id].state == "running")
    await hub.app.abort(task.id, "changed my mind")
    abort = await ws.expect("abort")
    assert abort["reason"] == "changed my mind"
    await ws.send({"type": "fail", "task_id": task.id, "error": {"type": "Aborted",
                                                                 "message": "ok"}})
    ended = await hub.app.wait_task(task.id, timeout=10)
    assert ended.status is Status.ABORTED and ended.reason == "changed my mind"
    # an abort over the socket (the admin right)
    task = await hub.app.add("long", 2)
    await ws.expect("offer")
    reply = await ws.request({"type": "abort", "task_id": task.id, "reason": "stop"}, "task")
    assert reply["task"]["abort_requested"] == "stop" or reply["task"]["status"] == "aborted"
    await ws.expect("cancel")
    assert (await hub.app.wait_task(task.id, timeout=10)).status is Status.ABORTED
    await ws.close()


async def test_large_payloads_are_fetched_on_demand(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, inline_payload=100) as hub:
        ws = await Raw.open(hub.url)
        await subscribe(ws, "svc", ["big", "small"], capacity=2)
        big = await hub.app.add("big", {"blob": "y" * 500})
        offer = await ws.expect("offer")
        assert offer["payload_inline"] is False and offer["payload_size"] > 500
        assert offer["task"]["payload"] is None
        fetched = await ws.request({"type": "fetch", "task_id": big.id}, "payload")
        assert fetched["payload"] == {"blob": "y" * 500}
        await ws.send({"type": "refuse", "task_id": big.id})
        small = await hub.app.add("small", [1, 2])
        offer = await ws.expect("offer", where=lambda m: m["task_id"] == small.id)
        assert "payload_inline" not in offer and offer["task"]["payload"] == [1, 2]
        await ws.close()


async def test_a_disconnected_service_loses_its_tasks_to_others(hub: RunningHub) -> None:
    key = hub.key("svc", subscribe=["job"])
    first = await Raw.open(hub.url, key)
    await subscribe(first, "svc", ["job"])
    task = await hub.app.add("job", 1)
    await first.expect("offer")
    await first.send({"type": "pickup", "task_id": task.id})
    await first.send({"type": "log", "task_id": task.id, "message": "started"})
    await eventually(lambda: _running(hub, task.id))
    await first.close()
    second = await Raw.open(hub.url, key)
    await subscribe(second, "svc", ["job"])
    offer = await second.expect("offer", timeout=10)
    assert offer["task_id"] == task.id and offer["task"]["attempts"] == 1
    await second.send({"type": "pickup", "task_id": task.id})
    await second.send({"type": "return", "task_id": task.id, "result": "second"})
    done = await hub.app.wait_task(task.id, timeout=10)
    assert done.status is Status.SUCCEEDED and done.result == "second"
    logs = [r.message for r in (await hub.app.get(task.id, logs=True)).logs or ()]
    assert logs[0] == "started" and "let go of this task" in logs[1]
    assert done.rescues == 1  # a lost run counts like a dead worker's
    await second.close()


async def test_a_task_that_keeps_losing_its_service_ends_worker_lost(
        hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    """A service that dies on a task every time must not make it loop forever; the
    hub logs each rescue and names the task it fails for good."""
    caplog.set_level(logging.INFO, logger="conveyor.hub")
    key = hub.key("svc", subscribe=["job"])
    task = await hub.app.add("job", "poison")
    for _ in range(hub.app.max_rescues + 1):
        ws = await Raw.open(hub.url, key)
        await subscribe(ws, "svc", ["job"])
        offer = await ws.expect("offer", timeout=10)
        assert offer["task_id"] == task.id
        await ws.send({"type": "pickup", "task_id": task.id})
        await eventually(lambda: _running(hub, task.id))
        await ws.close()  # the service "dies" holding the task
    final = await hub.app.wait_task(task.id, timeout=10)
    assert final.status is Status.FAILED and final.reason == "worker_lost"
    assert final.rescues == hub.app.max_rescues
    swept = [(r.levelno, r.getMessage()) for r in caplog.records
             if r.name.startswith("conveyor.hub") and "sweeper:" in r.getMessage()]
    requeued = "sweeper: 1 requeued, 0 failed (worker lost), 0 aborted, 0 pickup timeouts"
    assert swept.count((logging.INFO, requeued)) == hub.app.max_rescues, swept
    assert (logging.ERROR, "sweeper: 1 task(s) failed, their worker lost too many times "
            f"(reason worker_lost): {task.id}") in swept, swept


async def test_delivery_all_a_task_that_keeps_losing_its_service_ends_worker_lost(
        hub: RunningHub) -> None:
    """Delivery ``all``: a service that goes away while running its share lost a run,
    as in delivery ``one`` (rescues + 1, a warning in the log), so a task that kills
    its only service ends ``worker_lost``. It was released as if nobody had run it,
    and offered again forever."""
    pub = await Raw.open(hub.url, hub.key("pub", publish=["cache:*"]))
    key = hub.key("svc", subscribe=["cache:*"])
    ws = await Raw.open(hub.url, key)
    await subscribe(ws, "svc", ["cache:poison"])
    published = await pub.request({"type": "publish", "id": "p", "action": "cache:poison",
                                   "payload": {}, "delivery": "all"}, "published")
    task_id = published["task"]["id"]
    for attempt in range(hub.app.max_rescues + 1):
        if attempt:
            ws = await Raw.open(hub.url, key)
            await subscribe(ws, "svc", ["cache:poison"])
        offer = await ws.expect("offer", timeout=10)
        assert offer["task_id"] == task_id and offer["delivery"] == "all"
        await ws.request({"type": "pickup", "task_id": task_id, "ack": True}, "ok")
        await ws.close()  # the service "dies" holding its share
        if attempt < hub.app.max_rescues:
            await eventually(lambda n=attempt + 1: _rescued(hub, task_id, n))
    final = await hub.app.wait_task(task_id, timeout=10)
    assert (final.status, final.reason) == (Status.FAILED, "worker_lost")
    assert final.rescues == hub.app.max_rescues
    logs = [r.message for r in (await hub.app.get(task_id, logs=True)).logs or ()]
    assert len([m for m in logs if "let go of this task" in m]) == hub.app.max_rescues + 1
    await pub.close()


async def _rescued(hub: RunningHub, task_id: str, n: int) -> bool:
    task = await hub.app.get(task_id)
    return task.status is Status.QUEUED and task.rescues == n


async def _count(hub: RunningHub, where: dict[str, Any], n: int) -> bool:
    return await hub.app.count(where) == n


async def _running(hub: RunningHub, task_id: str) -> bool:
    return (await hub.app.get(task_id)).status is Status.RUNNING


async def test_a_silent_service_is_disconnected(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, service_lease=0.6) as hub:
        ws = await Raw.open(hub.url)
        reply = await subscribe(ws, "svc", ["job"])
        assert abs(reply["heartbeat"] - 0.2) < 1e-9
        for _ in range(5):  # heartbeats keep it
            await asyncio.sleep(0.2)
            await ws.send({"type": "heartbeat"})
        assert await ws.closed(timeout=5) == 4002


async def test_in_process_handlers_work_beside_remote_workers(tmp_path: Path) -> None:
    app = Conveyor(hub_db_url(tmp_path))

    @app.handler("local:double")
    async def double(ctx: Context) -> int:
        return int(ctx.payload) * 2

    async with make_hub(tmp_path, insecure=True, app=app) as hub:
        ws = await Raw.open(hub.url)
        await subscribe(ws, "remote", ["remote:triple"], capacity=4)
        local = await hub.app.add_many([("local:double", i) for i in range(10)])
        remote = await hub.app.add_many([("remote:triple", i) for i in range(10)])
        for _ in range(10):
            offer = await ws.expect("offer")
            await ws.send([{"type": "pickup", "task_id": offer["task_id"]},
                           {"type": "return", "task_id": offer["task_id"],
                            "result": offer["task"]["payload"] * 3}])
        assert [await hub.app.wait(t.id, timeout=10) for t in local] == [i * 2 for i in range(10)]
        assert [await hub.app.wait(t.id, timeout=10) for t in remote] == [i * 3 for i in range(10)]
        kinds = sorted(bool(w.info.get("remote")) for w in await hub.app.workers())
        assert kinds == [False, True]
        await ws.close()


async def test_delivery_all_moves_a_share_to_another_connection(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, offer_timeout=0.5) as hub:
        a1 = await Raw.open(hub.url)
        await subscribe(a1, "alpha", ["bc:x"])
        a2 = await Raw.open(hub.url)
        await subscribe(a2, "alpha", ["bc:x"])
        b = await Raw.open(hub.url)
        await subscribe(b, "beta", ["bc:x"])
        task = await hub.app.add("bc:x", 1, tags={"delivery": "all"})
        offer_b = await b.expect("offer")
        first, offer_a = await _first_offer(a1, a2)
        other = a2 if first is a1 else a1
        await first.request({"type": "pickup", "task_id": task.id, "ack": True}, "ok")
        await first.close()  # alpha's share goes to its other connection
        moved = await other.expect("offer", timeout=5)
        assert moved["task_id"] == task.id == offer_a["task_id"] == offer_b["task_id"]
        await other.send({"type": "return", "task_id": task.id, "result": "alpha"})
        # beta never picks up: its share expires, and the task ends with alpha's result
        assert (await b.expect("cancel", timeout=5))["task_id"] == task.id
        done = await hub.app.wait_task(task.id, timeout=10)
        assert done.status is Status.SUCCEEDED and done.result == "alpha"
        # a share waits for a full service to have room, within the offer timeout
        fill = await hub.app.add("bc:x", "fill", tags={"delivery": "one"})
        holder, _ = await _first_offer(other, b)
        await holder.send({"type": "pickup", "task_id": fill.id})
        if holder is other:
            task = await hub.app.add("bc:x", 2, tags={"delivery": "all"})
            await b.expect("offer", where=lambda m: m["task_id"] == task.id)
            await b.send({"type": "return", "task_id": task.id, "result": "beta"})
            done = await hub.app.wait_task(task.id, timeout=10)
            assert done.status is Status.SUCCEEDED and done.result == "beta"
        await holder.send({"type": "return", "task_id": fill.id, "result": None})
        for ws in (other, b):
            await ws.close()


async def test_waits_with_timeouts_and_defaults(insecure_hub: RunningHub) -> None:
    ws = await Raw.open(insecure_hub.url)
    reply = await ws.request({"type": "publish", "id": "p", "action": "nobody", "wait": True,
                              "timeout": 0.2, "default": "fallback", "updates": False},
                             "published")
    result = await ws.expect("result", "p")
    assert result == {**result, "value": "fallback", "default": True, "timed_out": True}
    task_id = reply["task"]["id"]
    error = await ws.request({"type": "wait", "task_id": task_id, "timeout": 0.1}, "error")
    assert error["code"] == "wait_timeout" and error["task_id"] == task_id
    await insecure_hub.app.abort(task_id)
    aborted = await ws.request({"type": "wait", "task_id": task_id, "task": True}, "error")
    assert aborted["code"] == "task_aborted" and aborted["task"]["status"] == "aborted"
    fallback = await ws.request({"type": "wait", "task_id": task_id, "default": 0}, "result")
    assert fallback["value"] == 0 and fallback["default"] is True
    missing = await ws.request({"type": "wait", "task_id": "nope"}, "error")
    assert missing["code"] == "not_found"
    several = await ws.request({"type": "publish", "tasks": [
        {"action": "a", "payload": 1}, {"action": "b", "options": {"priority": 2}}]},
        "published")
    assert [t["action"] for t in several["tasks"]] == ["a", "b"]
    bad = await ws.request({"type": "publish", "tasks": [
        {"action": "a"}, {"action": "b", "options": {"priority": "high"}}]}, "error")
    assert bad["code"] == "invalid" and "task 1" in bad["message"]
    assert await insecure_hub.app.count({"action": "a"}) == 1
    await ws.close()


async def test_unsubscribing_gives_offers_back(insecure_hub: RunningHub) -> None:
    ws = await Raw.open(insecure_hub.url)
    await subscribe(ws, "svc", ["u:x"], capacity=3, sub_id="s1")
    tasks = await insecure_hub.app.add_many([("u:x", i) for i in range(3)])
    for _ in range(3):
        await ws.expect("offer", "s1")
    await ws.request({"type": "unsubscribe", "subscription": "s1"}, "ok")
    await eventually(lambda: _no_workers(insecure_hub))
    await eventually(lambda: _count(insecure_hub, {"action": "u:x", "status": "queued"}, 3))
    again = await ws.request({"type": "unsubscribe", "subscription": "s1"}, "error")
    assert again["code"] == "not_found"
    await subscribe(ws, "svc", ["u:x"], capacity=3, sub_id="s2")
    offers = {(await ws.expect("offer", "s2"))["task_id"] for _ in range(3)}
    assert offers == {t.id for t in tasks}
    await ws.close()


async def test_a_retry_too_far_away_is_refused_and_the_run_goes_on(hub: RunningHub) -> None:
    ws = await Raw.open(hub.url, hub.key("far", subscribe=["job"]))
    await subscribe(ws, "far", ["job"])
    task = await hub.app.add("job", 1)
    offer = await ws.expect("offer")
    await ws.send({"type": "pickup", "task_id": task.id})
    for kind in ("retry", "reschedule"):
        await ws.send({"type": kind, "task_id": task.id, "after": 1e300})
        error = await ws.expect("error")
        assert error["code"] == "bad_message" and "'after' must be <=" in error["message"]
    assert (await hub.app.get(task.id)).status is Status.RUNNING
    await ws.send({"type": "return", "task_id": offer["task_id"], "result": "ok"})
    done = await hub.app.wait_task(task.id, timeout=10)
    assert done.status is Status.SUCCEEDED and done.result == "ok" and done.attempts == 1
    await ws.close()


async def test_a_fail_with_timeout_ends_as_a_run_timeout(hub: RunningHub) -> None:
    ws = await Raw.open(hub.url, hub.key("slow", subscribe=["job"]))
    await subscribe(ws, "slow", ["job"])
    once = await hub.app.add("job", 1, max_attempts=1)
    again = await hub.app.add("job", 2, max_attempts=2, backoff=0)
    seen: Counter[str] = Counter()
    while seen[again.id] < 2 or seen[once.id] < 1:
        offer = await ws.expect("offer")
        seen[offer["task_id"]] += 1
        await ws.send({"type": "pickup", "task_id": offer["task_id"]})
        await ws.send({"type": "fail", "task_id": offer["task_id"], "timeout": 0.5,
                       "error": "ignored"})
    ended = await hub.app.wait_task(once.id, timeout=10)
    assert ended.status is Status.ABORTED and ended.reason == "timeout"
    assert [(e.type, e.message) for e in ended.errors] == [
        ("TimeoutError", "run timeout of 0.5s exceeded")]
    twice = await hub.app.wait_task(again.id, timeout=10)
    assert twice.status is Status.ABORTED and twice.attempts == 2
    assert [e.type for e in twice.errors] == ["TimeoutError", "TimeoutError"]
    await ws.close()


async def test_delivery_all_a_wait_for_the_task_is_answered_at_the_end(
        hub: RunningHub) -> None:
    pub = await Raw.open(hub.url, hub.key("pub", publish=["cache:*"]))
    services = {}
    for name in ("alpha", "beta"):
        ws = await Raw.open(hub.url, hub.key(name, subscribe=["cache:*"]))
        await subscribe(ws, name, ["cache:clear"])
        services[name] = ws
    published = await pub.request({"type": "publish", "id": "p", "action": "cache:clear",
                                   "payload": {}, "delivery": "all"}, "published")
    task_id = published["task"]["id"]
    for ws in services.values():
        await ws.expect("offer")
        await ws.request({"type": "pickup", "task_id": task_id, "ack": True}, "ok")
    await pub.send({"type": "wait", "id": "value", "task_id": task_id})
    await pub.send({"type": "wait", "id": "task", "task_id": task_id, "task": True})
    await services["beta"].send({"type": "return", "task_id": task_id, "result": "beta won"})
    value = await pub.expect("result", "value")
    assert value["value"] == "beta won" and "task" not in value
    await services["alpha"].expect("completed")
    # the ended task does not exist yet: that wait goes on until alpha is done (a ping
    # round trip: whatever the hub sent the publisher before has arrived)
    await pub.request({"type": "ping"}, "pong")
    assert not [m for m in pub.seen if m.get("id") == "task"]
    assert (await hub.app.get(task_id)).status is Status.RUNNING
    await services["alpha"].send({"type": "return", "task_id": task_id, "result": "late"})
    ended = await pub.expect("result", "task")
    assert ended["value"] == "beta won" and ended["task"]["status"] == "succeeded"
    assert ended["task"]["result"] == "beta won"
    for ws in (*services.values(), pub):
        await ws.close()


async def test_an_update_in_the_publishers_shape_is_read(insecure_hub: RunningHub) -> None:
    """A service may send its progress inside ``progress``, as publishers receive it
    (it was answered ``ok`` and stored as empty progress); both shapes at once is an
    error."""
    service = await Raw.open(insecure_hub.url)
    await subscribe(service, "svc", ["nested:x"])
    publisher = await Raw.open(insecure_hub.url)
    task = (await publisher.request({"type": "publish", "id": "p", "action": "nested:x",
                                     "wait": True}, "published"))["task"]
    await service.expect("offer", "sub")
    await service.request({"type": "pickup", "task_id": task["id"], "ack": True}, "ok")
    await service.request({"type": "update", "task_id": task["id"], "ack": True,
                           "progress": {"current": 1, "total": 2, "message": "half"}}, "ok")
    update = await publisher.expect("update", "p")
    assert update["progress"]["current"] == 1 and update["progress"]["total"] == 2
    assert update["progress"]["message"] == "half"
    both = await service.request({"type": "update", "task_id": task["id"], "current": 1,
                                  "progress": {"current": 2}}, "error")
    assert both["code"] == "bad_message" and "not both" in both["message"]
    bad = await service.request({"type": "update", "task_id": task["id"], "progress": 3},
                                "error")
    assert bad["code"] == "bad_message"
    await service.request({"type": "return", "task_id": task["id"], "result": 1, "ack": True},
                          "ok")
    assert (await publisher.expect("result", "p"))["value"] == 1
    stored = await insecure_hub.app.get(task["id"])
    assert stored.progress is not None and stored.progress.current == 1
    await service.close()
    await publisher.close()


async def test_a_services_long_log_line_and_error_are_cut_with_a_note(
        hub: RunningHub) -> None:
    """A log line or an error message over 100,000 characters is cut there, ending
    with a note of how much went (it was cut silently: a line that ended with the
    client's own ``[cut: ...]`` lost it)."""
    key = hub.key("svc", subscribe=["long"])
    ws = await Raw.open(hub.url, key)
    await subscribe(ws, "svc", ["long"])
    task = await hub.app.add("long", None, max_attempts=1)
    await ws.expect("offer")
    await ws.send([
        {"type": "pickup", "task_id": task.id},
        {"type": "log", "task_id": task.id, "message": "L" * 100_005},
        {"type": "log", "task_id": task.id, "message": "short"},
        {"type": "fail", "id": 9, "task_id": task.id, "ack": True,
         "error": {"type": "E", "message": "M" * 100_003, "traceback": "T" * 200_001}},
    ])
    assert (await ws.expect("ok", 9))["type"] == "ok"
    done = await hub.app.wait_task(task.id, timeout=10)
    logs = [r.message for r in (await hub.app.get(task.id, logs=True)).logs or ()]
    assert logs == ["L" * 100_000 + " [cut: 5 more characters]", "short"]
    assert done.error is not None
    assert done.error.message == "M" * 100_000 + " [cut: 3 more characters]"
    assert done.error.traceback == "T" * 200_000 + " [cut: 1 more characters]"
    await ws.close()
