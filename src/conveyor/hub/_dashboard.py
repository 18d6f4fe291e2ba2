"""The dashboard: a static page at ``/`` and its assets under ``/dashboard/static/``.

The page refers to its assets, the API and the WebSocket by URLs relative to
its own, so a proxy may serve the hub under a path prefix it strips
(``https://host/conveyor/``; see ``docs/dashboard.md``).

The page holds no data and is served without a credential (a browser cannot
send a Bearer header when it navigates); everything it shows comes from the
hub's public REST and WebSocket API, called with the key the user types in
(see ``docs/dashboard.md``). The files live in ``dashboard/`` next to this
module and are read once, when the hub is created.

The routes sit in a :class:`~starlette.routing.Mount` that matches only its own
paths: the dashboard is not part of the REST API (no key, no JSON), so it is
not listed in ``/openapi.json``, and the API routes keep their own 404 and 405
answers.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Scope

from ._http import error_response

__all__ = ["SECURITY_HEADERS", "dashboard_routes"]

STATIC = "/dashboard/static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
"""Sent with the page and every asset: scripts, styles and connections from
the hub itself only, no inline script, no framing."""

_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def _read(name: str) -> bytes:
    return resources.files(__package__ or "conveyor.hub").joinpath("dashboard", name).read_bytes()


class _OwnPathsMount(Mount):
    """A mount at the root that matches only the paths of its routes."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.NONE:
            return match, child
        inner = {**scope, **child}
        if any(route.matches(inner)[0] is not Match.NONE for route in self.routes):
            return match, child
        return Match.NONE, {}


def dashboard_routes() -> list[BaseRoute]:
    """The page at ``/`` and its assets (no credential needed: they hold no data)."""
    page = _read("index.html")
    assets = {name: (_read(name), media) for name, media in _ASSETS.items()}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return error_response(404, "not_found", f"no route {request.url.path}")
        body, media = found
        return Response(body, media_type=media, headers=SECURITY_HEADERS)

    return [_OwnPathsMount("", routes=[
        Route("/", index, methods=["GET"]),
        Route(f"{STATIC}/{{name}}", asset, methods=["GET"]),
    ])]
