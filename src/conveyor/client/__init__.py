"""Clients of a conveyor hub.

:class:`HTTPClient` speaks the REST API (``docs/http.md``);
:class:`HubClient` (async) and :class:`SyncHubClient` (blocking) speak the
WebSocket protocol (``docs/protocol.md``): publish and await, work on actions
as a remote worker with in-process-style handlers, follow tasks and live
queries. :class:`HubError`
is what a client raises when the hub refuses a request for a reason other
than bad input or a task's state (authentication, rights, rate limits, an
unreachable hub).
"""

# isort: skip_file
# (the [hub] extra is looked for before any of its modules is imported)
from .. import _needs_hub  # noqa: F401

from ._client import MISSING, HubClient, LiveChange, LiveQuery, Update
from ._errors import HubError
from ._http import HTTPClient, LogPage
from ._sync import BlockingLiveQuery, SyncHubClient

__all__ = ["MISSING", "BlockingLiveQuery", "HTTPClient", "HubClient", "HubError", "LiveChange",
           "LiveQuery", "LogPage", "SyncHubClient", "Update"]
