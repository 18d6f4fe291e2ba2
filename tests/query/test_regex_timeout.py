"""A ``$regex`` that backtracks catastrophically is stopped after
``conveyor.query._regex.MATCH_TIMEOUT`` with a ``QueryError`` (memory and SQLite,
where conveyor runs the pattern), and the process goes on meanwhile."""

from __future__ import annotations

import asyncio
import time

import pytest

from conveyor import Conveyor, QueryError
from conveyor.query._regex import MATCH_TIMEOUT

HOSTILE = {"payload.s": {"$regex": "^(a|aa)+$"}}  # exponential on many a's and a '!'


async def test_a_catastrophic_regex_is_stopped_and_the_loop_runs_meanwhile(
        app: Conveyor) -> None:
    await app.add("regex:x", {"s": "a" * 80 + "!"})
    await app.add("regex:x", {"s": "aaaa"})
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    try:
        if app.storage.url.startswith("postgres"):
            # the server runs it (its engine does not backtrack on this one)
            found = await app.find(HOSTILE)
            assert [t.payload for t in found] == [{"s": "aaaa"}]
            return
        with pytest.raises(QueryError) as caught:
            await app.find(HOSTILE)
        elapsed = time.monotonic() - started
    finally:
        ticker.cancel()
    assert "ran longer than" in str(caught.value) and "^(a|aa)+$" in str(caught.value)
    assert MATCH_TIMEOUT * 0.9 <= elapsed < MATCH_TIMEOUT * 10
    if app.storage.url.startswith("memory"):
        # evaluated on the loop (the memory backend is for tests): the path is known
        assert caught.value.path == "filter.payload.s.$regex"
    else:
        # on SQLite's thread, matching with the GIL released: about 100 ticks in a
        # second (with the GIL held by the match there were none)
        assert ticks >= 10, ticks
    # the same filter without the hostile value works, and nothing was changed
    assert await app.count({"payload.s": {"$regex": "^a+$"}}) == 1
    assert await app.count() == 2
