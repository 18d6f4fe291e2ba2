"""The WebSocket protocol's vocabulary: close codes, errors, field checks, encoding.

The reference for clients is ``docs/protocol.md``; this module holds what the
hub's WebSocket modules share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import _json

__all__ = [
    "CLOSE_AUTH",
    "CLOSE_FORBIDDEN",
    "CLOSE_GOING_AWAY",
    "CLOSE_HEARTBEAT",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL",
    "CLOSE_RATE",
    "CLOSE_SLOW",
    "CLOSE_TOO_BIG",
    "MAX_DEPTH",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "encode",
    "encode_id",
    "opt_bool",
    "opt_number",
    "opt_str",
    "parse_frame",
    "req_str",
]

PROTOCOL_VERSION = 1
MAX_DEPTH = _json.WIRE_DEPTH
"""Deepest nesting of arrays and objects in a WebSocket frame or a REST body."""

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL = 1008       # protocol violation (too many bad messages)
CLOSE_AUTH = 4001           # no, bad or revoked key
CLOSE_HEARTBEAT = 4002      # a service sent nothing for its whole lease
CLOSE_FORBIDDEN = 4003      # the credential may not do this (the task stream endpoint)
CLOSE_SLOW = 4008           # slow reader: the send queue is full
CLOSE_TOO_BIG = 4009        # a message over max_frame
CLOSE_RATE = 4029           # message rate exceeded, or too many instances


class ProtocolError(Exception):
    """A message is refused: answered by ``{"type": "error", "id", "code", "message"}``."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


def parse_frame(text: str) -> Any:
    """A text frame's JSON, read as strictly as the REST API reads a body
    (:func:`conveyor._json.loads_strict`), nested at most :data:`MAX_DEPTH` levels
    deep. Raises :class:`ProtocolError` (``bad_json``)."""
    try:
        return _json.loads_strict(text, "the frame", MAX_DEPTH)
    except ValueError as exc:
        raise ProtocolError("bad_json", str(exc)) from None


def encode(message: Mapping[str, Any]) -> str:
    """One message as compact JSON text."""
    return _json.dumps(message)


def encode_id(value: Any) -> str:
    return _json.dumps(value)


def req_str(msg: Mapping[str, Any], name: str, *, limit: int = 200) -> str:
    value = msg.get(name)
    if not isinstance(value, str) or not value:
        raise ProtocolError("bad_message", f"'{name}' must be a non-empty string")
    if len(value) > limit:
        raise ProtocolError("bad_message", f"'{name}' is longer than {limit} characters")
    return value


def opt_str(msg: Mapping[str, Any], name: str, default: str | None = None, *,
            limit: int = 10_000) -> str | None:
    value = msg.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ProtocolError("bad_message", f"'{name}' must be a string")
    if len(value) > limit:
        raise ProtocolError("bad_message", f"'{name}' is longer than {limit} characters")
    return value


def opt_number(msg: Mapping[str, Any], name: str, default: float | None = None, *,
               minimum: float | None = 0.0, maximum: float | None = None) -> float | None:
    value = msg.get(name)
    if value is None:
        return default
    if not _json.is_finite_number(value):
        raise ProtocolError("bad_message", f"'{name}' must be a finite number")
    if minimum is not None and value < minimum:
        raise ProtocolError("bad_message", f"'{name}' must be >= {minimum:g}")
    if maximum is not None and value > maximum:
        raise ProtocolError("bad_message", f"'{name}' must be <= {maximum:g}")
    return float(value)


def opt_bool(msg: Mapping[str, Any], name: str, default: bool) -> bool:
    value = msg.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ProtocolError("bad_message", f"'{name}' must be true or false")
    return value
