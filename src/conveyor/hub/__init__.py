"""The hub: an HTTP + WebSocket server in front of a conveyor app.

``conveyor serve`` runs it; in Python::

    from conveyor import Conveyor
    from conveyor.hub import HubConfig, create_hub, serve

    app = Conveyor("sqlite:///tasks.db")
    asgi = create_hub(app, HubConfig(port=8765))       # any ASGI server
    await serve(app, HubConfig(port=8765))             # or uvicorn, here

Needs ``pip install 'conveyor[hub]'``.
"""

from __future__ import annotations

# isort: skip_file
# (the [hub] extra is looked for before any of its modules is imported)
from .. import _needs_hub  # noqa: F401

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..app import Conveyor
from ._config import HubConfig
from ._credentials import ANONYMOUS, Credential, CredentialStore
from ._dashboard import dashboard_routes
from ._guard import SameOrigin
from ._http import auth_error_response, request_credential
from ._hub import AuthError, Hub
from ._rest import rest_exception_handlers, rest_routes
from ._ws import ws_routes

__all__ = [
    "ANONYMOUS",
    "AuthError",
    "Credential",
    "CredentialStore",
    "Hub",
    "HubConfig",
    "create_hub",
    "serve",
]


def create_hub(app: Conveyor | str, config: HubConfig | None = None, *,
               credentials: CredentialStore | None = None) -> Starlette:
    """The hub as an ASGI application. ``app`` is a Conveyor or a storage URL;
    its handlers (if any) run in the hub's process too."""
    conveyor = app if isinstance(app, Conveyor) else Conveyor(app)
    hub = Hub(conveyor, config or HubConfig(), credentials)

    async def healthz(request: Request) -> JSONResponse:
        try:
            request_credential(hub, request)
        except AuthError as exc:
            return auth_error_response(exc)
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            request_credential(hub, request)
        except AuthError as exc:
            return auth_error_response(exc)
        if not hub.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await asyncio.wait_for(conveyor.storage.count(_MATCH_NONE), _READY_TIMEOUT)
        except TimeoutError:
            # a probe's answer within its own timeout: the storage is stuck (a
            # PostgreSQL table locked, SQLite's reader threads all busy)
            return JSONResponse({"status": "storage unavailable", "detail":
                                 f"the storage did not answer within {_READY_TIMEOUT:g}s"},
                                status_code=503)
        except Exception as exc:
            return JSONResponse({"status": "storage unavailable", "detail": str(exc)},
                                status_code=503)
        return JSONResponse({"status": "ready"})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()

    routes = [Route("/healthz", healthz, methods=["GET"]),
              Route("/readyz", readyz, methods=["GET"]),
              *rest_routes(hub), *ws_routes(hub), *dashboard_routes()]
    # without credentials, every client is an admin: only pages the hub serves may
    # drive it from a browser (docs/http.md, "Cross-origin requests")
    middleware = [Middleware(SameOrigin, config=hub.config)] if hub.config.insecure else []
    asgi = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                     exception_handlers=rest_exception_handlers())
    # no 307 to the path without its slash: a redirect built from the request's Host
    # header, without the JSON error body (docs/http.md: a 404 for what is no route)
    asgi.router.redirect_slashes = False
    asgi.state.hub = hub
    return asgi


def _match_none() -> Any:
    from ..query import parse_filter

    return parse_filter({"id": "-"})


_MATCH_NONE = _match_none()
_READY_TIMEOUT = 5.0
"""Seconds /readyz waits for the storage before answering 503."""


async def serve(app: Conveyor | str, config: HubConfig | None = None, *,
                credentials: CredentialStore | None = None) -> None:
    """Run the hub with uvicorn until cancelled. Cancelling it, like Ctrl-C, stops it
    gracefully (WebSockets closed with 1001, the app closed) before the cancellation
    goes on. With ``port=0`` the system picks a free port, which the hub's URLs then use."""
    from ._serve import run_hub

    await run_hub(app, config or HubConfig(), credentials=credentials)
