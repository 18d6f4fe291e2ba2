"""Times and durations that no datetime can hold are refused at every entry point,
and nothing is written: a stored time must stay one that ``ls`` and ``show`` can print."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from conveyor import (
    Backoff,
    ConfigurationError,
    Context,
    Conveyor,
    Reschedule,
    Retry,
    Status,
    Transition,
    ValidationError,
)
from conveyor.model import MAX_SECONDS, MAX_TIME, MIN_TIME, check_time, seconds
from conveyor.schedule import Schedule


@pytest.fixture
def app(opened_app: Conveyor) -> Conveyor:
    return opened_app


HUGE_INT = 10**400  # beyond floats: float() of it overflows
LATE = datetime.max.replace(tzinfo=timezone(timedelta(hours=-5)))  # year 10000 in UTC

BAD_TIMES: list[tuple[dict[str, Any], str]] = [
    ({"delay": 1e12}, r"delay must be at most 3155760000 seconds \(100 years\)"),
    ({"delay": timedelta(days=365 * 200)}, r"delay must be at most 3155760000 seconds"),
    ({"delay": HUGE_INT}, r"delay must be a finite number of seconds, not an integer of about"),
    ({"delay": math.inf}, r"delay must be a finite number of seconds"),
    ({"run_at": 1e300}, r"run_at must be a time in the years 1 to 9999 \(UTC\)"),
    ({"run_at": -1e300}, r"run_at must be a time in the years 1 to 9999"),
    ({"run_at": math.inf}, r"run_at must be a time in the years 1 to 9999"),
    ({"run_at": math.nan}, r"run_at must be a time in the years 1 to 9999"),
    ({"run_at": HUGE_INT}, r"run_at must be a time .* not an integer of about 400 digits"),
    ({"run_at": MAX_TIME}, r"run_at must be a time in the years 1 to 9999"),
    ({"run_at": MIN_TIME - 1}, r"run_at must be a time in the years 1 to 9999"),
    ({"run_at": LATE}, r"run_at must be a time in the years 1 to 9999"),
    ({"run_at": "2030-01-01"}, r"run_at must be a datetime or seconds since the epoch"),
    ({"timeout": 1e12}, r"timeout must be at most 3155760000 seconds"),
    ({"pickup_timeout": 1e12}, r"pickup_timeout must be at most 3155760000 seconds"),
    ({"backoff": 1e12}, r"backoff base must be at most 3155760000 seconds"),
    ({"backoff": {"maximum": 1e12}}, r"backoff maximum must be at most 3155760000 seconds"),
    ({"backoff": Backoff(maximum=HUGE_INT)}, r"backoff maximum must be a finite number"),
    ({"backoff": {"factor": HUGE_INT}}, r"backoff factor must be a finite number"),
    ({"priority": HUGE_INT}, r"priority must be a finite number, not an integer of about"),
]


@pytest.mark.parametrize(("options", "message"), BAD_TIMES,
                         ids=[f"{i}-{next(iter(o))}" for i, (o, _) in enumerate(BAD_TIMES)])
async def test_out_of_range_times_are_refused_by_add(app: Conveyor, options: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        await app.add("work", {"n": 1}, **options)
    with pytest.raises(ValidationError, match=message):
        await app.add_checked("work", {"n": 1}, **options)
    with pytest.raises(ValidationError, match=rf"task 1: {message}"):
        await app.add_many([("work", {"n": 0}), ("work", {"n": 1}, options)])
    with pytest.raises(ValidationError, match=message):  # checked before the connection is used
        await app.add_in(None, "work", {"n": 1}, **options)
    assert await app.count() == 0


async def test_the_edges_of_the_range_are_accepted_and_kept(app: Conveyor) -> None:
    last = await app.add("work", run_at=MAX_TIME - 1)
    first = await app.add("work", run_at=MIN_TIME)
    naive = await app.add("work", run_at=datetime(9999, 12, 31, 23, 59, 59))
    far = await app.add("work", delay=MAX_SECONDS, timeout=MAX_SECONDS,
                        pickup_timeout=MAX_SECONDS,
                        backoff={"base": MAX_SECONDS, "maximum": MAX_SECONDS})
    assert (await app.get(last.id)).run_at == MAX_TIME - 1
    assert (await app.get(first.id)).run_at == MIN_TIME
    assert (await app.get(naive.id)).run_at == datetime(9999, 12, 31, 23, 59, 59,
                                                        tzinfo=UTC).timestamp()
    assert (await app.get(far.id)).run_timeout == MAX_SECONDS
    for task in await app.find():
        datetime.fromtimestamp(task.run_at, UTC)  # every stored time is a datetime


async def test_retry_delay_is_bounded(app: Conveyor) -> None:
    task = await app.abort((await app.add("work")).id)
    with pytest.raises(ValidationError, match=r"delay must be at most 3155760000 seconds"):
        await app.retry(task.id, delay=1e12)
    assert (await app.get(task.id)).status is Status.ABORTED
    retried = await app.retry(task.id, delay=86400)
    assert retried.status is Status.QUEUED


async def test_other_durations_of_the_app_are_bounded(app: Conveyor) -> None:
    task = await app.add("work")
    with pytest.raises(ValidationError, match=r"timeout must be at most"):
        async with asyncio.timeout(10):  # refused at once, not waited for
            await app.wait_task(task.id, timeout=1e12)
    with pytest.raises(ValidationError, match=r"older_than must be at most"):
        await app.prune(1e12)
    assert await app.count() == 1


@pytest.mark.parametrize("make", [
    lambda: Retry(after=1e12),
    lambda: Retry(after=timedelta(days=40_000)),  # type: ignore[arg-type]
    lambda: Reschedule(after=1e12),
    lambda: Reschedule(after=HUGE_INT),
    lambda: Transition(Status.QUEUED, run_at=1e300),
    lambda: Transition(Status.QUEUED, run_at=math.inf),
    lambda: Transition(Status.QUEUED, run_at=math.nan),
    lambda: Transition(Status.QUEUED, run_at="soon"),  # type: ignore[arg-type]
])
def test_out_of_range_outcomes_fail_at_construction(make: Any) -> None:
    with pytest.raises(ValidationError, match=r"at most|finite|years 1 to 9999|datetime"):
        make()


def test_a_transition_keeps_epoch_seconds() -> None:
    assert Transition(Status.QUEUED, run_at=100).run_at == 100.0
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    assert Transition(Status.QUEUED, run_at=moment).run_at == moment.timestamp()  # type: ignore[arg-type]


def test_check_time_and_seconds() -> None:
    assert check_time(0, "t") == 0.0
    assert check_time(datetime(1, 1, 1), "t") == MIN_TIME
    with pytest.raises(ValidationError, match="t must be a time in the years 1 to 9999"):
        check_time(MAX_TIME, "t")
    with pytest.raises(ValidationError, match="t must be a datetime or seconds"):
        check_time(True, "t")
    assert seconds(MAX_SECONDS, "d") == MAX_SECONDS
    with pytest.raises(ValidationError, match="d must be at most"):
        seconds(MAX_SECONDS * 1.0001, "d")
    with pytest.raises(ValidationError,
                       match="d must be a finite number of seconds, not an integer of about"):
        seconds(-HUGE_INT, "d")


async def test_a_policy_asking_for_an_impossible_time_fails_the_task(local_url: str) -> None:
    """Nothing out of range is stored: the policy's Transition refuses itself."""
    app = Conveyor(local_url)

    def policy(task: Any, outcome: Any) -> Transition:
        return Transition(Status.QUEUED, run_at=1e300)

    @app.handler("later", policy=policy)
    async def later(ctx: Context[Any]) -> None:
        raise RuntimeError("again")

    async with app:
        task = await app.add("later")
        done = await app.wait_task(task.id, timeout=10)
    assert done.status is Status.FAILED and done.reason == "policy_error"
    assert done.error is not None and "years 1 to 9999" in done.error.message


