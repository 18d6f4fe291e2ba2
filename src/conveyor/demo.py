"""Example handlers, used by ``conveyor demo`` and runnable on their own::

    conveyor worker conveyor.demo:app            # storage: $CONVEYOR_DB or the demo file
    conveyor add demo:download '{"size": 4096}' --wait

Three actions show the main features:

- ``demo:download`` — an async handler that reports progress in 20 steps and
  writes log lines, then returns ``{"bytes": n}``;
- ``demo:poll`` — a polling task: it returns :class:`~conveyor.Reschedule`
  (``after=1``, attempt refunded) until it has polled three times; the
  count travels in the intermediate result that ``Reschedule`` stores;
- ``demo:flaky`` — fails on its first attempt and succeeds on the retry
  (``max_attempts=3``, ``backoff=0.5`` seconds).
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from .app import Conveyor
from .context import Context
from .model import Reschedule

__all__ = ["ACTIONS", "DEMO_URL", "POLLS", "app", "build_app", "demo_batch"]

DEMO_URL = "sqlite:///conveyor-demo.db"
"""The demo's database: a SQLite file in the current directory."""
ACTIONS = ("demo:download", "demo:poll", "demo:flaky")
"""The demo's actions: a download with progress, a poll that reschedules itself,
and a flaky task that fails and is retried."""
POLLS = 3
"""How many times a ``demo:poll`` task polls before it is done."""
STEPS = 20


async def download(ctx: Context[Any]) -> dict[str, Any]:
    """Pretend to download ``payload["size"]`` bytes in 20 chunks."""
    payload = ctx.payload if isinstance(ctx.payload, dict) else {}
    size = int(payload.get("size", 1 << 20))
    url = str(payload.get("url", "https://example.com/file.bin"))
    ctx.log.info("downloading %s (%d bytes)", url, size)
    done = 0
    for step in range(1, STEPS + 1):
        await asyncio.sleep(random.uniform(0.04, 0.12))
        done = size * step // STEPS
        ctx.progress(step, total=STEPS, message=f"{done:,} of {size:,} bytes")
        if step % 5 == 0:
            ctx.log.debug("chunk %d of %d", step, STEPS, data={"bytes": done})
    ctx.log.info("download complete")
    return {"bytes": done, "url": url}


async def poll(ctx: Context[Any]) -> Any:
    """Poll an imaginary job; done on the third look."""
    previous = ctx.task.result if isinstance(ctx.task.result, dict) else {}
    polls = int(previous.get("polls", 0)) + 1
    ctx.progress(polls, total=POLLS, message=f"poll {polls} of {POLLS}")
    if polls < POLLS:
        ctx.log.info("poll %d: job not ready yet; looking again in 1s", polls)
        return Reschedule(after=1, result={"polls": polls})
    ctx.log.info("poll %d: job is done", polls)
    return {"polls": polls, "job": "done"}


def flaky(ctx: Context[Any]) -> dict[str, Any]:
    """A sync handler (it runs in a thread) that fails on its first attempt."""
    if ctx.attempt == 1:
        ctx.log.warning("attempt 1: simulating a failure")
        raise ConnectionError("simulated failure on the first attempt")
    ctx.log.info("attempt %d: success", ctx.attempt)
    return {"attempt": ctx.attempt}


def build_app(url: str = DEMO_URL, **options: Any) -> Conveyor:
    """A :class:`Conveyor` on ``url`` with the three demo handlers registered."""
    demo = Conveyor(url, **options)
    demo.register("demo:download", download)
    demo.register("demo:poll", poll)
    demo.register("demo:flaky", flaky, max_attempts=3, backoff=0.5)
    return demo


def demo_batch(batch: int, *, downloads: int = 2, polls: int = 1,
               flakies: int = 1) -> list[dict[str, Any]]:
    """Tasks for :meth:`Conveyor.add_many`: a mix of the three actions."""
    items: list[dict[str, Any]] = []
    for i in range(downloads):
        size = random.choice((256, 512, 1024, 4096)) * 1024
        items.append({"action": "demo:download", "tags": {"batch": batch},
                      "payload": {"url": f"https://example.com/{batch}/{i}.bin", "size": size}})
    for i in range(polls):
        items.append({"action": "demo:poll", "tags": {"batch": batch},
                      "payload": {"job": f"job-{batch}-{i}"}})
    for i in range(flakies):
        items.append({"action": "demo:flaky", "tags": {"batch": batch},
                      "payload": {"n": i}, "priority": 1})
    return items


app = build_app(os.environ.get("CONVEYOR_DB", "").strip() or DEMO_URL)
"""The demo app for ``conveyor worker conveyor.demo:app``."""
