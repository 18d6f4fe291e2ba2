"""Black-box tests of the transition policy, schedules, typed payloads, the
synchronous face and ``conveyor.testing``, written from issues 2 and 3 and
docs/guide.md.

They use the public API on every backend (memory, SQLite and PostgreSQL when
``CONVEYOR_TEST_PG`` is set: the ``url`` fixture of tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import (
    Aborted,
    ConfigurationError,
    Context,
    Conveyor,
    ErrorInfo,
    ErrorItem,
    Event,
    Outcome,
    QueryError,
    Raised,
    Reschedule,
    Retry,
    Returned,
    Status,
    SyncConveyor,
    Task,
    TimedOut,
    Transition,
    ValidationError,
    default_policy,
)
from conveyor.model import MAX_SECONDS
from conveyor.schedule import MIN_INTERVAL, Schedule


@pytest.fixture
async def app(url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(url, lease=5.0, stop_timeout=2.0)
    yield app
    await app.close()


def added(app: Conveyor, action: str) -> tuple[asyncio.Event, list[Task]]:
    """An event set when a task of ``action`` is added, and the tasks added."""
    seen: list[Task] = []
    event = asyncio.Event()

    def on_added(e: Event) -> None:
        if e.task is not None and e.task.action == action:
            seen.append(e.task)
            event.set()

    app.on("task.added", on_added)
    return event, seen


# --- the transition policy ------------------------------------------------------------------


async def test_an_app_policy_turns_an_action_into_a_polling_loop(url: str) -> None:
    """The issue's example: a polling task returns to queued after each run; a
    handler's own policy wins over the app's."""

    def poll_three_times(task: Task, outcome: Outcome) -> Transition:
        if isinstance(outcome, Returned) and task.attempts < 3:
            return Transition(Status.QUEUED, run_at=time.time(), result={"runs": task.attempts})
        return default_policy(task, outcome)

    def always_done(task: Task, outcome: Outcome) -> Transition:
        return Transition(Status.SUCCEEDED, result="handler policy")

    app = Conveyor(url, lease=5.0, stop_timeout=2.0, policy=poll_three_times)
    seen: list[Any] = []

    @app.handler("pol:poll")
    async def poll(ctx: Context[Any]) -> Any:
        seen.append((ctx.attempt, ctx.task.result))
        return ctx.attempt

    @app.handler("pol:own", policy=always_done)
    async def own(ctx: Context[Any]) -> None:
        raise RuntimeError("ignored by its policy")

    try:
        async with app:
            polled = await app.add("pol:poll")
            mine = await app.add("pol:own")
            assert await app.wait(polled.id, timeout=10) == 3
            assert await app.wait(mine.id, timeout=10) == "handler policy"
        done = await app.get(polled.id)
    finally:
        await app.close()
    assert seen == [(1, None), (2, {"runs": 1}), (3, {"runs": 2})]
    assert (done.status, done.attempts, done.max_attempts) == (Status.SUCCEEDED, 3, None)


async def test_an_app_policy_given_to_the_constructor(url: str) -> None:
    calls: list[tuple[Status, int, type]] = []

    def record(task: Task, outcome: Outcome) -> Transition:
        calls.append((task.status, task.attempts, type(outcome)))
        return default_policy(task, outcome)

    app = Conveyor(url, policy=record)

    @app.handler("pol:ctor")
    def work(ctx: Context[Any]) -> int:
        return 7

    try:
        async with app:
            task = await app.add("pol:ctor")
            assert await app.wait(task.id, timeout=10) == 7
    finally:
        await app.close()
    # the policy sees the task as claimed: running, this run counted
    assert calls == [(Status.RUNNING, 1, Returned)]


async def test_the_policy_sees_typed_outcomes_of_every_kind(app: Conveyor) -> None:
    outcomes: dict[str, Outcome] = {}

    def keep(task: Task, outcome: Outcome) -> Transition:
        outcomes[str(task.payload)] = outcome
        if isinstance(outcome, Returned | Retry | Reschedule):
            return Transition(Status.SUCCEEDED, result=None)
        return default_policy(task, outcome)

    @app.handler("pol:kinds", policy=keep, retry_on=(LookupError,), max_attempts=3,
                 timeout=0.2)
    async def kinds(ctx: Context[Any]) -> Any:
        kind = ctx.payload
        if kind == "tuple":
            return (1, {2: "b"})
        if kind == "retry":
            return Retry(after=2, reason="later")
        if kind == "reschedule":
            return Reschedule(after=3, result=("seen", 1))
        if kind == "oserror":
            raise OSError("disk")
        if kind == "keyerror":
            raise KeyError("k")
        await asyncio.sleep(30)  # "slow": the run timeout
        return None

    @app.handler("pol:sync-timeout", policy=keep, timeout=0.2)  # retry_on: all
    def sync_timeout(ctx: Context[Any]) -> None:
        ctx.wait_aborted(30)

    kinds_ = ["tuple", "retry", "reschedule", "oserror", "keyerror", "slow"]
    async with app:
        tasks = [await app.add("pol:kinds", k) for k in kinds_]
        tasks.append(await app.add("pol:sync-timeout", "sync"))
        for t in tasks:
            await app.wait_task(t.id, timeout=10)
    assert outcomes["tuple"] == Returned([1, {"2": "b"}])  # already in its JSON form
    assert outcomes["retry"] == Retry(after=2, reason="later")
    reschedule = outcomes["reschedule"]
    assert isinstance(reschedule, Reschedule) and reschedule.after == 3
    assert reschedule.result == ["seen", 1]
    oserror, keyerror = outcomes["oserror"], outcomes["keyerror"]
    assert isinstance(oserror, Raised) and not oserror.retryable
    assert (oserror.error.type, oserror.error.message) == ("OSError", "disk")
    assert isinstance(keyerror, Raised) and keyerror.retryable  # KeyError is a LookupError
    slow, sync = outcomes["slow"], outcomes["sync"]
    assert isinstance(slow, TimedOut) and slow.timeout == 0.2 and not slow.retryable
    assert isinstance(sync, TimedOut) and sync.retryable


async def test_a_transition_s_error_and_reason_are_kept(app: Conveyor) -> None:
    def give_up(task: Task, outcome: Outcome) -> Transition:
        if not task.errors:
            return Transition(Status.QUEUED, run_at=time.time(), refund_attempt=True,
                              error=ErrorInfo("Busy", "come back", attempt=task.attempts))
        return Transition(Status.FAILED, reason="gave_up",
                          error=ErrorInfo("GaveUp", "enough", attempt=task.attempts))

    sunk: list[ErrorItem] = []
    app.add_error_sink(sunk.append)

    @app.handler("pol:give-up", policy=give_up)
    async def work(ctx: Context[Any]) -> str:
        return "ignored"

    async with app:
        task = await app.add("pol:give-up")
        done = await app.wait_task(task.id, timeout=10)
    assert (done.status, done.reason, done.result) == (Status.FAILED, "gave_up", None)
    assert done.attempts == 1  # the first run was refunded
    assert [(e.type, e.message) for e in done.errors] == [("Busy", "come back"),
                                                        ("GaveUp", "enough")]
    assert done.error is not None and done.error.type == "GaveUp"
    assert [(item.error.type, item.final) for item in sunk] == [("Busy", False),
                                                                ("GaveUp", True)]
    assert await app.count({"reason": "gave_up", "error.type": "GaveUp"}) == 1


def raises(task: Task, outcome: Outcome) -> Transition:
    raise LookupError("no rule for this")


BAD_POLICIES: dict[str, tuple[Callable[[Task, Outcome], Any], str]] = {
    "raises": (raises, "LookupError"),
    "none": (lambda task, outcome: None, "TypeError"),
    "status": (lambda task, outcome: Status.SUCCEEDED, "TypeError"),
    "far": (lambda task, outcome: Transition(Status.QUEUED, run_at=1e20), "ValidationError"),
    "error": (lambda task, outcome: Transition(Status.FAILED, error="boom"),  # type: ignore[arg-type]
              "ValidationError"),
    "running": (lambda task, outcome: Transition(Status.RUNNING), "ValidationError"),
    "unqueued": (lambda task, outcome: Transition(Status.QUEUED), "ValidationError"),
    "set": (lambda task, outcome: Transition(Status.SUCCEEDED, result={1, 2}),
            "ValidationError"),
    "huge": (lambda task, outcome: Transition(Status.SUCCEEDED, result="x" * 5000),
             "ValidationError"),
}


async def test_a_policy_that_fails_ends_the_task_with_policy_error(
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever goes wrong in a policy ends that task ``failed: policy_error``
    (its exception as the task's error, logged), and the worker goes on."""
    app = Conveyor(url, lease=5.0, stop_timeout=2.0, max_payload=4096)
    for name, (policy, _) in BAD_POLICIES.items():
        async def work(ctx: Context[Any]) -> str:
            return "fine"

        app.register(f"bad:{name}", work, policy=policy)

    @app.handler("bad:after")
    async def after(ctx: Context[Any]) -> str:
        return "still running tasks"

    try:
        with caplog.at_level(logging.ERROR, logger="conveyor"):
            async with app:
                tasks = {name: await app.add(f"bad:{name}") for name in BAD_POLICIES}
                ended = {name: await app.wait_task(t.id, timeout=10) for name, t in tasks.items()}
                later = await app.add("bad:after")
                assert await app.wait(later.id, timeout=10) == "still running tasks"
    finally:
        await app.close()
    for name, task in ended.items():
        assert (task.status, task.reason, task.result) == (
            Status.FAILED, "policy_error", None), name
        assert task.error is not None and task.error.type == BAD_POLICIES[name][1], (
            name, task.error)
    assert "no rule for this" in (ended["raises"].error.message if ended["raises"].error else "")
    assert sum("policy" in r.getMessage() for r in caplog.records) >= len(BAD_POLICIES)


