"""``app.retry()`` gives the new run ``max_rescues`` of its own: ``rescues`` goes
back to 0. It was kept, so a task that had failed ``worker_lost`` failed again at
the first lost run after the retry, never rescued."""

from __future__ import annotations

from conveyor import Conveyor, Status

from ._support import until


async def lose_a_run(app: Conveyor, task_id: str, max_rescues: int) -> tuple[str, ...]:
    """Claim the task as a worker that dies, then sweep once its lease is over: the
    ids the sweep failed (the others it queued again)."""
    [claimed] = await app.storage.claim("ghost", ["a"], 1, 0.05)
    assert claimed.id == task_id
    failed: list[str] = []

    async def swept() -> bool:
        report = await app.storage.recover(max_rescues)
        failed.extend(report.failed)
        return task_id in report.requeued or task_id in report.failed

    await until(swept, timeout=10, what="the ghost's lease to expire")
    return tuple(failed)


async def test_a_retried_task_is_rescued_again(opened_app: Conveyor) -> None:
    app = opened_app
    task = await app.add("a")
    assert await lose_a_run(app, task.id, 1) == ()       # rescued: rescues 1
    assert await lose_a_run(app, task.id, 1) == (task.id,)  # past max_rescues
    lost = await app.get(task.id)
    assert (lost.status, lost.reason, lost.rescues) == (Status.FAILED, "worker_lost", 1)
    again = await app.retry(task.id)
    assert again.rescues == 0 and len(again.errors) == len(lost.errors)
    assert await lose_a_run(app, task.id, 1) == ()       # rescued again, not failed
    assert (await app.get(task.id)).status is Status.QUEUED
