"""Errors of the hub clients that the library itself never raises."""

from __future__ import annotations

from ..errors import ConveyorError

__all__ = ["HubError"]


class HubError(ConveyorError):
    """The hub refused a request for a reason other than bad input or a task's
    state: no or a wrong key (401), no right (403), rate limited (429), the hub
    cannot be reached (``status`` 0), or it failed (5xx).

    ``status`` is the HTTP status, ``code`` the hub's error code and
    ``message`` its explanation.
    """

    def __init__(self, status: int, message: str, code: str = "") -> None:
        self.status = status
        self.code = code
        self.message = message
        where = f" (HTTP {status})" if status else ""
        super().__init__(f"{message}{where}")