@pytest.mark.parametrize(("options", "message"), [
    ({"timeout": 1e12}, r"timeout must be at most 3155760000 seconds"),
    ({"pickup_timeout": 1e12}, r"pickup_timeout must be at most"),
    ({"abort_grace": 1e12}, r"abort_grace must be at most"),
    ({"backoff": {"maximum": 1e12}}, r"backoff maximum must be at most"),
    ({"backoff": {"base": math.inf}}, r"backoff base must be a finite number"),
    ({"schedule": 1e12}, r"schedule interval must be at most"),
    ({"schedule": timedelta(days=40_000)}, r"schedule interval must be at most"),
    ({"schedule": 1e-9}, r"schedule interval must be at least 0.001 seconds"),
])
def test_out_of_range_handler_options_register_nothing(options: dict[str, Any],
                                                        message: str) -> None:
    app = Conveyor("memory://")

    async def work(ctx: Context[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match=message):
        app.register("work", work, **options)
    assert "work" not in app.registry and app.schedules == []


@pytest.mark.parametrize("when", [1e12, HUGE_INT, timedelta(days=40_000), 1e-9, 0.0009])
def test_out_of_range_intervals_are_refused(when: Any) -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match="schedule interval must be"):
        app.schedule("tick", when)
    with pytest.raises(ConfigurationError, match="schedule interval must be"):
        Schedule("tick", every=when)
    assert app.schedules == []
    assert Schedule("tick", every=0.001).every == 0.001
    assert Schedule("tick", every=MAX_SECONDS).next_after(0.0) == MAX_SECONDS


@pytest.mark.parametrize("options", [
    {"lease": 1e12}, {"retention": 1e12}, {"stop_timeout": 1e12}, {"idle_poll": 1e12},
    {"sweep_interval": 1e12}, {"progress_interval": 1e12}, {"lease": HUGE_INT},
])
def test_out_of_range_app_options(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=r"at most 3155760000 seconds|finite"):
        Conveyor("memory://", **options)
