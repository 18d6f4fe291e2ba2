"""The handler registry: which function runs which action, with which options."""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic import ValidationError as PydanticValidationError

from .errors import ConfigurationError, ValidationError
from .model import Backoff, PermanentFailure, Policy, Reschedule, Retry, seconds

__all__ = [
    "ACTION_PATTERN",
    "HANDLER_OPTIONS",
    "Handler",
    "Registry",
    "build_handler",
    "check_action",
    "check_decorated",
    "check_handler_options",
    "check_policy",
    "is_model",
    "is_model_class",
]

ACTION_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,199}$")
MODES = ("auto", "async", "thread", "process")


_KNOWN_ACTIONS: set[str] = set()


def check_action(action: object) -> str:
    """Validate an action name: 1-200 characters of letters, digits and ``_ . : / -``."""
    if action.__class__ is str and action in _KNOWN_ACTIONS:
        return action
    if not isinstance(action, str) or not ACTION_PATTERN.fullmatch(action):
        raise ValidationError(
            f"invalid action name {action!r}: use 1-200 letters, digits and _ . : / - "
            "(for example 'mail:send')")
    if len(_KNOWN_ACTIONS) < 10_000:
        _KNOWN_ACTIONS.add(action)
    return action


def check_policy(policy: object) -> None:
    """A transition policy (the app's or a handler's) is None or a plain function
    (not a coroutine function: a policy decides at once, without I/O)."""
    if policy is not None and (not callable(policy) or inspect.iscoroutinefunction(policy)
                               or inspect.iscoroutinefunction(type(policy).__call__)):
        raise ConfigurationError(
            f"policy must be a function (task, outcome) -> Transition (a plain one, not "
            f"async), not {policy!r}")


@dataclass(slots=True)
class Handler:
    """A registered handler and its options (see :meth:`Conveyor.handler`)."""

    action: str
    fn: Callable[..., Any]
    is_async: bool
    environment: Any = None
    run_timeout: float | None = None
    pickup_timeout: float | None = None
    max_attempts: int | None = None
    backoff: Backoff | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    limit: int | None = None
    policy: Policy | None = None
    priority: float | None = None
    payload_model: type[BaseModel] | None = None
    result_model: type[BaseModel] | None = None
    abort_grace: float = 5.0
    mode: str = "auto"
    max_runs: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def retries(self, exc: BaseException) -> bool:
        """Whether a run that raised ``exc`` may be retried (attempts allowing)."""
        return isinstance(exc, self.retry_on) and not isinstance(exc, PermanentFailure)

    def validate_payload(self, payload: Any) -> Any:
        """The JSON payload to store, checked against the payload model if any."""
        if self.payload_model is None:
            return payload
        if isinstance(payload, self.payload_model):
            return payload.model_dump(mode="json")
        import pydantic  # imported already: the payload model is one of its classes

        try:
            model = self.payload_model.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"payload for {self.action!r} is invalid: {_describe(exc)}") from None
        return model.model_dump(mode="json")

    def load_payload(self, payload: Any) -> Any:
        """What the handler receives as ``ctx.payload``."""
        if self.payload_model is None:
            return payload
        return self.payload_model.model_validate(payload)

    def dump_result(self, value: Any) -> Any:
        """The handler's return value as stored: with a result model, an instance of
        it, or data (a dict, another model's fields, ...) that validates as one (else
        pydantic's ValidationError); without, a model's JSON or the value as is."""
        model = self.result_model
        if model is not None:
            if isinstance(value, model):
                return value.model_dump(mode="json")
            if is_model(value):  # another model: its fields must fit
                value = value.model_dump()
            return model.model_validate(value).model_dump(mode="json")
        if is_model(value):
            return value.model_dump(mode="json")
        return value


def is_model(value: Any) -> bool:
    """Whether ``value`` is a pydantic model instance. pydantic is looked up, not
    imported: a model exists only in a program that imported it, and a program or a
    CLI call that uses none does without its import (about 0.1 s)."""
    base = _base_model()
    return base is not None and isinstance(value, base)


def is_model_class(value: Any) -> bool:
    """Whether ``value`` is a pydantic model class (see :func:`is_model`)."""
    base = _base_model()
    return base is not None and isinstance(value, type) and issubclass(value, base)


