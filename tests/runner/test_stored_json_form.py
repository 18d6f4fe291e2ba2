"""What the API hands back is the stored JSON form, and is taken at the call.

A payload goes in as any JSON-serialisable value (tuples, enums, non-text
keys, ``OrderedDict``) and is stored as JSON; ``add`` and ``add_many`` return
it in that stored form, so the two compare equal field for field.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any

import pytest

from conveyor import Context, Conveyor


class Colour(enum.IntEnum):
    RED = 1


class Name(enum.StrEnum):
    ADA = "ada"


SHAPES: list[tuple[Any, Any]] = [
    ({"t": (1, 2)}, {"t": [1, 2]}),
    ({1: "x", "y": 2}, {"1": "x", "y": 2}),
    ((1, (2, 3)), [1, [2, 3]]),
    (OrderedDict(a=1), {"a": 1}),
    ({"c": Colour.RED, "n": Name.ADA}, {"c": 1, "n": "ada"}),
    ({f"k{i}": i for i in range(20)} | {"z": (0,)}, {f"k{i}": i for i in range(20)} | {"z": [0]}),
    (Colour.RED, 1),
    ({"flat": 1, "f": 1.5, "s": "x", "b": True, "n": None}, {"flat": 1, "f": 1.5, "s": "x",
                                                             "b": True, "n": None}),
]


def _shape(value: Any) -> Any:
    """``value`` with every type spelled out and keys sorted (PostgreSQL's jsonb
    does not keep the order of keys), so that a tuple never equals a list."""
    if isinstance(value, dict):
        return (type(value).__name__,
                sorted((_shape(k), _shape(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_shape(v) for v in value])
    return (type(value).__name__, value)


@pytest.mark.parametrize(("given", "stored"), SHAPES)
async def test_add_returns_the_stored_payload(app: Conveyor, given: Any, stored: Any) -> None:
    added = await app.add("x", given)
    got = await app.get(added.id)
    assert _shape(got.payload) == _shape(stored)
    assert _shape(added.payload) == _shape(stored)


async def test_add_many_returns_the_stored_payloads(app: Conveyor) -> None:
    added = await app.add_many([("x", given) for given, _ in SHAPES])
    got = [await app.get(t.id) for t in added]
    assert [_shape(t.payload) for t in added] == [_shape(stored) for _, stored in SHAPES]
    assert [_shape(t.payload) for t in got] == [_shape(stored) for _, stored in SHAPES]


async def test_added_task_equals_the_read_one_with_options(app: Conveyor) -> None:
    added = await app.add("x", {"t": (1,)}, priority=3, tags={"k": "v"}, max_attempts=2)
    got = await app.get(added.id)
    assert added.payload == got.payload == {"t": [1]}
    assert added.tags == got.tags
    assert (added.priority, added.max_attempts) == (got.priority, got.max_attempts)


async def test_log_and_progress_data_are_taken_at_the_call(app: Conveyor) -> None:
    """What a handler changes in its data after ``ctx.log``/``ctx.progress``
    returns is not what gets stored: the data is copied (as JSON) at the call."""

    @app.handler("work")
    async def work(ctx: Context[Any]) -> None:
        data: dict[str, Any] = {"rows": [1], "t": (1,)}
        ctx.log.info("first", data=data)
        data["rows"].append(2)
        steps = [1]
        await ctx.progress(1, total=2, steps=steps)
        steps.append(2)
        data["after"] = True

    async with app:
        task = await app.add("work")
        await app.wait(task.id, timeout=10)
    done = await app.get(task.id, logs=True)
    [line] = [record for record in done.logs if record.message == "first"]
    assert line.data == {"rows": [1], "t": [1]}
    assert done.progress is not None and done.progress.data == {"steps": [1]}
