"""``add_checked`` and ``add_many_checked``: whether each add made a new task.

The flag comes from the insert itself (not from comparing times), so of
several racing adds of one unique key exactly one is told it created the task.
Runs on every backend (the shared ``app`` fixture).
"""

from __future__ import annotations

import asyncio

from conveyor import Conveyor, Status, SyncConveyor


async def test_add_checked_says_whether_the_task_is_new(app: Conveyor) -> None:
    first, created = await app.add_checked("mail:send", {"to": "ann"}, unique_key="k")
    again, created_again = await app.add_checked("mail:send", {"to": "bob"}, unique_key="k")
    _, plain_created = await app.add_checked("mail:send", {"to": "cy"})
    assert (created, created_again, plain_created) == (True, False, True)
    assert again.id == first.id and again.payload == {"to": "ann"}
    assert await app.count({"action": "mail:send"}) == 2


async def test_add_many_checked_flags_each_task_in_order(app: Conveyor) -> None:
    held = await app.add("a", unique_key="held")
    added = await app.add_many_checked([
        ("a", 1),
        ("a", 2, {"unique_key": "held"}),
        ("a", 3, {"unique_key": "new"}),
        {"action": "a", "payload": 4, "unique_key": "new"},  # the one just before holds it
    ])
    assert [created for _, created in added] == [True, False, True, False]
    tasks = [task for task, _ in added]
    assert tasks[1].id == held.id
    assert tasks[3].id == tasks[2].id and tasks[2].payload == 3
    assert await app.count({"action": "a"}) == 3
    assert await app.add_many_checked([]) == []


async def test_a_key_out_of_scope_is_created_again(app: Conveyor) -> None:
    first, _ = await app.add_checked("a", unique_key="k")
    await app.abort(first.id)
    second, created = await app.add_checked("a", unique_key="k")
    assert created and second.id != first.id
    assert (await app.get(first.id)).status is Status.ABORTED


async def test_racing_adds_of_one_key_tell_exactly_one_it_created(app: Conveyor) -> None:
    answers = await asyncio.gather(*[app.add_checked("a", {"n": n}, unique_key="race")
                                     for n in range(20)])
    assert sum(created for _, created in answers) == 1
    assert len({task.id for task, _ in answers}) == 1
    [winner] = [task for task, created in answers if created]
    assert (await app.get(winner.id)).payload == winner.payload


def test_sync_face_has_the_checked_adds() -> None:
    app = SyncConveyor("memory://")
    try:
        _, created = app.add_checked("a", unique_key="k")
        [(_, again), (_, other)] = app.add_many_checked([("a", None, {"unique_key": "k"}),
                                                          ("a", None)])
        assert (created, again, other) == (True, False, True)
    finally:
        app.close()
