"""Recurring tasks (schedules audit): a clock set back no longer breaks a cron with
seconds (``next_after`` recursed once per repeated second: ``RecursionError``,
which ended every schedule of the worker unlogged); the schedule loop logs an
error and goes on; an occurrence whose add failed is added late rather than
skipped; ``drain()`` queues the next occurrences before it counts what is due;
``tz=`` on an interval is refused; default interval names are exact."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conveyor import ConfigurationError, Context, Conveyor, StorageError
from conveyor.schedule import Schedule


@pytest.mark.parametrize("cron", ["* 2 * * * *", "* 0-23 * * * */2", "* 2 * * *"])
def test_a_clock_set_back_with_a_cron_of_seconds(cron: str) -> None:
    paris = Schedule("x", cron=cron, tz="Europe/Paris")
    # 02:59:59 in Paris, the first time (CEST): the hour 02:00-03:00 comes again
    t = datetime(2026, 10, 25, 0, 59, 59, tzinfo=UTC).timestamp()
    nxt = paris.next_after(t)
    assert nxt > t
    # the repeated hour (01:00-02:00 UTC) is not fired again: the expression names
    # its hours
    assert nxt >= datetime(2026, 10, 25, 2, 0, tzinfo=UTC).timestamp()
    # and a process started in the repeated hour declares it
    inside = datetime(2026, 10, 25, 1, 30, tzinfo=UTC).timestamp()
    assert paris.next_after(inside) > inside


def test_an_interval_occurrence_is_strictly_after() -> None:
    s = Schedule("x", every=0.007)
    for n in range(1, 2000):
        t = n * 0.007
        assert s.next_after(t) > t


def test_interval_names_and_zones() -> None:
    assert Schedule("x", every=60).name == "x every 60s"  # unchanged for usual values
    assert Schedule("x", every=0.5).name == "x every 0.5s"
    a, b = Schedule("x", every=1_000_000), Schedule("x", every=1_000_001)
    assert a.name != b.name
    with pytest.raises(ConfigurationError, match="tz='Europe/Paris' applies to cron"):
        Schedule("x", every=60, tz="Europe/Paris")
    app = Conveyor("memory://")
    app.schedule("x", 60)
    with pytest.raises(ConfigurationError, match="another name="):
        app.schedule("x", 60)


async def test_drain_queues_the_next_occurrences_first() -> None:
    app = Conveyor("memory://")

    @app.handler("report", schedule=60)
    async def report(ctx: Context[Any]) -> None:
        pass

    assert (await app.drain(timeout=10))["succeeded"] == 0
    queued = await app.find({"status": "queued"})
    assert [t.tags.get("schedule") for t in queued] == ["report every 60s"]
    await app.close()


async def test_a_failed_add_is_tried_again_and_a_loop_error_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Faults injected at the app's add: the occurrence whose add failed is added
    (late) once adds work again, not skipped for the next; an error of the loop
    itself is logged and the schedules go on."""
    app = Conveyor(f"sqlite:///{tmp_path / 'tasks.db'}")
    ran: list[float] = []
    two = asyncio.Event()

    @app.handler("tick", schedule=0.5)
    async def tick(ctx: Context[Any]) -> None:
        ran.append(ctx.task.run_at)
        if len(ran) >= 2:
            two.set()

    add = app.add
    failures = 0
    back_at = 0.0

    async def flaky_add(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures, back_at
        if failures < 3:  # the first occurrence's add fails for about 2 s
            failures += 1
            raise StorageError("injected: the database is away")
        if not back_at:
            back_at = time.time()
        return await add(*args, **kwargs)

    app.add = flaky_add  # type: ignore[method-assign]
    schedule = app.schedules[0]
    broken = True

    def next_after(t: float) -> float:
        nonlocal broken
        if broken:
            broken = False
            raise RuntimeError("injected: a bug of the schedule")
        return Schedule.next_after(schedule, t)

    object.__setattr__(schedule, "next_after", next_after)
    with caplog.at_level(logging.WARNING, logger="conveyor"):
        await app.start()
        try:
            await asyncio.wait_for(two.wait(), 30)
        finally:
            await app.close()
    assert "injected: a bug of the schedule" in caplog.text  # logged, and went on
    assert caplog.text.count("could not add the occurrence") == 3
    # the occurrence whose add failed ran, late: it was due well before adds worked
    # again (it used to be skipped for the next one due after that)
    assert ran[0] < back_at - 1.0
    assert ran[1] > back_at  # then the schedule went on from the present
