"""JSON encoding used everywhere: strict (no NaN), compact, UTF-8 safe."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any

from .errors import ValidationError
from .model import MAX_DEPTH

__all__ = [
    "WIRE_DEPTH",
    "check_depth",
    "copy_checked",
    "dumps",
    "dumps_checked",
    "dumps_stored",
    "is_finite_number",
    "loads",
    "loads_strict",
]

WIRE_DEPTH = 64
"""Deepest nesting of arrays and objects in a WebSocket frame or a REST body (the
hub refuses deeper ones; its clients refuse to send them)."""

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_decoder = json.JSONDecoder()


def is_finite_number(value: object) -> bool:
    """An int or float (not a bool) that a float can hold: a JSON reader elsewhere (a
    browser, another language) reads an integer past a float's range as infinity."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def dumps(value: Any) -> str:
    """Encode a value already known to be valid JSON."""
    return _encoder.encode(value)


def _stored_encoder() -> Callable[[Any], str]:
    try:
        import orjson
    except ImportError:  # the [hub] extra brings it; without it, the standard encoder
        return dumps
    fast = orjson.dumps

    def encode(value: Any) -> str:
        try:
            return fast(value).decode("utf-8")
        except TypeError:  # integers past 64 bits, non-text keys: the standard way
            return _encoder.encode(value)

    return encode


dumps_stored: Callable[[Any], str] = _stored_encoder()
"""Encode a value read back from storage (so plain JSON without NaN) for the wire:
orjson when it is installed (the ``[hub]`` extra), else the standard encoder.
Only for values that passed :func:`dumps_checked` on their way in: orjson
writes NaN as ``null`` where :func:`dumps` refuses it."""


def loads(text: str | bytes) -> Any:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _decoder.decode(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (_INF, -_INF):  # 1e400: valid JSON text, but no float holds it
        raise ValueError(f"the number {text[:40]} is out of the range of a float")
    return value


_INF = float("inf")
_BIG_INT = "integer string conversion"  # Python's bound on int <-> text (CVE-2020-10735)
_INT_DIGITS = sys.get_int_max_str_digits()
_strict_decoder = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)
_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def loads_strict(text: str | bytes, what: str, max_depth: int | None = None) -> Any:
    """JSON from outside (a REST body, a WebSocket frame), read strictly: UTF-8, no
    NaN or Infinity (nor a number too large for a float, such as 1e400), no lone
    surrogate escapes, at most ``max_depth`` levels of
    nesting when given. Raises :class:`ValueError` with a message that starts with
    ``what``."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = _strict_decoder.decode(text)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not UTF-8 text: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, "
                         f"column {exc.colno})") from None
    except ValueError as exc:
        if _BIG_INT in str(exc):
            raise ValueError(f"{what} holds an integer of more than {_INT_DIGITS} digits, "
                             "the most conveyor takes") from None
        raise ValueError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    if "\\u" in text and _SURROGATE.search(text):
        try:
            _encoder.encode(value).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what} holds text that is not valid Unicode "
                             "(a lone surrogate escape)") from None
        except RecursionError:
            raise ValueError(f"{what} is nested too deeply") from None
    if max_depth is not None:
        check_depth(value, what, max_depth)
    return value


def check_depth(value: Any, what: str, max_depth: int) -> None:
    """Raise :class:`ValueError` when ``value`` nests lists and objects more than
    ``max_depth`` levels deep (the value itself is the first level)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > max_depth:
            raise ValueError(f"{what} is nested more than {max_depth} levels deep")
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list | tuple))


def dumps_checked(value: Any, what: str, limit: int | None = None) -> str:
    """Encode ``value`` or raise a :class:`ValidationError` that names ``what``.

    Refuses values that are not plain JSON (sets, bytes, objects, NaN),
    text that is not valid UTF-8 (lone surrogates), values nested more than
    :data:`MAX_DEPTH` levels deep, and encodings longer than ``limit`` bytes.
    """
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        if _BIG_INT in str(exc):
            raise ValidationError(f"{what} is not JSON-serialisable: it holds an integer of "
                                  f"more than {_INT_DIGITS} digits, the most conveyor "
                                  "takes") from None
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise ValidationError(f"{what} is nested more than {MAX_DEPTH} levels deep") from None
    if text.count("[") + text.count("{") > MAX_DEPTH:  # a bound (strings hold brackets too)
        try:
            check_depth(value, what, MAX_DEPTH)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValidationError(f"{what} contains text that is not valid Unicode") from None
    if limit is not None and size > limit:
        raise ValidationError(f"{what} is {size} bytes, over the limit of {limit} bytes")
    return text


def copy_checked(value: Any, what: str) -> Any:
    """``value`` checked as :func:`dumps_checked` does, and returned as a JSON copy
    of its own: what the caller changes afterwards does not reach it."""
    return loads(dumps_checked(value, what))
