"""Recurring tasks."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import ConfigurationError, Context, Conveyor, Status
from conveyor.schedule import Schedule
from tests.integration.procs import start_worker, stop_worker


def test_interval_occurrences_are_aligned() -> None:
    s = Schedule("x", every=15)
    assert s.next_after(100.0) == 105.0
    assert s.next_after(105.0) == 120.0
    assert s.unique_key(105.0) != s.unique_key(120.0)


def test_cron_occurrences() -> None:
    s = Schedule("x", cron="*/5 * * * *")
    t = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC, on a 5 minute boundary
    assert s.next_after(t) == t + 300
    assert s.next_after(t + 1) == t + 300
    paris = Schedule("x", cron="0 3 * * *", tz="Europe/Paris")
    nxt = paris.next_after(t)
    assert time.strftime("%H:%M", time.gmtime(nxt)) == "02:00"  # 03:00 in Paris in winter


def _occurrences(cron: str, start: datetime, count: int) -> list[str]:
    s = Schedule("x", cron=cron, tz="Europe/Paris")
    t, out = start.timestamp(), []
    for _ in range(count):
        t = s.next_after(t)
        out.append(datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M"))
    return out


def test_a_clock_set_back_repeats_an_hour_only_for_hourly_expressions() -> None:
    """Paris sets its clocks back from 03:00 to 02:00 on 2026-10-25 (00:00-01:00 UTC
    and 01:00-02:00 UTC are both 02:00-03:00 there). As cron does: an expression that
    names its hours fires once in the repeated hour, an hourly one in both."""
    before = datetime(2026, 10, 24, 23, 40, tzinfo=UTC)
    assert _occurrences("30 2 * * *", before, 2) == ["10-25 00:30", "10-26 01:30"]
    assert _occurrences("0 1-3 * * *", before, 3) == ["10-25 00:00", "10-25 02:00",
                                                      "10-26 00:00"]
    assert _occurrences("*/30 * * * *", before, 5) == [
        "10-25 00:00", "10-25 00:30", "10-25 01:00", "10-25 01:30", "10-25 02:00"]
    # a time the clocks skip (02:30 on 2026-03-29) fires at the first moment after it
    assert _occurrences("30 2 * * *", datetime(2026, 3, 28, 12, tzinfo=UTC), 2) == [
        "03-29 01:00", "03-30 00:30"]
    # an hourly one has no occurrence in the missing hour: 01:30, then 03:30 in Paris
    assert _occurrences("30 * * * *", datetime(2026, 3, 28, 23, 40, tzinfo=UTC), 3) == [
        "03-29 00:30", "03-29 01:30", "03-29 02:30"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cron": "61 * * * *"}, "bad cron expression"),
    ({"cron": "not cron"}, "bad cron expression"),
    ({"every": -5}, "must be > 0"),
    ({"every": 0}, "must be > 0"),
    ({}, "either cron or every"),
    ({"cron": "* * * * *", "every": 5}, "either cron or every"),
    ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
    # the host's own zone: occurrences would differ between hosts
    ({"cron": "* * * * *", "tz": "localtime"}, "this host's own"),
    ({"every": 60, "tz": "localtime"}, "this host's own"),
    ({"every": 60, "tz": "right/Factory"}, "not a place's zone"),
])
def test_bad_schedules(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Schedule("x", **kwargs)


def test_bad_schedule_on_handler_registers_nothing() -> None:
    app = Conveyor("memory://")

    async def fn(ctx: Context[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="bad cron"):
        app.register("x", fn, schedule="whenever")
    assert "x" not in app.registry and app.schedules == []
    with pytest.raises(ConfigurationError, match="schedule must be"):
        app.register("y", fn, schedule=[1])


class P(BaseModel):
    n: int


def test_schedule_payload_is_checked() -> None:
    app = Conveyor("memory://")

    @app.handler("typed")
    async def typed(ctx: Context[P]) -> None: ...

    with pytest.raises(ConfigurationError, match="n"):
        app.schedule("typed", 60, payload={"n": "many"})
    app.schedule("typed", 60, payload={"n": 1})
    with pytest.raises(ConfigurationError, match="exists already"):
        app.schedule("typed", 60, payload={"n": 2})


async def test_interval_schedule_runs_each_occurrence_once(app: Conveyor) -> None:
    ran: list[float] = []
    five = asyncio.Event()

    @app.handler("tick", schedule=0.2)
    async def tick(ctx: Context[Any]) -> None:
        ran.append(ctx.task.run_at)
        if len(ran) >= 5:
            five.set()

    # a second app on the same storage with the same schedule: occurrences are shared
    twin = Conveyor(app.storage, concurrency=2)
    twin.register("tick", tick, schedule=0.2)
    async with app, twin:
        await asyncio.wait_for(five.wait(), 10)
    assert len(ran) >= 5
    assert len(set(ran)) == len(ran)  # no occurrence ran twice
    gaps = [round(b - a, 3) for a, b in zip(sorted(ran), sorted(ran)[1:], strict=False)]
    assert all(g == pytest.approx(0.2, abs=0.01) for g in gaps)
    tasks = await app.find({"action": "tick"})
    keys = Counter(t.unique_key for t in tasks)
    assert max(keys.values()) == 1
    assert all(t.tags["schedule"] == "tick every 0.2s" for t in tasks)


@pytest.mark.slow
async def test_cron_with_three_processes_runs_once_per_occurrence(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'sched.db'}"
    ledger = tmp_path / "ledger.txt"
    env = {"CONVEYOR_DB": db, "LEDGER": str(ledger)}
    procs = [start_worker(env, target="tests.integration.sched_app:app") for _ in range(3)]
    try:
        await asyncio.sleep(6)  # six occurrences of an every-second cron, in real time
    finally:
        for proc in procs:
            stop_worker(proc)
    lines = [line.split() for line in ledger.read_text().splitlines()]
    occurrences = Counter(run_at for _, run_at, _ in lines)
    print(f"occurrences={len(occurrences)} runs={len(lines)} "
          f"processes={len({pid for _, _, pid in lines})}")
    assert len(occurrences) >= 4
    assert all(n == 1 for n in occurrences.values())
    app = Conveyor(db)
    try:
        tasks = await app.find({"action": "tick"})
        assert Counter(t.unique_key for t in tasks).most_common(1)[0][1] == 1
        assert {t.status for t in tasks} <= {Status.SUCCEEDED, Status.QUEUED}
    finally:
        await app.close()
