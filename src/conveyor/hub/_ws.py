"""The WebSocket protocol (to be written)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from ._hub import Hub

__all__ = ["ws_routes"]


def ws_routes(hub: Hub) -> list[BaseRoute]:
    return []
