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
    def send(ctx: Context) -> None: ...  # sync handlers run in threads
    hub.work(service="mailer")          # blocks until hub.stop() (from any thread)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConveyorError
from ..sync import BlockingIterator, Portal, _Seam
from ._client import HubClient, LiveChange, LiveQuery

__all__ = ["BlockingLiveQuery", "SyncHubClient"]

# Methods that return async iterators without being coroutines: they are called
# on the loop thread and wrapped.
_ITERATORS = frozenset({"live"})


if TYPE_CHECKING:
    from .._blocking import BlockingHubClient as _Typed
else:
    class _Typed:
        """The blocking signatures (``conveyor._blocking``), for type checkers only."""


class BlockingLiveQuery(BlockingIterator[LiveChange]):
    """What :meth:`SyncHubClient.live` returns: an iterator of :class:`LiveChange`
    with the :class:`LiveQuery`'s ``tasks`` (the current result, a dict by task id,
    a copy taken as of the changes the iterator gave) and ``resyncs``."""

    @property
    def tasks(self) -> dict[str, Any]:
        """The current result, a dict by task id (a copy: it does not change under
        you)."""
        return self._read(lambda live: dict(live.tasks))

    @property
    def resyncs(self) -> int:
        """How many times the query subscribed again (after a gap or a reconnect)."""
        return int(self._read(lambda live: live.resyncs))


class SyncHubClient(_Typed, _Seam):
    """A blocking :class:`HubClient`. Takes the same arguments, or a HubClient (alone: a
    key or options beside it are a ``TypeError``)."""

    _on_loop = _ITERATORS

    if not TYPE_CHECKING:
        # checkers read the constructor from ``conveyor._blocking``: HubClient's own
        # parameters (typed), or a client alone
        def __init__(self, url: str | HubClient, key: str | None = None,
                     **options: Any) -> None:
            self._setup(url, key, options)

    def _setup(self, url: str | HubClient, key: str | None, options: dict[str, Any]) -> None:
        if isinstance(url, HubClient) and (key is not None or options):
            given = ", ".join((["key"] if key is not None else []) + list(options))
            raise TypeError(f"SyncHubClient(client) takes no key or options (got {given}): "
                            "an existing client has its own; give them to HubClient(...)")
        self.client: HubClient = (url if isinstance(url, HubClient)
                                  else HubClient(url, key, **options))
        _Seam.__init__(self, self.client)

    def _iterator(self, portal: Portal, aiter: Any) -> BlockingIterator[Any]:
        if isinstance(aiter, LiveQuery):
            return BlockingLiveQuery(portal, aiter)
        return BlockingIterator(portal, aiter)

    def stop(self) -> None:
        """Ask a running ``work()`` to stop (from any thread or a signal handler)."""
        self.client.stop()

    def close(self) -> None:
        """Disconnect and end the background loop."""
        with self._closing_portal() as portal:
            if portal is not None:
                try:
                    portal.run(self.client.close)
                    portal.run(portal.keep_held)
                except ConveyorError:
                    pass
                finally:
                    portal.close()

    def __enter__(self) -> SyncHubClient:
        return self._enter(self.client.connect)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sync{self.client!r}"
