"""The hub examples of README.md, docs/http.md and docs/protocol.md, against a real hub.

The examples talk to ``http://127.0.0.1:8765``, the hub's default address; the
test hub listens on a free port, so that address is replaced by the test
hub's in the code before it runs. The endless ``async for ... in hub.live(...)``
loops print their changes: the ``print`` in their namespace records a change
and raises :class:`_Leave`, which ends the example there (``run_fragment``'s
``stop``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from conveyor import Context, LogLevel, Status, Task
from conveyor.client import HubClient, LiveChange, Update
from conveyor.client._http import LogPage

from .._docs import VALUES, Block, find_block, run_fragment
from .conftest import RunningHub

EXAMPLES = {
    'hub.work(service="mailer", concurrency=8)': "test_readme_remote_worker_and_publisher",
    'hub.run("mail:send", {"to": "ann@example.com"}': "test_readme_remote_worker_and_publisher",
    'HTTPClient("http://127.0.0.1:8765", key)': "test_http_client_example",
    "if ctx.attempt == 1 and flaky():": "test_protocol_client_example",
}

DEFAULT_HUB = "http://127.0.0.1:8765"


class _Leave(Exception):
    """Raised by the recording ``print`` to leave an endless ``async for``."""


def example(marker: str, hub: RunningHub) -> Block:
    """The example holding ``marker``, talking to the test hub instead of the default one."""
    return find_block(marker).replace(DEFAULT_HUB, hub.url)


def leaving_print(printed: list[tuple[Any, ...]]) -> Any:
    """A ``print`` that records its arguments, then leaves the loop it is called in."""

    def fake_print(*args: Any) -> None:
        printed.append(args)
        raise _Leave

    return fake_print


@contextlib.asynccontextmanager
async def working(client: HubClient, work: Block, ns: dict[str, Any]) -> AsyncIterator[None]:
    """Run ``work`` (an example's ``await hub.work(...)``) in the background until
    the end of the block, then stop ``client`` and close it."""
    async with _serving(client, run_fragment(work, ns)):
        yield


@contextlib.asynccontextmanager
async def mailer(hub: RunningHub) -> AsyncIterator[None]:
    """A remote worker of ``mail:send`` (addresses "nobody..." fail) for the examples
    that publish; not an example itself."""
    client = HubClient(hub.url, hub.key("test-mailer", subscribe=["mail:*"]))

    @client.handler("mail:send")
    async def send(ctx: Context[Any]) -> dict[str, Any]:
        ctx.log.debug("connecting")
        ctx.log.info("sending to %s", ctx.payload["to"])
        if ctx.payload["to"].startswith("nobody"):
            raise LookupError(f"no such address: {ctx.payload['to']}")
        return {"sent": ctx.payload["to"]}

    async with _serving(client, client.work("test-mailer", stop_timeout=1.0)):
        yield


@contextlib.asynccontextmanager
async def _serving(client: HubClient, work: Awaitable[Any]) -> AsyncIterator[None]:
    """Run ``work`` (the client working) in the background while the block runs, once
    the client is working; then stop the client, wait for ``work`` and close it."""
    runner = asyncio.ensure_future(work)
    try:
        await client.wait_working(10)
        yield
    finally:
        client.stop()
        await asyncio.wait_for(runner, 20)
        await client.close()


# -- README.md -------------------------------------------------------------------------


async def test_readme_remote_worker_and_publisher(hub: RunningHub) -> None:
    # the keys of README's `conveyor credentials add` lines
    mailer_key = hub.key("mailer", subscribe=["mail:*"])
    shop_key = hub.key("shop", publish=["mail:*"])
    setup, work = example('hub.work(service="mailer", concurrency=8)', hub).cut("await hub.work")
    worker = await run_fragment(setup, {"MAILER_KEY": mailer_key})
    client = worker["hub"]
    assert isinstance(client, HubClient) and client.actions == ["mail:send"]

    printed: list[tuple[Any, ...]] = []
    async with working(client, work, dict(worker)):
        out = await run_fragment(
            example('hub.run("mail:send", {"to": "ann@example.com"}', hub),
            {"HubClient": HubClient, "SHOP_KEY": shop_key, "print": leaving_print(printed)},
            stop=_Leave)

    assert out["result"] == {"sent": "ann@example.com"}
    [(change,)] = printed
    assert isinstance(change, LiveChange) and change.type == "snapshot"  # then added/changed/...
    [task] = await hub.app.find({"action": "mail:send"})
    assert task.status is Status.SUCCEEDED and task.progress is not None
    assert (task.progress.current, task.progress.total) == (1, 1)


# -- docs/http.md ----------------------------------------------------------------------


async def test_http_client_example(hub: RunningHub) -> None:
    key = hub.key("admin", admin=True)
    async with mailer(hub):
        failed = await hub.app.add("mail:send", {"to": "nobody@example.com"})
        await hub.app.wait_task(failed.id, timeout=10)
        out = await run_fragment(example('HTTPClient("http://127.0.0.1:8765", key)', hub),
                                 {"key": key})

    task = out["task"]
    assert isinstance(task, Task) and (task.action, task.priority) == ("mail:send", -1)
    assert out["result"] == {"sent": "ann@example.com"}
    assert [t.id for t in out["tasks"]] == [failed.id]
    assert out["n"] == 2
    page = out["page"]
    assert isinstance(page, LogPage) and page.complete
    assert [(r.level, r.message) for r in page.records] == [
        (LogLevel.INFO, "sending to ann@example.com")]
    [aborted] = out[VALUES]
    assert isinstance(aborted, Task) and aborted.status is Status.ABORTED
    assert aborted.id == out["later"].id


# -- docs/protocol.md ------------------------------------------------------------------


async def test_protocol_client_example(hub: RunningHub) -> None:
    """The example is a tour of the client rather than a script: run top to bottom,
    ``hub.wait`` would wait for a worker that only starts on its last line, and
    the live query never ends. So it runs in four parts, in one namespace: the
    publishing calls (another worker serves them), the live loop (left after its
    first change), the handler, and ``hub.work``, which then serves a task."""
    key = hub.key("mail", publish=["mail:*"], subscribe=["mail:*"])
    block = example("if ctx.attempt == 1 and flaky():", hub)
    publish, rest = block.cut("hub.live(")
    live, rest = rest.cut("@hub.handler")
    handler, work = rest.cut("await hub.work")

    # publish, wait, run and follow, while another worker does the work
    updates: list[tuple[Any, ...]] = []
    async with mailer(hub):
        failed = await hub.app.add("mail:send", {"to": "nobody"})
        await hub.app.wait_task(failed.id, timeout=10)
        ns: dict[str, Any] = {"key": key, "print": lambda *args: updates.append(args)}
        ns |= await run_fragment(publish, ns)
    client = ns["hub"]
    try:
        assert ns["result"] == {"sent": "ann"} and ns["value"] == {"sent": "bob"}
        assert isinstance(ns["update"], Update) and ns["update"].type == "end"
        assert updates[0][0] == "watching" and updates[-1][0] == "end"
        assert (ns["task"].action, ns["task"].priority) == ("mail:send", -1)

        # the live query: its first change is the snapshot of the failed tasks
        printed: list[tuple[Any, ...]] = []
        ns["print"] = leaving_print(printed)
        ns |= await run_fragment(live, ns, stop=_Leave)
        assert printed == [("snapshot", None)]
        assert [t["id"] for t in ns["change"].tasks] == [failed.id]
        assert set(ns["change"].tasks[0]) >= {"id", "action", "error"}

        # the handler, and the worker, which now runs it
        ns["flaky"] = lambda: False
        ns |= await run_fragment(handler, ns)
        assert client.actions == ["mail:send"]
        async with working(client, work, ns):
            task = await client.add("mail:send", {"to": "cy"})
            assert await client.wait(task.id, timeout=10) == {"sent": True}
    finally:
        await client.close()
    done = await hub.app.get(task.id, logs=True)
    assert done.logs is not None and [r.message for r in done.logs] == ["sending to cy"]
    assert done.progress is not None and (done.progress.current, done.progress.total) == (1, 2)
