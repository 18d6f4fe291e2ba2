"""A task added without a delay is ready from the moment it is stored: its
``run_at`` is its ``created_at`` (it was a few milliseconds before it, the time
the add call began, which read as a task due before it existed)."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import Conveyor


@pytest.mark.parametrize("delay", [None, 0, 0.0])
async def test_run_at_is_created_at_without_a_delay(app: Conveyor, delay: Any) -> None:
    options = {} if delay is None else {"delay": delay}
    async with app:
        one = await app.add("noop", {"n": 1}, **options)
        many = await app.add_many([("noop", {"n": i}, options) for i in range(300)])
        plain = await app.add_many([("noop", i) for i in range(600)])  # the streamed path
        keyed = await app.add("noop", unique_key="k", **options)
        for task in [one, *many, *plain, keyed]:
            assert task.run_at == task.created_at
            stored = await app.get(task.id)
            assert stored.run_at == stored.created_at == task.created_at


async def test_a_delay_counts_from_the_add(app: Conveyor) -> None:
    async with app:
        task = await app.add("noop", delay=30, pickup_timeout=5)
        assert task.run_at - task.created_at == pytest.approx(30, abs=1)
        assert task.pickup_deadline == task.run_at + 5
        now = await app.add("noop", pickup_timeout=5)
        assert now.pickup_deadline == now.created_at + 5
