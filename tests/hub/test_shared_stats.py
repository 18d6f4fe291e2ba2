"""The task counts of /api/v1/stats and /metrics: read for every caller while they
are cheap, shared once a read is costly (a GROUP BY over every task: 0.2-0.5 s at
1,500,000 tasks, and an open dashboard asked for it twice every 2 s and after each
change of its table, keeping the database busy with counts under churn)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.hub import _stats

from ._rest_helpers import API, client
from ._ws_helpers import make_hub
from .conftest import RunningHub

COST = 0.2  # seconds a costly read takes here (a large table's GROUP BY)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    async with make_hub(tmp_path, insecure=True) as running:
        yield running


def costly(hub: RunningHub) -> None:
    """Make the storage's count read take COST seconds, as on a large table."""
    stats = hub.app.stats

    async def slow_stats() -> Any:
        await asyncio.sleep(COST)  # the read's cost
        return await stats()

    hub.app.stats = slow_stats  # type: ignore[method-assign]


async def test_cheap_counts_are_read_for_every_caller(hub: RunningHub) -> None:
    async with client(hub) as http:
        for n in range(1, 6):
            await hub.app.add("count:me", n)
            body = (await http.get(f"{API}/stats")).json()
            assert body == {"stats": {"count:me": {"queued": n}}}
    assert hub.hub.stats.reads == 5


async def test_costly_counts_are_shared(hub: RunningHub, monkeypatch: Any) -> None:
    costly(hub)
    await hub.app.add("count:me", 1)
    async with client(hub) as http:
        first = (await http.get(f"{API}/stats")).json()  # costly: measured
        assert first == {"stats": {"count:me": {"queued": 1}}}
        assert hub.hub.stats.reads == 1
        # callers at the same time share one read, the metrics' scrapes too
        monkeypatch.setattr(_stats, "SPACING", 0.0)  # (no reuse of a read ended)
        answers = await asyncio.gather(*[http.get(f"{API}/stats") for _ in range(8)],
                                       *[http.get("/metrics") for _ in range(4)])
        assert [a.status_code for a in answers] == [200] * 12
        assert hub.hub.stats.reads == 2
        assert 'conveyor_tasks{action="count:me",status="queued"} 1.0' in answers[8].text
        # within SPACING times its cost of its start, a read's counts are served again
        monkeypatch.setattr(_stats, "SPACING", 1000.0)
        await hub.app.add("count:me", 2)
        again = (await http.get(f"{API}/stats")).json()
        assert again == first and hub.hub.stats.reads == 2
        # past MAX_AGE (5 s), read again however costly: the new task is counted
        monkeypatch.setattr(_stats, "MAX_AGE", 0.0)
        later = (await http.get(f"{API}/stats")).json()
        assert later == {"stats": {"count:me": {"queued": 2}}}
        assert hub.hub.stats.reads == 3


async def test_a_failed_read_is_not_kept(hub: RunningHub, monkeypatch: Any) -> None:
    costly(hub)
    async with client(hub) as http:
        assert (await http.get(f"{API}/stats")).status_code == 200
        stats = hub.app.stats
        fail = True

        async def failing() -> Any:
            if fail:
                raise RuntimeError("the storage failed")
            return await stats()

        hub.app.stats = failing  # type: ignore[method-assign]
        monkeypatch.setattr(_stats, "SPACING", 0.0)  # the last read is old: read again
        assert (await http.get(f"{API}/stats")).status_code == 500
        fail = False
        await hub.app.add("count:me", 1)
        assert (await http.get(f"{API}/stats")).json() == {
            "stats": {"count:me": {"queued": 1}}}
