"""Handlers that cannot work are refused where they are written, not at every
run: a bare ``@app.handler`` (it made the function the action's name and
registered nothing), a bad action name or option before any function, a
function that cannot take the context as its one argument, a generator. The
same on a hub client."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conveyor import ConfigurationError, Context, Conveyor, ConveyorError
from conveyor.client import HubClient


def _apps() -> list[Any]:
    return [Conveyor("memory://"), HubClient("http://127.0.0.1:9")]


@pytest.fixture(params=["app", "hub client"])
def target(request: pytest.FixtureRequest) -> Any:
    return _apps()[0 if request.param == "app" else 1]


def _registered(target: Any) -> list[str]:
    return target.registry.actions if isinstance(target, Conveyor) else target.actions


def test_a_bare_decorator_is_refused_and_names_the_fix(target: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"handler\(\"mail:send\"\).*render"):

        @target.handler
        async def render(ctx: Context) -> None: ...

    assert _registered(target) == []


def test_a_bad_name_or_option_is_refused_before_the_function(target: Any) -> None:
    with pytest.raises(ConfigurationError, match="invalid action name 'not a name!'"):
        target.handler("not a name!")
    with pytest.raises(ConfigurationError, match=r"unknown option.*priorty"):
        target.handler("a", priorty=3)
    assert _registered(target) == []


class Service:
    async def method(self, ctx: Context) -> None: ...


async def _two(to: str, subject: str) -> None: ...


async def _none() -> None: ...


async def _keyword_only(*, ctx: Context) -> None: ...


async def _extra(ctx: Context, extra: int) -> None: ...


@pytest.mark.parametrize("fn", [_two, _none, _keyword_only, _extra, Service.method, Service],
                         ids=["two", "none", "keyword-only", "extra", "unbound", "class"])
def test_a_function_that_cannot_take_the_context_is_refused(target: Any, fn: Any) -> None:
    with pytest.raises(ConfigurationError, match="cannot be called with the context as its "
                                                 "one argument"):
        target.register("a", fn)
    assert _registered(target) == []


def _gen(ctx: Context) -> Iterator[int]:
    yield 1


async def _agen(ctx: Context) -> AsyncIterator[int]:
    yield 1


class _GenCall:
    def __call__(self, ctx: Context) -> Iterator[int]:
        yield 1


@pytest.mark.parametrize("fn", [_gen, _agen, _GenCall()], ids=["gen", "async-gen", "object"])
def test_a_generator_is_refused(target: Any, fn: Any) -> None:
    with pytest.raises(ConfigurationError, match="is a generator function"):
        target.register("a", fn)
    assert _registered(target) == []


async def _with_default(ctx: Context, retries: int = 3) -> int:
    return retries


async def _star(*args: Any) -> int:
    return len(args)


class _Callable:
    async def __call__(self, ctx: Context) -> str:
        return "object"


def _with_session(fn: Any) -> Any:
    """A decorator that injects an argument: its wrapper takes the context alone
    (``inspect.signature`` follows ``__wrapped__`` to the function, which takes two)."""

    @functools.wraps(fn)
    async def wrapper(ctx: Context) -> Any:
        return await fn(ctx, {"session": 1})

    return wrapper


@_with_session
async def _injected(ctx: Context, session: dict[str, int]) -> int:
    return session["session"]


@pytest.mark.parametrize(("fn", "expected"), [
    (_with_default, 3), (_star, 1), (functools.partial(_extra, extra=1), None),
    (Service().method, None), (_Callable(), "object"), (lambda ctx: "lambda", "lambda"),
    (_injected, 1), (bool, True),
], ids=["default", "star", "partial", "bound", "object", "lambda", "injected", "builtin"])
async def test_functions_that_take_the_context_run(fn: Any, expected: Any) -> None:
    app = Conveyor("memory://")
    app.register("a", fn)
    try:
        task = await app.add("a", {})
        await app.drain(timeout=10)
        assert (await app.wait(task.id, timeout=5)) == expected
    finally:
        await app.close()


async def test_waiting_for_its_own_task_inside_a_handler_is_refused_at_once() -> None:
    """``app.wait(ctx.task.id)`` and ``app.drain()`` inside the handler waited for the
    handler's own task (for ever, or until their timeout): refused at once. A drain
    of other actions there still runs them."""
    app = Conveyor("memory://")

    @app.handler("outer")
    async def outer(ctx: Context) -> dict[str, Any]:
        said: dict[str, Any] = {}
        for name, call in (("wait", lambda: app.wait(ctx.task.id, timeout=30)),
                           ("drain", lambda: app.drain(timeout=30)),
                           ("drain own", lambda: app.drain("outer", timeout=30))):
            try:
                await call()
            except ConveyorError as exc:
                said[name] = str(exc)
        await app.add("inner", None)
        said["inner"] = await app.drain("inner", timeout=10)
        return said

    @app.handler("inner")
    def inner(ctx: Context) -> str:
        return "ran"

    try:
        task = await app.add("outer", None)
        await app.drain("outer", timeout=10)
        said = await app.wait(task.id, timeout=5)
    finally:
        await app.close()
    assert "inside its own handler" in said["wait"]
    assert "it would wait for this task" in said["drain"]
    assert "it would wait for this task" in said["drain own"]
    assert said["inner"]["succeeded"] == 1
