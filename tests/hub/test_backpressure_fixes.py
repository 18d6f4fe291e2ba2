"""The hub's limits (backpressure audit): a publish whose reply would not fit the
send queue is refused before anything is added (the tasks were stored, and the
publisher cut off with 4008 and no reply, so that a retry added them twice); a live
query's ``limit`` is at most 100,000, the bound of one without a limit (a larger
window was held whole in the hub and read again on every change at its edge)."""

from __future__ import annotations

from pathlib import Path

from ._ws_helpers import Raw, make_hub
from .conftest import RunningHub


async def test_a_publish_whose_reply_would_not_fit_adds_nothing(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, max_pending_bytes=2 << 20) as hub:
        async with Raw.opened(hub.url) as ws:
            tasks = [{"action": "bp:cut", "payload": i} for i in range(5000)]
            error = await ws.request({"type": "publish", "updates": False, "tasks": tasks},
                                     "error")
            assert error["code"] == "too_large" and "nothing was added" in error["message"]
            assert (await ws.request({"type": "ping"}, "pong"))["type"] == "pong"
            fewer = await ws.request({"type": "publish", "updates": False,
                                      "tasks": tasks[:500]}, "published")
            assert len(fewer["tasks"]) == 500
        assert await hub.app.count({"action": "bp:cut"}) == 500


async def test_a_live_querys_limit_is_at_most_100_000(insecure_hub: RunningHub) -> None:
    async with Raw.opened(insecure_hub.url) as ws:
        error = await ws.request({"type": "live", "limit": 100_001}, "error")
        assert error["code"] == "bad_filter" and error["path"] == "limit"
        assert "100,000" in error["message"]
        snapshot = await ws.request({"type": "live", "id": "q", "limit": 100_000}, "snapshot")
        assert snapshot["count"] == 0
