"""The WebSocket endpoint: authentication, errors, limits and hostile clients."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from conveyor.hub import _ws
from conveyor.model import LogLevel
from conveyor.storage.base import NewLog

from ._ws_helpers import Raw, eventually, make_hub
from .conftest import RunningHub


async def test_header_key_gets_a_welcome(hub: RunningHub) -> None:
    key = hub.key("svc", publish=["mail:*"], subscribe=["geo:*"])
    ws = await Raw.open(hub.url, key, welcome=False)
    welcome = await ws.recv()
    assert welcome["type"] == "welcome" and welcome["id"] is None
    assert welcome["credential"] == "svc" and welcome["admin"] is False
    assert welcome["publish"] == ["mail:*"] and welcome["subscribe"] == ["geo:*"]
    assert welcome["limits"]["max_frame"] == hub.hub.config.max_frame
    pong = await ws.request({"type": "ping"}, "pong")
    assert pong["ts"] > 0
    await ws.close()


async def test_hello_message_authenticates(hub: RunningHub) -> None:
    key = hub.key("browser", publish=["*"])
    ws = await Raw.open(hub.url, welcome=False)
    refused = await ws.request({"type": "ping", "id": "early"}, "error")
    assert refused["code"] == "unauthorized" and refused["id"] == "early"
    welcome = await ws.request({"type": "hello", "id": "h1", "key": key}, "welcome")
    assert welcome["id"] == "h1" and welcome["credential"] == "browser"
    again = await ws.request({"type": "hello", "id": "h2", "key": key}, "error")
    assert again["code"] == "bad_message"
    assert (await ws.request({"type": "ping", "id": 7}, "pong"))["id"] == 7
    await ws.close()


@pytest.mark.parametrize("how", ["header", "hello"])
async def test_a_bad_key_is_closed_with_4001(hub: RunningHub, how: str) -> None:
    hub.key("real", publish=["*"])
    bad = "cvk_000000000000_" + "x" * 43
    if how == "header":
        ws = await Raw.open(hub.url, bad, welcome=False)
    else:
        ws = await Raw.open(hub.url, welcome=False)
        await ws.send({"type": "hello", "id": 1, "key": bad})
    assert await ws.closed() == 4001
    assert ws.seen and ws.seen[0]["type"] == "error" and ws.seen[0]["code"] == "unauthorized"


async def test_a_hello_without_key_says_so_and_is_closed(hub: RunningHub) -> None:
    hub.key("real", publish=["*"])
    ws = await Raw.open(hub.url, welcome=False)
    await ws.send({"type": "hello", "id": "h"})
    assert await ws.closed() == 4001
    err = ws.seen[0]
    assert (err["type"], err["code"], err["id"]) == ("error", "unauthorized", "h")
    assert "'hello' needs your key" in err["message"]


async def test_unwatch_without_a_stream_is_a_bad_message(insecure_hub: RunningHub) -> None:
    ws = await Raw.open(insecure_hub.url)
    err = await ws.request({"type": "unwatch", "id": 21}, "error")
    assert err["code"] == "bad_message" and "'stream'" in err["message"], err
    err = await ws.request({"type": "unwatch", "id": 22, "stream": "nope"}, "error")
    assert err["code"] == "not_found", err
    await ws.close()


async def test_no_hello_in_time_is_closed(hub: RunningHub,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ws, "HELLO_TIMEOUT", 0.3)
    ws = await Raw.open(hub.url, welcome=False)
    assert await ws.closed() == 4001


async def test_malformed_messages_get_errors_and_the_connection_lives(
        insecure_hub: RunningHub) -> None:
    ws = await Raw.open(insecure_hub.url)
    cases: list[tuple[str | bytes, str]] = [
        ("not json", "bad_json"),
        ("[1]", "bad_message"),
        ("42", "bad_message"),
        ("[]", "bad_message"),
        (json.dumps({"type": "ping"}), "bad_message"),                 # no id
        (json.dumps({"id": 1}), "bad_message"),                        # no type
        (json.dumps({"id": {"x": 1}, "type": "ping"}), "bad_message"),   # bad id
        (json.dumps({"id": True, "type": "ping"}), "bad_message"),
        (json.dumps({"id": 2, "type": "no-such-thing"}), "unknown_type"),
        (json.dumps({"id": 3, "type": "publish"}), "bad_message"),
        (json.dumps({"id": 4, "type": "publish", "action": "bad action!"}), "invalid"),
        (json.dumps({"id": 5, "type": "live", "filter": {"$nope": 1}}), "bad_filter"),
        (json.dumps({"id": 6, "type": "pickup", "task_id": "x"}), "not_held"),
        (json.dumps({"id": 7, "type": "subscribe", "service": "s", "actions": "a"}),
         "bad_message"),
        # a malformed action name is `invalid` as in `publish`, before rights
        (json.dumps({"id": 9, "type": "subscribe", "service": "s",
                     "actions": ["ok", "bad action!"]}),
         "invalid"),
        (json.dumps({"id": 10, "type": "subscribe", "service": "s", "actions": ["a", 3]}),
         "invalid"),
        (json.dumps({"id": 8, "type": "watch"}), "bad_message"),
        (b"\x00\x01binary", "binary_frame"),
    ]
    for text, code in cases:
        await ws.send_text(text)
        error = await ws.expect("error", timeout=5)
        assert error["code"] == code, (text, error)
        assert isinstance(error["message"], str) and error["message"]
    filter_error = next(m for m in ws.seen if m.get("code") == "bad_filter")
    assert filter_error["id"] == 5 and "$nope" in filter_error["message"]
    assert (await ws.request({"type": "ping"}, "pong"))["type"] == "pong"
    # the words of a live query given to the remote-worker messages point at live/unlive
    wrong = await ws.request({"type": "subscribe", "filter": {"action": "a"}}, "error")
    assert wrong["code"] == "bad_message" and "is 'live'" in wrong["message"]
    wrong = await ws.request({"type": "unsubscribe", "live": "q"}, "error")
    assert wrong["code"] == "not_found" and "'unlive'" in wrong["message"]
    await ws.close()


async def test_several_messages_in_one_frame(insecure_hub: RunningHub) -> None:
    ws = await Raw.open(insecure_hub.url)
    await ws.send([{"type": "ping", "id": 1}, {"type": "ping", "id": 2}, "junk",
                   {"type": "ping", "id": 3}])
    got = [await ws.recv() for _ in range(4)]
    assert [m["type"] for m in got] == ["pong", "pong", "error", "pong"]
    assert [m["id"] for m in got] == [1, 2, None, 3]
    await ws.close()


async def test_an_oversized_message_is_closed_with_4009(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, max_frame=1000) as hub:
        other = await Raw.open(hub.url)
        ws = await Raw.open(hub.url)
        await ws.send({"type": "ping", "pad": "x" * 2000})
        assert await ws.closed() == 4009
        # far over the transport's limit: the WebSocket layer itself refuses it (1009)
        ws = await Raw.open(hub.url)
        try:
            await ws.send_text(json.dumps({"type": "ping", "id": 1, "pad": "x" * 10_000_000}))
            code = await ws.closed()
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
        assert code in (1009, 4009)
        assert (await other.request({"type": "ping"}, "pong"))["type"] == "pong"
        await other.close()


async def test_a_flood_is_closed_with_4029(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, max_rate=50) as hub:
        other = await Raw.open(hub.url)
        ws = await Raw.open(hub.url)
        await ws.send([{"type": "ping", "id": i} for i in range(200)])
        assert await ws.closed() == 4029
        assert (await other.request({"type": "ping"}, "pong"))["type"] == "pong"
        await other.close()


async def test_a_garbage_stream_is_closed_with_1008(insecure_hub: RunningHub) -> None:
    ws = await Raw.open(insecure_hub.url)
    for _ in range(_ws.BAD_MESSAGE_BUDGET + 5):
        await ws.send_text("garbage")
    assert await ws.closed() == 1008


async def test_a_slow_reader_is_cut_off_with_4008(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, max_pending=50) as hub:
        task = await hub.app.add("big", {"blob": "x" * 100_000})
        other = await Raw.open(hub.url)
        # a reader that asks for a lot and reads nothing: its queue fills up
        slow = await Raw.open(hub.url, max_queue=1)
        for _ in range(8):
            await slow.send([{"type": "get", "id": i, "task_id": task.id} for i in range(100)])
        # the hub drops it without it reading a thing
        await eventually(lambda: len(hub.hub.connections.get("", ())) == 1, timeout=30)
        assert await slow.closed(timeout=30) == 4008
        assert (await other.request({"type": "ping"}, "pong"))["type"] == "pong"
        await other.close()


async def test_a_slow_reader_of_large_messages_is_cut_off_by_their_size(
        tmp_path: Path) -> None:
    """Few large messages: the queue's characters, not its count, reach the bound (a
    live query's reader that stopped reading kept the hub buffering without end)."""
    async with make_hub(tmp_path, insecure=True, max_pending_bytes=2_000_000) as hub:
        slow = await Raw.open(hub.url, max_queue=1)
        await slow.request({"type": "live", "id": "q", "filter": {"action": "flood"}},
                           "snapshot")
        # each change sends the task, ~50 kB: far fewer than max_pending (10,000); the
        # sockets' buffers take some megabytes before the hub's queue grows
        for _ in range(60):
            await hub.app.add_many([("flood", {"blob": "x" * 50_000})] * 20)
            if not hub.hub.connections.get(""):
                break
        assert await slow.closed(timeout=30) == 4008
        assert not hub.hub.connections.get("")


