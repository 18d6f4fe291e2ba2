"""A live query whose snapshot is larger than half the connection's send queue
(``max_pending_bytes``): it was queued at once and cut its reader off (4008)
before the first part, however fast the reader read (scale audit: about 16,000
tasks of 1 KB with the defaults, far below the documented 100,000). The parts
now go out at the reader's pace, the changes that come meanwhile after them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ._ws_helpers import Raw, eventually, make_hub, ws_state

PAD = "x" * 400


async def test_a_snapshot_larger_than_the_send_queue_reaches_a_fast_reader(
        tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, max_pending=100,
                        max_pending_bytes=256 * 1024) as hub:
        # 40 MB: more than the sockets' buffers take, so the snapshot is still going out
        # when the changes below come (they are held back behind it)
        old = await hub.app.add_many([("big:x", {"n": i, "pad": PAD * 50})
                                      for i in range(2000)])
        async with Raw.opened(hub.url) as ws:
            await ws.send({"type": "live", "id": "q", "filter": {"action": "big:x"},
                           "sort": "payload.n"})
            first = await ws.expect("snapshot", "q")
            assert first["count"] == 2000 and first["more"] is True
            # changes while the rest of the snapshot goes out come after it, in order
            new = await hub.app.add_many([("big:x", {"n": 3000 + i}) for i in range(5)])
            sub = next(iter(ws_state(hub).live.groups.values())).subs[0]
            assert sub.held is not None and len(sub.held) == 5
            got, seqs = list(first["tasks"]), [first["seq"]]
            part = first
            while part["more"]:
                part = await ws.expect("snapshot", "q")
                got += part["tasks"]
                seqs.append(part["seq"])
            assert [t["id"] for t in got] == [t.id for t in old]
            added = [await ws.expect(None, "q") for _ in new]
            assert [m["type"] for m in added] == ["added"] * 5
            assert [m["task"]["id"] for m in added] == [t.id for t in new]
            seqs += [m["seq"] for m in added]
            assert seqs == list(range(1, len(seqs) + 1))


async def test_changes_piling_up_behind_a_snapshot_cut_a_reader_off(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, max_pending=50,
                        max_pending_bytes=256 * 1024) as hub:
        # 40 MB: more than the sockets' buffers on both sides take
        await hub.app.add_many([("big:y", {"n": i, "pad": PAD * 50}) for i in range(2000)])
        async with Raw.opened(hub.url) as ws:
            await ws.send({"type": "live", "id": "q", "filter": {"action": "big:y"}})
            assert (await ws.expect("snapshot", "q", timeout=30))["more"] is True
            for start in range(0, 600, 100):  # the reader reads nothing meanwhile
                await hub.app.add_many([("big:y", {"n": i}) for i in range(start, start + 100)])
            assert await ws.closed(timeout=30) == 4008


async def test_a_reader_gone_midway_ends_its_paced_snapshot(tmp_path: Path) -> None:
    async with make_hub(tmp_path, insecure=True, max_pending=50,
                        max_pending_bytes=256 * 1024) as hub:
        await hub.app.add_many([("big:z", {"n": i, "pad": PAD * 50}) for i in range(2000)])
        ws = await Raw.open(hub.url)
        await ws.send({"type": "live", "id": "q", "filter": {"action": "big:z"}})
        assert (await ws.expect("snapshot", "q", timeout=30))["more"] is True
        assert _paced_sends()
        await ws.close()
        await eventually(lambda: not _paced_sends())


def _paced_sends() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if "LiveSub._paced" in repr(t.get_coro())]
