"""The JSON helpers and the task decoder the hot paths use agree with the plain ways."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor import _json
from conveyor.errors import ValidationError
from conveyor.model import Status, Task, _task_from_values

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_dumps_stored_round_trips_like_dumps(value: object) -> None:
    text = _json.dumps_stored(value)
    assert json.loads(text) == json.loads(_json.dumps(value))


def test_dumps_stored_falls_back_for_values_orjson_refuses() -> None:
    # integers past 64 bits and non-text keys are valid for the standard encoder
    assert _json.dumps_stored({"n": 2**80}) == '{"n":' + str(2**80) + "}"
    assert _json.dumps_stored({1: "a"}) == '{"1":"a"}'


def test_dumps_checked_still_refuses_nan() -> None:
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        _json.dumps_checked(float("nan"), "payload")


def test_task_from_values_equals_the_constructor() -> None:
    task = Task("id-1", "a:b", {"x": [1, 2]}, Status.QUEUED, priority=-1.5, tags={"k": "v"})
    values = [getattr(task, f.name) for f in dataclasses.fields(Task)]
    built = _task_from_values(values)
    assert built == task
    assert type(built) is Task
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.priority = 3.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="not enough values"):
        _task_from_values(values[:-1])  # every field must be given
    with pytest.raises(ValueError, match="too many values"):
        _task_from_values([*values, None])


def test_task_replace_equals_dataclasses_replace() -> None:
    from conveyor.model import _task_replace

    task = Task("id-1", "a:b", {"x": 1}, Status.RUNNING, worker="w", token="t", version=3)
    changes = {"status": Status.SUCCEEDED, "worker": None, "token": None, "result": [1],
               "version": 4}
    assert _task_replace(task, **changes) == dataclasses.replace(task, **changes)
    assert _task_replace(task) == task


def test_bulk_fast_paths_equal_the_constructors() -> None:
    """build_spec's short path and new_task build their dataclasses field by field:
    the results equal what the constructors make."""
    from conveyor._specs import build_spec
    from conveyor.model import TaskSpec
    from conveyor.storage._ops import new_task

    spec = build_spec("a:b", {"x": 1}, now=123.5)
    assert spec == TaskSpec(id=spec.id, action="a:b", payload={"x": 1}, run_at=None)
    assert type(spec) is TaskSpec and spec.tags == {}
    other = build_spec("a:b", None, now=1.0)
    assert other.tags is not spec.tags  # a dict of its own, as the default factory gives

    task = new_task(spec, 124.0)
    assert task == Task(spec.id, "a:b", {"x": 1}, Status.QUEUED, run_at=124.0, created_at=124.0,
                        updated_at=124.0)
    full = build_spec("a:b", [1], now=4.0, priority=2, tags={"t": 1}, unique_key="k",
                      pickup_timeout=3, max_attempts=2, parent_id="p", delay=1)
    made = new_task(full, 6.0)  # stored after its run_at: ready (and timed) from then
    assert made == Task(full.id, "a:b", [1], Status.QUEUED, priority=2.0, run_at=5.0,
                        created_at=6.0, updated_at=6.0, max_attempts=2, pickup_timeout=3.0,
                        pickup_deadline=9.0, unique_key="k", tags={"t": 1}, parent_id="p")
    assert made.tags is not full.tags
