"""A hub's base URL, as given by a user (``--hub``, ``--public-url``, ``HTTPClient``):
checked one way everywhere. Needs no optional extra (the CLI checks ``--hub``
before it imports the client)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

__all__ = ["hub_url_problem"]

_BAD_PORT = "its port must be a number from 1 to 65535"


def hub_url_problem(url: Any, schemes: tuple[str, ...] = ("http", "https"), *,
                    query: bool = False) -> str | None:
    """What is wrong with ``url`` as the base URL of a hub, in a few words; ``None``
    when it is a URL of one of ``schemes`` with a host, a port from 1 to 65535 if any,
    and no query (unless ``query``: a WebSocket URL keeps it), fragment or white
    space (paths are appended to it: a query or a fragment would end up in front of
    them)."""
    if not isinstance(url, str):
        return "it is not a string"
    if any(c.isspace() for c in url):
        return "it holds white space"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Port out of range 0-65535", a bad IPv6 host, ...
        return _BAD_PORT if str(exc).startswith("Port") else str(exc)
    if parts.scheme.lower() not in schemes:
        return f"its scheme is {parts.scheme!r}" if parts.scheme else "it has no scheme"
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return _BAD_PORT
    if not query and (parts.query or "?" in url):
        return "it must not have a query: paths are appended to it"
    if parts.fragment or "#" in url:
        return "it must not have a fragment: paths are appended to it"
    return None
