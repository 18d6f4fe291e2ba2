"""Hostile and malformed input, generated: the hub answers or closes with a code, never crashes."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conveyor import Conveyor
from conveyor.hub import HubConfig

from .conftest import running_hub

TYPES = ["hello", "ping", "publish", "wait", "get", "abort", "watch", "unwatch", "live",
         "unlive", "subscribe", "unsubscribe", "pickup", "refuse", "fetch", "update", "log",
         "emit", "return", "drop", "fail", "retry", "reschedule", "heartbeat"]
ALLOWED_CLOSES = {1000, 1008, 1009, 4008, 4009, 4029, 4002}

scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
           | st.floats(allow_nan=False) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=15)
fields = st.sampled_from(["action", "payload", "options", "tasks", "task_id", "service",
                          "actions", "capacity", "filter", "sort", "limit", "fields",
                          "timeout", "default", "result", "error", "level", "message",
                          "current", "total", "data", "after", "stream", "live",
                          "subscription", "key", "delivery", "wait", "max_level", "ack"])
messages = st.builds(
    lambda kind, msg_id, extra: {**extra, "type": kind, "id": msg_id},
    st.sampled_from(TYPES) | st.text(max_size=12),
    scalars,
    st.dictionaries(fields, json_values, max_size=6))
frames = st.one_of(
    messages.map(json.dumps),
    st.lists(messages, max_size=5).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
)


@pytest.fixture(scope="module")
def threaded_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A hub running in a thread of its own (the tests here are synchronous)."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    box: dict[str, Any] = {}
    started = threading.Event()
    stop = threading.Event()

    async def serve() -> None:
        app = Conveyor(f"sqlite:///{tmp / 'hub.db'}")
        config = HubConfig(port=0, insecure=True, max_frame=20_000, max_rate=5000)
        async with running_hub(app, config, None) as hub:
            box["url"] = hub.ws_url
            await app.add_many([("fuzz:x", i) for i in range(5)])
            started.set()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(20)
    yield box["url"]
    stop.set()
    thread.join(30)


def _probe(ws: ClientConnection) -> bool:
    """Ping; True if the connection answers, False if the hub closed it with a known code."""
    try:
        ws.send(json.dumps({"type": "ping", "id": "probe"}))
        while True:
            frame = ws.recv(timeout=10)
            parsed = json.loads(frame)
            for msg in parsed if isinstance(parsed, list) else [parsed]:
                assert isinstance(msg, dict) and "type" in msg, msg
                if msg["type"] == "error":
                    assert isinstance(msg.get("code"), str) and msg.get("message"), msg
                if msg.get("id") == "probe" and msg["type"] == "pong":
                    return True
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        assert code in ALLOWED_CLOSES, code
        return False


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(batch=st.lists(frames, min_size=1, max_size=6))
def test_generated_junk_never_breaks_the_hub(threaded_hub: str, batch: list[Any],
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="conveyor")
    with connect(threaded_hub + "/ws", max_size=None, compression=None) as control, \
            connect(threaded_hub + "/ws", max_size=None, compression=None) as ws:
        control.recv(timeout=10)
        ws.recv(timeout=10)
        try:
            for frame in batch:
                ws.send(frame)
        except ConnectionClosed:
            pass
        _probe(ws)
        assert _probe(control)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_huge_frames_floods_and_binary(threaded_hub: str) -> None:
    with connect(threaded_hub + "/ws", max_size=None, compression=None) as control:
        control.recv(timeout=10)
        with connect(threaded_hub + "/ws", max_size=None, compression=None) as ws:
            ws.recv(timeout=10)
            ws.send(b"\xff" * 50_000)
            assert not _probe(ws)
        with connect(threaded_hub + "/ws", max_size=None, compression=None) as ws:
            ws.recv(timeout=10)
            ws.send(json.dumps([{"type": "ping", "id": i} for i in range(12_000)])[:19_999])
            assert _probe(ws)  # cut short: not JSON, one error
        with connect(threaded_hub + "/ws", max_size=None, compression=None) as ws:
            ws.recv(timeout=10)
            try:
                for _ in range(20):
                    ws.send(json.dumps([{"type": "ping", "id": i} for i in range(1000)]))
            except ConnectionClosed:
                pass
            assert not _probe(ws)
        with connect(threaded_hub + "/ws", max_size=None, compression=None) as ws:
            ws.recv(timeout=10)
            for kind in TYPES:
                ws.send(json.dumps({"type": kind, "id": kind}))
            ws.send(json.dumps({"type": "subscribe", "id": "s", "service": "x" * 500,
                                "actions": ["a"] * 1500}))
            assert _probe(ws)
        assert _probe(control)
