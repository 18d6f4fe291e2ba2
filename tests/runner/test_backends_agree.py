"""Small cases where the backends answered differently (found by a differential
run of the same calls on memory, SQLite and PostgreSQL)."""

from __future__ import annotations

import math

import pytest

from conveyor import Conveyor, ValidationError


async def test_a_priority_of_minus_zero_is_zero_everywhere(app: Conveyor) -> None:
    """memory kept ``-0.0``; SQLite and PostgreSQL stored ``0.0``."""
    added = await app.add("a", None, priority=-0.0)
    for task in (added, await app.get(added.id),
                 await app.prioritize(added.id, -0.0)):
        assert task.priority == 0.0 and math.copysign(1.0, task.priority) == 1.0


async def test_exists_of_an_id_that_is_not_valid_unicode_is_bad_input(app: Conveyor) -> None:
    """SQLite and PostgreSQL raised a raw ``UnicodeEncodeError`` (memory said False);
    ``get`` and the others already said ValidationError."""
    with pytest.raises(ValidationError, match="a task id holds text that is not valid Unicode"):
        await app.exists("ab\ud800")
    assert await app.exists("no-such-task") is False
