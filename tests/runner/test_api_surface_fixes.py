"""Fixes from the API surface audit: a tally that raises is isolated (it broke adds
after the write and hid a run's end), a Schedule object is not given arguments it
would ignore, and ``Subscription.get`` takes its timeout as every duration."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import pytest

from conveyor import ConfigurationError, Context, Conveyor, ValidationError
from conveyor.schedule import Schedule


async def test_a_tally_that_raises_breaks_nothing(
        app: Conveyor, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValidationError, match="a tally must be callable"):
        app.bus.add_tally(None)  # type: ignore[arg-type]
    counted: list[str] = []

    def broken(kind: str, action: str, status: str | None, seconds: float | None) -> None:
        raise RuntimeError(f"tally down on {kind}")

    app.bus.add_tally(broken)
    app.bus.add_tally(lambda kind, *_: counted.append(kind))

    @app.handler("job")
    async def job(ctx: Context[Any]) -> str:
        return "done"

    seen: list[str] = []
    app.on("task.*", lambda event: seen.append(event.type))
    await app.open()
    task = await app.add("job")  # it raised here, after the task was stored
    assert await app.count() == 1
    assert await app.drain(timeout=30) == {"succeeded": 1, "failed": 0, "aborted": 0,
                                           "retrying": 0, "rescheduled": 0}
    assert await app.wait(task.id, timeout=5) == "done"
    assert "task.succeeded" in seen and "task.ended" in seen
    assert counted == ["added", "started", "ended"]  # the other tally still counts
    assert any(r.getMessage().startswith("tally ") and " failed on added of job" in
               r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_a_schedule_object_takes_no_arguments_beside_it() -> None:
    app = Conveyor("memory://")
    given = Schedule.parse("other:thing", 60)
    with pytest.raises(ConfigurationError, match="is of 'other:thing', not 'reports:daily'"):
        app.schedule("reports:daily", given)
    for extra in ({"payload": {"kind": "daily"}}, {"name": "x"}, {"priority": -5},
                  {"tz": "Europe/Paris"}):
        with pytest.raises(ConfigurationError, match="give them to it, not beside it"):
            app.schedule("other:thing", given, **extra)  # type: ignore[arg-type]
    assert app.schedules == []
    assert app.schedule("other:thing", given) is given


async def test_subscription_get_takes_durations_as_everywhere(app: Conveyor) -> None:
    await app.open()
    events = app.events("task.added")
    assert await events.get(timedelta(milliseconds=10)) is None
    for bad in (float("nan"), "soon", -1):
        with pytest.raises(ValidationError):
            await events.get(bad)  # type: ignore[arg-type]
    task = await app.add("a")
    got = await asyncio.wait_for(events.get(timedelta(seconds=30)), 60)
    assert got is not None and got.task_id == task.id
    events.close()