def _base_model() -> type | None:
    """pydantic's ``BaseModel`` once it is defined (no model exists before), None until
    then: another thread may be importing pydantic, its module not yet complete."""
    main = sys.modules.get("pydantic.main")
    base = getattr(main, "BaseModel", None)
    return base if isinstance(base, type) else None


def _describe(exc: PydanticValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "(payload)"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _models_from_signature(fn: Callable[..., Any]) -> tuple[type[BaseModel] | None,
                                                            type[BaseModel] | None]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raw = getattr(fn, "__annotations__", {})
        try:
            first = next(iter(inspect.signature(fn).parameters), None)
        except (TypeError, ValueError):
            first = None
        if "[" in str(raw.get(first, "")) or "return" in raw:
            raise ConfigurationError(
                f"cannot read the type annotations of handler {fn.__qualname__} ({exc}): "
                "define its payload and result models at module level, or pass "
                "payload_model= / result_model=") from None
        return None, None
    payload_model = None
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins): no models
        return None, None
    params = [p for p in signature.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if params:
        hint = hints.get(params[0].name)
        for arg in typing.get_args(hint):
            if is_model_class(arg):
                payload_model = arg
    return payload_model, _result_model(hints.get("return"))


_OUTCOMES = (Retry, Reschedule)
"""What a handler with a result model may return besides the model (its annotation
``-> Done | Retry`` keeps ``Done`` as the result model)."""


def _result_model(ret: Any) -> type[BaseModel] | None:
    """The result model a return annotation names: a model class, or a union of
    exactly one model class and conveyor's outcomes (:class:`Retry`,
    :class:`Reschedule`), in any order. Anything else (``Done | None``, two models, a
    dict) names none."""
    if is_model_class(ret):
        return typing.cast("type[BaseModel]", ret)
    if typing.get_origin(ret) not in (typing.Union, types.UnionType):
        return None
    models = [arg for arg in typing.get_args(ret) if is_model_class(arg)]
    others = [arg for arg in typing.get_args(ret) if not is_model_class(arg)]
    if len(models) == 1 and others and all(arg in _OUTCOMES for arg in others):
        return typing.cast("type[BaseModel]", models[0])
    return None


def _positive_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{what} must be an integer >= 1, not {value!r}")
    return value


def _model(value: Any, what: str) -> type[BaseModel] | None:
    if value is None or is_model_class(value):
        return typing.cast("type[BaseModel] | None", value)
    raise ValidationError(f"{what} must be a pydantic model class, not {value!r}")


def build_handler(action: str, fn: Callable[..., Any], *, environment: Any = None,
                  timeout: float | timedelta | None = None,
                  pickup_timeout: float | timedelta | None = None,
                  max_attempts: int | None = None, retries: int | None = None,
                  backoff: Backoff | Mapping[str, Any] | float | timedelta | None = None,
                  retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
                  limit: int | None = None, policy: Policy | None = None,
                  priority: float | None = None, payload_model: type[BaseModel] | None = None,
                  result_model: type[BaseModel] | None = None, mode: str = "auto",
                  abort_grace: float = 5.0, max_runs: int | None = None) -> Handler:
    try:
        check_action(action)
    except ValidationError as exc:
        raise ConfigurationError(str(exc)) from None
    if not callable(fn):
        raise ConfigurationError(f"handler for {action!r} is not callable")
    _check_callable_with_context(action, fn)
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if max_runs is not None and mode != "process":
        raise ConfigurationError(f"handler for {action!r}: max_runs (runs per child process) "
                                 f"needs mode='process'")
    is_coroutine = inspect.iscoroutinefunction(fn) or (
        not inspect.isfunction(fn) and inspect.iscoroutinefunction(type(fn).__call__))
    if mode == "async" and not is_coroutine:
        raise ConfigurationError(f"handler for {action!r}: mode='async' needs an async function")
    if mode == "thread" and is_coroutine:
        raise ConfigurationError(f"handler for {action!r}: mode='thread' needs a plain function")
    check_policy(policy)
    sig_payload, sig_result = _models_from_signature(fn)
    if mode == "process":
        from ._children import handler_location

        handler_location(Handler(action, fn, is_coroutine))  # fails early if not importable
    # the defaults of the handler's tasks follow the rules of add's options
    from ._specs import check_backoff, check_max_attempts, check_priority

    try:
        if max_attempts is not None and retries is not None:
            raise ValidationError("give max_attempts or retries, not both")
        if retries is not None:
            if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
                raise ValidationError(f"retries must be an integer >= 0, not {retries!r}")
            max_attempts = retries + 1
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not isinstance(retry_on, tuple | list) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
            raise ValidationError(
                f"retry_on must be exception classes (one, or a tuple), not {retry_on!r}")
        return Handler(
            action=action,
            fn=fn,
            is_async=is_coroutine,
            environment=environment,
            run_timeout=seconds(timeout, "timeout", allow_zero=False),
            pickup_timeout=seconds(pickup_timeout, "pickup_timeout", allow_zero=False),
            max_attempts=check_max_attempts(max_attempts),
            backoff=check_backoff(backoff),
            retry_on=tuple(retry_on),
            limit=_positive_int(limit, "limit"),
            policy=policy,
            priority=None if priority is None else check_priority(priority),
            payload_model=_model(payload_model, "payload_model") or sig_payload,
            result_model=_model(result_model, "result_model") or sig_result,
            abort_grace=seconds(abort_grace, "abort_grace") or 0.0,
            mode=mode,
            max_runs=_positive_int(max_runs, "max_runs"),
        )
    except ValidationError as exc:
        raise ConfigurationError(f"handler for {action!r}: {exc}") from None


HANDLER_OPTIONS = frozenset(inspect.signature(build_handler).parameters) - {"action", "fn"}
"""The options :func:`build_handler` takes (``schedule`` is the app's)."""


def _check_callable_with_context(action: str, fn: Callable[..., Any]) -> None:
    """Refuse a function that cannot run as a handler, at registration rather than at
    every run: a generator (its body never runs) or one that cannot be called with the
    context as its one argument (``def send(to, subject)``, ``def f()``, a method
    taken from its class)."""
    call = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__call__
    if inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call):
        raise ConfigurationError(
            f"handler for {action!r} is a generator function: a handler returns its "
            "result (ctx.emit() sends values while it runs)")
    try:
        # the wrapper's own signature: a decorator's wrapper(ctx) may call the function
        # it wraps with more (an injected session), as functools.wraps hides
        signature = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):  # no signature to read (some builtins): not checked
        return
    try:
        signature.bind(None)
    except TypeError:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise ConfigurationError(
            f"handler for {action!r}: {name}{signature} cannot be called with the "
            "context as its one argument; a handler is a function of the context, "
            "def handler(ctx): ... (the payload is ctx.payload)") from None


