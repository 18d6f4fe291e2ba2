"""Bad input to the hub clients: the library's ValidationError (as ``Conveyor``
gives for the same call), nothing sent or written, nothing left pending; and the
Python forms ``Conveyor.add`` takes (a pydantic model payload, timedeltas in a
backoff) sent as their JSON."""

from __future__ import annotations

import asyncio
import gc
import math
from datetime import timedelta

import pytest
from pydantic import BaseModel

from conveyor import Conveyor, Status, SyncConveyor
from conveyor.client import HTTPClient, HubClient, SyncHubClient
from conveyor.errors import ValidationError
from conveyor.model import Backoff

from .conftest import RunningHub


class Invoice(BaseModel):
    number: int
    due: str


BAD_PAYLOADS = [{1, 2}, {"x": math.nan}, {(1, 2): "tuple key"}, object()]


async def test_unsendable_input_is_a_validation_error_and_leaves_nothing(
        hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    key = hub.key("pub", publish=["mail:*"])
    async with HubClient(hub.url, key) as ws, HTTPClient(hub.url, key) as http:
        for client in (ws, http):
            for payload in BAD_PAYLOADS:
                with pytest.raises(ValidationError, match="not JSON-serialisable"):
                    await client.add("mail:send", payload)
                with pytest.raises(ValidationError, match="not JSON-serialisable"):
                    await client.add_many([("mail:send", 1), ("mail:send", payload)])
            with pytest.raises(ValidationError, match="not JSON-serialisable"):
                await client.add("mail:send", 1, priority=math.nan)
        with pytest.raises(ValidationError, match="not JSON-serialisable"):
            await ws.run("mail:send", {1}, timeout=1)
        assert await hub.app.count() == 0
        # the connection still serves, and nothing waits for a reply that never comes
        assert (await ws.add("mail:send", 1)).status is Status.QUEUED
        assert ws._link is not None and not ws._link._pending
    gc.collect()
    lost = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert lost == []


async def test_a_model_payload_is_sent_as_its_json(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["billing:*"])
    async with HubClient(hub.url, key) as ws, HTTPClient(hub.url, key) as http:
        for client in (ws, http):
            task = await client.add("billing:send", Invoice(number=7, due="2026-12-31"))
            [many] = await client.add_many([("billing:send", Invoice(number=8, due="x"))])
            assert (await hub.app.get(task.id)).payload == {"number": 7, "due": "2026-12-31"}
            assert (await hub.app.get(many.id)).payload == {"number": 8, "due": "x"}


async def test_a_backoff_with_timedeltas_is_sent_as_seconds(hub: RunningHub) -> None:
    key = hub.key("pub", publish=["mail:*"])
    async with HubClient(hub.url, key) as ws, HTTPClient(hub.url, key) as http:
        for client in (ws, http):
            a = await client.add("mail:send", 1, backoff=timedelta(seconds=3))
            b = await client.add("mail:send", 2, backoff={"base": timedelta(seconds=2),
                                                          "maximum": timedelta(minutes=1)})
            assert (await hub.app.get(a.id)).backoff == Backoff(base=3.0)
            assert (await hub.app.get(b.id)).backoff == Backoff(base=2.0, maximum=60.0)


async def test_control_arguments_are_checked_as_the_library_checks_them(
        hub: RunningHub) -> None:
    admin = hub.key("ops", admin=True)
    queued = await hub.app.add("mail:send", 1, delay=600)
    async with HubClient(hub.url, admin) as ws, HTTPClient(hub.url, admin) as http:
        for client in (ws, http):
            with pytest.raises(ValidationError, match="reason"):
                await client.abort(queued.id, "")
            with pytest.raises(ValidationError, match="timeout must be >= 0 seconds"):
                await client.wait(queued.id, timeout=-1)
            with pytest.raises(ValidationError, match="a task id is a non-empty string"):
                await client.wait(5, timeout=1)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="timeout must be >= 0 seconds"):
            await ws.run("mail:send", 1, timeout=-1)
        for target in (5, None, 3.5, b"id"):
            with pytest.raises(ValidationError, match="delete takes a task id"):
                await http.delete(target)  # type: ignore[arg-type]
        done = await hub.app.add("mail:send", 2)
        await hub.app.abort(done.id)
        with pytest.raises(ValidationError, match="a task id is a non-empty string"):
            await http.delete([done.id, 5])  # type: ignore[list-item]
        assert (await hub.app.get(done.id)).status is Status.ABORTED  # not deleted
    assert (await hub.app.get(queued.id)).status is Status.QUEUED
    assert (await hub.app.get(queued.id)).abort_requested is None
    assert await hub.app.count() == 2


