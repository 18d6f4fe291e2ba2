"""The REST API (to be written)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from ._hub import Hub

__all__ = ["rest_routes"]


def rest_routes(hub: Hub) -> list[BaseRoute]:
    return []
