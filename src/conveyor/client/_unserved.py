"""What a client says when the hub answers a publish with actions no worker runs
(``X-Conveyor-Unserved`` over REST, ``unserved`` over the WebSocket)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

__all__ = ["UNSERVED_HEADER", "is_unserved_warning", "warn_unserved"]

log = logging.getLogger("conveyor.client")

UNSERVED_HEADER = "X-Conveyor-Unserved"
"""Response header of a publish over REST: the actions, comma-separated, that no live
worker runs (the hub writes it, the HTTP client reads it; docs/http.md)."""


def warn_unserved(actions: Iterable[str]) -> None:
    """Log a warning (logger ``conveyor.client``) for each action no live worker runs:
    the task is stored and waits until a worker for its action comes."""
    for action in actions:
        log.warning("no running worker handles %r; the task waits until one does", action,
                    extra={"conveyor_unserved": action})


def is_unserved_warning(record: logging.LogRecord) -> bool:
    """Whether ``record`` is one of :func:`warn_unserved`'s (the CLI, which says it
    in its own words, leaves these out)."""
    return hasattr(record, "conveyor_unserved")
