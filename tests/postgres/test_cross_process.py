"""Events across processes on PostgreSQL: a worker subprocess runs the task; this process
sees its start, progress, logs and result within 100 ms of each being written."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from conveyor import Conveyor

from ..control._support import until
from ..integration.procs import workers

# slow; and alone: 100 ms bounds across processes
pytestmark = [pytest.mark.slow, pytest.mark.serial]


async def test_events_arrive_within_100ms(schema_url: str, tmp_path: Path) -> None:
    app = Conveyor(schema_url)
    try:
        with workers(1, {"CONVEYOR_DB": schema_url, "LEDGER": str(tmp_path / "l.txt")}):
            lags: dict[str, list[float]] = {"task.started": [], "task.progress": [],
                                            "task.log": [], "task.succeeded": []}

            def seen(event: object) -> None:
                now = time.time()
                kind = event.type  # type: ignore[attr-defined]
                written = event.ts  # type: ignore[attr-defined]
                if kind == "task.log":
                    written = event.data["log"].ts  # type: ignore[attr-defined]
                lags[kind].append(now - written)

            for kind in lags:
                app.on(kind, seen)
            for _ in range(5):
                task = await app.add("chatty", {"steps": 4, "pause": 0.05})
                lines = [r.message async for r in app.logs(task.id)]
                assert lines == [f"line {i}" for i in range(4)]
                assert await app.wait(task.id, timeout=10) == "chatted"
            # the last task's events may come a moment after wait() returned
            await until(lambda: len(lags["task.succeeded"]) == 5, 10, "the last task's events")
        for kind, values in lags.items():
            assert values, kind
            median = statistics.median(values)
            print(f"{kind}: median {median * 1000:.1f} ms, max {max(values) * 1000:.1f} ms")
            assert median < 0.1, (kind, values)
    finally:
        await app.close()