@pytest.mark.serial  # a bound of about a second: alone
async def test_revoking_a_credential_closes_its_sockets_within_a_second(
        hub: RunningHub) -> None:
    key = hub.key("doomed", publish=["*"], subscribe=["*"])
    keep = hub.key("kept", publish=["*"])
    sockets = [await Raw.open(hub.url, key) for _ in range(3)]
    survivor = await Raw.open(hub.url, keep)
    assert hub.credentials is not None
    t0 = time.monotonic()
    hub.credentials.revoke("doomed")
    codes = await asyncio.gather(*(ws.closed(timeout=5) for ws in sockets))
    elapsed = time.monotonic() - t0
    assert codes == [4001, 4001, 4001]
    assert elapsed < 1.0, elapsed
    assert (await survivor.request({"type": "ping"}, "pong"))["type"] == "pong"
    again = await Raw.open(hub.url, key, welcome=False)
    assert await again.closed() == 4001
    await survivor.close()


async def test_max_instances_is_enforced(hub: RunningHub) -> None:
    key = hub.key("pair", subscribe=["*"], max_instances=2)
    first = await Raw.open(hub.url, key)
    second = await Raw.open(hub.url, key)
    third = await Raw.open(hub.url, key, welcome=False)
    assert await third.closed() == 4029
    assert third.seen[0]["code"] == "rate_limited"
    await first.close()
    await eventually(lambda: sum(c.credential.name == "pair" for conns in
                                 hub.hub.connections.values() for c in conns) == 1)
    fourth = await Raw.open(hub.url, key)
    assert (await fourth.request({"type": "ping"}, "pong"))["type"] == "pong"
    await second.close()
    await fourth.close()