def check_decorated(action: object, options: Mapping[str, Any], *,
                    also: frozenset[str] = frozenset(), owner: str = "app") -> None:
    """The checks of a ``handler(action, **options)`` decorator made before it has
    its function: a decorator used without its action (``@app.handler`` bare made
    the function the action's name, and registered nothing), a bad action name and
    unknown options (``also``: the caller's own, besides :func:`build_handler`'s) are
    refused where they are written. ``owner``: how the message names the object
    (``app``, ``client``)."""
    if callable(action) and not isinstance(action, str):
        raise ConfigurationError(
            f"handler() needs the action's name: write @{owner}.handler(\"mail:send\") "
            f"above {getattr(action, '__qualname__', action)!r}, not a bare @{owner}.handler")
    try:
        check_action(action)
    except ValidationError as exc:
        raise ConfigurationError(str(exc)) from None
    check_handler_options(action, {k: v for k, v in options.items() if k not in also})


def check_handler_options(action: Any, options: Mapping[str, Any]) -> None:
    """Refuse options :func:`build_handler` does not take, by name."""
    unknown = set(options) - HANDLER_OPTIONS
    if unknown:
        raise ConfigurationError(
            f"handler for {action!r}: unknown option(s): {', '.join(sorted(unknown))}")


class Registry:
    """Actions and their handlers."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def add(self, handler: Handler) -> None:
        if handler.action in self._handlers:
            raise ConfigurationError(f"a handler for {handler.action!r} is already registered")
        self._handlers[handler.action] = handler

    def get(self, action: str) -> Handler | None:
        return self._handlers.get(action)

    def __contains__(self, action: object) -> bool:
        return action in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    @property
    def actions(self) -> list[str]:
        return sorted(self._handlers)

    def handlers(self) -> list[Handler]:
        return [self._handlers[a] for a in self.actions]
