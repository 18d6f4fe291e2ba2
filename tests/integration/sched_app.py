"""A worker app with a schedule that fires every second (for the schedule tests)."""

from __future__ import annotations

import os
from typing import Any

from conveyor import Context, Conveyor

app = Conveyor(os.environ.get("CONVEYOR_DB", "sqlite:///conveyor-test.db"), concurrency=4)


@app.handler("tick", schedule="* * * * * */1")
async def tick(ctx: Context[Any]) -> None:
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.id} {ctx.task.run_at} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
