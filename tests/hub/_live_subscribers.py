"""Many live-query subscribers in one process, for the fan-out load test and the bench.

``python -m tests.hub._live_subscribers URL KEY COUNT FILTER_JSON FIELDS_JSON``

Opens COUNT connections, each with one live query; prints ``ready`` once every
snapshot arrived. Then it applies every message, checking that sequence
numbers have no gap and that no task's version goes backwards. A line
``check PATH`` on stdin names a JSON file ``{id: [status, version]}``: once
every subscriber's state equals it (or after 60 s) it prints one JSON line:
``{"ok": ..., "messages": ..., "gaps": ..., "backwards": ..., "mismatched": ...,
"latency": [...]}`` (latencies, in seconds, between a task's ``updated_at`` and
the arrival of the message that carried it; only with ``updated_at`` in the
fields).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from websockets.asyncio.client import connect


class Sub:
    def __init__(self) -> None:
        self.expected = 1
        self.state: dict[str, tuple[Any, int]] = {}
        self.gaps = 0
        self.backwards = 0
        self.messages = 0
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()
        self.snapshot: list[dict[str, Any]] = []

    def apply(self, msg: dict[str, Any], now: float, latency: list[float]) -> None:
        kind = msg.get("type")
        if kind == "error":
            print("error", msg, file=sys.stderr, flush=True)
            return
        self.messages += 1
        if msg.get("seq") != self.expected:
            self.gaps += 1
            self.expected = msg.get("seq", self.expected)
        self.expected += 1
        if kind == "snapshot":
            self.snapshot.extend(msg["tasks"])
            if not msg["more"]:
                self.state = {t["id"]: (t.get("status"), t["version"]) for t in self.snapshot}
                self.snapshot = []
                self.ready.set()
        elif kind in ("added", "changed"):
            task = msg["task"]
            old = self.state.get(task["id"])
            if old is not None and old[1] > task["version"]:
                self.backwards += 1
            self.state[task["id"]] = (task.get("status"), task["version"])
            if "updated_at" in task:
                latency.append(now - task["updated_at"])
        elif kind == "removed":
            self.state.pop(msg["task_id"], None)
        self.changed.set()


async def run_sub(url: str, key: str, query: dict[str, Any], sub: Sub,
                  latency: list[float]) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with connect(url, additional_headers=headers, max_size=None, compression=None,
                       ping_interval=None) as ws:
        json.loads(await ws.recv())  # welcome
        await ws.send(json.dumps({**query, "type": "live", "id": "q"}))
        async for frame in ws:
            now = time.time()
            parsed = json.loads(frame)
            for msg in parsed if isinstance(parsed, list) else [parsed]:
                sub.apply(msg, now, latency)


def _load(path: str) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


async def main() -> None:
    url, key, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    query: dict[str, Any] = {"filter": json.loads(sys.argv[4])}
    fields = json.loads(sys.argv[5]) if len(sys.argv) > 5 else None
    if fields is not None:
        query["fields"] = fields
    url = url.replace("http://", "ws://") + "/ws"
    subs = [Sub() for _ in range(count)]
    latency: list[float] = []
    tasks = [asyncio.create_task(run_sub(url, key, query, s, latency)) for s in subs]
    await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in subs)), 120)
    latency.clear()
    print("ready", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    path = line.split(maxsplit=1)[1].strip()
    expected = {k: tuple(v) for k, v in _load(path).items()}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(s.state == expected for s in subs):
            break
        for s in subs:
            s.changed.clear()
        waits = [asyncio.ensure_future(s.changed.wait()) for s in subs]
        await asyncio.wait(waits, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
    mismatched = sum(1 for s in subs if s.state != expected)
    latency.sort()
    result = {"ok": mismatched == 0, "messages": sum(s.messages for s in subs),
              "gaps": sum(s.gaps for s in subs), "backwards": sum(s.backwards for s in subs),
              "mismatched": mismatched, "expected": len(expected),
              "latency": latency[:: max(1, len(latency) // 2000)]}
    if mismatched:
        bad = next(s for s in subs if s.state != expected)
        extra = [k for k in bad.state if bad.state[k] != expected.get(k)][:5]
        missing = [k for k in expected if k not in bad.state][:5]
        result["example"] = {"extra": {k: bad.state[k] for k in extra},
                             "missing": {k: expected[k] for k in missing}}
    print(json.dumps(result), flush=True)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
