"""Bad input gets a clear error and writes nothing."""

from __future__ import annotations

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


@pytest.fixture
def app(opened_app: Conveyor) -> Conveyor:
    return opened_app


GOOD_CONDITION = {"scope": "running", "query": {"payload.book": "B"}, "limit": 1}


async def test_conditions_up_to_the_bounds_are_taken(app: Conveyor) -> None:
    """16 conditions holding 100 comparisons in all (each $in item is one)."""
    conditions = [{"query": {"payload.n": {"$in": list(range(85))}}}]
    conditions += [{"query": {"payload.m": i}} for i in range(15)]
    task = await app.add("work", {"n": 1}, concurrency=conditions)
    assert len(task.concurrency) == 16


@pytest.mark.parametrize(("options", "message"), [
    ({"timeout": -1}, r"timeout must be > 0 seconds"),
    ({"timeout": -0.5}, r"timeout must be > 0 seconds"),
    ({"pickup_timeout": -1}, r"pickup_timeout must be > 0 seconds"),
    ({"timeout": float("nan")}, r"timeout must be a finite number"),
    ({"timeout": "10"}, r"timeout must be a number of seconds"),
    ({"concurrency": {"scope": "sleeping", "query": {"payload.book": "B"}}},
     r"concurrency\[0\]\.scope: unknown status 'sleeping'"),
    ({"concurrency": [GOOD_CONDITION, {"scope": ["running", "later"], "query": {}}]},
     r"concurrency\[1\]\.scope: unknown status 'later'"),
    ({"concurrency": {"query": {"payload.book": {"$almost": 1}}}}, r"concurrency\[0\]\.query"),
    ({"concurrency": {"query": {"$and": "not a list"}}}, r"concurrency\[0\]\.query"),
    ({"concurrency": {"query": "payload.book = B"}}, r"concurrency\[0\]\.query must be a filter"),
    ({"concurrency": {"query": {"payload.book": "B"}, "limit": 0}}, r"limit must be an integer"),
    ({"concurrency": {"query": {"payload.book": "B"}, "max": 1}}, r"unknown key\(s\): max"),
    ({"unique_key": 42}, r"unique_key must be a non-empty string"),
    ({"unique_key": b"bytes"}, r"unique_key must be a non-empty string"),
    ({"unique_key": ""}, r"unique_key must be a non-empty string"),
    ({"unique_key": ["a"]}, r"unique_key must be a non-empty string"),
    # SQLite cut a key at its NUL (a later key with the same start collided)
    ({"unique_key": "k\x00A"}, r"unique_key must not contain NUL"),
    ({"parent_id": "p" * 101}, r"parent_id must be a task id"),
    ({"parent_id": ""}, r"parent_id must be a task id"),
    # conditions run at every claim: their number and size are bounded
    ({"concurrency": [{"query": {"payload.n": i}} for i in range(17)]},
     r"at most 16 conditions per task \(not 17\)"),
    ({"concurrency": [{"query": {"payload.n": {"$in": list(range(60))}}},
                      {"query": {"payload.m": {"$in": list(range(41))}}}]},
     r"more than 100 comparisons in all"),
    ({"backoff": {"base": -1}}, r"backoff base must be a number >= 0"),
    ({"backoff": -2}, r"backoff base must be a number >= 0"),
    ({"backoff": {"factor": 0.5}}, r"backoff factor must be a number >= 1"),
    ({"backoff": {"jitter": 2}}, r"backoff jitter must be a number from 0 to 1"),
    ({"backoff": {"maximum": "long"}}, r"backoff maximum must be a number"),
    ({"backoff": {"bass": 1}}, r"backoff has unknown key\(s\): bass"),
    ({"backoff": "fast"}, r"backoff must be a number of seconds or an object"),
    ({"backoff": True}, r"backoff must be a number of seconds or an object"),
    # what every backend stores (PostgreSQL: an integer column; SQLite turned 2**63
    # into a float, memory:// kept any size)
    ({"max_attempts": 2**31}, r"max_attempts must be an integer >= 1 and at most 2147483647"),
    ({"max_attempts": 2**70}, r"max_attempts must be an integer >= 1 and at most 2147483647"),
])
async def test_bad_add_options_are_refused(app: Conveyor, options: dict[str, Any],
                                           message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        await app.add("work", {"book": "B"}, **options)
    # the same option inside a batch with good tasks: the batch is refused whole
    with pytest.raises(ValidationError, match=message):
        await app.add_many([("work", {"book": "A"}), ("work", {"book": "B"}, options)])
    assert await app.count() == 0
    # and the app still works
    task = await app.add("work", {"book": "B"}, concurrency=GOOD_CONDITION)
    assert await app.count() == 1 and task.status is Status.QUEUED


@pytest.mark.parametrize(("options", "message"), [
    ({"timeout": -1}, r"timeout must be > 0 seconds"),
    ({"pickup_timeout": -3}, r"pickup_timeout must be > 0 seconds"),
    ({"abort_grace": -1}, r"abort_grace must be >= 0 seconds"),
    ({"backoff": {"factor": 0}}, r"backoff factor must be a number >= 1"),
    ({"backoff": {"jitter": -0.1}}, r"backoff jitter must be a number from 0 to 1"),
    ({"limit": 0}, r"limit must be an integer >= 1"),
    ({"max_attempts": 0}, r"max_attempts must be an integer >= 1"),
    ({"retries": -1}, r"retries must be an integer >= 0"),
    ({"max_attempts": 2**31}, r"max_attempts must be an integer >= 1 and at most 2147483647"),
    ({"retries": 2**31 - 1}, r"max_attempts must be an integer >= 1 and at most 2147483647"),
    ({"retry_on": (ValueError, "KeyError")}, r"retry_on must be exception classes"),
    ({"policy": "default"}, r"policy must be a function"),
])
def test_bad_handler_options_register_nothing(options: dict[str, Any], message: str) -> None:
    app = Conveyor("memory://")

    async def work(ctx: Context[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match=message):
        app.register("work", work, **options)
    assert "work" not in app.registry
    app.register("work", work)  # the name is still free


def test_retry_on_given_an_exception_instance_gets_a_clear_error() -> None:
    """A likely slip: ``retry_on=KeyError()`` (an instance) instead of the class."""
    app = Conveyor("memory://")

    async def work(ctx: Context[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match=r"retry_on must be exception classes"):
        app.register("work", work, retry_on=KeyError("oops"))
    assert "work" not in app.registry


@pytest.mark.parametrize("make", [
    lambda: Retry(after=-1),
    lambda: Retry(reason=5),  # type: ignore[arg-type]
    lambda: Retry(after=float("inf")),
    lambda: Retry(after="soon"),  # type: ignore[arg-type]
    lambda: Reschedule(after=-1),
    lambda: Reschedule(after=None),  # type: ignore[arg-type]
    lambda: Backoff(base=-1),
    lambda: Backoff(factor=0.9),
    lambda: Backoff(jitter=1.5),
    lambda: Backoff(maximum=-1),
    lambda: Transition(Status.RUNNING),
    lambda: Transition(Status.QUEUED),
])
def test_bad_outcomes_fail_at_construction(make: Any) -> None:
    with pytest.raises(ValidationError):
        make()


@pytest.mark.parametrize("options", [
    {"lease": -1}, {"lease": 0}, {"sweep_interval": -1}, {"stop_timeout": -1},
    {"max_rescues": -1}, {"concurrency": 0},
])
def test_bad_app_options(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Conveyor("memory://", **options)


async def test_a_policy_that_returns_garbage_fails_the_task(local_url: str) -> None:
    app = Conveyor(local_url)

    @app.handler("odd", policy=lambda task, outcome: "succeeded")
    async def odd(ctx: Context[Any]) -> str:
        return "value"

    async with app:
        task = await app.add("odd")
        done = await app.wait_task(task.id, timeout=10)
    assert done.status is Status.FAILED and done.reason == "policy_error"
    assert done.error is not None and "policy returned 'succeeded'" in done.error.message
