"""Bad input at the entry points: a clear error that names the argument, and no change.

Each test asserts the error's type, that its message names what was wrong, and
that nothing was registered or stored.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import ConfigurationError, Context, Conveyor, Status, ValidationError
from conveyor.context import TaskLogger
from conveyor.model import LogLevel, Progress
from conveyor.schedule import Schedule


class Download(BaseModel):
    url: str


async def typed(ctx: Context[Download]) -> None:
    return None


async def plain(ctx: Context[Any]) -> None:
    return None


async def _nothing_stored(app: Conveyor) -> None:
    assert await app.count() == 0
    assert await app.find() == []


# -- 1. tags ------------------------------------------------------------------------------


@pytest.mark.parametrize("tags", [5, ["x"], [("user", "ann")], "user", {"a", "b"}])
async def test_tags_must_be_a_mapping(app: Conveyor, tags: Any) -> None:
    with pytest.raises(ValidationError, match=r"^tags must be a dict"):
        await app.add("a", tags=tags)
    with pytest.raises(ValidationError, match=r"^task 1: tags must be a dict"):
        await app.add_many([("a", 1), ("a", 2, {"tags": tags})])
    await _nothing_stored(app)


@pytest.mark.parametrize(("tags", "message"), [
    ({"": 1}, "tags: tag names must be non-empty strings"),
    ({1: "x"}, "tags: tag names must be non-empty strings"),
    ({"a.b": 1}, "tags: tag name 'a.b' must not contain '.'"),
    ({"a": {1, 2}}, "tags is not JSON-serialisable"),
])
async def test_bad_tag_names_and_values(app: Conveyor, tags: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=f"^{message}"):
        await app.add("a", tags=tags)
    await _nothing_stored(app)


# -- 2. add_many and delete -------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 1, 2])
async def test_add_many_names_the_index_of_every_item(app: Conveyor, bad: int) -> None:
    items: list[Any] = [("b", 1), ("b", 2), ("b", 3)]
    items[bad] = ("bad action", 0)
    with pytest.raises(ValidationError, match=rf"^task {bad}: invalid action name 'bad action'"):
        await app.add_many(items)
    items[bad] = {"payload": 1}
    with pytest.raises(ValidationError, match=rf"^task {bad}: each task needs an 'action'"):
        await app.add_many(items)
    await _nothing_stored(app)


async def test_a_single_task_has_no_index(app: Conveyor) -> None:
    with pytest.raises(ValidationError, match=r"^invalid action name 'bad action'"):
        await app.add("bad action")
    with pytest.raises(ValidationError, match=r"^priority must be a number"):
        await app.add("a", priority="high")
    await _nothing_stored(app)


@pytest.mark.parametrize("items", [5, None, "ab", b"ab", {"action": "a"}])
async def test_add_many_takes_a_list(app: Conveyor, items: Any) -> None:
    with pytest.raises(ValidationError, match=r"^add_many takes a list of tasks"):
        await app.add_many(items)
    await _nothing_stored(app)


async def test_add_many_takes_any_iterable(app: Conveyor) -> None:
    tasks = await app.add_many(("a", i) for i in range(3))
    assert [t.payload for t in tasks] == [0, 1, 2]


@pytest.mark.parametrize("target", [5, None, 1.5, b"id"])
async def test_delete_target_must_be_ids_or_a_filter(app: Conveyor, target: Any) -> None:
    task = await app.add("a")
    await app.abort(task.id)
    with pytest.raises(ValidationError, match=r"^delete takes a task id, a list of ids or a filt"):
        await app.delete(target)
    assert (await app.get(task.id)).status is Status.ABORTED  # not deleted


async def test_delete_refuses_a_bad_id_before_deleting_any(app: Conveyor) -> None:
    task = await app.add("a")
    await app.abort(task.id)
    with pytest.raises(ValidationError, match="task id"):
        await app.delete([task.id, 5])
    assert await app.exists(task.id)


# -- 3. registration is all or nothing ---------------------------------------------------


def test_a_schedule_name_taken_registers_nothing() -> None:
    app = Conveyor("memory://")
    app.schedule("z", 60)
    with pytest.raises(ConfigurationError, match="schedule named 'z every 60s' exists already"):
        app.register("z", plain, schedule=60)
    assert "z" not in app.registry and len(app.registry) == 0
    assert [s.name for s in app.schedules] == ["z every 60s"]
    app.register("z", plain)  # the retry without the clash works
    assert "z" in app.registry


def test_a_bad_schedule_payload_registers_nothing() -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError,
                       match=r"schedule 'typed every 60s': payload for 'typed' is invalid: url"):
        app.register("typed", typed, schedule=Schedule("typed", every=60, payload={"url": 5}))
    assert "typed" not in app.registry and app.schedules == []
    app.register("typed", typed, schedule=Schedule("typed", every=60, payload={"url": "u"}))
    assert "typed" in app.registry and len(app.schedules) == 1


def test_a_schedule_of_another_action_registers_nothing() -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match=r"handler for 'a': its schedule is for 'b'"):
        app.register("a", plain, schedule=Schedule("b", every=60))
    assert len(app.registry) == 0 and app.schedules == []


def test_unknown_handler_option_is_named() -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match=r"handler for 'a': unknown option\(s\): bogus"):
        app.register("a", plain, bogus=1)
    assert len(app.registry) == 0


def test_a_second_handler_for_an_action_changes_nothing() -> None:
    app = Conveyor("memory://")
    first = app.register("a", plain)
    with pytest.raises(ConfigurationError, match="a handler for 'a' is already registered"):
        app.register("a", typed, schedule=60)
    assert app.registry.get("a") is first and app.schedules == []


# -- 4. schedules declared before their handler ----------------------------------------


def test_schedule_declared_before_its_typed_handler_is_checked_at_registration() -> None:
    app = Conveyor("memory://")
    app.schedule("typed2", 0.5, payload={"url": 5})
    with pytest.raises(ConfigurationError) as info:
        app.register("typed2", typed)
    message = str(info.value)
    assert "handler for 'typed2'" in message
    assert "schedule 'typed2 every 0.5s'" in message and "url" in message
    assert "typed2" not in app.registry
    assert [s.name for s in app.schedules] == ["typed2 every 0.5s"]


def test_schedule_declared_before_its_handler_with_a_good_payload() -> None:
    app = Conveyor("memory://")
    app.schedule("typed3", 60, payload={"url": "https://example.com"})
    app.register("typed3", typed)
    assert "typed3" in app.registry


# -- 5. the app's policy -----------------------------------------------------------------


@pytest.mark.parametrize("policy", [5, "default", {"a": 1}])
def test_app_policy_must_be_a_function(policy: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^policy must be a function"):
        Conveyor("memory://", policy=policy)


def test_handler_policy_must_be_a_function() -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match=r"policy must be a function"):
        app.register("a", plain, policy=5)
    assert len(app.registry) == 0


# -- 6. handler-level defaults follow add's rules --------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"priority": "high"}, "priority must be a number, not 'high'"),
    ({"priority": True}, "priority must be a number, not True"),
    ({"priority": float("nan")}, "priority must be a finite number, not nan"),
    ({"priority": float("inf")}, "priority must be a finite number, not inf"),
    ({"max_attempts": True}, "max_attempts must be an integer >= 1"),
    ({"max_attempts": 1.5}, "max_attempts must be an integer >= 1"),
    ({"max_attempts": 0}, "max_attempts must be an integer >= 1"),
    ({"retries": -1}, "retries must be an integer >= 0"),
    ({"max_attempts": 2, "retries": 1}, "give max_attempts or retries, not both"),
    ({"timeout": float("nan")}, "timeout must be a finite number of seconds"),
    ({"timeout": 0}, "timeout must be > 0 seconds"),
    ({"pickup_timeout": "5"}, "pickup_timeout must be a number of seconds"),
    ({"backoff": float("nan")}, "backoff base must be a finite number"),
    ({"backoff": {"maximum": float("inf")}}, "backoff maximum must be a finite number"),
    ({"backoff": "x"}, "backoff must be a number of seconds or an object"),
    ({"backoff": {"bogus": 1}}, "backoff has unknown key"),
    ({"limit": True}, "limit must be an integer >= 1"),
    ({"limit": 0}, "limit must be an integer >= 1"),
    ({"abort_grace": -1}, "abort_grace must be >= 0 seconds"),
    ({"retry_on": 5}, "retry_on must be exception classes"),
    ({"payload_model": 5}, "payload_model must be a pydantic model class"),
    ({"result_model": dict}, "result_model must be a pydantic model class"),
])
def test_bad_handler_defaults_register_nothing(options: dict[str, Any], message: str) -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match=rf"^handler for 'a': {message}"):
        app.register("a", plain, schedule=60, **options)
    assert len(app.registry) == 0 and app.schedules == []


@pytest.mark.parametrize(("option", "value", "message"), [
    ("backoff", float("nan"), "backoff base must be a finite number"),
    ("backoff", {"factor": float("inf")}, "backoff factor must be a finite number"),
    ("max_attempts", True, "max_attempts must be an integer >= 1"),
])
async def test_add_options_follow_the_same_rules(app: Conveyor, option: str, value: Any,
                                                 message: str) -> None:
    with pytest.raises(ValidationError, match=f"^{message}"):
        await app.add("a", **{option: value})
    await _nothing_stored(app)


async def test_good_handler_defaults_apply_to_tasks(app: Conveyor) -> None:
    app.register("a", plain, priority=3, max_attempts=2, backoff=1.5, timeout=9)
    task = await app.add("a")
    assert task.priority == 3.0 and task.max_attempts == 2 and task.run_timeout == 9.0
    assert task.backoff is not None and task.backoff.base == 1.5


# -- 7. ctx.log ---------------------------------------------------------------------------


class _Channel:
    def __init__(self) -> None:
        self.lines: list[tuple[LogLevel, str, dict[str, Any] | None]] = []

    def progress(self, task_id: str, progress: Progress) -> None:
        raise AssertionError("not used")

    def log(self, task_id: str, level: LogLevel, message: str,
            data: dict[str, Any] | None) -> None:
        self.lines.append((level, message, data))

    def emit(self, task_id: str, value: Any) -> None:
        raise AssertionError("not used")


@pytest.mark.parametrize(("data", "message"), [
    (5, "log data must be a dict"),
    ("text", "log data must be a dict"),
    ([("k", 1)], "log data must be a dict"),
    ({1: "x"}, "log data keys must be strings"),
    ({"k": object()}, "log data is not JSON-serialisable"),
    ({"k": float("nan")}, "log data is not JSON-serialisable"),
])
def test_log_data_must_be_a_dict_of_json(data: Any, message: str) -> None:
    channel = _Channel()
    log = TaskLogger(channel, "t1")
    with pytest.raises(ValidationError, match=f"^{message}"):
        log.info("y", data=data)
    assert channel.lines == []


def test_log_level_is_checked_before_writing() -> None:
    channel = _Channel()
    with pytest.raises(ValidationError, match="unknown log level"):
        TaskLogger(channel, "t1").log("loud", "y")
    assert channel.lines == []


def test_good_log_data_is_written() -> None:
    channel = _Channel()
    TaskLogger(channel, "t1").warning("n=%s", 3, data={"k": [1, "two"]})
    assert channel.lines == [(LogLevel.WARNING, "n=3", {"k": [1, "two"]})]


async def test_bad_log_data_raises_in_the_handler(app: Conveyor) -> None:
    @app.handler("logs:bad")
    async def bad(ctx: Context[Any]) -> str:
        try:
            ctx.log.info("refused", data=5)
        except ValidationError as exc:
            ctx.log.info("kept")
            return str(exc)
        return "accepted"

    @app.handler("logs:sync")
    def sync(ctx: Context[Any]) -> None:
        ctx.log.info("refused", data=["x"])

    async with app:
        task = await app.add("logs:bad")
        assert (await app.wait(task.id, timeout=10)).startswith("log data must be a dict")
        done = await app.get(task.id, logs=True)
        assert [line.message for line in done.logs or ()] == ["kept"]
        failed = await app.wait_task((await app.add("logs:sync")).id, timeout=10)
        assert failed.status is Status.FAILED
        assert failed.error is not None and failed.error.type.endswith("ValidationError")
        assert "log data must be a dict" in failed.error.message
        await asyncio.sleep(0)
        assert [line.message for line in (await app.get(failed.id, logs=True)).logs or ()] == []


@pytest.mark.parametrize("fields", [
    {"base": float("nan")}, {"factor": float("inf")}, {"maximum": float("inf")},
    {"jitter": float("nan")},
])
def test_a_backoff_built_directly_needs_finite_numbers(fields: dict[str, float]) -> None:
    from conveyor.model import Backoff

    [name] = fields
    with pytest.raises(ValidationError, match=f"^backoff {name} must be a finite number"):
        Backoff(**fields)


async def test_a_backoff_takes_timedeltas_like_every_duration(app: Conveyor) -> None:
    """The guide: every duration conveyor takes, the backoff's base and maximum
    included, is seconds or a timedelta."""
    from datetime import timedelta

    from conveyor.model import Backoff

    assert Backoff(base=timedelta(seconds=3), maximum=timedelta(minutes=5)) == Backoff(
        base=3.0, maximum=300.0)
    handler = app.register("td:handler", lambda ctx: None, backoff=timedelta(seconds=4))
    assert handler.backoff == Backoff(base=4.0)
    a = await app.add("td:a", backoff=timedelta(seconds=3))
    b = await app.add("td:b", backoff={"base": timedelta(seconds=2),
                                       "maximum": timedelta(minutes=1)})
    assert a.backoff == Backoff(base=3.0)
    assert b.backoff == Backoff(base=2.0, maximum=60.0)
    assert (await app.get(b.id)).backoff == Backoff(base=2.0, maximum=60.0)
    with pytest.raises(ValidationError, match="backoff base must be a number >= 0"):
        await app.add("td:c", backoff=timedelta(seconds=-1))
    assert await app.count({"action": "td:c"}) == 0


# -- 7. the durations of stop(), ctx.sleep() and ctx.wait_aborted() ---------------------


BAD_DURATIONS: list[tuple[Any, str]] = [
    (-1, ">= 0 seconds"), (float("nan"), "finite"), (float("inf"), "finite"),
    ("x", "a number of seconds or a timedelta"), (True, "a number of seconds or a timedelta"),
    (4e9, "at most"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_DURATIONS)
async def test_stop_timeout_is_a_duration(bad: Any, message: str) -> None:
    app = Conveyor("memory://")
    release, started = asyncio.Event(), asyncio.Event()

    @app.handler("d:hold")
    async def hold(ctx: Context[Any]) -> str:
        started.set()
        await release.wait()
        return "done"

    async with app:
        task = await app.add("d:hold")
        await asyncio.wait_for(started.wait(), 10)
        with pytest.raises(ValidationError, match=message):
            await asyncio.wait_for(app.stop(timeout=bad), 10)
        assert app.worker is not None  # refused before anything stopped
        release.set()
        assert await app.wait(task.id, timeout=10) == "done"
        await app.stop(timeout=timedelta(seconds=5))
        assert app.worker is None


async def test_ctx_sleep_and_wait_aborted_take_durations() -> None:
    """As everywhere, but a negative one is 0, as for asyncio.sleep and Event.wait."""
    app = Conveyor("memory://")
    seen: dict[Any, str] = {}
    bad_ones = [(bad, message) for bad, message in BAD_DURATIONS if bad != -1]

    @app.handler("d:sleep")
    async def nap(ctx: Context[Any]) -> bool:
        await ctx.sleep(-1)
        await ctx.sleep(timedelta(seconds=-1))
        for bad, _ in bad_ones:
            try:
                await ctx.sleep(bad)
            except ValidationError as exc:
                seen[repr(bad)] = str(exc)
        await ctx.sleep(timedelta(milliseconds=1))
        return True

    @app.handler("d:wait", mode="thread")
    def wait(ctx: Context[Any]) -> bool:
        assert ctx.wait_aborted(-1) is False
        for bad, _ in bad_ones:
            try:
                ctx.wait_aborted(bad)
            except ValidationError as exc:
                seen["wait " + repr(bad)] = str(exc)
        return ctx.wait_aborted(timedelta(milliseconds=1))

    async with app:
        assert await app.wait((await app.add("d:sleep")).id, timeout=10) is True
        assert await app.wait((await app.add("d:wait")).id, timeout=10) is False
    for bad, message in bad_ones:
        assert message in seen[repr(bad)], seen
        assert message in seen["wait " + repr(bad)], seen


async def test_a_parent_id_with_nul_is_refused_on_every_backend(app: Conveyor) -> None:
    parent = await app.add("a")
    with pytest.raises(ValidationError, match=r"^parent_id: .*NUL"):
        await app.add("a", parent_id=parent.id + "\x00-and-more")
    with pytest.raises(ValidationError, match=r"parent_id: .*NUL"):
        await app.add_many([("a", None, {"parent_id": parent.id}),
                            ("a", None, {"parent_id": parent.id + "\x00"})])
    assert await app.count() == 1  # nothing of either
    child = await app.add("a", parent_id=parent.id)
    assert [t.id for t in await app.find({"parent_id": parent.id})] == [child.id]


async def test_a_condition_limit_past_64_bits_is_refused(app: Conveyor) -> None:
    """Conditions audit: PostgreSQL read a limit of 10**19 back as a float, and the task
    then broke every claim of its action, and every read of it."""
    query = {"payload.group": "g"}
    with pytest.raises(ValidationError, match=r"limit must be an integer from 1 to"):
        await app.add("a", {"group": "g"}, concurrency=[{"query": query, "limit": 10**19}])
    assert await app.count() == 0
    widest = await app.add("a", {"group": "g"},
                           concurrency=[{"query": query, "limit": 2**63 - 1}])
    read = await app.get(widest.id)
    assert read is not None and read.concurrency[0].limit == 2**63 - 1
    assert [t.id for t in await app.find({})] == [widest.id]
