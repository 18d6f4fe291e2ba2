"""``raise PermanentFailure(...)`` (or a subclass) fails the task at once, whatever
attempts remain and whatever ``retry_on``, in every kind of in-process handler
(the hub's remote services: tests/hub/test_worker_parity.py)."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import Backoff, Context, Conveyor, PermanentFailure, Status

from . import process_app


class BadInput(PermanentFailure):
    pass


@pytest.mark.parametrize("mode", ["async", "thread"])
async def test_a_permanent_failure_is_not_retried(app: Conveyor, mode: str) -> None:
    quick = Backoff(base=0.0, jitter=0.0)
    if mode == "async":
        @app.handler("perm", max_attempts=5, backoff=quick, retry_on=(ValueError, BadInput))
        async def perm(ctx: Context[Any]) -> None:
            if ctx.payload == "transient":
                raise ValueError("try again")
            raise BadInput("no such user")
    else:
        @app.handler("perm", max_attempts=5, backoff=quick, retry_on=(ValueError, BadInput))
        def perm_sync(ctx: Context[Any]) -> None:
            if ctx.payload == "transient":
                raise ValueError("try again")
            raise BadInput("no such user")

    permanent = await app.add("perm", "permanent")
    transient = await app.add("perm", "transient")
    await app.start()
    done = await app.wait_task(permanent.id, timeout=60)
    assert (done.status, done.attempts) == (Status.FAILED, 1)
    assert done.error is not None
    assert (done.error.type, done.error.message) == ("BadInput", "no such user")
    other = await app.wait_task(transient.id, timeout=60)
    assert (other.status, other.attempts) == (Status.FAILED, 5)  # the others still retry


async def test_a_process_handler_fails_permanently_too() -> None:
    async with process_app.app as app:
        task = await app.add("proc:permanent", {"user": "ann"})
        done = await app.wait_task(task.id, timeout=60)
    assert (done.status, done.attempts) == (Status.FAILED, 1)
    assert done.error is not None
    assert (done.error.type, done.error.message) == ("BadInput", "no such user ann")