def test_a_transition_checks_its_fields() -> None:
    assert Transition("succeeded").status is Status.SUCCEEDED  # type: ignore[arg-type]
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert Transition(Status.QUEUED, run_at=at).run_at == at.timestamp()
    assert Transition(Status.QUEUED, run_at=at.replace(tzinfo=None)).run_at == at.timestamp()
    for bad in ({"status": "done"}, {"status": 3}, {"status": Status.RUNNING},
                {"status": Status.QUEUED}, {"status": Status.QUEUED, "run_at": 1e20},
                {"status": Status.QUEUED, "run_at": float("nan")},
                {"status": Status.FAILED, "error": "boom"},
                {"status": Status.FAILED, "reason": 5},
                {"status": Status.QUEUED, "run_at": 0, "refund_attempt": "yes"}):
        with pytest.raises(ValidationError):
            Transition(**bad)


async def async_policy(task: Task, outcome: Outcome) -> Transition:
    return default_policy(task, outcome)  # pragma: no cover - refused


@pytest.mark.parametrize("policy", [5, "default", async_policy, default_policy(
    Task(id="t", action="a", payload=None, status=Status.RUNNING, attempts=1), Returned(1))])
def test_a_policy_must_be_a_function(policy: Any) -> None:
    with pytest.raises(ConfigurationError, match="policy"):
        Conveyor("memory://", policy=policy)
    app = Conveyor("memory://")

    def work(ctx: Context[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="policy"):
        app.register("pol:bad", work, policy=policy)
    assert "pol:bad" not in app.registry.actions


async def test_a_reschedule_result_is_stored_as_json_within_the_limit(url: str) -> None:
    app = Conveyor(url, lease=5.0, stop_timeout=2.0, max_payload=1000)

    @app.handler("res:kinds")
    async def kinds(ctx: Context[Any]) -> Any:
        if ctx.task.result is not None:
            return {"previous": ctx.task.result}
        if ctx.payload == "tuple":
            return Reschedule(result=(1, {2: "b"}))
        if ctx.payload == "set":
            return Reschedule(result={1})
        return Reschedule(result="x" * 2000)

    try:
        async with app:
            fine, bad, big = [await app.add("res:kinds", p) for p in ("tuple", "set", "big")]
            assert await app.wait(fine.id, timeout=10) == {"previous": [1, {"2": "b"}]}
            failed = [await app.wait_task(t.id, timeout=10) for t in (bad, big)]
    finally:
        await app.close()
    for task in failed:
        assert (task.status, task.result) == (Status.FAILED, None)
        assert task.error is not None and "Reschedule(result=...)" in task.error.message
    assert failed[1].error is not None and "over the limit" in failed[1].error.message


# --- schedules -----------------------------------------------------------------------------


async def test_a_worker_keeps_the_next_occurrence_queued(url: str) -> None:
    apps = [Conveyor(url, lease=5.0, stop_timeout=2.0) for _ in range(2)]
    for app in apps:
        def tick(ctx: Context[Any]) -> None: ...

        app.register("sched:hourly", tick)
        app.schedule("sched:hourly", 3600, payload={"kind": "tick"}, name="hourly",
                     priority=-3)
    event, seen = added(apps[0], "sched:hourly")
    try:
        before = time.time()
        await apps[0].start()
        await asyncio.wait_for(event.wait(), 10)
        await apps[0].stop()
        await apps[0].start()  # starting again queues nothing new
        if not url.startswith("memory"):
            await apps[1].start()  # nor does another app on the same database
            await apps[1].stop()
        await apps[0].stop()
        (task,) = await apps[0].find({"action": "sched:hourly"})
    finally:
        for app in apps:
            await app.close()
    assert len(seen) == 1 and seen[0].id == task.id
    expected = (int(before // 3600) + 1) * 3600
    assert task.run_at == expected or (task.run_at == expected + 3600
                                       and time.time() >= expected)
    assert task.status is Status.QUEUED
    assert (task.payload, task.priority, task.tags) == ({"kind": "tick"}, -3, {
        "schedule": "hourly"})
    assert task.unique_key == Schedule("sched:hourly", every=3600, name="hourly").unique_key(
        task.run_at)
    assert task.unique_key is not None and "hourly" in task.unique_key
    assert set(task.unique_scope) == set(Status)


async def test_missed_occurrences_are_not_made_up(app: Conveyor) -> None:
    """The occurrence queued when the last worker stopped runs late at the next
    start; the ones that fell due meanwhile are skipped."""
    ran = asyncio.Event()
    runs: list[float] = []

    @app.handler("sched:gap")
    async def gap(ctx: Context[Any]) -> None:
        runs.append(ctx.task.run_at)
        ran.set()

    app.schedule("sched:gap", 0.5, name="gap")
    queued, seen = added(app, "sched:gap")
    await asyncio.sleep(0.5 - time.time() % 0.5 + 0.01)  # start just after an occurrence
    await app.start()
    await asyncio.wait_for(queued.wait(), 10)
    await app.stop()  # before the next occurrence falls due: it stays queued
    first = seen[0].run_at
    assert not runs and (await app.get(seen[0].id)).status is Status.QUEUED
    await asyncio.sleep(max(0.0, first + 1.6 - time.time()))  # three occurrences pass
    restart = time.time()
    queued.clear()
    await app.start()
    await asyncio.wait_for(ran.wait(), 10)
    assert runs[0] == first  # late, but run
    await asyncio.wait_for(queued.wait(), 10)  # the schedule goes on after the start
    run_ats = sorted(t.run_at for t in await app.find({"tags.schedule": "gap"}))
    assert run_ats[0] == first
    assert all(at > restart for at in run_ats[1:]), (first, restart, run_ats)
    assert len(run_ats) >= 2


async def test_a_cron_with_seconds_runs_each_second(app: Conveyor) -> None:
    runs: list[tuple[float, str | None, Any]] = []
    enough = asyncio.Event()

    @app.handler("sched:second", schedule="* * * * * *")
    async def second(ctx: Context[Any]) -> None:
        runs.append((ctx.task.run_at, ctx.task.unique_key, ctx.payload))
        if len(runs) >= 2:
            enough.set()

    async with app:
        await asyncio.wait_for(enough.wait(), 10)
    times = [at for at, _, _ in runs]
    assert all(at == int(at) for at in times), times  # on whole seconds
    assert times == sorted(set(times))  # each occurrence once
    assert len({key for _, key, _ in runs}) == len(runs)
    assert all(payload is None for _, _, payload in runs)


def test_next_occurrences_of_cron_and_interval_schedules() -> None:
    def at(*args: int) -> float:
        return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]

    daily_paris = Schedule("s", cron="0 3 * * *", tz="Europe/Paris")
    assert daily_paris.next_after(at(2024, 1, 10)) == at(2024, 1, 10, 2)  # CET
    assert daily_paris.next_after(at(2024, 7, 10)) == at(2024, 7, 10, 1)  # CEST
    daily = Schedule("s", cron="0 3 * * *")  # UTC by default
    assert daily.next_after(at(2024, 1, 10)) == at(2024, 1, 10, 3)
    assert daily.next_after(at(2024, 1, 10, 3)) == at(2024, 1, 11, 3)  # strictly after
    quarter = Schedule("s", cron="*/15 * * * *")
    assert quarter.next_after(at(2024, 1, 1, 0, 14, 59)) == at(2024, 1, 1, 0, 15)
    every_ten = Schedule("s", cron="* * * * * */10")
    assert every_ten.next_after(at(2024, 1, 1, 0, 0, 10)) == at(2024, 1, 1, 0, 0, 20)
    assert every_ten.next_after(at(2024, 1, 1, 0, 0, 10) - 0.5) == at(2024, 1, 1, 0, 0, 10)
    minute = Schedule("s", every=60)
    assert minute.next_after(at(2024, 1, 1, 0, 0, 30)) == at(2024, 1, 1, 0, 1)
    assert minute.next_after(at(2024, 1, 1, 0, 1)) == at(2024, 1, 1, 0, 2)
    assert Schedule("s", every=timedelta(hours=1)).every == 3600
    assert Schedule.parse("s", timedelta(minutes=2)).every == 120
    assert Schedule.parse("s", "0 3 * * *").cron == "0 3 * * *"
    assert Schedule("s", every=MIN_INTERVAL).next_after(1.0) == pytest.approx(1.001)
    # occurrences a millisecond apart have different keys; one occurrence one key
    fast = Schedule("s", every=MIN_INTERVAL, name="fast")
    assert fast.unique_key(1.001) != fast.unique_key(1.002)
    assert fast.unique_key(1.001) == fast.unique_key(1.0010000000000001)
    assert Schedule("a:b", cron="0 3 * * *").name != Schedule("a:b", every=60).name


@pytest.mark.parametrize("options", [
    {"every": MIN_INTERVAL / 2}, {"every": MAX_SECONDS * 2}, {"every": float("inf")},
    {"every": "60"}, {"every": True}, {"cron": "0 3 * * *", "tz": "Mars/Base"},
    {"cron": "0 3 * * *", "tz": 5}, {"cron": "0 3 * * *", "tz": None},
    {"every": 60, "name": ""}, {"every": 60, "name": 5}, {"every": 60, "name": "n" * 600},
    {"cron": "x" * 300 + " * * * *"}, {},
])
def test_bad_schedules_are_refused_when_declared(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Schedule("sched:bad", **options)
    app = Conveyor("memory://")
    when = options.pop("every", options.pop("cron", None))
    with pytest.raises(ConfigurationError):
        app.schedule("sched:bad", when, **options)
    assert app.schedules == []
    with pytest.raises(ConfigurationError, match="either cron or every"):
        Schedule("sched:bad", cron="0 3 * * *", every=60)


def test_a_schedule_name_is_unique_in_an_app() -> None:
    app = Conveyor("memory://")
    app.schedule("sched:a", 60, name="shared")
    with pytest.raises(ConfigurationError, match="shared"):
        app.schedule("sched:b", "0 3 * * *", name="shared")
    app.schedule("sched:a", 60)
    with pytest.raises(ConfigurationError):
        app.schedule("sched:a", 60)  # the same default name twice
    with pytest.raises(ConfigurationError, match="payload"):
        app.schedule("sched:c", 60, payload={"when": datetime.now()})
    assert [s.name for s in app.schedules] == ["shared", "sched:a every 60s"]


class Report(BaseModel):
    day: str
    pages: int = 1


async def test_a_schedule_declared_before_its_typed_handler(app: Conveyor) -> None:
    app.schedule("sched:report", 3600, payload={"day": 5}, name="bad-report")

    async def report(ctx: Context[Report]) -> None: ...

    with pytest.raises(ConfigurationError, match="bad-report"):
        app.register("sched:report", report)
    assert "sched:report" not in app.registry.actions
    assert [s.name for s in app.schedules] == ["bad-report"]  # stays as declared
    app.schedule("sched:typed", 3600, payload={"day": "mon"}, name="typed")
    event, seen = added(app, "sched:typed")
    app.register("sched:typed", report)
    async with app:
        await asyncio.wait_for(event.wait(), 10)
    assert seen[0].payload == {"day": "mon", "pages": 1}  # the model's JSON


# --- typed payloads ----------------------------------------------------------------------------


class Person(BaseModel):
    name: str


class Greeting(BaseModel):
    person: Person
    times: int = 1


class Greeted(BaseModel):
    text: str


async def test_explicit_models_and_thread_handlers(app: Conveyor) -> None:
    received: list[Any] = []

    def greet(ctx: Any) -> dict[str, str]:
        received.append(ctx.payload)
        return {"text": f"hi {ctx.payload.person.name}" * ctx.payload.times}

    def wrong(ctx: Any) -> dict[str, int]:
        return {"text": 5}

    app.register("typed:greet", greet, payload_model=Greeting, result_model=Greeted)
    app.register("typed:wrong", wrong, payload_model=Greeting, result_model=Greeted)
    with pytest.raises(ValidationError, match=r"person\.name"):
        await app.add("typed:greet", {"person": {"name": 5}})
    with pytest.raises(ValidationError, match=r"^task 1: .*person"):
        await app.add_many([("typed:greet", {"person": {"name": "a"}}),
                            ("typed:greet", {"person": "a"})])
    assert await app.count() == 0
    async with app:
        ok = await app.add("typed:greet", Greeting(person=Person(name="ann"), times=2))
        coerced = await app.add("typed:greet", {"person": {"name": "bob"}, "times": "1"})
        bad = await app.add("typed:wrong", {"person": {"name": "c"}})
        assert await app.wait(ok.id, timeout=10) == {"text": "hi annhi ann"}
        assert await app.wait(coerced.id, timeout=10) == {"text": "hi bob"}
        failed = await app.wait_task(bad.id, timeout=10)
    assert ok.payload == {"person": {"name": "ann"}, "times": 2}
    assert coerced.payload == {"person": {"name": "bob"}, "times": 1}
    assert all(isinstance(p, Greeting) for p in received) and len(received) == 2
    assert failed.status is Status.FAILED and failed.error is not None
    assert await app.count({"payload.person.name": "ann"}) == 1


# --- the synchronous face -------------------------------------------------------------------


def test_the_synchronous_face_queries_and_controls(url: str) -> None:
    with SyncConveyor(url, lease=5.0, stop_timeout=2.0) as app:
        tasks = [app.add("sync:q", {"n": n}, priority=p) for n, p in ((1, 3), (2, 1), (3, 2))]
        assert [t.payload["n"] for t in app.find(sort="priority")] == [2, 3, 1]
        assert [t.payload["n"] for t in app.find({"payload.n": {"$gte": 2}}, sort="-payload.n",
                                                 limit=1, skip=1)] == [2]
        first = app.find_one({"payload.n": {"$in": [1, 3]}}, sort="priority")
        assert first is not None and first.id == tasks[2].id
        assert app.count({"priority": {"$lt": 3}}) == 2
        assert app.exists({"payload.n": 3}) and not app.exists({"payload.n": 4})
        assert app.exists(tasks[0].id)
        with pytest.raises(QueryError) as info:
            app.find({"payload.n": {"$gt": [1]}})
        assert info.value.path == "filter.payload.n.$gt"
        app.abort(tasks[0].id)
        assert app.stats() == {"sync:q": {"queued": 2, "aborted": 1}}
        assert app.delete({"status": "aborted"}) == [tasks[0].id]

        @app.handler("sync:poll", policy=lambda task, outcome: (
            Transition(Status.QUEUED, run_at=time.time()) if task.attempts < 2
            else default_policy(task, outcome)))
        def poll(ctx: Context[Any]) -> int:
            return ctx.attempt

        app.start()
        polled = app.add("sync:poll")
        assert app.wait(polled.id, timeout=10) == 2
        app.stop()


# --- conveyor.testing ----------------------------------------------------------------------------


def test_make_spec_builds_a_task_ready_now() -> None:
    from conveyor.testing import StorageContract, make_spec

    spec = make_spec("t:a", {"n": 1}, priority=2)
    assert (spec.action, spec.payload, spec.priority) == ("t:a", {"n": 1}, 2)
    assert abs(spec.run_at - time.time()) < 5
    assert make_spec().id != make_spec().id
    later = make_spec(run_at=time.time() + 60)
    assert later.run_at > time.time() + 50
    assert any(name.startswith("test_") for name in dir(StorageContract))


def test_outcomes_are_the_documented_types() -> None:
    assert Aborted().reason == "aborted"
    assert Retry().after is None and Reschedule().after == 0
    assert Raised(ErrorInfo("E", "m")).retryable and TimedOut(1.0).retryable
