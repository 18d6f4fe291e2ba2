"""WebSocket fixes from the audit, each against a real hub (uvicorn on 127.0.0.1):

- a stopping hub closes its WebSockets with 1001 (going away), as documented,
  not with uvicorn's 1012;
- a pickup timeout ends publish and watch streams as every ending does:
  ``fail`` (with the task), then ``end``;
- a publish under the id of a stream still open is refused (``duplicate_id``)
  and adds nothing;
- an insecure hub answers ``hello`` with ``welcome``;
- frames holding NaN, Infinity, a number past a float (1e400) or a lone surrogate
  are refused (``bad_json``)
  and nothing of them is handled;
- a task is rescued ``max_rescues`` times: the next loss ends it ``worker_lost``.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor import Conveyor
from conveyor.errors import ValidationError
from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore
from conveyor.hub._serve import run_hub
from conveyor.model import Status

from ._ws_helpers import Raw, eventually, make_hub, reap, spawn
from .conftest import RunningHub, free_port, hub_db_url
from .test_remote_restart import hub_ready


def _stream(ws: Raw, msg_id: Any) -> list[str]:
    """The types of the messages ``ws`` received with ``msg_id``, in order."""
    return [m["type"] for m in ws.seen if m.get("id") == msg_id]


# -- 1. shutting down: 1001 -------------------------------------------------------------


async def test_a_stopping_hub_closes_every_websocket_with_1001(tmp_path: Path) -> None:
    """``run_hub`` (what ``conveyor serve`` runs) closes publishers, services, task
    streams and connections still waiting for their hello with 1001, not 1012."""
    store = CredentialStore(tmp_path / "credentials.json")
    _, key = store.add("ops", admin=True)
    app = Conveyor(hub_db_url(tmp_path))
    loop = asyncio.get_running_loop()
    port: asyncio.Future[int] = loop.create_future()
    stop = asyncio.Event()
    serving = asyncio.create_task(run_hub(
        app, HubConfig(port=0, credentials_path=str(store.path)), credentials=store, stop=stop,
        bound=lambda config: port.set_result(config.port)))
    clients: list[Raw] = []
    try:
        url = f"http://127.0.0.1:{await asyncio.wait_for(port, 10)}"
        # the socket listens before the hub starts: these connect once it serves
        publisher = await Raw.open(url, key)
        clients.append(publisher)
        published = await publisher.request({"type": "publish", "id": "p", "action": "job"},
                                            "published")
        task_id = published["task"]["id"]
        service = await Raw.open(url, key)
        clients.append(service)
        await service.request({"type": "subscribe", "id": "s", "service": "svc",
                               "actions": ["job"]}, "subscribed")
        await service.expect("offer", "s")
        follower = await Raw.open(url, key, path=f"/ws/tasks/{task_id}")
        clients.append(follower)
        await follower.expect("watching")
        stranger = await Raw.open(url, welcome=False)  # no key: waits for its hello
        clients.append(stranger)
        stop.set()
        codes = [await ws.closed() for ws in clients]
        assert codes == [1001, 1001, 1001, 1001]
    finally:
        stop.set()
        for ws in clients:
            await ws.close()
        await asyncio.wait_for(serving, 30)  # the hub stopped (and closed the app)
    # the service's offer went back to the queue on the way down
    async with Conveyor(hub_db_url(tmp_path)) as again:
        assert (await again.get(task_id)).status is Status.QUEUED


async def test_conveyor_serve_stopped_by_sigterm_closes_websockets_with_1001(
        tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hub = spawn("conveyor.cli", "serve", "--insecure", "--port", str(port),
                "--db", hub_db_url(tmp_path), log=tmp_path / "hub.log", stdout=False)
    try:
        await eventually(lambda: hub_ready(url, "none"), timeout=30, interval=0.1)
        ws = await Raw.open(url)
        await ws.request({"type": "ping"}, "pong")
        hub.send_signal(signal.SIGTERM)
        assert await ws.closed(timeout=20) == 1001
        assert await asyncio.to_thread(hub.wait, 30) == 0
    finally:
        reap(hub)


# -- 2. a pickup timeout ends like every ending ------------------------------------------


async def test_a_pickup_timeout_sends_fail_before_end(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True) as hub:
        # nobody serves the action: the sweeper fails it past its deadline
        pub = await Raw.open(hub.url)
        reply = await pub.request({"type": "publish", "id": "p", "action": "nobody:home",
                                   "options": {"pickup_timeout": 0.3}, "wait": True},
                                  "published")
        watcher = await Raw.open(hub.url)
        await watcher.request({"type": "watch", "id": "w", "task_id": reply["task"]["id"]},
                              "watching")
        error = await pub.expect("error", "p")
        assert error["code"] == "task_failed"
        await watcher.expect("end", "w")
        for ws, msg_id in ((pub, "p"), (watcher, "w")):
            kinds = _stream(ws, msg_id)
            assert kinds[kinds.index("end") - 1] == "fail", kinds
            fail = next(m for m in ws.seen if m.get("id") == msg_id and m["type"] == "fail")
            assert fail["status"] == "failed" and fail["reason"] == "pickup_timeout"
            assert fail["error"]["type"] == "PickupTimeout"
            assert fail["task"]["status"] == "failed"
        assert _stream(pub, "p") == ["published", "fail", "end", "error"]

        # a service is offered the task but never picks it up: the hub fails it
        silent = await Raw.open(hub.url)
        await silent.request({"type": "subscribe", "id": "s", "service": "silent",
                              "actions": ["ignored"]}, "subscribed")
        reply = await pub.request({"type": "publish", "id": "q", "action": "ignored",
                                   "options": {"pickup_timeout": 0.5}}, "published")
        await silent.expect("offer", "s")
        await pub.expect("end", "q")
        kinds = _stream(pub, "q")
        assert kinds[0] == "published" and kinds[-2:] == ["fail", "end"], kinds
        fail = next(m for m in pub.seen if m.get("id") == "q" and m["type"] == "fail")
        assert fail["reason"] == "pickup_timeout" and fail["task"]["id"] == reply["task"]["id"]
        for ws in (pub, watcher, silent):
            await ws.close()


async def test_other_endings_send_the_same_sequence(insecure_hub: RunningHub) -> None:
    """The reference: an abort of a queued task, seen by its publisher."""
    pub = await Raw.open(insecure_hub.url)
    reply = await pub.request({"type": "publish", "id": "p", "action": "nobody:home"},
                              "published")
    await pub.request({"type": "abort", "task_id": reply["task"]["id"]}, "task")
    await pub.expect("end", "p")
    assert _stream(pub, "p") == ["published", "fail", "end"]
    await pub.close()


# -- 3. duplicate ids ----------------------------------------------------------------------


async def test_a_publish_under_an_open_streams_id_is_refused(hub: RunningHub) -> None:
    key = hub.key("ops", admin=True)
    ws = await Raw.open(hub.url, key)
    first = await ws.request({"type": "publish", "id": "p", "action": "nobody:home"},
                             "published")
    before = [t.to_json() for t in await hub.app.find()]
    for again in ({"type": "publish", "id": "p", "action": "nobody:home"},
                  {"type": "publish", "id": "p", "action": "nobody:home", "wait": True},
                  {"type": "publish", "id": "p", "tasks": [{"action": "a"}, {"action": "b"}]},
                  {"type": "watch", "id": "p", "task_id": first["task"]["id"]},
                  {"type": "live", "id": "p"}):
        error = await ws.request(again, "error")
        assert error["code"] == "duplicate_id", error
    assert [t.to_json() for t in await hub.app.find()] == before  # nothing added
    # the same for the ids of live queries and subscriptions
    await ws.request({"type": "live", "id": "q", "filter": {"action": "none"}}, "snapshot")
    await ws.request({"type": "subscribe", "id": "s", "service": "svc",
                      "actions": ["other"]}, "subscribed")
    for taken in ("q", "s"):
        error = await ws.request({"type": "publish", "id": taken, "action": "a"}, "error")
        assert error["code"] == "duplicate_id"
        error = await ws.request({"type": "watch", "id": taken,
                                  "task_id": first["task"]["id"]}, "error")
        assert error["code"] == "duplicate_id"
    error = await ws.request({"type": "live", "id": "s"}, "error")
    assert error["code"] == "duplicate_id"
    assert await hub.app.count() == 1
    # a publish that opens nothing (no updates, no wait) answers with its reply alone
    quiet = await ws.request({"type": "publish", "id": "p", "action": "quiet",
                              "updates": False}, "published")
    assert quiet["task"]["action"] == "quiet"
    # once the first stream ended, its id is free again
    await ws.request({"type": "abort", "task_id": first["task"]["id"]}, "task")
    await ws.expect("end", "p")
    again = await ws.request({"type": "publish", "id": "p", "action": "nobody:home"},
                             "published")
    assert again["task"]["id"] != first["task"]["id"]
    assert await hub.app.count() == 3
    await ws.close()


# -- 4. hello on an insecure hub -----------------------------------------------------------


async def test_an_insecure_hub_answers_hello_with_welcome(insecure_hub: RunningHub) -> None:
    ws = await Raw.open(insecure_hub.url)  # welcomed at once (id null)
    assert ws.seen[0]["id"] is None
    for hello in ({"type": "hello", "id": 1, "key": "cvk_not_a_key"},
                  {"type": "hello", "id": "h"},
                  {"type": "hello", "id": 2, "key": 42}):
        welcome = await ws.request(hello, "welcome")
        assert welcome["id"] == hello["id"] and welcome["admin"] is True
        assert welcome["protocol"] == 1 and welcome["limits"]["max_frame"] > 0
    assert not [m for m in ws.seen if m["type"] == "error"]
    published = await ws.request({"type": "publish", "action": "a"}, "published")
    assert published["created"] is True
    # the task stream endpoint too: the hello does not start a second stream
    follower = await Raw.open(insecure_hub.url,
                              path=f"/ws/tasks/{published['task']['id']}")
    await follower.request({"type": "hello", "id": 3}, "welcome")
    await ws.request({"type": "abort", "task_id": published["task"]["id"]}, "task")
    assert await follower.closed() == 1000
    assert [m["type"] for m in follower.seen].count("watching") == 1
    await ws.close()


async def test_a_hub_with_credentials_refuses_a_second_hello(hub: RunningHub) -> None:
    key = hub.key("ops", admin=True)
    ws = await Raw.open(hub.url, key)
    error = await ws.request({"type": "hello", "key": key}, "error")
    assert error["code"] == "bad_message" and "already authenticated" in error["message"]
    by_hello = await Raw.open(hub.url, welcome=False)
    assert (await by_hello.request({"type": "hello", "key": key}, "welcome"))["admin"]
    error = await by_hello.request({"type": "hello", "key": key}, "error")
    assert error["code"] == "bad_message"
    for conn in (ws, by_hello):
        await conn.close()


# -- 5. strict JSON frames -----------------------------------------------------------------

STRICT = [
    ('{"type": "publish", "id": 1, "action": "a", "payload": NaN}', "NaN"),
    ('{"type": "publish", "id": 1, "action": "a", "payload": {"x": Infinity}}', "Infinity"),
    ('{"type": "publish", "id": 1, "action": "a", "payload": [-Infinity]}', "-Infinity"),
    ('{"type": "publish", "id": 1, "action": "a", "payload": "\\ud800"}', "lone surrogate"),
    ('{"type": "publish", "id": 1, "action": "a", "payload": {"\\udc00": 1}}', "lone surrogate"),
    ('{"type": "publish", "id": 1, "action": "a", "options": {"priority": NaN}}', "NaN"),
    ('{"type": "ping", "id": 1, "extra": NaN}', "NaN"),
    # valid JSON text, but past a float: read as infinity, it jammed the hub's writer
    ('{"type": "publish", "id": 1, "action": "a", "payload": {"x": 1e400}}', "1e400"),
    ('{"type": "ping", "id": 1, "extra": [-2.5e999]}', "-2.5e999"),
    # an integer past Python's bound on int <-> text: said so, not how to lift the bound
    ('{"type": "publish", "id": 1, "action": "a", "payload": ' + "7" * 4301 + '}',
     "holds an integer of more than 4300 digits"),
    ('[{"type": "publish", "id": 1, "action": "a"}, '
     '{"type": "publish", "id": 2, "action": "a", "payload": "\\ud83d"}]', "lone surrogate"),
]


@pytest.mark.parametrize(("frame", "needle"), STRICT,
                         ids=[f"{i}-{n.replace(' ', '_')}" for i, (_, n) in enumerate(STRICT)])
async def test_frames_with_nan_infinity_or_lone_surrogates_are_refused(
        hub: RunningHub, frame: str, needle: str) -> None:
    key = hub.key("ops", admin=True)
    ws = await Raw.open(hub.url, key)
    await ws.send_text(frame)
    error = await ws.expect("error")
    assert error["code"] == "bad_json" and error["id"] is None, error
    assert needle in error["message"], error
    # nothing of the frame was handled: no task, no reply; the connection still works
    await ws.request({"type": "ping"}, "pong")
    assert [m["type"] for m in ws.seen] == ["welcome", "error", "pong"]
    assert await hub.app.count() == 0
    await ws.close()


async def test_valid_escapes_still_pass(hub: RunningHub) -> None:
    key = hub.key("ops", admin=True)
    ws = await Raw.open(hub.url, key)
    await ws.send_text('{"type": "publish", "id": 1, "action": "a", '
                       '"payload": {"s": "\\ud83d\\ude00", "b": "\\\\ud800", "n": 1e308}}')
    published = await ws.expect("published", 1)
    assert published["task"]["payload"] == {"s": "\U0001f600", "b": "\\ud800", "n": 1e308}
    await ws.close()


# -- 7. max_rescues: the loss after the last rescue fails the task --------------------------


async def test_a_task_is_rescued_max_rescues_times_then_fails(hub: RunningHub) -> None:
    key = hub.key("svc", subscribe=["job"])
    task = await hub.app.add("job", "poison")
    assert hub.app.max_rescues == 3
    for loss in range(1, 5):
        ws = await Raw.open(hub.url, key)
        await ws.request({"type": "subscribe", "id": "s", "service": "svc",
                          "actions": ["job"]}, "subscribed")
        offer = await ws.expect("offer", "s", timeout=10)
        # offered again after each of the first three losses: queued, not failed
        assert offer["task_id"] == task.id and offer["task"]["rescues"] == loss - 1
        await ws.request({"type": "pickup", "task_id": task.id, "ack": True}, "ok")
        await ws.close()  # the service "dies" holding the task: loss number `loss`
    final = await hub.app.wait_task(task.id, timeout=10)
    assert final.status is Status.FAILED and final.reason == "worker_lost"
    assert final.rescues == 3


async def test_an_integer_of_too_many_digits_is_refused_in_plain_words(
        hub: RunningHub) -> None:
    """REST and the Python API say what is wrong with an integer past 4300 digits
    (the hub's answer told a remote client to call sys.set_int_max_str_digits())."""
    key = hub.key("ops", admin=True)
    body = '{"action": "a", "payload": ' + "7" * 4301 + "}"
    async with httpx.AsyncClient(base_url=hub.url,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        r = await http.post("/api/v1/tasks", content=body,
                            headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"
    assert "holds an integer of more than 4300 digits" in r.json()["error"]["message"]
    assert "sys." not in r.text
    with pytest.raises(ValidationError, match="integer of more than 4300 digits"):
        await hub.app.add("a", 10 ** 4400)
    assert await hub.app.count() == 0
    fits = int("7" * 4300)
    task = await hub.app.add("a", fits)
    assert (await hub.app.get(task.id)).payload == fits
