"""The synchronous face of :class:`HubClient`, derived at one seam.

As :class:`conveyor.SyncConveyor` does for the app: an event loop in a
background thread (:class:`conveyor.sync.Portal`) runs the async client;
coroutine methods become blocking calls, ``follow`` and ``live`` return
ordinary iterators (:class:`conveyor.sync.BlockingIterator`), and
``handler``, ``register`` and ``stop`` pass through::

    from conveyor.client import SyncHubClient

    hub = SyncHubClient("http://127.0.0.1:8765", key)
    task = hub.add("mail:send", {"to": "ann@example.com"})
    print(hub.wait(task.id, timeout=30))
    for change in hub.live({"status": "running"}):
        ...

    @hub.handler("mail:send")
    def send(ctx): ...                  # sync handlers run in threads
    hub.work(service="mailer")          # blocks until hub.stop() (from any thread)
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

from ..errors import ConveyorError
from ..sync import BlockingIterator, Portal
from ._client import HubClient

__all__ = ["SyncHubClient"]

# Methods that return async iterators without being coroutines: they are called
# on the loop thread and wrapped.
_ITERATORS = frozenset({"live"})


class SyncHubClient:
    """A blocking :class:`HubClient`. Takes the same arguments, or a HubClient."""

    def __init__(self, url: str | HubClient, key: str | None = None, **options: Any) -> None:
        self.client = url if isinstance(url, HubClient) else HubClient(url, key, **options)
        self._portal: Portal | None = None
        self._lock = threading.Lock()

    def _get_portal(self) -> Portal:
        with self._lock:
            if self._portal is None:
                self._portal = Portal()
            return self._portal

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr
        if not (inspect.iscoroutinefunction(attr) or inspect.isasyncgenfunction(attr)
                or name in _ITERATORS):
            return attr

        def blocking(*args: Any, **kwargs: Any) -> Any:
            portal = self._get_portal()
            value = portal.run(lambda: attr(*args, **kwargs))
            if hasattr(value, "__anext__"):
                return BlockingIterator(portal, value)
            return value

        blocking.__name__ = name
        blocking.__doc__ = attr.__doc__
        return blocking

    def stop(self) -> None:
        """Ask a running ``work()`` to stop (from any thread or a signal handler)."""
        self.client.stop()

    def close(self) -> None:
        """Disconnect and end the background loop."""
        with self._lock:
            portal, self._portal = self._portal, None
        if portal is not None:
            try:
                portal.run(self.client.close)
            except ConveyorError:
                pass
            finally:
                portal.close()

    def __enter__(self) -> SyncHubClient:
        self._get_portal().run(self.client.connect)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sync{self.client!r}"