def test_the_sync_faces_take_an_existing_object_alone(tmp_path: object) -> None:
    app = Conveyor("memory://")
    with pytest.raises(TypeError, match="takes no options"):
        SyncConveyor(app, concurrency=4)
    client = HubClient("http://127.0.0.1:1", "key")
    with pytest.raises(TypeError, match="takes no key or options"):
        SyncHubClient(client, open_timeout=99)
    with pytest.raises(TypeError, match="takes no key or options"):
        SyncHubClient(client, "another key")
    assert SyncConveyor(app).app is app and SyncHubClient(client).client is client


async def test_an_empty_abort_reason_is_refused_over_the_websocket(
        insecure_hub: RunningHub) -> None:
    """REST refuses ``reason: ""``; the WebSocket did not (it aborted with
    ``"aborted"``)."""
    from ._ws_helpers import Raw

    queued = await insecure_hub.app.add("mail:send", 1, delay=600)
    ws = await Raw.open(insecure_hub.url)
    try:
        msg_id = await ws.send({"type": "abort", "task_id": queued.id, "reason": ""})
        error = await ws.expect("error", msg_id)
        assert error["code"] == "invalid" and "reason" in error["message"]
        await ws.request({"type": "abort", "task_id": queued.id}, "task")  # default reason
    finally:
        await ws.close()
    assert (await insecure_hub.app.get(queued.id)).reason == "aborted"


@pytest.mark.parametrize(("options", "message"), [
    ({"service_lease": float("nan")}, "service_lease must be a finite number"),
    ({"service_lease": float("inf")}, "service_lease must be a finite number"),
    ({"service_lease": 0.05}, "service_lease must be at least 0.1"),
    ({"abort_grace": -1}, "abort_grace must be a finite number >= 0"),
    ({"offer_timeout": "30"}, "offer_timeout must be a finite number"),
    ({"public_url": "notaurl"}, "public_url must be an http:// or https:// URL"),
    ({"public_url": "ftp://hub.example"}, "public_url must be an http:// or https:// URL"),
    ({"max_head": 100}, "max_head must be an integer >= 1024"),
    ({"max_head": True}, "max_head must be an integer >= 1024"),
    ({"max_frame": 0}, "max_frame must be an integer >= 512, not 0"),
    ({"max_frame": 1e6}, "max_frame must be an integer >= 512"),
    ({"max_frame": "1MiB"}, "max_frame must be an integer >= 512"),
    ({"inline_payload": -1}, "inline_payload must be an integer >= 0"),
    ({"inline_payload": None}, "inline_payload must be an integer >= 0"),
    ({"head_timeout": 0}, "head_timeout must be a finite number >= 0.1"),
    ({"head_timeout": float("nan")}, "head_timeout must be a finite number >= 0.1"),
])
def test_hub_settings_are_checked(options: dict[str, object], message: str) -> None:
    """A NaN lease was accepted, and every WebSocket's welcome failed to encode."""
    from conveyor.errors import ConfigurationError
    from conveyor.hub import HubConfig

    with pytest.raises(ConfigurationError, match=message):
        HubConfig(**options)  # type: ignore[arg-type]
    assert HubConfig(public_url="https://hub.example/x/").base_url == "https://hub.example/x"


async def test_a_hub_urls_password_stays_out_of_messages() -> None:
    from conveyor.client import HubError

    from .conftest import free_port

    url = f"http://ann:s3cret@127.0.0.1:{free_port()}"
    for client in (HubClient(url, "cvk_1_x"), HTTPClient(url, "cvk_1_x")):
        assert "s3cret" not in repr(client) and "ann:***@" in repr(client)
        with pytest.raises(HubError) as unreachable:
            await client.get("01a00000-0000-7000-8000-000000000000")
        assert "cannot reach the hub at" in str(unreachable.value)
        assert "s3cret" not in str(unreachable.value), unreachable.value
        await client.close()
    with pytest.raises(ValueError, match="not a hub URL") as bad:
        HubClient("ftp://ann:s3cret@127.0.0.1:1", "cvk_1_x")
    assert "s3cret" not in str(bad.value)


def _nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


async def test_a_message_nested_too_deeply_is_refused_by_the_client(hub: RunningHub) -> None:
    """The hub refuses a frame nested more than 64 levels (bad_json, without the
    message's id): HubClient.add waited for ever. The client refuses it itself."""
    key = hub.key("pub", publish=["mail:*"])
    async with HubClient(hub.url, key) as ws, HTTPClient(hub.url, key) as http:
        for client in (ws, http):
            with pytest.raises(ValidationError, match="nested more than 64 levels"):
                await asyncio.wait_for(client.add("mail:send", _nested(64)), 10)
        assert await hub.app.count() == 0
        assert ws._link is not None and not ws._link._pending
        # a deep payload that fits the frame goes through
        task = await ws.add("mail:send", _nested(60))
        assert (await hub.app.get(task.id)).payload == _nested(60)
