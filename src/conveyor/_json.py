"""JSON encoding used everywhere: strict (no NaN), compact, UTF-8 safe."""

from __future__ import annotations

import json
from typing import Any

from .errors import ValidationError

__all__ = ["dumps", "dumps_checked", "loads"]

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_decoder = json.JSONDecoder()


def dumps(value: Any) -> str:
    """Encode a value already known to be valid JSON."""
    return _encoder.encode(value)


def loads(text: str | bytes) -> Any:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _decoder.decode(text)


def dumps_checked(value: Any, what: str, limit: int | None = None) -> str:
    """Encode ``value`` or raise a :class:`ValidationError` that names ``what``.

    Refuses values that are not plain JSON (sets, bytes, objects, NaN),
    text that is not valid UTF-8 (lone surrogates), and encodings longer
    than ``limit`` bytes.
    """
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise ValidationError(f"{what} is nested too deeply") from None
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
