"""Where a client's read ends: a log page cut short by its limit is not complete, and
a live query closed by another task ends the iteration waiting in it."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.client import HTTPClient, HubClient

from ._rest_helpers import make_keys, worker_hub
from .conftest import RunningHub

__all__ = ["worker_hub"]


async def test_a_log_page_cut_short_by_its_limit_is_not_complete(
        worker_hub: RunningHub) -> None:
    keys = make_keys(worker_hub)
    async with HTTPClient(worker_hub.url, keys.admin) as hub:
        task = await hub.add("mail:send", {"to": "ann"})
        await hub.wait(task.id, timeout=10)
        whole = await hub.logs(task.id)
        assert whole.complete and len(whole.records) >= 2
        first = await hub.logs(task.id, limit=1)
        assert len(first.records) == 1 and not first.complete  # more lines behind it
        rest = await hub.logs(task.id, after_seq=first.next_seq, limit=len(whole.records))
        assert rest.complete  # fewer than the limit came back
        assert [r.message for r in first.records + rest.records] == [
            r.message for r in whole.records]


async def test_closing_a_live_query_ends_the_read_waiting_in_another_task(
        hub: RunningHub) -> None:
    key = hub.key("reader", publish=["*"], subscribe=["*"])
    async with HubClient(hub.url, key) as client:
        live = client.live({"action": "nothing:here"})
        snapshot = await live.__anext__()
        assert snapshot.type == "snapshot" and snapshot.tasks == ()
        reader = asyncio.create_task(live.__anext__())
        await asyncio.sleep(0)  # one loop step: the reader waits for the next change
        assert not reader.done()
        await live.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reader, 5)
