"""The app of the live-query load test's worker process (``conveyor worker``)."""

from __future__ import annotations

from typing import Any

from conveyor import Context, Conveyor

app = Conveyor("memory://", concurrency=50)


@app.handler("live:job")
async def job(ctx: Context) -> Any:
    return {"n": ctx.payload["n"]}