async def test_task_stream_endpoint_needs_a_credential(hub: RunningHub) -> None:
    task = await hub.app.add("mail:send", {"to": "x"})
    anonymous = await Raw.open(hub.url, path=f"/ws/tasks/{task.id}", welcome=False)
    await anonymous.send({"type": "ping", "id": 1})
    assert (await anonymous.recv())["code"] == "unauthorized"
    await anonymous.close()
    other = hub.key("other", publish=["geo:*"])
    forbidden = await Raw.open(hub.url, other, path=f"/ws/tasks/{task.id}")
    assert (await forbidden.expect("error"))["code"] == "forbidden"
    assert await forbidden.closed() == 4003
    reader = hub.key("reader", publish=["mail:*"])
    ws = await Raw.open(hub.url, reader, path=f"/ws/tasks/{task.id}")
    watching = await ws.expect("watching")
    assert watching["task"]["id"] == task.id
    assert watching["task"]["public_url"] == hub.hub.task_url(task.id)
    await hub.app.abort(task.id, "enough")
    end = await ws.expect("end")
    assert end["status"] == "aborted"
    assert await ws.closed() == 1000


async def test_a_get_whose_log_would_overflow_the_send_queue_is_refused_not_cut_off(
        tmp_path: Path) -> None:
    """``get`` with ``logs`` of a task whose log does not fit in the send queue
    (``max_pending_bytes``): a ``too_large`` error, and the connection goes on (it
    was cut off with 4008 as a slow reader, however fast it read)."""
    async with make_hub(tmp_path, insecure=True, max_pending_bytes=64_000) as hub:
        task = await hub.app.add("long", None)
        await hub.app.storage.append_logs([  # lines without a run's token: kept
            NewLog(task.id, LogLevel.INFO, "x" * 1000, time.time(), None) for _ in range(70)])
        ws = await Raw.open(hub.url)
        error = await ws.request({"type": "get", "id": 1, "task_id": task.id, "logs": True},
                                 "error")
        assert error["code"] == "too_large" and "watch" in error["message"], error
        small = await ws.request({"type": "get", "id": 2, "task_id": task.id,
                                  "logs": True, "max_level": "warning"}, "task")
        assert small["task"]["id"] == task.id and small["task"]["logs"] == []
        await ws.close()
