"""HTTP helpers shared by the hub's routes: credentials from requests, error bodies."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from ._credentials import Credential
from ._hub import AuthError, Hub

__all__ = ["client_address", "error_response", "key_from", "request_credential"]


def key_from(conn: HTTPConnection) -> str | None:
    """The key of a request or WebSocket handshake: ``Authorization: Bearer <key>``
    or ``X-Conveyor-Key: <key>``."""
    auth = conn.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    key = conn.headers.get("x-conveyor-key")
    return key.strip() if key else None


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def request_credential(hub: Hub, conn: HTTPConnection) -> Credential:
    """The credential of this request (raises :class:`AuthError`)."""
    return hub.authenticate(key_from(conn), client_address(conn))


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """The error body of every route: ``{"error": {"code": ..., "message": ...}}``."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"code": code, "message": message, **extra}},
                        status_code=status, headers=headers)


def auth_error_response(exc: AuthError) -> JSONResponse:
    code = {401: "unauthorized", 403: "forbidden", 429: "rate_limited"}.get(exc.status,
                                                                          "refused")
    response = error_response(exc.status, code, exc.message)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response
